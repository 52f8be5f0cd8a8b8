"""Headless server run: the store, the listener, signals, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from mailsink.config import Settings
from mailsink.errors import ListenError
from mailsink.store.db import MEMORY, Store

if TYPE_CHECKING:
    from mailsink.reload import ConfigWatcher
    from mailsink.smtp.server import SmtpServer

log = logging.getLogger("mailsink")


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    # aiosmtpd logs every connection at INFO; mailsink writes its own one line per session.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, overrides: dict[str, Any] | None = None
) -> AsyncIterator[tuple[SmtpServer, ConfigWatcher | None]]:
    """The store, the listener and (with a config file) its watcher, on the running loop.

    Leaving stops the listener and lets messages in flight finish. With a config file, edits to
    it are applied live; `overrides` (the command line's --host, --port, --db) keep winning."""
    from mailsink.reload import ConfigWatcher
    from mailsink.smtp.server import SmtpServer

    storage = settings.storage
    store = await asyncio.to_thread(Store, storage.path, storage.max_messages)
    log.info("store: %s", "in memory (nothing is kept)" if storage.path == MEMORY else store.path)
    server = SmtpServer(settings, store)
    stop_watching = asyncio.Event()
    watching = None
    try:
        try:
            await server.start()
        except OSError as error:
            smtp = settings.smtp
            raise ListenError(
                f"cannot listen on {smtp.host}:{smtp.port}: {error.strerror or error}"
            ) from None
        watcher = None
        if settings.source is not None:
            watcher = ConfigWatcher(settings.source, server, **(overrides or {}))
            watching = asyncio.create_task(watcher.run(stop_watching))
            log.info("watching %s for changes", settings.source)
        try:
            yield server, watcher
        finally:
            log.info("shutting down: finishing messages in flight")
            stop_watching.set()
            await server.stop()
            if watching is not None:
                watching.cancel()
    finally:
        await asyncio.to_thread(store.close)


async def serve(
    settings: Settings, stop: asyncio.Event | None = None, overrides: dict[str, Any] | None = None
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM when it is not given)."""
    async with serving(settings, overrides):
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    log.info("stopped")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (`pip install 'mailsink[fast]'`) unless MAILSINK_LOOP=asyncio;
    None means asyncio's own loop."""
    if os.environ.get("MAILSINK_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(settings: Settings, overrides: dict[str, Any] | None = None) -> None:
    configure_logging()
    # The event loop and the store's writer thread take turns on the GIL; at Python's default
    # 5 ms a turn, a commit waits behind the loop (and the loop behind a commit) for that long.
    # 1 ms measured +11 % messages/s with connections reused (docs/PERFORMANCE.md).
    sys.setswitchinterval(0.001)
    factory = loop_factory()
    log.info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, overrides=overrides))
