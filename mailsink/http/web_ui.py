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
from pathlib import Path
from typing import Any

import textual_serve
from aiohttp import WSCloseCode, WSMsgType, web

from mailsink.http.request_params import ApiError
from mailsink.http.ui_process import PARENT_PID_ENV, WEB_UI_ENV, UiProcess
from mailsink.http.web_service import SERVICE, SINK, HttpService
from mailsink.server_link import TOKEN_ENV, URL_ENV
from mailsink.text import visible

log = logging.getLogger("mailsink")

UI_SESSIONS: web.AppKey[UiSessions] = web.AppKey("ui_sessions")
# cli.WEB_DRIVER (not imported: the CLI module is the click group, heavy to import here).
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"
FONT_SIZE = 16
DEFAULT_SIZE = (80, 24)
MAX_SIZE = 1000  # columns or rows: more is no screen
WS_MESSAGE_LIMIT = 1024 * 1024  # a paste of a megabyte is a lot already
PING_SECONDS = 15.0

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

    async def close_all(self) -> None:
        await asyncio.gather(*(session.close() for session in list(self.open)))


class UiSession:
    """One tab: its WebSocket and its UI process."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.process: UiProcess | None = None
        self.started = time.monotonic()

    async def close(self) -> None:
        """Ends the process (bounded, see UiProcess.stop) and the WebSocket."""
        if self.process is not None:
            await self.process.stop()
        if not self.ws.closed:
            await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"mailsink UI ended")


# The UI's routes: not the API's (OpenAPI does not list them).
UI_PATHS = ("/", "/ui/ws", "/ui/static/{name}", "/favicon.ico")


def install(app: web.Application) -> None:
    """Add the UI's routes to the service's app."""
    app[UI_SESSIONS] = UiSessions()
    app.router.add_get("/", page)
    app.router.add_get("/ui/ws", websocket)
    app.router.add_get("/ui/static/{name:.+}", static_file)
    app.router.add_get("/favicon.ico", favicon)


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
<div>The UI has ended.</div><button type="button" class="restart">Restart</button>
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
    ws = web.WebSocketResponse(heartbeat=PING_SECONDS, max_msg_size=WS_MESSAGE_LIMIT)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "expected a WebSocket upgrade (Connection: Upgrade)")
    sessions = request.app[UI_SESSIONS]
    refusal = _unavailable(request, service)
    await ws.prepare(request)
    if refusal is not None:
        # A close frame's reason has room for 123 bytes.
        reason = refusal.encode()[:123].decode("utf-8", "ignore").encode()
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason)
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
        if not ws.closed:
            await ws.close(code=WSCloseCode.OK, message=b"mailsink UI ended")

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
        await _from_browser(ws, process)
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
        if not ws.closed:
            await ws.close(code=WSCloseCode.OK, message=b"mailsink UI ended")


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
    """textual.js's messages, until the tab goes (or the process has ended, which closes it)."""
    async for message in ws:
        if message.type != WSMsgType.TEXT:
            continue  # textual.js sends text only
        try:
            envelope = json.loads(message.data)
            kind, *rest = envelope if isinstance(envelope, list) else [None]
        except ValueError:
            log.debug("UI WebSocket: a message that is not JSON")
            continue
        data: Any = rest[0] if rest else None
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
