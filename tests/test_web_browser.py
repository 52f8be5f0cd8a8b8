"""The TUI in a real browser: headless Chromium (tests/cdp_browser.py) loads `/` of a real
`mailsink serve`, and what it draws is read back from the frames its WebSocket received.

Without Chromium these tests skip with a notice, unless MAILSINK_BROWSER=required (CI installs
Chromium and sets it), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp_browser import (
    Browser,
    Page,
    TerminalScreen,
    browser_required,
    find_browser,
    png_colours,
)
from conftest import ServerLines, mailsink_process, message

from mailsink.tui.screens.sessions import TITLE as SESSIONS_TITLE

SUBJECT = "Seen in a browser tab"
# Where the lead looks at what the browser drew (only when that directory exists).
SCREENSHOT = Path("/work/notes/browser17.png")
APP_TIMEOUT_S = 20.0  # page load to the list painted: ~1.5 s here; a cold, busy CI machine
CHILD_END_TIMEOUT_S = 10.0  # quit, then SIGTERM after 2 s, SIGKILL after 2 more; and a margin
POLL_S = 0.05
SHOT_SCALE = 0.25  # the screenshots compared: enough pixels to tell a drawn screen from none


class Served:
    """A real `mailsink serve` (SMTP and HTTP on ports of its own), one message sent to it."""

    def __init__(self, db: Path) -> None:
        self.process = mailsink_process("serve", "--port", "0", "--http-port", "0", "--db", str(db))
        self.lines = ServerLines(self.process)
        self.smtp_port = int(self.lines.until(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        self.http_port = int(self.lines.until(r"HTTP API on http://127\.0\.0\.1:(\d+)").group(1))
        self.origin = f"127.0.0.1:{self.http_port}"
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
            client.sendmail("shop@x.test", ["a@x.test"], message(subject=SUBJECT))

    def ui_processes(self) -> list[int]:
        """The server's children that are UI processes (not its writer and spawn helper)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes().split(b"\0")
                if parent == self.process.pid and b"tui" in command:
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    """One event loop for the module: the browser's DevTools connection lives on it."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def browser(loop: asyncio.Runner) -> Iterator[Browser]:
    executable = find_browser()
    if executable is None:
        notice = "no Chromium (apt-get install chromium, or set MAILSINK_CHROMIUM): not run"
        if browser_required():
            pytest.fail(f"MAILSINK_BROWSER=required and {notice}")
        print(f"\ntest_web_browser: {notice}", file=sys.stderr)
        pytest.skip(notice)
    started = loop.run(Browser.launch(executable))
    try:
        yield started
    finally:
        loop.run(started.close())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("web-browser") / "mail.db")
    try:
        yield server
    finally:
        server.stop()
    assert server.process.returncode == 0, "".join(server.lines.seen)


async def read_screen(
    page: Page, screen: TerminalScreen, condition: Callable[[TerminalScreen], bool], what: str
) -> None:
    """Feed `screen` the page's new frames until `condition` holds of it."""
    deadline = time.monotonic() + APP_TIMEOUT_S
    while True:
        screen.feed(await page.frames(screen.frames_seen))
        if condition(screen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {APP_TIMEOUT_S:.0f} s; screen:\n{screen.text}"
            )
        await asyncio.sleep(POLL_S)


def shows_list_with_subject(screen: TerminalScreen) -> bool:
    return any(SUBJECT in line for line in screen.lines)


# The Sessions table's row of the SMTP session that brought the message: id 1, its peer.
SESSION_ROW = re.compile(r"^\s*1\s+\d\d:\d\d:\d\d\s+127\.0\.0\.1:\d+", re.M)


def shows_sessions(screen: TerminalScreen) -> bool:
    text = screen.text
    return SESSIONS_TITLE.strip() in text and SUBJECT not in text and bool(SESSION_ROW.search(text))


def not_blank(png: bytes) -> bool:
    """More than a background: many colours, none covering nearly all of the tab."""
    colours = png_colours(png)
    return len(colours) > 20 and max(colours.values()) < 0.97 * sum(colours.values())


def test_the_page_shows_mail_sent_over_smtp_and_s_opens_the_sessions(
    loop: asyncio.Runner, browser: Browser, served: Served
) -> None:
    async def scenario() -> dict[str, Any]:
        page = await browser.new_page()
        try:
            await page.navigate(f"http://{served.origin}/")
            title = await page.evaluate("document.title")
            screen = TerminalScreen()
            await read_screen(page, screen, shows_list_with_subject, "the message in the list")
            before = await page.screenshot(scale=SHOT_SCALE)
            await page.focus_terminal()
            await page.press("s")
            await read_screen(page, screen, shows_sessions, "the Sessions screen after s")
            # The screen is read from the frames the page got; the screenshot says xterm.js drew
            # them (the canvas changed, and shows more than a background).
            after = await page.screenshot(scale=SHOT_SCALE)
            if SCREENSHOT.parent.is_dir():
                SCREENSHOT.write_bytes(await page.screenshot())
            return {
                "title": title,
                "before": before,
                "after": after,
                "screen": screen,
                "urls": list(page.requested_urls),
            }
        finally:
            await page.close()

    seen = loop.run(scenario())
    assert seen["title"] == "mailsink"
    screen: TerminalScreen = seen["screen"]
    assert screen.sized and screen.output_bytes > 0
    assert seen["before"] != seen["after"]
    assert not_blank(seen["before"]) and not_blank(seen["after"])
    # No request left the machine: the page, its script, styles, fonts, favicon and the
    # WebSocket all came from the server it was loaded from.
    hosts = {urllib.parse.urlsplit(url).netloc for url in seen["urls"]}
    assert seen["urls"] and hosts == {served.origin}, seen["urls"]
    schemes = {urllib.parse.urlsplit(url).scheme for url in seen["urls"]}
    assert "ws" in schemes, seen["urls"]


def test_closing_the_tab_ends_its_ui_process(
    loop: asyncio.Runner, browser: Browser, served: Served
) -> None:
    async def open_tab() -> Page:
        page = await browser.new_page()
        await page.navigate(f"http://{served.origin}/")
        await read_screen(page, TerminalScreen(), shows_list_with_subject, "the list")
        return page

    # Another test's tab may still be ending: only this tab's process counts.
    earlier = set(served.ui_processes())
    page = loop.run(open_tab())
    ours = set(served.ui_processes()) - earlier
    assert len(ours) == 1, ours
    loop.run(page.close())
    deadline = time.monotonic() + CHILD_END_TIMEOUT_S
    while ours & set(served.ui_processes()):
        assert time.monotonic() < deadline, f"UI process {ours} still running"
        time.sleep(POLL_S)
