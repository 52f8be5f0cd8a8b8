"""A mailsink server on a thread of its own, for tests (mailsink's and yours).

    with RunningSink(db=tmp_path / "mail.db") as sink:
        smtplib.SMTP(sink.host, sink.port).sendmail(...)
        urllib.request.urlopen(sink.url + "/api/v1/messages")   # the HTTP API, on its own port
        with sink.reader() as reader:
            assert reader.list_messages()[0].envelope.rcpt_to == [...]

The server is the real one, on an ephemeral loopback port; a DATA answered with 250 is already in
the store, so a test can read it straight away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from mailsink.config import HttpSettings, Settings, SmtpSettings, StorageSettings, load
from mailsink.events import ALL_KINDS, LiveSession
from mailsink.run import loop_factory
from mailsink.sink import Sink
from mailsink.store import Reader

T = TypeVar("T")


class RunningSink:
    """`config` (a TOML file) is loaded and then watched, as `mailsink serve --config` does.

    `sink` is the running mailsink.sink.Sink (started exactly as `mailsink serve` starts it);
    `server`, `store` and `watcher` are its parts."""

    def __init__(
        self,
        db: str | Path,
        settings: Settings | None = None,
        *,
        config: str | Path | None = None,
        http: bool = True,
        **smtp: Any,
    ):
        self.config = Path(config) if config else None
        base = settings or (load(self.config) if self.config else Settings())
        self.settings = dataclasses.replace(
            base,
            smtp=dataclasses.replace(base.smtp or SmtpSettings(), port=0, **smtp),
            storage=dataclasses.replace(base.storage or StorageSettings(), path=str(db)),
            http=dataclasses.replace(base.http or HttpSettings(), port=0, enabled=http),
        )
        self.db = str(db)
        self.host = "127.0.0.1"
        self.port = 0
        self.http_port = 0  # the HTTP API's (0: not served)
        self._url = ""
        self.loop = (loop_factory() or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sink: Sink | None = None
        self._stopping: asyncio.Event | None = None
        self._serving: concurrent.futures.Future[None] | None = None

    def _call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coroutine` on the sink's loop and return its result (from the test's thread)."""
        return self._call(coroutine, timeout)

    def call(self, function: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Call `function(*args)` on the sink's loop thread and return its result: the way to
        touch the sink's state (`sink.faults`, subscriptions) from the test's thread."""
        return self._call(_on_loop(lambda: function(*args)), timeout)

    @property
    def server(self) -> Any:
        return self.sink.server if self.sink is not None else None

    @property
    def store(self) -> Any:
        return self.sink.store if self.sink is not None else None

    @property
    def faults(self) -> Any:
        return self.sink.faults if self.sink is not None else None

    @property
    def watcher(self) -> Any:
        return self.sink.watcher if self.sink is not None else None

    def start(self) -> RunningSink:
        self._thread.start()
        started: concurrent.futures.Future[Sink] = concurrent.futures.Future()

        async def serve() -> None:
            self._stopping = asyncio.Event()
            overrides = (
                {"port": 0, "db": self.db, "http_port": 0, "http": self.settings.http.enabled}
                if self.config is not None
                else None
            )
            try:
                async with Sink.serving(self.settings, overrides) as sink:
                    started.set_result(sink)
                    await self._stopping.wait()
            except BaseException as error:
                if not started.done():
                    started.set_exception(error)
                raise

        self._serving = asyncio.run_coroutine_threadsafe(serve(), self.loop)
        try:
            self.sink = started.result(30)
        except BaseException:
            self._stop_loop()  # nothing else was left running: the sink cleaned up after itself
            raise
        if self.config is not None:
            time.sleep(0.2)  # let the watch begin before a test edits the file
        self.host, self.port = self.sink.addresses[0][:2]
        self.db = self.sink.path
        if self.sink.http is not None:
            self.http_port = self.sink.http.port
            self._url = self.sink.http.url  # where HTTP listens, which need not be SMTP's host
        return self

    @property
    def url(self) -> str:
        """The HTTP API's base URL (http://127.0.0.1:PORT); RunningSink(http=False) has none."""
        if not self.http_port:
            raise RuntimeError("this RunningSink serves no HTTP API (http=False)")
        return self._url

    def stop(self, grace: float = 10.0) -> None:
        if self.loop.is_closed():
            return  # stopped already
        failure: Exception | None = None
        if self._serving is not None and self._stopping is not None:
            stopping, server = self._stopping, self.sink.server if self.sink is not None else None

            async def stop_serving() -> None:
                # One trip to the loop: the listeners stopped with this grace, then the sink
                # left (which stops the rest and closes the store).
                try:
                    if server is not None:
                        await server.stop(grace)
                finally:
                    stopping.set()

            try:
                self._call(stop_serving())
            except Exception as error:  # told once everything is stopped
                failure = error
            with contextlib.suppress(Exception):
                self._serving.result(60)
        self._stop_loop()
        self.sink = None
        if failure is not None:
            raise failure

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> RunningSink:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def reader(self) -> Reader:
        return Reader(self.db)

    def live_sessions(self) -> list[LiveSession]:
        """Snapshots of the sessions being served (and those just ended, not yet committed)."""
        assert self.sink is not None
        return self._call(_on_loop(self.sink.live_sessions))

    def events(self, *kinds: type) -> Events:
        """A subscription to the sink's events (all kinds when none is given), read from the
        test's thread: `events.next(timeout)`, `events.until(kind, timeout)`."""
        assert self.sink is not None
        sink = self.sink
        subscription = self._call(_on_loop(lambda: sink.subscribe(*(kinds or ALL_KINDS))))
        return Events(self, subscription)

    def wait_for(self, query: Callable[[Reader], T], timeout: float = 5.0) -> T:
        """Poll the store until `query` returns something truthy (e.g. a session's end)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.reader() as reader:
                result = query(reader)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.02)


async def _on_loop(function: Callable[[], T]) -> T:
    return function()


class Events:
    """A sink's events, for a test's (synchronous) thread."""

    def __init__(self, running: RunningSink, subscription: Any):
        self._running = running
        self._subscription = subscription

    def next(self, timeout: float = 5.0) -> Any:
        """The next event; TimeoutError when none comes within `timeout` seconds."""
        return self._running._call(asyncio.wait_for(self._subscription.get(), timeout), timeout + 5)

    def until(self, kind: type, timeout: float = 5.0) -> list[Any]:
        """Every event up to and including the first of `kind`."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(event)
            if isinstance(event, kind):
                return seen

    def close(self) -> None:
        self._running.loop.call_soon_threadsafe(self._subscription.close)

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def __getattr__(name: str) -> Any:
    # mailsink.harness builds on RunningSink: imported on first use, not at import.
    if name in {"Mailsink", "MailsinkTestCase"}:
        import importlib

        return getattr(importlib.import_module("mailsink.harness"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
