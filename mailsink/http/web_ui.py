"""The terminal UI in a browser, at `/` of the HTTP API's port: the page, textual-serve's
client (textual.js, xterm.js) and fonts served locally, and a WebSocket per tab driving one
`mailsink tui --attach` process (mailsink.http.ui_process).

Every route answers 404 while `[http] ui` is off (looked at per request: a reload may switch
it). The service's guard has already refused other hosts, other origins and, with `[http]
users`, requests without a password. At most `[http] ui_sessions` tabs run a UI at once: the
page is a 503 saying so when they are all taken, and the WebSocket is closed with 1013.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import textual_serve
from aiohttp import WSCloseCode, WSMsgType, web

from mailsink.http.request_params import ApiError
from mailsink.http.ui_process import PARENT_PID_ENV, WEB_UI_ENV, InputBacklogged, UiProcess
from mailsink.http.web_service import SERVICE, SINK, HttpService
from mailsink.mail.attachments import safe_filename
from mailsink.mail.parse import MAX_PARTS, MimePart, parse_message, part_payload
from mailsink.server_link import TOKEN_ENV, URL_ENV
from mailsink.store.reader import Reader
from mailsink.text import visible

log = logging.getLogger("mailsink")

UI_SESSIONS: web.AppKey[UiSessions] = web.AppKey("ui_sessions")
# cli.WEB_DRIVER (not imported: the CLI module is the click group, heavy to import here).
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"
FONT_SIZE = 16
DEFAULT_SIZE = (80, 24)
MAX_SIZE = 1000  # columns or rows: more is no screen
# A tab's input. textual.js sends a paste as one frame: 64 KiB is a long paste (more closes
# the tab, 1009). The UI process makes an event of each key, mouse report and paste, and
# queues them without bound: a tab sending "a" a million times grows it by gigabytes (each
# press a notice: ~3 KB). So what goes on to it is throttled, by events (typing is ~20 a
# second, moving the mouse fast ~120) and by bytes (a paste is one event, but it lands in an
# input field), each after a burst. A throttled tab waits (TCP's back-pressure); one that
# is still held back after INPUT_BEHIND_SECONDS is closed (1008).
WS_MESSAGE_LIMIT = 64 * 1024
# What aiohttp reads of one frame before closing with 1009 and its own words: a message over
# WS_MESSAGE_LIMIT (a big paste) up to this is refused in the tab's words instead.
FRAME_LIMIT = 1024 * 1024
INPUT_EVENTS_RATE = 120.0
INPUT_EVENTS_BURST = 400.0
INPUT_BYTES_RATE = 16 * 1024.0
INPUT_BYTES_BURST = float(WS_MESSAGE_LIMIT)
INPUT_BEHIND_SECONDS = 10.0
PING_SECONDS = 15.0
CLOSE_SECONDS = 3.0  # for a tab to answer our close frame (aiohttp's default is 10 s)

_TEXTUAL_STATIC = Path(textual_serve.__file__).resolve().parent / "static"
_OWN_STATIC = Path(__file__).resolve().parent / "ui_static"
# Everything /ui/static/ serves, by name: nothing else (no listing, no path to walk).
STATIC_FILES: dict[str, tuple[Path, str]] = {
    "js/textual.js": (_TEXTUAL_STATIC / "js/textual.js", "text/javascript"),
    "css/xterm.css": (_TEXTUAL_STATIC / "css/xterm.css", "text/css"),
    "fonts/RobotoMono-VariableFont_wght.ttf": (
        _TEXTUAL_STATIC / "fonts/RobotoMono-VariableFont_wght.ttf",
        "font/ttf",
    ),
    "fonts/RobotoMono-Italic-VariableFont_wght.ttf": (
        _TEXTUAL_STATIC / "fonts/RobotoMono-Italic-VariableFont_wght.ttf",
        "font/ttf",
    ),
    "page.js": (_OWN_STATIC / "page.js", "text/javascript"),
    "page.css": (_OWN_STATIC / "page.css", "text/css"),
    "favicon.svg": (_OWN_STATIC / "favicon.svg", "image/svg+xml"),
}
# A Host header as the page may repeat it (in the WebSocket's URL and the policy): a name or
# an address, and a port. _foreign has checked it is one of the server's names.
_PAGE_HOST = re.compile(r"(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.IGNORECASE)


class UiSessions:
    """The tabs with a UI process: for the cap, and for the server's stop (one closer in
    HttpService.streams while any is open, ending them all at once)."""

    def __init__(self) -> None:
        self.open: set[UiSession] = set()

    def full(self, service: HttpService) -> bool:
        return len(self.open) >= service.settings.http.ui_sessions

    def add(self, session: UiSession, service: HttpService) -> None:
        self.open.add(session)
        service.streams.add(self.close_all)

    def discard(self, session: UiSession, service: HttpService) -> None:
        self.open.discard(session)
        if not self.open:
            service.streams.discard(self.close_all)

    async def close_all(self, reason: str = "mailsink UI ended") -> None:
        await asyncio.gather(*(session.close(reason) for session in list(self.open)))


async def close_tabs(app: web.Application) -> None:
    """Every open tab's UI ended: `[http] ui` was turned off by a reload."""
    sessions = app.get(UI_SESSIONS)
    if sessions is not None and sessions.open:
        log.info("the UI in a browser is off: closing %d tab(s)", len(sessions.open))
        await sessions.close_all("the UI in a browser was turned off ([http] ui = false)")


class UiSession:
    """One tab: its WebSocket and its UI process."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.process: UiProcess | None = None
        self.started = time.monotonic()
        # How the WebSocket is closed: the UI quit (q), unless the server ends it first.
        self.close_code = WSCloseCode.OK
        self.reason = "mailsink UI ended"

    async def close(self, reason: str = "mailsink UI ended") -> None:
        """Ends the process (bounded, see UiProcess.stop) and the WebSocket, with `reason`."""
        self.close_code, self.reason = WSCloseCode.GOING_AWAY, reason
        if self.process is not None:
            await self.process.stop()
        await self.end_websocket()

    async def end_websocket(self) -> None:
        if not self.ws.closed:
            await self.ws.close(code=self.close_code, message=_close_reason(self.reason))


def _close_reason(text: str) -> bytes:
    """A close frame's reason has room for 123 bytes (whole characters)."""
    return text.encode()[:123].decode("utf-8", "ignore").encode()


class TokenBucket:
    """`delay(cost)` spends `cost` and says how long to wait before going on (0 within the
    burst; the debt is paid at `rate` a second)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.available = burst
        self.updated = time.monotonic()

    def delay(self, cost: float) -> float:
        now = time.monotonic()
        self.available = min(self.burst, self.available + (now - self.updated) * self.rate)
        self.updated = now
        self.available -= cost
        return 0.0 if self.available >= 0 else -self.available / self.rate


# What Textual's input parser makes one event of: a bracketed paste without an escape in it
# (however long), an escape sequence (CSI: arrows, function keys, SGR mouse reports; SS3;
# alt+key), else a character.
_PASTE = re.compile(r"\x1b\[200~[^\x1b]*\x1b\[201~")
_SEQUENCE = re.compile(r"\x1b\[[0-9;:<=>?]*[ -/]*[@-~]|\x1bO.|\x1b.", re.DOTALL)


# SGR mouse reports of motion alone (button code with the motion bit, 32), one or more.
_MOTION = re.compile(r"(?:\x1b\[<(?:3[2-9]|[4-5][0-9]|6[0-3]);[0-9]+;[0-9]+M)+")


def input_events(kind: object, data: object) -> int:
    """About how many events the UI process makes of a tab's message: of its keys when it is
    input, one for anything else (a resize, a ping, junk: reading it is work too)."""
    if kind == "stdin" and isinstance(data, str):
        return len(_SEQUENCE.sub("\x1b", _PASTE.sub("\x1b", data)))
    return 1


class InputBudget:
    """One tab's input throttle (see INPUT_EVENTS_RATE). Its wait stops the WebSocket's
    reading, and soon TCP's: a tab held back for INPUT_BEHIND_SECONDS on end is flooding
    (its pongs, behind its input, would soon be missed by the heartbeat anyway)."""

    def __init__(self) -> None:
        self.events = TokenBucket(INPUT_EVENTS_RATE, INPUT_EVENTS_BURST)
        self.bytes = TokenBucket(INPUT_BYTES_RATE, INPUT_BYTES_BURST)
        self.behind_since: float | None = None

    def delay(self, frame: str | bytes, events: int) -> float:
        """Seconds to wait before passing on this message (of `events` events)."""
        wait = max(self.events.delay(events), self.bytes.delay(len(frame)))
        if not wait:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = time.monotonic()
        return wait

    def refund(self, frame: str | bytes, events: int) -> None:
        """A message dropped rather than passed on costs nothing."""
        self.events.available += events
        self.bytes.available += len(frame)

    @property
    def flooding(self) -> bool:
        since = self.behind_since
        return since is not None and time.monotonic() - since > INPUT_BEHIND_SECONDS


# The UI's routes: not the API's (OpenAPI does not list them).
UI_PATHS = ("/", "/ui/ws", "/ui/static/{name}", "/favicon.ico", "/ui/part/{id}/{index}")


def install(app: web.Application) -> None:
    """Add the UI's routes to the service's app."""
    app[UI_SESSIONS] = UiSessions()
    app.router.add_get("/", page)
    app.router.add_get("/ui/ws", websocket)
    app.router.add_get("/ui/static/{name:.+}", static_file)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/ui/part/{id}/{index}", part_download)


def _ui_on(request: web.Request) -> HttpService:
    service = request.app[SERVICE]
    if not service.settings.http.ui:
        raise ApiError(404, "the UI in a browser is off ([http] ui = false or --no-web-ui)")
    return service


def _page_host(request: web.Request) -> str:
    host = request.headers.get("Host") or request.host
    if not _PAGE_HOST.fullmatch(host):
        raise ApiError(400, f"Host {host[:100]!r} cannot be written into the page")
    return host


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mailsink</title>
<link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg">
<link rel="stylesheet" href="/ui/static/css/xterm.css">
<link rel="stylesheet" href="/ui/static/page.css">
<script src="/ui/static/page.js"></script>
<script src="/ui/static/js/textual.js"></script>
</head>
<body>
<div class="dialog starting"><div class="box">mailsink: starting the UI…</div></div>
<div class="dialog closed"><div class="box">
<div>The UI has ended.</div><div class="reason" id="ended-reason"></div>
<button type="button" class="restart">Restart</button>
</div></div>
<button type="button" id="start" class="restart">Start</button>
<div id="terminal" class="textual-terminal" data-session-websocket-url="{ws_url}"
 data-font-size="{font_size}"></div>
</body>
</html>
"""

_NOTICE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mailsink</title>
<link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg">
<link rel="stylesheet" href="/ui/static/page.css">
</head>
<body>
<div class="dialog"><div class="box"><p>{text}</p>
<button type="button" class="restart">Try again</button></div></div>
<script src="/ui/static/page.js"></script>
</body>
</html>
"""


def _policy(host: str) -> str:
    return (
        f"default-src 'self'; connect-src 'self' ws://{host} wss://{host};"
        " img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self';"
        " font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def _html(body: str, host: str, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(
        {
            "Content-Security-Policy": _policy(host),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
    )
    return response


def _unavailable(request: web.Request, service: HttpService) -> str | None:
    """Why no tab can have a UI now (None: one can)."""
    if service.stopping.is_set():
        return "The server is stopping."
    if request.app[UI_SESSIONS].full(service):
        count = service.settings.http.ui_sessions
        return (
            f"All {count} UI session{'s are' if count != 1 else ' is'} in use: close a tab or"
            " raise [http] ui_sessions."
        )
    return None


async def page(request: web.Request) -> web.StreamResponse:
    service = _ui_on(request)
    host = _page_host(request)
    refusal = _unavailable(request, service)
    if refusal is not None:
        return _html(_NOTICE.format(text=html.escape(refusal)), host, 503)
    scheme = "wss" if request.secure else "ws"
    try:
        font_size = min(max(int(request.query.get("fontsize", FONT_SIZE)), 6), 64)
    except ValueError:
        raise ApiError(400, "fontsize: expected a whole number of pixels") from None
    body = _PAGE.format(
        ws_url=html.escape(f"{scheme}://{host}/ui/ws", quote=True), font_size=font_size
    )
    return _html(body, host)


async def static_file(request: web.Request) -> web.StreamResponse:
    _ui_on(request)
    found = STATIC_FILES.get(request.match_info["name"])
    if found is None:
        raise ApiError(404, "no such file")
    path, content_type = found
    # FileResponse reads and sends the file off the loop (sendfile).
    response = web.FileResponse(path, headers={"Content-Type": content_type})
    response.headers["Cache-Control"] = "max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def favicon(request: web.Request) -> web.StreamResponse:
    _ui_on(request)
    raise web.HTTPFound("/ui/static/favicon.svg")


# A download holds no page: nothing in it runs, whatever a browser makes of it.
DOWNLOAD_POLICY = "default-src 'none'; sandbox"


async def part_download(request: web.Request) -> web.StreamResponse:
    """A part of a message as a download: what a tab's `a` (save the part) does, since a UI in
    a browser writes nothing on the server's machine. {index} is the Parts tab's numbering
    (MimePart.index, message.walk() order: 0 is the message itself)."""
    _ui_on(request)
    raw_id, raw_index = request.match_info["id"], request.match_info["index"]
    if not (raw_id.isascii() and raw_id.isdigit() and raw_index.isascii() and raw_index.isdigit()):
        raise ApiError(404, "no such part")
    message_id, index = int(raw_id), int(raw_index)
    if index >= MAX_PARTS:
        raise ApiError(404, "no such part")

    def find(reader: Reader) -> tuple[bytes, str] | None:
        raw = reader.get_raw(message_id)
        payload = part_payload(raw, index) if raw is not None else None
        if raw is None or payload is None:
            return None
        name = next(
            (part.filename for part in _parts(parse_message(raw).mime) if part.index == index),
            None,
        )
        return payload, safe_filename(name, f"message-{message_id}-part-{index}.bin")

    found = await request.app[SINK].read(find)
    if found is None:
        raise ApiError(404, f"message {message_id} has no part {index} with content")
    payload, filename = found
    # The name as typed by the mail's sender, made a plain file name; quoted (RFC 6266 and
    # 5987) so that no character of it reaches the header as syntax.
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    disposition = (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename)}"
    )
    response = web.Response(body=payload, content_type="application/octet-stream")
    response.headers.update(
        {
            "Content-Disposition": disposition,
            "Content-Security-Policy": DOWNLOAD_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
    )
    return response


def _parts(root: MimePart) -> list[MimePart]:
    found, stack = [], [root]
    while stack:
        part = stack.pop()
        found.append(part)
        stack.extend(part.children)
    return found


def _size(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: expected a whole number of cells") from None
    if not 1 <= value <= MAX_SIZE:
        raise ApiError(400, f"{name}: expected 1 to {MAX_SIZE} cells")
    return value


def _child_command(request: web.Request) -> list[str]:
    sink, service = request.app[SINK], request.app[SERVICE]
    command = [sys.executable, "-m", "mailsink", "tui", "--attach", "--db", sink.path]
    source = service.settings.source
    if source is not None:
        command += ["--config", str(source)]
    return command


def _child_env(service: HttpService, width: int, height: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TEXTUAL_DRIVER": WEB_DRIVER,
            "TEXTUAL_FPS": "60",
            "TEXTUAL_COLOR_SYSTEM": "truecolor",
            "TERM_PROGRAM": "textual",
            "COLUMNS": str(width),
            "ROWS": str(height),
            URL_ENV: service.local_url,
            TOKEN_ENV: service.token,
            WEB_UI_ENV: "1",
            PARENT_PID_ENV: str(os.getpid()),
        }
    )
    return env


async def websocket(request: web.Request) -> web.StreamResponse:
    service = _ui_on(request)
    width = _size(request, "width", DEFAULT_SIZE[0])
    height = _size(request, "height", DEFAULT_SIZE[1])
    ws = web.WebSocketResponse(
        heartbeat=PING_SECONDS, max_msg_size=FRAME_LIMIT, timeout=CLOSE_SECONDS
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "expected a WebSocket upgrade (Connection: Upgrade)")
    sessions = request.app[UI_SESSIONS]
    refusal = _unavailable(request, service)
    await ws.prepare(request)
    if refusal is not None:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=_close_reason(refusal))
        return ws
    peer = request.remote or "?"
    session = UiSession(ws, peer)
    sessions.add(session, service)  # counted from now: the cap holds while it starts
    try:
        await _run_session(request, session, width, height)
    finally:
        sessions.discard(session, service)
    return ws


async def _run_session(request: web.Request, session: UiSession, width: int, height: int) -> None:
    ws = session.ws
    service = request.app[SERVICE]

    async def output(data: bytes) -> None:
        await ws.send_bytes(data)

    async def open_url(url: str, new_tab: bool) -> None:
        await ws.send_str(json.dumps(["open_url", {"url": url, "new_tab": new_tab}]))

    async def child_gone() -> None:
        await session.end_websocket()

    process = session.process = UiProcess(
        _child_command(request),
        _child_env(service, width, height),
        on_output=output,
        on_open_url=open_url,
        on_exit=child_gone,
    )
    code: int | None = None
    try:
        try:
            await process.start()
        except OSError as error:
            log.warning("UI session for %s: cannot start the UI: %s", session.peer, error)
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"cannot start the UI")
            return
        log.info("UI session started for %s (pid %s)", session.peer, process.pid)
        try:
            await _from_browser(ws, process)
        except InputBacklogged as backlog:
            log.warning(
                "UI session for %s: the UI process %s does not read its input (%s): closed",
                session.peer,
                process.pid,
                backlog,
            )
            reason = "the UI is not reading its input (stopped or stuck): tab closed"
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=_close_reason(reason))
    finally:
        code = await process.stop()
        if process.pid is not None:
            duration = time.monotonic() - session.started
            log.info(
                "UI session ended for %s (pid %s, %.1fs, exit status %s)",
                session.peer,
                process.pid,
                duration,
                code,
            )
        if not process.ready.is_set() or code not in (0, None, -15, 143):
            _report_failure(session, process, code)
        await session.end_websocket()


def _report_failure(session: UiSession, process: UiProcess, code: int | None) -> None:
    tail = process.stderr_tail
    if process.ready.is_set() and not tail:
        return
    last = visible(tail.splitlines()[-1]) if tail else "(nothing on stderr)"
    log.warning(
        "UI session for %s: the UI process %s ended with status %s: %s",
        session.peer,
        process.pid,
        code,
        last[:500],
    )


async def _from_browser(ws: web.WebSocketResponse, process: UiProcess) -> None:
    """textual.js's messages, until the tab goes (or the process has ended, which closes it).
    InputBacklogged when the process does not read what the tab sends."""
    budget = InputBudget()
    async for message in ws:
        kind: Any = None
        rest: list[Any] = []
        if message.type == WSMsgType.TEXT:  # textual.js sends text only
            try:
                envelope = json.loads(message.data)
                kind, *rest = envelope if isinstance(envelope, list) else [None]
            except RecursionError:  # "[[[[..." thousands deep: not textual.js's
                await ws.close(
                    code=WSCloseCode.INVALID_TEXT, message=b"a message nested too deeply"
                )
                return
            except ValueError:
                log.debug("UI WebSocket: a message that is not JSON")
        elif message.type != WSMsgType.BINARY:
            continue  # the end (CLOSE, ERROR), seen by the loop
        if len(message.data) > WS_MESSAGE_LIMIT:
            reason = f"a paste over {WS_MESSAGE_LIMIT // 1024} KiB: paste less at once"
            await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=_close_reason(reason))
            return
        data: Any = rest[0] if rest else None
        events = input_events(kind, data)
        if events > INPUT_EVENTS_BURST:
            # Thousands of keys at once are no keyboard's (a paste is one event), and would
            # reach the process at once however long they waited here.
            reason = f"{events} keys in one message: more than a keyboard sends"
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=_close_reason(reason))
            return
        if wait := budget.delay(message.data, events):
            if kind == "stdin" and isinstance(data, str) and _MOTION.fullmatch(data):
                # The pointer moving, over budget (a 240 Hz display sends 240 a second): the
                # next report says where it is now; queued, it would hold the keys up.
                budget.refund(message.data, events)
                continue
            if budget.flooding:
                reason = f"input faster than a UI takes it for {INPUT_BEHIND_SECONDS:g}s"
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=_close_reason(reason))
                return
            await asyncio.sleep(wait)
        if kind == "stdin" and isinstance(data, str):
            await process.send_input(data)
        elif kind == "resize" and isinstance(data, dict):
            width, height = _cells(data.get("width")), _cells(data.get("height"))
            if width and height:
                await process.resize(width, height)
        elif kind == "ping" and isinstance(data, str):
            await ws.send_str(json.dumps(["pong", data[:100]]))
        elif kind == "focus":
            await process.focus()
        elif kind == "blur":
            await process.blur()
        else:
            log.debug("UI WebSocket: message %r ignored", str(kind)[:40])


def _cells(value: Any) -> int | None:
    """A width or height textual.js sent, None for one that is no screen's."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE:
        return value
    return None
