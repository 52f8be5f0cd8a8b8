"""The UI in a browser (issue 17): the page at `/` and its files, a WebSocket per tab driving a
`mailsink tui --attach` process, and what keeps that safe and bounded: Host and Origin refused
as for the API, Basic auth, the cap of `[http] ui_sessions`, processes that end with their tab
and with their server (SIGTERM, and SIGKILL through PR_SET_PDEATHSIG).

Real servers on loopback; a tab is textual.js's side of the protocol spoken with aiohttp's
WebSocket client, its binary frames decoded with pyte into the screen's text (a real browser
loads the page in tests/test_web_browser.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pyte
import pytest
from conftest import mailsink_process, message

from mailsink.testing import RunningSink

START_SECONDS = 20.0  # a UI process's start (about a second) on a loaded CI machine
CONFIG = "[http]\nui_sessions = 2\n"


# ---- a tab: textual.js's side of the protocol


class Tab:
    """One browser tab's WebSocket, with the screen it has drawn so far."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, width: int, height: int) -> None:
        self.ws = ws
        self.screen = pyte.Screen(width, height)
        self.stream = pyte.ByteStream(self.screen)
        self.texts: list[Any] = []
        self.close_reason = ""
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = await self.ws.receive()
            if frame.type == aiohttp.WSMsgType.BINARY:
                self.stream.feed(frame.data)
            elif frame.type == aiohttp.WSMsgType.TEXT:
                self.texts.append(json.loads(frame.data))
            else:  # the end: the close frame's reason is the server's word on why
                if frame.type == aiohttp.WSMsgType.CLOSE:
                    self.close_reason = frame.extra or ""
                break
            self.changed.set()
        self.changed.set()

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)

    async def wait_until(
        self, condition: Callable[[], bool], what: str = "", timeout: float = START_SECONDS
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.reader.done():
                closed = f" (closed: {self.ws.close_code})" if self.reader.done() else ""
                raise AssertionError(f"{what or condition} not on the screen{closed}:\n{self.text}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def wait_for(self, pattern: str, timeout: float = START_SECONDS) -> str:
        await self.wait_until(lambda: pattern in self.text, repr(pattern), timeout)
        return self.text

    async def ready(self) -> None:
        """The UI has drawn its main screen (the footer's keys)."""
        await self.wait_for("q Quit")

    async def press(self, text: str) -> None:
        await self.ws.send_str(json.dumps(["stdin", text]))

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await self.reader


async def open_tab(
    session: aiohttp.ClientSession, url: str, width: int = 100, height: int = 30, **options: Any
) -> Tab:
    ws_url = f"{url.replace('http://', 'ws://')}/ui/ws?width={width}&height={height}"
    return Tab(await session.ws_connect(ws_url, **options), width, height)


def ui_pids(db: str | Path) -> set[int]:
    """The UI processes of the store at `db` (each tab's `mailsink tui --attach --db DB`)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"--attach" in argv and str(db).encode() in argv:
            found.add(int(entry.name))
    return found


async def until_gone(pids: set[int], timeout: float = 6.0) -> float:
    """Seconds until none of `pids` runs (fails after `timeout`)."""
    started = time.monotonic()
    while True:
        alive = {pid for pid in pids if Path(f"/proc/{pid}").exists() and _running(pid)}
        if not alive:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"still running: {alive}"
        await asyncio.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def request(
    port: int, path: str, host: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A GET of exactly this path (no client normalizing `..`), with this Host."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host or f"127.0.0.1:{port}")
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def send(sink_port: int, subject: str, html: str | None = None) -> None:
    extra, body = "", "Hello.\r\n"
    if html is not None:
        extra, body = "Content-Type: text/html; charset=utf-8\r\n", html
    with smtplib.SMTP("127.0.0.1", sink_port, timeout=10) as client:
        client.sendmail(
            "a@shop.test", ["b@x.test"], message(subject=subject, extra=extra, body=body)
        )


# ---- servers


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    """The module's server: UI on, two tabs at most; its config file is edited by one test."""
    directory = tmp_path_factory.mktemp("web")
    config = directory / "mailsink.toml"
    config.write_text(CONFIG)
    with RunningSink(directory / "mail.db", config=config) as sink:
        yield sink


@contextlib.contextmanager
def serve(*args: str, db: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """`mailsink serve` in a process of its own; its HTTP port, read from its log."""
    process = mailsink_process("serve", "--port", "0", "--db", str(db), *args)
    try:
        assert process.stderr is not None
        port = 0
        deadline = time.monotonic() + START_SECONDS
        while not port and time.monotonic() < deadline:
            line = process.stderr.readline().decode()
            assert line, "mailsink serve ended before its HTTP API listened"
            if found := re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)", line):
                port = int(found[1])
        assert port
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# ---- the page and its files


def test_the_page_is_mailsinks_and_asks_nothing_of_another_host(web: RunningSink) -> None:
    code, headers, body = request(web.http_port, "/")
    page = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "<title>mailsink</title>" in page
    assert '<link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg">' in page
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy
    assert f"connect-src 'self' ws://127.0.0.1:{web.http_port} " in policy
    assert headers["X-Frame-Options"] == "DENY"
    assert f'data-session-websocket-url="ws://127.0.0.1:{web.http_port}/ui/ws"' in page
    # No inline script (the policy would block it): every <script> has a src.
    assert re.findall(r"<script[^>]*>", page) == [
        '<script src="/ui/static/page.js">',
        '<script src="/ui/static/js/textual.js">',
    ]
    referenced = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert referenced and all(url.startswith("/ui/static/") for url in referenced)
    ours = {url: request(web.http_port, url) for url in referenced}
    ours["/ui/static/page.css"] = request(web.http_port, "/ui/static/page.css")
    for url, (status, _, content) in ours.items():
        assert status == 200, url
        if "textual.js" not in url and "xterm.css" not in url:  # textual-serve's, not ours
            # The SVG namespace names the format; nothing is fetched from it.
            text = content.decode().replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert not re.search(r"https?://", text), url
    assert re.search(r"https?://", page) is None
    # The font is mailsink's own copy: the @font-face points at files served here.
    css = ours["/ui/static/page.css"][2].decode()
    for font in re.findall(r'url\("([^"]+)"\)', css):
        status, font_headers, _ = request(web.http_port, f"/ui/static/{font}")
        assert status == 200 and font_headers["Content-Type"] == "font/ttf"
    status, script_headers, script = request(web.http_port, "/ui/static/js/textual.js")
    assert status == 200 and script_headers["Content-Type"] == "text/javascript"
    assert b"sessionWebsocketUrl" in script
    status, icon_headers, _ = request(web.http_port, "/favicon.ico")
    assert status == 302 and icon_headers["Location"] == "/ui/static/favicon.svg"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/../server.py",
        "/ui/static/%2e%2e/server.py",
        "/ui/static/js/..%2f..%2fserver.py",
        "/ui/static/%2E%2E%2Fapp_service.py",
        "/ui/static/js/",
        "/ui/static/images/background.png",
        "/ui/static//etc/passwd",
    ],
)
def test_static_files_are_only_those_named(web: RunningSink, path: str) -> None:
    code, headers, body = request(web.http_port, path)
    assert code == 404 and headers["Content-Type"].startswith("application/json"), body
    assert b"import" not in body and b"root:" not in body


def test_bad_sizes_are_a_clear_400(web: RunningSink) -> None:
    for query, word in [("width=wide", "width"), ("height=0", "height"), ("width=5000", "width")]:
        code, _, body = request(web.http_port, f"/ui/ws?{query}")
        assert code == 400 and word in json.loads(body)["error"]


# ---- a tab over the WebSocket


def test_a_tab_shows_the_store_live_and_answers_keys(web: RunningSink) -> None:
    send(web.port, "Sent before the tab")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url, 100, 30)
            await tab.ready()
            assert "Sent before the tab" in tab.text
            assert "mail.db" in tab.screen.display[0]  # the status line: the store it views
            await asyncio.to_thread(send, web.port, "Sent while the tab is open")
            await tab.wait_for("Sent while the tab is open")
            # The browser's window grows: the app draws for the new size.
            await tab.ws.send_str(json.dumps(["resize", {"width": 120, "height": 40}]))
            tab.screen.resize(40, 120)
            await tab.wait_until(lambda: "q Quit" in tab.screen.display[39])
            assert "q Quit" not in tab.screen.display[29]
            await tab.ws.send_str(json.dumps(["ping", "1234"]))
            await tab.press("s")
            await tab.wait_for("Sessions  (")
            assert ["pong", "1234"] in tab.texts
            await tab.close()

    asyncio.run(scenario())


def test_o_opens_the_servers_view_of_the_html_in_a_new_tab(web: RunningSink) -> None:
    send(web.port, "With an HTML part", html="<p>Hi <b>there</b></p>\r\n")
    with web.reader() as reader:
        newest = reader.list_messages()[0].id

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            await tab.wait_for("With an HTML part")
            await tab.press("o")
            deadline = time.monotonic() + 10
            while not tab.texts and time.monotonic() < deadline:
                tab.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tab.changed.wait(), 1)
            assert ["open_url", {"url": f"/view/{newest}.html", "new_tab": True}] in tab.texts
            await tab.close()
            async with session.get(f"{web.url}/view/{newest}.html") as response:
                assert response.status == 200 and "there" in await response.text()

    asyncio.run(scenario())


async def next_text_frame(tab: Tab, count: int, timeout: float = 10.0) -> Any:
    """The tab's text frame number `count` (0-based), once it has come."""
    deadline = time.monotonic() + timeout
    while len(tab.texts) <= count:
        assert time.monotonic() < deadline and not tab.reader.done(), f"{tab.texts}\n{tab.text}"
        tab.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tab.changed.wait(), 0.5)
    return tab.texts[count]


def test_saving_a_part_and_exporting_are_downloads_never_files_on_the_server(
    web: RunningSink, tmp_path: Path
) -> None:
    """A tab's `a` (save the part) and `e` (export .eml) would write a path of the server's
    choosing on its machine (a .pth in site-packages runs code): in a tab they are downloads
    in the browser, from this server's routes, with no prompt for a directory."""
    payload = "import os  # would run in every later Python\r\n"
    raw = message(
        subject="Invoice attached",
        extra='Content-Type: text/plain\r\nContent-Disposition: attachment; filename="zz.pth"\r\n',
        body=payload,
    )
    with smtplib.SMTP("127.0.0.1", web.port, timeout=10) as client:
        client.sendmail("a@shop.test", ["b@x.test"], raw)
    with web.reader() as reader:
        newest = reader.list_messages()[0].id
    before = set(Path.cwd().iterdir())

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url, 120, 40)
            await tab.ready()
            await tab.wait_for("Invoice attached")
            await tab.press("5")  # the Parts tab: the message is its one part
            leaf = "text/plain  zz.pth"  # (the Overview lists it as "@ zz.pth")
            await tab.wait_for(leaf)
            # A click on the part, as xterm.js reports it (SGR: button 0 down, then up), chooses
            # it (and saves it, as Enter does); again if the tree was still being laid out.
            row = next(i for i, line in enumerate(tab.screen.display) if leaf in line)
            column = tab.screen.display[row].index(leaf) + 1
            part_url = f"/ui/part/{newest}/0"
            opened = ["open_url", {"url": part_url, "new_tab": True}]
            for _ in range(5):
                await tab.press(f"\x1b[<0;{column};{row + 1}M\x1b[<0;{column};{row + 1}m")
                with contextlib.suppress(AssertionError):
                    await tab.wait_until(lambda: opened in tab.texts, "the click's download", 2)
                    break
            assert await next_text_frame(tab, 0) == opened
            clicked = len(tab.texts)
            await tab.press("a")  # the key for the chosen part
            assert await next_text_frame(tab, clicked) == opened
            await tab.wait_for("Downloading zz.pth")
            assert "into directory" not in tab.text
            await tab.press("e")
            raw_url = f"/api/v1/message/{newest}/raw?dl=1"
            exported = ["open_url", {"url": raw_url, "new_tab": True}]
            await tab.wait_until(lambda: exported in tab.texts, "the export's download", 10)
            assert all(text in (opened, exported) for text in tab.texts)
            assert "as .eml into" not in tab.text
            await tab.close()
            async with session.get(web.url + part_url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/octet-stream"
                assert response.headers["Content-Disposition"].startswith(
                    'attachment; filename="zz.pth"'
                )
                assert "sandbox" in response.headers["Content-Security-Policy"]
                assert await response.read() == payload.encode()
            async with session.get(web.url + raw_url) as response:
                assert response.status == 200
                assert response.headers["Content-Disposition"] == (
                    f'attachment; filename="{newest}.eml"'
                )
                assert await response.read() == raw
            for missing in (f"/ui/part/{newest}/7", "/ui/part/999999/0", "/ui/part/x/0"):
                async with session.get(web.url + missing) as response:
                    assert response.status == 404 and "error" in await response.json()
        await until_gone(ui_pids(web.db))  # its place is free for the next test's tabs

    asyncio.run(scenario())
    assert set(Path.cwd().iterdir()) == before  # nothing was written where the UI runs


@pytest.mark.parametrize(
    ("url", "opened"),
    [
        ("/view/12.html", True),
        ("/ui/part/12/3", True),
        ("/api/v1/message/12/raw?dl=1", True),
        ("//evil.example/", False),
        ("/\\evil.example/x", False),  # a browser's URL parser: //evil.example/x
        ("/\t/evil.example/", False),  # tabs are dropped: //evil.example/
        ("https://evil.example/", False),
        ("/view/12.html\n", False),
        ("/view/12.html?x=//evil.example", False),
        ("/api/v1/messages", False),
        (["/view/1.html"], False),
    ],
)
def test_a_tab_opens_only_the_urls_the_app_means(url: Any, opened: bool) -> None:
    from mailsink.http.ui_process import UiProcess

    asked: list[str] = []

    async def open_url(url: str, new_tab: bool) -> None:
        asked.append(url)

    async def nothing(*_: Any) -> None:
        pass

    async def scenario() -> None:
        process = UiProcess([], {}, on_output=nothing, on_open_url=open_url, on_exit=nothing)
        meta = json.dumps({"type": "open_url", "url": url, "new_tab": True}).encode()
        assert await process._meta(meta)

    asyncio.run(scenario())
    assert asked == ([url] if opened else [])


# ---- what one tab may cost


def paste(text: str) -> str:
    """A paste as xterm.js sends it to an app in bracketed-paste mode (Textual's)."""
    return f"\x1b[200~{text}\x1b[201~"


async def pong_after(tab: Tab, token: str) -> float:
    """Seconds until the server answers a ping sent now: it reads the tab's messages in
    order, so a throttled message before the ping holds it up."""
    started = time.monotonic()
    await tab.ws.send_str(json.dumps(["ping", token]))
    await tab.wait_until(lambda: ["pong", token] in tab.texts, f"pong {token}", 15)
    return time.monotonic() - started


def test_a_tabs_input_is_throttled_and_a_flood_closes_it(
    web: RunningSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tab's UI process makes an event of every key and keeps them all: input is passed on
    at a bounded rate of events (a paste is one) and bytes; a message of thousands of keys,
    one over 64 KiB, or input held back for INPUT_BEHIND_SECONDS (1 s here, not 10, to
    keep this short) closes the tab."""
    from mailsink.http import web_ui

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            # A long paste is one event: passed on at once.
            await tab.press(paste("x" * 60_000))
            assert await pong_after(tab, "after a paste") < 1.5
            # Keys past the burst wait for the rate: 300 + 300 keys (an unbound one), then
            # the ping, come through no sooner than (600 - burst) / rate seconds.
            burst, rate = web_ui.INPUT_EVENTS_BURST, web_ui.INPUT_EVENTS_RATE
            await tab.press("§" * 300)
            await tab.press("§" * 300)
            assert await pong_after(tab, "after keys") >= (600 - burst) / rate - 0.3
            assert not tab.reader.done()
            await tab.close()

            flood = await open_tab(session, web.url)
            await flood.ready()
            await flood.press("§" * 1000)
            await asyncio.wait_for(flood.reader, 10)
            assert flood.ws.close_code == 1008
            assert flood.close_reason == "1000 keys in one message: more than a keyboard sends"
            await flood.close()

            monkeypatch.setattr(web_ui, "INPUT_BEHIND_SECONDS", 1.0)
            sustained = await open_tab(session, web.url)
            await sustained.ready()
            for _ in range(5):  # 1500 keys: more than a second behind the rate
                await sustained.press("§" * 300)
            await asyncio.wait_for(sustained.reader, 10)
            assert sustained.ws.close_code == 1008
            assert sustained.close_reason == "input faster than a UI takes it for 1s"
            await sustained.close()

            big = await open_tab(session, web.url)
            await big.ready()
            await big.press(paste("x" * web_ui.WS_MESSAGE_LIMIT))
            await asyncio.wait_for(big.reader, 10)
            assert big.ws.close_code == 1009  # too big, said in words the page shows
            assert big.close_reason == "a paste over 64 KiB: paste less at once"
            await big.close()
        await until_gone(ui_pids(web.db))

    asyncio.run(scenario())


def test_a_ui_process_that_does_not_read_closes_its_tab_and_is_ended(
    web: RunningSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped (or stuck) UI process: what its tab sends is not waited on (the tab still
    gets answers), and once INPUT_BACKLOG is unread the tab is closed, saying why, and the
    process is killed. (The byte rate is raised here only so that this takes no minute.)"""
    from mailsink.http import web_ui

    monkeypatch.setattr(web_ui, "INPUT_BYTES_RATE", 1e9)
    monkeypatch.setattr(web_ui, "INPUT_BYTES_BURST", 1e9)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            (pid,) = ui_pids(web.db)
            os.kill(pid, signal.SIGSTOP)
            try:
                for _ in range(3):  # the pipe takes 64 KiB, then our backlog starts
                    await tab.press(paste("x" * 60_000))
                assert await pong_after(tab, "while stopped") < 1.5
                # Enough to pass the limit even when the process read a paste or two before
                # it stopped (then the pipe holds more of them): 8 in all fell short.
                for _ in range(8):
                    await tab.press(paste("x" * 60_000))
                await asyncio.wait_for(tab.reader, 15)
                assert tab.ws.close_code == 1011
                assert "not reading its input" in tab.close_reason
                took = await until_gone({pid}, timeout=8)
                assert took < 6  # quit unanswered: SIGTERM (pending while stopped), SIGKILL
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    asyncio.run(scenario())


def test_stopping_a_ui_process_that_reads_nothing_is_bounded() -> None:
    """The server's stop (or a tab's end) with a child that never reads its stdin: the quit
    cannot be delivered, the pipe is full, and still the stop ends it within seconds."""
    from mailsink.http.ui_process import INPUT_BACKLOG, InputBacklogged, UiProcess

    child = (
        "import sys, time; sys.stdout.write('__GANGLION__\\n'); sys.stdout.flush(); time.sleep(60)"
    )

    async def nothing(*_: Any) -> None:
        pass

    async def scenario() -> None:
        process = UiProcess(
            [sys.executable, "-c", child],
            {},
            on_output=nothing,
            on_open_url=nothing,
            on_exit=nothing,
        )
        await process.start()
        await asyncio.wait_for(process.ready.wait(), START_SECONDS)
        sent = 0
        with pytest.raises(InputBacklogged):
            for _ in range(100):
                # Never waits for the child: each write returns at once.
                assert await asyncio.wait_for(process.send_input("x" * 60_000), 1)
                sent += 60_000
        assert INPUT_BACKLOG <= sent <= INPUT_BACKLOG + 64 * 1024 + 60_000
        started = time.monotonic()
        code = await asyncio.wait_for(process.stop(), 10)
        assert code == -signal.SIGTERM and time.monotonic() - started < 3.5

    asyncio.run(scenario())


def test_a_message_nested_too_deeply_closes_the_tab_cleanly(web: RunningSink) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            # Not JSON textual.js sends: ignored, the tab carries on.
            for junk in ("{{{", '{"a": 1}', '["stdin"]', '["resize", {"width": 1e308}]'):
                await tab.ws.send_str(junk)
            assert await pong_after(tab, "after junk") < 1.5
            await tab.ws.send_str("[" * 5000)  # past Python's recursion limit
            await asyncio.wait_for(tab.reader, 10)
            assert tab.ws.close_code == 1007 and "nested" in tab.close_reason
        await until_gone(ui_pids(web.db))

    asyncio.run(scenario())


# ---- who may have a tab


def test_other_hosts_and_origins_are_refused(web: RunningSink) -> None:
    port = web.http_port
    code, _, body = request(port, "/", host=f"evil.example:{port}")
    assert code == 403 and b"evil.example" in body
    before = ui_pids(web.db)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            for headers in (
                {"Host": f"evil.example:{port}"},
                {"Origin": f"http://evil.example:{port}"},
                {"Origin": "null"},
            ):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await open_tab(session, web.url, headers=headers)
                assert refused.value.status == 403, headers

    asyncio.run(scenario())
    assert ui_pids(web.db) == before  # no process was started for them


def test_basic_auth_covers_the_page_and_the_websocket(tmp_path: Path) -> None:
    from mailsink.config import HttpSettings, Settings

    settings = Settings(http=HttpSettings(users={"dev": "s3cret"}))
    with RunningSink(tmp_path / "mail.db", settings) as sink:
        send(sink.port, "Behind a password")
        assert request(sink.http_port, "/")[0] == 401
        assert request(sink.http_port, "/ui/static/js/textual.js")[0] == 401
        login = base64.b64encode(b"dev:s3cret").decode()
        assert request(sink.http_port, "/", headers={"Authorization": f"Basic {login}"})[0] == 200

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await open_tab(session, sink.url)
                assert refused.value.status == 401
                wrong = {"Authorization": "Basic " + base64.b64encode(b"dev:guess").decode()}
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await open_tab(session, sink.url, headers=wrong)
                right = {"Authorization": f"Basic {login}"}
                tab = await open_tab(session, sink.url, headers=right)
                await tab.ready()
                assert "Behind a password" in tab.text
                await tab.close()

        asyncio.run(scenario())


def test_the_cap_refuses_a_third_tab_until_one_closes(web: RunningSink) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            first, second = [await open_tab(session, web.url) for _ in range(2)]
            await asyncio.gather(first.ready(), second.ready())
            pids = ui_pids(web.db)
            assert len(pids) == 2
            third = await open_tab(session, web.url)
            await third.reader
            assert third.ws.close_code == 1013  # try again later
            code, headers, body = await asyncio.to_thread(request, web.http_port, "/")
            assert code == 503 and headers["Content-Type"].startswith("text/html")
            assert "All 2 UI sessions are in use: close a tab or raise [http] ui_sessions" in (
                body.decode()
            )
            # A tab closes: its process ends within seconds, and its place is free again.
            await first.close()
            deadline = time.monotonic() + 6
            while len(ui_pids(web.db)) != 1:
                assert time.monotonic() < deadline, "the closed tab's process still runs"
                await asyncio.sleep(0.05)
            # Its place is given back once the server has reaped it (a moment after it is
            # gone from /proc): the page says so.
            while (await asyncio.to_thread(request, web.http_port, "/"))[0] != 200:
                assert time.monotonic() < deadline, "the closed tab still counts"
                await asyncio.sleep(0.05)
            again = await open_tab(session, web.url)
            await again.ready()
            await asyncio.gather(second.close(), again.close())
        await until_gone(ui_pids(web.db))
        # The places are free once the processes have gone.
        deadline = time.monotonic() + 5
        while (await asyncio.to_thread(request, web.http_port, "/"))[0] != 200:
            assert time.monotonic() < deadline, "the closed tabs still count"
            await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_a_tab_closing_ends_its_process_within_seconds(web: RunningSink) -> None:
    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            pids = ui_pids(web.db)
            assert len(pids) == 1
            await tab.close()
            return await until_gone(pids, timeout=5)

    took = asyncio.run(scenario())
    assert took < 3  # quit is obeyed: no SIGTERM needed (that would be 2 s)


def test_ui_off_by_reload_closes_open_tabs_and_answers_404(web: RunningSink) -> None:
    config = web.config
    assert config is not None

    async def tab_closed_by_the_reload() -> Tab:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            pids = ui_pids(web.db)
            config.write_text(CONFIG + "ui = false\n")
            await asyncio.wait_for(tab.reader, 10)  # the server closed it
            await until_gone(pids)
            return tab

    try:
        tab = asyncio.run(tab_closed_by_the_reload())
        assert tab.ws.close_code == 1001 and "[http] ui = false" in tab.close_reason
        deadline = time.monotonic() + 10
        while request(web.http_port, "/")[0] != 404:
            assert time.monotonic() < deadline, "the reload did not turn the UI off"
            time.sleep(0.05)
        for path in ("/", "/ui/ws", "/ui/static/js/textual.js", "/favicon.ico", "/ui/part/1/0"):
            code, headers, body = request(web.http_port, path)
            assert code == 404 and headers["Content-Type"].startswith("application/json")
            assert "[http] ui = false" in json.loads(body)["error"]
        assert request(web.http_port, "/api/v1/info")[0] == 200
    finally:
        config.write_text(CONFIG)
    deadline = time.monotonic() + 10
    while request(web.http_port, "/")[0] != 200:
        assert time.monotonic() < deadline, "the reload did not turn the UI back on"
        time.sleep(0.05)


def test_no_web_ui_serves_the_api_alone(tmp_path: Path) -> None:
    with serve("--no-web-ui", db=tmp_path / "mail.db") as (_, port):
        code, _, body = request(port, "/")
        assert code == 404 and "--no-web-ui" in json.loads(body)["error"]
        assert request(port, "/ui/ws")[0] == 404
        assert request(port, "/api/v1/info")[0] == 200


# ---- no process outlives its server


def test_serve_stopping_ends_every_tab(tmp_path: Path) -> None:
    db = tmp_path / "mail.db"
    with serve(db=db) as (process, port):

        async def scenario() -> set[int]:
            async with aiohttp.ClientSession() as session:
                tabs = [await open_tab(session, f"http://127.0.0.1:{port}") for _ in range(2)]
                await asyncio.gather(*(tab.ready() for tab in tabs))
                pids = ui_pids(db)
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, 15)
                for tab in tabs:
                    await tab.reader  # the server closed the WebSocket
                return pids

        pids = asyncio.run(scenario())
        assert process.returncode == 0
        assert len(pids) == 2
        assert not ui_pids(db), "a UI process outlived mailsink serve"


def test_a_killed_server_takes_its_tabs_processes_with_it(tmp_path: Path) -> None:
    db = tmp_path / "mail.db"
    with serve(db=db) as (process, port):

        async def scenario() -> set[int]:
            async with aiohttp.ClientSession() as session:
                tab = await open_tab(session, f"http://127.0.0.1:{port}")
                await tab.ready()
                pids = ui_pids(db)
                process.kill()  # SIGKILL: nothing of the server's runs to stop them
                await asyncio.to_thread(process.wait, 10)
                await until_gone(pids, timeout=6)
                await tab.close()
                return pids

        assert len(asyncio.run(scenario())) == 1
    assert not ui_pids(db)


# ---- the UI process's own guard


def test_a_ui_process_whose_input_ends_quits_by_itself(web: RunningSink) -> None:
    """The guard (ui_process.guard_browser_tab) without the server's quit: stdin's end alone
    ends the process, as when the server's side of the pipe goes away unannounced."""
    env = {
        **os.environ,
        "TEXTUAL_DRIVER": "textual.drivers.web_driver:WebDriver",
        "MAILSINK_WEB_UI": "1",
        "MAILSINK_PARENT_PID": str(os.getpid()),
        "MAILSINK_SERVER_URL": web.url,
        "MAILSINK_SERVER_TOKEN": "not-the-token",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "mailsink", "tui", "--attach", "--db", web.db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == b"__GANGLION__\n"  # the app runs
        child.stdin.close()
        started = time.monotonic()
        child.wait(8)
        assert time.monotonic() - started < 4
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_ui_process_started_for_a_server_already_gone_ends_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "MAILSINK_WEB_UI": "1", "MAILSINK_PARENT_PID": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mailsink", "tui", "--attach", "--db", str(tmp_path / "x.db")],
        stdin=subprocess.PIPE,
        capture_output=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == 1 and result.stdout == b""


def test_pointer_motion_over_the_budget_is_dropped_not_queued_before_keys(
    web: RunningSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 240 Hz display reports the pointer 240 times a second: queued behind the budget, that
    motion held every later key up for seconds. Motion over the budget is dropped (the next
    report says where the pointer is); keys are never dropped, only held."""
    from mailsink.http import web_ui

    monkeypatch.setattr(web_ui, "INPUT_EVENTS_BURST", 10.0)
    monkeypatch.setattr(web_ui, "INPUT_EVENTS_RATE", 10.0)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            tab = await open_tab(session, web.url)
            await tab.ready()
            for x in range(200):  # 20 s of budget, were it queued
                await tab.press(f"\x1b[<35;{x % 90 + 1};5M")
            assert await pong_after(tab, "after motion") < 2.0
            for _ in range(30):  # keys over the budget wait: 20 events at 10 a second
                await tab.press("§")
            assert await pong_after(tab, "after keys") >= 1.0
            await tab.close()
        await until_gone(ui_pids(web.db))

    asyncio.run(scenario())
