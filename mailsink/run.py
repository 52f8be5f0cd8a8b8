"""Running mailsink without a UI (`mailsink serve`): logging, the event loop, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from mailsink.config import Settings
from mailsink.sink import Sink

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


async def serve(
    settings: Settings, stop: asyncio.Event | None = None, overrides: dict[str, Any] | None = None
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM when it is not given)."""
    async with Sink.serving(settings, overrides):
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    log.info("stopped")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (`pip install '.[fast]'`) unless MAILSINK_LOOP=asyncio;
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
    # The loop shares the GIL with the threads that parse headers for DATA-stage rules and
    # answer `committed_message`; 1 ms turns instead of 5 ms measured +1 % (reused connections)
    # and +3 % (a connection per message) against the reference, within the runs' spread but
    # in its favour each time (docs/PERFORMANCE.md, issue 12). It was +11 % with the writer
    # as a thread of this process.
    sys.setswitchinterval(0.001)
    factory = loop_factory()
    log.info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, overrides=overrides))
