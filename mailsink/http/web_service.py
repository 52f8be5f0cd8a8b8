"""HttpService: the HTTP API's listener on the sink's event loop (aiohttp's AppRunner), with
HTTP Basic auth when `[http] users` is set and every error answered as JSON (or text where
Mailpit answers text), never a traceback.

The routes are the tables of mailpit_api, mailhog_api and native_api; each handler finds the
sink as `request.app[SINK]` and the service as `request.app[SERVICE]`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import re
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aiohttp import web

from mailsink.config import Settings, is_loopback
from mailsink.errors import ListenError, MailsinkError
from mailsink.http.request_params import BODY_LIMIT, ApiError
from mailsink.http.routing import ApiRoute, ApiRoutes, install
from mailsink.server_link import (
    ServerAddress,
    new_token,
    remove_server_file,
    write_server_file,
)
from mailsink.store.schema import MEMORY

if TYPE_CHECKING:
    from mailsink.sink import Sink

log = logging.getLogger("mailsink")
T = TypeVar("T")

SINK: web.AppKey[Sink] = web.AppKey("sink")
SERVICE: web.AppKey[HttpService] = web.AppKey("service")
ROUTES: web.AppKey[list[ApiRoute]] = web.AppKey("routes")
REALM = "mailsink"
# Room for a JSON /api/v1/send of the largest message SMTP takes: base64 is 4/3 of the bytes.
JSON_OVERHEAD = 1.4
JSON_SLACK = 256 * 1024
# How long a stop waits for answers in progress (long-lived streams are ended at once).
SHUTDOWN_SECONDS = 2.0
# How long a start beyond loopback waits for this machine's full name (getfqdn asks DNS).
OWN_NAME_SECONDS = 2.0
# BODY_LIMIT caps every body but these (a whole message, base64).
UNCAPPED = {("POST", "/api/v1/send")}
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_json(data: Any) -> bytes:
    """Compact JSON in UTF-8, non-ASCII kept as it is (the clients decode UTF-8). A lone
    surrogate (a byte of a header that was not UTF-8, kept by surrogateescape) is written as
    its \\uXXXX escape: still valid UTF-8 and valid JSON, decoding to the same string. NaN and
    infinities are refused (ValueError): no JSON parser reads them."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8")


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    """`encode_json(data)` as the answer; for what may be megabytes, `json_off_loop`."""
    return _json_bytes(encode_json(data), status, headers)


def _json_bytes(body: bytes, status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="application/json", charset="utf-8", headers=headers
    )


async def json_off_loop(data: Any, status: int = 200, **headers: str) -> web.Response:
    """As json_response, encoded on a worker thread: a message's text or a long list is
    megabytes, whose encoding would hold SMTP's replies up on the loop."""
    return _json_bytes(await asyncio.to_thread(encode_json, data), status, headers)


def error_response(status: int, message: str, *, text: bool = False) -> web.Response:
    if text:
        return web.Response(text=message, status=status, content_type="text/plain")
    return json_response({"error": message}, status)


class PerSink(Generic[T]):
    """One `make()` per sink, kept while the sink lives: what a family of routes keeps
    between requests (summaries, counts), used on that sink's reader thread."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[Any, T] = weakref.WeakKeyDictionary()

    def __call__(self, sink: Any) -> T:
        found = self._made.get(sink)
        if found is None:
            found = self._made[sink] = self._make()
        return found


def route_tables() -> list[ApiRoutes]:
    """Every family of routes, in the order OpenAPI lists them."""
    from mailsink.http import (
        live_api,
        mailhog_api,
        mailpit_api,
        mailpit_chaos,
        mailpit_send,
        native_api,
        native_faults,
        native_release,
        openapi,
    )

    return [
        mailpit_api.routes,
        mailpit_send.routes,
        mailpit_chaos.routes,
        mailhog_api.routes,
        native_api.routes,
        native_release.routes,
        native_faults.routes,
        live_api.routes,
        openapi.routes,
    ]


class HttpService:
    """Start with `await start()`, end with `await stop()` (Sink.serving does both)."""

    def __init__(self, sink: Sink, settings: Settings) -> None:
        self.sink = sink
        self.settings = settings
        self.app = build_app(sink, self)
        self.runner: web.AppRunner | None = None
        self.host = settings.http.host
        self.port = 0
        # This machine's own names, which a Host header may carry on a bind beyond loopback:
        # looked up when the service starts, on a worker thread (getfqdn may ask DNS).
        self.own_names: frozenset[str] = frozenset()
        # Set when the service stops: long-lived answers (events, waits) end on it.
        self.stopping = asyncio.Event()
        # Closers of open WebSockets and event streams (and browser tabs' UI processes),
        # called on stop.
        self.streams: set[Callable[[], Awaitable[Any]]] = set()
        # Authenticates as `[http] users` would (Authorization: Bearer): what this server's own
        # UI processes and attached TUIs use (mailsink.server_link), never logged.
        self.token = new_token()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def local_url(self) -> str:
        """The URL a process on this machine connects to: a wildcard bind's loopback address."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def apply_settings(self, settings: Settings) -> None:
        """A reload: `[http] users` and `allowed_hosts` apply to the next request; host and port
        need a restart. A change of either also ends the open event streams, which were let in
        as the old ones said: a client reconnects, and is let in as the new ones say."""
        old, new = self.settings.http, settings.http
        changed = (old.users, old.allowed_hosts) != (new.users, new.allowed_hosts)
        self.settings = settings
        if changed and self.streams:
            task = asyncio.get_running_loop().create_task(self._close_streams())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif old.ui and not new.ui:  # the open tabs' UIs end too, not only the next requests
            from mailsink.http.web_ui import close_tabs

            task = asyncio.get_running_loop().create_task(close_tabs(self.app))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_streams(self) -> None:
        for close in list(self.streams):
            try:
                await close()
            except Exception as error:  # a client already gone
                log.debug("closing a stream: %s", error)

    async def start(self) -> None:
        http = self.settings.http
        self.runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await self.runner.setup()
        if not is_loopback(http.host):
            self.own_names = await _own_names()
        site = web.TCPSite(self.runner, http.host, http.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await self.runner.cleanup()
            self.runner = None
            raise ListenError(
                f"cannot listen on {http.host}:{http.port} (HTTP): {error.strerror or error}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else http.port
        log.info("HTTP API on %s", self.url)
        if self.sink.path != MEMORY:  # where attached UIs find this server (server_link)
            address = ServerAddress(self.local_url, self.token)
            await asyncio.to_thread(write_server_file, self.sink.path, address)
        if not is_loopback(http.host):
            log.warning(
                "HTTP listens on %s: reachable from other machines%s",
                http.host,
                "" if http.users else " without a password ([http] users)",
            )

    async def stop(self) -> None:
        self.stopping.set()
        if self.port and self.sink.path != MEMORY:
            await asyncio.to_thread(remove_server_file, self.sink.path)
        await self._close_streams()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _authorized(header: str, users: dict[str, str]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        # b64decode refuses a non-ASCII str with a ValueError: a 401, as any bad password.
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        login, _, password = decoded.partition(":")
    except (binascii.Error, ValueError):
        return False
    expected = users.get(login)
    # compare_digest: the time taken says nothing of how much of the password was right.
    return expected is not None and hmac.compare_digest(
        expected.encode("utf-8", "surrogateescape"), password.encode("utf-8", "surrogateescape")
    )


def _bearer(header: str, token: str) -> bool:
    """The server's own token (mailsink.server_link), as its UI processes send it."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    )


async def _own_names() -> frozenset[str]:
    """gethostname(), and getfqdn() unless a resolver that does not answer would hold the start
    up for longer than OWN_NAME_SECONDS (then the host name alone; a warning says so)."""
    names = {await asyncio.to_thread(socket.gethostname)}
    try:
        names.add(await asyncio.wait_for(asyncio.to_thread(socket.getfqdn), OWN_NAME_SECONDS))
    except TimeoutError:
        log.warning(
            "HTTP: this machine's full name was not found within %gs; Host %r is served,"
            " add others to [http] allowed_hosts",
            OWN_NAME_SECONDS,
            *names,
        )
    return frozenset(name.lower().removesuffix(".") for name in names if name)


_BRACKETED_AUTHORITY = re.compile(r"\[([0-9a-f:.]+)\](?::[0-9]*)?")
_PORT = re.compile(r"[0-9]*")


def _hostname(authority: str) -> str | None:
    """The host of a Host header or of a URL's authority, lower-case, without port or [];
    None for one no browser sends: empty, text after an IPv6 address's `]` other than :PORT,
    a zone (`[::1%eth0]`, which could name anything after its `%`)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        bracketed = _BRACKETED_AUTHORITY.fullmatch(authority)
        try:  # only an IPv6 address goes in brackets ([dead.beef] is no name's spelling)
            return str(ipaddress.IPv6Address(bracketed[1])) if bracketed else None
        except ValueError:
            return None
    if authority.count(":") == 1:
        authority, _, port = authority.partition(":")
        if not _PORT.fullmatch(port):
            return None
    return authority or None


def _is_own_name(name: str, service: HttpService) -> bool:
    """Whether `name` (a Host header's, without port) names this server: what a browser sends
    for a page at this server, and not for a page of a name that someone else's DNS could point
    at this server (DNS rebinding). Any IP address (a browser sends one only for a page that is
    at that address), `localhost` and `*.localhost` (browsers resolve them to loopback
    themselves), the address the server is bound to, this machine's own names, and the names of
    `[http] allowed_hosts`. A loopback bind is as strict as before allowed_hosts: loopback
    addresses, localhost names and the bound name, then allowed_hosts alone."""
    name = name.removesuffix(".")  # an absolute name is the same name
    loopback_bind = is_loopback(service.host)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if name == "localhost" or name.endswith(".localhost") or name == service.host.lower():
            return True
        if not loopback_bind and name in service.own_names:
            return True
    else:
        if address.is_loopback or not loopback_bind:
            return True
        name = str(address)  # as allowed_host spells an address
    return any(
        name == allowed or (allowed.startswith("*.") and _under(name, allowed[1:]))
        for allowed in service.settings.http.allowed_hosts
    )


def _under(name: str, suffix: str) -> bool:
    """Whether `name` is a name under the domain of `suffix` (".example.test")."""
    return name.endswith(suffix) and len(name) > len(suffix) and name[-len(suffix) - 1] != "."


def _foreign(request: web.Request, service: HttpService) -> str | None:
    """Why a request comes from somewhere it may not (None: it may). As Mailpit: a browser's
    request (it sends Origin, WebSocket upgrades too) from a page of another origin is refused,
    as the page could otherwise add fault rules or read mail; a client that sends no Origin
    (curl, a test) passes. A Host that is not one of this server's names is refused too: a
    DNS-rebound name (evil.example resolving to 127.0.0.1) makes a page same-origin. A request
    without Host (HTTP/1.0; no browser sends one) passes, as it did; an empty one does not."""
    host = request.headers.get("Host")
    name = None if host is None else _hostname(host)
    if host is not None and (name is None or not _is_own_name(name, service)):
        where = (
            " (on loopback it answers to localhost and loopback addresses)"
            if is_loopback(service.host)
            else ""
        )
        return (
            f"Host {host[:100]!r} is not one of this server's names{where}:"
            " add it to [http] allowed_hosts (or --http-allowed-host)"
        )
    # A browser says where a request comes from even when it sends no Origin (a form's POST
    # from another site in some browsers): nothing another site's page asks for changes state.
    fetched_from = request.headers.get("Sec-Fetch-Site", "").lower()
    if request.method not in _SAFE_METHODS and fetched_from in ("cross-site", "same-site"):
        return f"blocked: a {fetched_from} request may not {request.method} here"
    origin = request.headers.get("Origin")
    if origin is not None:
        rest = origin.partition("://")[2]
        authority = rest.partition("/")[0]
        if not authority or authority.lower() != (host or "").strip().lower():
            return f"blocked: Origin {origin[:100]!r} is not this server's ({(host or '')[:100]!r})"
    return None


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Auth first, then the handler; whatever goes wrong becomes an answer the client can read
    (the traceback goes to the debug log only)."""
    service = request.app[SERVICE]
    refusal = _foreign(request, service)
    if refusal:
        log.warning("HTTP %s %s refused: %s", request.method, request.path, refusal)
        return error_response(403, refusal)
    users = service.settings.http.users
    authorization = request.headers.get("Authorization", "")
    if users and not (_bearer(authorization, service.token) or _authorized(authorization, users)):
        response = error_response(401, "authentication required")
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
        return response
    try:
        if request.method in _BODY_METHODS and (request.method, request.path) not in UNCAPPED:
            if (request.content_length or 0) > BODY_LIMIT:
                raise ApiError(413, f"the body is over {BODY_LIMIT // (1024 * 1024)} MiB")
            # read() and json_body stop at it, a chunked body too.
            request = request.clone(client_max_size=BODY_LIMIT)
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.message, text=error.text)
    except web.HTTPException as error:
        if error.status < 400:
            raise  # a redirect
        # aiohttp's own: no such route (404), method not allowed (405), body too large (413)
        response = error_response(error.status, error.reason)
        if error.status == 405 and "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except MailsinkError as error:  # the store locked or its writer gone: the sink's words
        log.warning("HTTP %s %s: %s", request.method, request.path, error)
        return error_response(503, str(error))
    except Exception as error:
        log.error("HTTP %s %s failed: %s", request.method, request.path, error)
        log.debug("HTTP handler failure", exc_info=True)
        return error_response(500, f"internal error: {type(error).__name__}")


def build_app(sink: Sink, service: HttpService) -> web.Application:
    """The aiohttp application with every route; tests and the OpenAPI check build it too."""
    limit = int(service.settings.smtp.max_message_size * JSON_OVERHEAD) + JSON_SLACK
    app = web.Application(middlewares=[_guard], client_max_size=limit)
    app[SINK] = sink
    app[SERVICE] = service
    app[ROUTES] = install(app, *route_tables())
    # The UI in a browser (its routes answer 404 while `[http] ui` is off: a reload may turn it
    # on or off). Not API routes: OpenAPI does not list them.
    from mailsink.http import web_ui

    web_ui.install(app)
    return app
