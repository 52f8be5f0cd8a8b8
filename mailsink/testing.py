"""A mailsink server on a thread of its own, for tests (mailsink's and yours).

    with RunningSink(db=tmp_path / "mail.db") as sink:
        smtplib.SMTP(sink.host, sink.port).sendmail(...)
        with sink.reader() as reader:
            assert reader.list_messages()[0].envelope.rcpt_to == [...]

The server is the real one, on an ephemeral loopback port; a DATA answered with 250 is already in
the store, so a test can read it straight away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mailsink.config import Settings, SmtpSettings, StorageSettings, load
from mailsink.reload import ConfigWatcher
from mailsink.run import loop_factory
from mailsink.smtp.server import SmtpServer
from mailsink.store.db import Store
from mailsink.store.reader import Reader

T = TypeVar("T")


class RunningSink:
    """`config` (a TOML file) is loaded and then watched, as `mailsink serve --config` does."""

    def __init__(
        self,
        db: str | Path,
        settings: Settings | None = None,
        *,
        config: str | Path | None = None,
        **smtp: Any,
    ):
        self.config = Path(config) if config else None
        base = settings or (load(self.config) if self.config else Settings())
        self.settings = dataclasses.replace(
            base,
            smtp=dataclasses.replace(base.smtp or SmtpSettings(), port=0, **smtp),
            storage=dataclasses.replace(base.storage or StorageSettings(), path=str(db)),
        )
        self.db = str(db)
        self.host = "127.0.0.1"
        self.port = 0
        self.loop = (loop_factory() or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.store: Store | None = None
        self.server: SmtpServer | None = None
        self.watcher: ConfigWatcher | None = None
        self._stop_watching = asyncio.Event()

    def _call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> RunningSink:
        self._thread.start()

        async def start() -> None:
            storage = self.settings.storage
            self.store = Store(storage.path, storage.max_messages)
            self.server = SmtpServer(self.settings, self.store)
            await self.server.start()
            if self.config is not None:
                self.watcher = ConfigWatcher(self.config, self.server, port=0, db=str(self.db))
                self._watching = asyncio.ensure_future(self.watcher.run(self._stop_watching))
                await asyncio.sleep(0.2)  # let the watch begin before a test edits the file

        self._call(start())
        assert self.server is not None and self.store is not None
        self.host, self.port = self.server.addresses[0][:2]
        self.db = self.store.path
        return self

    def stop(self, grace: float = 10.0) -> None:
        self.loop.call_soon_threadsafe(self._stop_watching.set)
        if self.server is not None:
            self._call(self.server.stop(grace))
        if self.store is not None:
            self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self.server = self.store = None

    def __enter__(self) -> RunningSink:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def reader(self) -> Reader:
        return Reader(self.db)

    def live_sessions(self) -> int:
        assert self.server is not None
        return len(self.server.sessions)

    def wait_for(self, query: Callable[[Reader], T], timeout: float = 5.0) -> T:
        """Poll the store until `query` returns something truthy (e.g. a session's end)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.reader() as reader:
                result = query(reader)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.02)
