"""A small Chrome DevTools Protocol client: a real headless Chromium, driven over its DevTools
WebSocket with aiohttp's client (no browser download, no dependency beyond what mailsink has).

What the browser tests and bench/web_ui.py need of it: start Chromium on a fresh profile, open
tabs, load a page, press keys as a keyboard would (Input.dispatchKeyEvent), take screenshots,
list every URL a tab asked for, and read what the terminal page drew. xterm.js paints on a
canvas, so the screen is read from what the page was sent: a script injected before any of the
page's own (`RECORDER`) keeps every frame of the page's WebSockets, and `TerminalScreen` replays
the binary ones (terminal output) into pyte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import struct
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyte

# "required" (CI, where it installs Chromium): a missing browser fails the tests instead of
# skipping them.
BROWSER_ENV = "MAILSINK_BROWSER"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 800)
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI containers: Chromium's sandbox refuses to start as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--mute-audio",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 20.0


class CdpError(Exception):
    """The browser could not start, or answered a command with an error."""


def find_browser() -> str | None:
    """Chromium's path: $MAILSINK_CHROMIUM, else the first of BROWSER_NAMES on PATH."""
    chosen = os.environ.get("MAILSINK_CHROMIUM")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_required() -> bool:
    return os.environ.get(BROWSER_ENV, "").lower() == "required"


# Injected before the page's scripts: every WebSocket the page opens records what it receives
# (binary frames as ArrayBuffers, text frames as strings) and what it sends, with
# performance.now() (ms since the navigation started). Kept in page order in one array so a
# resize lands between the frames it came between.
RECORDER = """
(() => {
  const Native = window.WebSocket;
  const log = [];
  window.__cdpFrames = log;
  class RecordingWebSocket extends Native {
    constructor(...args) {
      super(...args);
      log.push({t: performance.now(), dir: "open", data: String(args[0])});
      this.addEventListener("message", (event) => {
        log.push({t: performance.now(), dir: "in", data: event.data});
      });
      this.addEventListener("close", (event) => {
        log.push({t: performance.now(), dir: "close", data: String(event.code)});
      });
    }
    send(data) {
      log.push({t: performance.now(), dir: "out", data: data});
      return super.send(data);
    }
  }
  window.WebSocket = RecordingWebSocket;
})();
"""

# Frames from index `start` on, each as [t, dir, "b"|"s", payload] (binary payloads base64).
READ_FRAMES = """
((start) => {
  const frames = window.__cdpFrames || [];
  return frames.slice(start).map((frame) => {
    if (typeof frame.data === "string") return [frame.t, frame.dir, "s", frame.data];
    const bytes = new Uint8Array(frame.data);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return [frame.t, frame.dir, "b", btoa(binary)];
  });
})(%d)
"""


@dataclass(frozen=True)
class Frame:
    at_ms: float  # performance.now() in the page: ms since its navigation started
    direction: str  # "open" (data: the URL), "in" (received), "out" (sent), "close" (the code)
    data: bytes | str  # bytes for binary frames

    @property
    def terminal_output(self) -> bool:
        return self.direction == "in" and isinstance(self.data, bytes)


class Browser:
    """One Chromium process (and its children, in a process group of their own)."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        profile: Path,
        session: aiohttp.ClientSession,
        socket: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self.process = process
        self.profile = profile
        self._session = session
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, executable: str | None = None) -> Browser:
        executable = executable or find_browser()
        if executable is None:
            raise CdpError("no Chromium found (looked for: " + ", ".join(BROWSER_NAMES) + ")")
        profile = Path(tempfile.mkdtemp(prefix="mailsink-chromium-"))
        process = await asyncio.create_subprocess_exec(
            executable,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its renderers and zygotes go with it in kill()
        )
        try:
            url = await _devtools_url(profile, process)
            session = aiohttp.ClientSession()
            try:
                # Bounded here: a session's total timeout would also end the open socket.
                socket = await asyncio.wait_for(
                    session.ws_connect(
                        url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=10)
                    ),
                    10,
                )
            except BaseException:
                await session.close()
                raise
        except BaseException:
            _kill_group(process)
            await process.wait()
            shutil.rmtree(profile, ignore_errors=True)
            raise
        return cls(process, profile, session, socket)

    async def call(
        self, method: str, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        ident = next(self._ids)
        command: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session_id is not None:
            command["sessionId"] = session_id
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            await self._socket.send_str(json.dumps(command))
            reply = await asyncio.wait_for(answer, CALL_TIMEOUT_S)
        finally:
            self._waiting.pop(ident, None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    async def new_page(self) -> Page:
        """A new tab, its events on, the WebSocket recorder installed for every page it loads."""
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session_id] = page
        await page.call("Page.enable")
        await page.call("Network.enable")
        await page.call("Runtime.enable")
        await page.call("Page.addScriptToEvaluateOnNewDocument", source=RECORDER)
        return page

    async def close_page(self, page: Page) -> None:
        with contextlib.suppress(CdpError):
            await self.call("Target.closeTarget", targetId=page.target_id)
        self._pages.pop(page.session_id, None)

    async def close(self) -> None:
        """Chromium and every process it started gone, its profile removed."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        with contextlib.suppress(Exception):
            await self._socket.close()
        await self._session.close()
        # The whole group (the wrapper script, the browser, its zygotes and renderers), while
        # the leader is not reaped yet, so its id still names that group.
        _kill_group(self.process)
        await self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                waiting = self._waiting.get(data["id"])
                if waiting is not None and not waiting.done():
                    waiting.set_result(data)
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page.dispatch(data["method"], data.get("params", {}))
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(CdpError("the browser closed its DevTools connection"))


class Page:
    """One tab: commands go to its session; its events are kept (requests) or waited for."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.requested_urls: list[str] = []
        self.console: list[str] = []
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Event()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.call(method, self.session_id, **params)

    def dispatch(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requested_urls.append(params["request"]["url"])
        elif method == "Network.webSocketCreated":
            self.requested_urls.append(params["url"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(arg.get("value", "")) for arg in params["args"]))
        self._events.setdefault(method, []).append(params)
        self._changed.set()

    async def wait_event(self, method: str, since: int = 0, timeout: float = 10.0) -> None:
        """Until the tab has had more than `since` events `method`."""
        deadline = time.monotonic() + timeout
        while len(self._events.get(method, ())) <= since:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"no {method} within {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def count(self, method: str) -> int:
        return len(self._events.get(method, ()))

    async def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Load `url` and wait for its load event (textual.js connects in window.onload)."""
        loads = self.count("Page.loadEventFired")
        result = await self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"{url}: {result['errorText']}")
        await self.wait_event("Page.loadEventFired", loads, timeout)

    async def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"{expression[:60]!r}: {details.get('exception', details)}")
        return result["result"].get("value")

    async def frames(self, start: int = 0) -> list[Frame]:
        """The WebSocket frames the page has received and sent, from the `start`th on."""
        rows = await self.evaluate(READ_FRAMES % start) or []
        return [
            Frame(at, direction, base64.b64decode(data) if kind == "b" else data)
            for at, direction, kind, data in rows
        ]

    async def focus_terminal(self) -> None:
        """Keyboard focus on xterm.js's input (textual.js does not focus it by itself)."""
        focused = await self.evaluate(
            "(() => { const input = document.querySelector('.xterm-helper-textarea');"
            " if (!input) return false; input.focus();"
            " return document.activeElement === input; })()"
        )
        if not focused:
            raise CdpError("the page has no terminal input to focus")

    async def press(self, key: str) -> None:
        """A printable key pressed and released, as the keyboard sends it (keydown with its
        text, keyup), to whatever has the focus."""
        if len(key) != 1:
            raise ValueError(f"press() takes one printable character, not {key!r}")
        code = f"Key{key.upper()}" if key.isalpha() else ""
        virtual = ord(key.upper())
        common = {"key": key, "code": code, "windowsVirtualKeyCode": virtual}
        await self.call("Input.dispatchKeyEvent", type="keyDown", text=key, **common)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    async def screenshot(self, scale: float = 1.0) -> bytes:
        """The tab as a PNG; `scale` < 1 makes a smaller one (png_pixels is pure Python:
        ~1 s for a full 1280x800 shot, 16 times less at 0.25)."""
        params: dict[str, Any] = {"format": "png"}
        if scale != 1.0:
            metrics = await self.call("Page.getLayoutMetrics")
            view = metrics["cssLayoutViewport"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": view["clientWidth"],
                "height": view["clientHeight"],
                "scale": scale,
            }
        shot = await self.call("Page.captureScreenshot", **params)
        return base64.b64decode(shot["data"])

    async def close(self) -> None:
        await self.browser.close_page(self)


class TerminalScreen:
    """What xterm.js shows, from the frames the page received: the terminal output replayed
    into pyte at the size the page asked for (its "resize" messages)."""

    def __init__(self, columns: int = 80, lines: int = 24) -> None:
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.sized = False
        self.output_bytes = 0
        self.frames_seen = 0  # the next Page.frames(start) to read

    def feed(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.frames_seen += 1
            if frame.terminal_output:
                assert isinstance(frame.data, bytes)
                self.output_bytes += len(frame.data)
                self.stream.feed(frame.data)
            elif frame.direction == "out" and isinstance(frame.data, str):
                self._resize(frame.data)
            elif frame.direction == "open" and isinstance(frame.data, str):
                self._size_from_url(frame.data)

    def _size_from_url(self, url: str) -> None:
        # textual.js opens its socket with ?width=&height= (the size its fit gave), which is
        # the size the app first draws at; a "resize" follows only if it changes.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        with contextlib.suppress(KeyError, ValueError, IndexError):
            columns, lines = int(query["width"][0]), int(query["height"][0])
            self.screen.resize(lines=lines, columns=columns)
            self.sized = True

    def _resize(self, sent: str) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            kind, size = json.loads(sent)
            if kind == "resize":
                self.screen.resize(lines=int(size["height"]), columns=int(size["width"]))
                self.sized = True

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def first_frame_where(
    frames: list[Frame], condition: Callable[[TerminalScreen], bool], columns: int, lines: int
) -> Frame | None:
    """The first received frame after which `condition` holds of the replayed screen."""
    screen = TerminalScreen(columns, lines)
    for frame in frames:
        screen.feed([frame])
        if frame.terminal_output and condition(screen):
            return frame
    return None


# ---- PNG: enough to look at a screenshot's pixels without an imaging library


def png_pixels(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, unfiltered rows) of an 8-bit RGB or RGBA PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    position, idat = 8, []
    width = height = channels = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour})")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(raw[start], line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def _unfilter(kind: int, line: bytearray, previous: bytearray, step: int) -> None:
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - step] if i >= step else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            upper_left = previous[i - step] if i >= step else 0
            estimate = left + up - upper_left
            distances = (abs(estimate - left), abs(estimate - up), abs(estimate - upper_left))
            nearest = (left, up, upper_left)[distances.index(min(distances))]
            line[i] = (line[i] + nearest) & 0xFF
        else:
            raise ValueError(f"bad PNG filter {kind}")


def png_colours(data: bytes, every: int = 4) -> dict[bytes, int]:
    """How many sampled pixels (every `every`th row and column) have each colour."""
    width, _, channels, rows = png_pixels(data)
    counts: dict[bytes, int] = {}
    for row in rows[::every]:
        for x in range(0, width, every):
            colour = row[x * channels : x * channels + 3]
            counts[colour] = counts.get(colour, 0) + 1
    return counts


# ---- process handling


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process) -> str:
    """Chromium writes its port and the browser target's path to DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise CdpError(f"Chromium exited with status {process.returncode} at start")
        with contextlib.suppress(FileNotFoundError, ValueError):
            port, path = marker.read_text().split("\n")[:2]
            if port and path:
                return f"ws://127.0.0.1:{int(port)}{path}"
        await asyncio.sleep(0.05)
    raise CdpError(f"Chromium wrote no DevToolsActivePort within {START_TIMEOUT_S:.0f} s")


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
