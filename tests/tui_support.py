"""Driving the real TUI (its own server on loopback) from tests, with Textual's Pilot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from conftest import message
from rich.console import Console, RenderableType
from textual.pilot import Pilot
from textual.widgets import Static

from mailsink.config import Settings, SmtpSettings, StorageSettings, load
from mailsink.run import loop_factory
from mailsink.tui.app import MailsinkApp, create_app

T = TypeVar("T")
SIZE = (120, 40)


def settings_for(db: Path | str, config: Path | None = None) -> Settings:
    base = load(config) if config else Settings()
    return dataclasses.replace(
        base,
        smtp=dataclasses.replace(base.smtp or SmtpSettings(), port=0),
        storage=dataclasses.replace(base.storage or StorageSettings(), path=str(db)),
        http=dataclasses.replace(base.http, port=0),
    )


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """On the loop `mailsink` itself uses (uvloop unless MAILSINK_LOOP=asyncio)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(scenario())  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def tui(
    settings: Settings, *, attach: bool = False, size: tuple[int, int] = SIZE, **options: Any
) -> AsyncIterator[tuple[MailsinkApp, Pilot[None]]]:
    """`options`: more of create_app's arguments (log_handler, state_dir)."""
    app = create_app(settings, attach=attach, **options)
    async with app.run_test(size=size) as pilot:
        assert app.startup_error is None, app.startup_error
        await wait_until(pilot, lambda: app.main.message_list.loaded)
        yield app, pilot


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], Any], timeout: float = 5.0
) -> float:
    """Seconds it took for `condition` to hold; fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout}s: {condition}")
        await pilot.pause(0.01)
    return time.monotonic() - start


def smtp_send(
    port: int, sender: str, recipients: list[str], content: str | bytes, **kwargs: Any
) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, recipients, content, **kwargs)


async def send(app: MailsinkApp, sender: str, recipients: list[str], content: str | bytes) -> None:
    """smtplib in a thread: the server answering it runs on this test's loop."""
    assert app.sink.server is not None
    await asyncio.to_thread(smtp_send, app.sink.server.port, sender, recipients, content)


def text_of(renderable: RenderableType, width: int = SIZE[0]) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text(styles=False)


def static_text(app: MailsinkApp, selector: str) -> str:
    widget = app.screen.query_one(selector, Static)
    return text_of(widget.content)  # type: ignore[arg-type]


def screen_text(app: MailsinkApp) -> str:
    """What the terminal shows now, as plain text."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, color_system="truecolor"
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text(styles=False)


def list_rows(app: MailsinkApp) -> list[str]:
    widget = app.main.message_list
    return [
        widget.render_line(y).text.rstrip()
        for y in range(min(widget.count, widget.scrollable_content_region.height))
    ]


def log_text(app: MailsinkApp, selector: str) -> str:
    """A RichLog's lines, joined with every space removed (wrapping moves the breaks)."""
    from textual.widgets import RichLog

    log = app.screen.query_one(selector, RichLog)
    return "".join("".join(strip.text.split()) for strip in log.lines)


def squeezed(text: str) -> str:
    return "".join(text.split())


def rows_loaded(app: MailsinkApp) -> bool:
    """Every row on screen is loaded (none shows the placeholder)."""
    widget = app.main.message_list
    top = int(widget.scroll_y)
    visible = range(top, min(widget.count, top + widget.scrollable_content_region.height))
    return all(widget.id_at(row) in widget._rows for row in visible)


async def send_numbered(app: MailsinkApp, pilot: Pilot[Any], count: int) -> None:
    """`count` messages with subjects m0, m1, ...; returns once the list shows them all."""
    for n in range(count):
        await send(app, "a@x.test", ["b@x.test"], message(subject=f"m{n}"))
    await wait_until(pilot, lambda: app.main.message_list.count >= count)
