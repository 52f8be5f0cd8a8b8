"""What the TUI works with: the store (read through one thread of its own, never on the loop)
and, unless attached to another process's store, the SMTP server running on the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from mailsink.config import Settings
from mailsink.store.reader import Reader

if TYPE_CHECKING:
    from mailsink.reload import ConfigWatcher
    from mailsink.smtp.server import SmtpServer

T = TypeVar("T")
log = logging.getLogger("mailsink")


@dataclass
class Backend:
    db_path: str
    settings: Settings
    server: SmtpServer | None = None  # None when attached to another process's store
    watcher: ConfigWatcher | None = None
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="mailsink-reader")
    )
    _reader: Reader | None = None

    @property
    def attached(self) -> bool:
        return self.server is None

    async def read(self, query: Callable[..., T], *args: Any) -> T:
        """Run `query(reader, *args)` on the reader thread: SQLite and parsing stay off the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._run, query, *args))

    def _run(self, query: Callable[..., T], *args: Any) -> T:
        if self._reader is None:
            self._reader = Reader(self.db_path)
        return query(self._reader, *args)

    async def close(self) -> None:
        def close() -> None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, attach: bool = False, overrides: dict[str, Any] | None = None
) -> AsyncIterator[Backend]:
    """The backend for one TUI run: with `attach`, only a reader of an existing store; otherwise
    the store, the SMTP server and (with a config file) its watcher, all on the running loop.
    Leaving stops the listener and lets transactions in flight finish."""
    from mailsink.store.db import resolve_path

    if attach:
        path = resolve_path(settings.storage.path)
        Reader(path).close()  # fails now, with a clear error, if there is no store there
        backend = Backend(path, settings)
        try:
            yield backend
        finally:
            await backend.close()
        return

    from mailsink.run import serving

    async with serving(settings, overrides) as (server, watcher):
        backend = Backend(server.store.path, settings, server, watcher)
        try:
            yield backend
        finally:
            await backend.close()
