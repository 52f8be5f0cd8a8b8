"""The CLI's client of a running mailsink's HTTP API (`mailsink wait --url`, `mailsink faults`):
JSON over the standard library's urllib, so the commands need nothing the server does not.

A URL may carry HTTP Basic credentials (`http://ci:secret@127.0.0.1:8025`); they are sent as an
Authorization header and never shown again: every message names the URL without them
(`shown_url`, `ApiTarget.base`).

Every request ends by a deadline the caller gives, whatever the server does: a server that
takes the request and says nothing, or sends its answer a byte at a time, is cut off then
(`NoAnswer`). Redirects are not followed (a mailsink never redirects, and following one would
send the credentials to wherever it points): a 3xx is not a mailsink answer.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8025"
# What an answer may hold: a wait's 1000 summaries are a few MB; more is not mailsink talking.
ANSWER_LIMIT = 64 * 1024 * 1024
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
# The characters that end a URL's user:password early, or are read as an escape in it.
RESERVED_IN_CREDENTIALS = "@ : / ? # % and spaces"


def basic_authorization(user: str, password: str) -> str:
    """The Authorization header of HTTP Basic auth (UTF-8, as the server's realm says)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def shown_url(url: str) -> str:
    """`url` as a message may show it: whatever comes before its last `@` (the user:password,
    however mangled by a character it should have had percent-encoded) is `***`."""
    scheme, separator, rest = url.strip().partition("://")
    if not separator:
        scheme, rest = "", url.strip()
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{separator}{rest}"


class Unreachable(Exception):
    """Nothing answered at the address (refused, reset, closed before answering): a server not
    listening yet, or gone."""


class ApiFailure(Exception):
    """An answer that is an error (`status`), or no usable answer at all (`status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NoAnswer(ApiFailure):
    """The request's deadline passed before a whole answer came: the server took the request
    and said nothing, or too slowly."""


def not_mailsink(why: str, status: int | None = None) -> ApiFailure:
    """An answer that cannot be a mailsink's (`not a mailsink answer: …`)."""
    return ApiFailure(f"not a mailsink answer: {why}", status)


@dataclass(frozen=True)
class ApiTarget:
    base: str  # scheme://host:port[/prefix], without credentials: what messages show
    authorization: str | None  # the Authorization header the URL's credentials make
    loopback: bool

    @classmethod
    def parse(cls, url: str) -> ApiTarget:
        """ValueError, in words for the user (the URL shown without its credentials), for
        anything that is not an http(s) base URL."""
        shown = repr(shown_url(url))
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{shown} is not an HTTP URL; expected http://HOST:PORT")
        if "@" in parts.path + parts.query + parts.fragment:
            # `http://ci:a/b@host`: the host part ended at the password's `/` (or ? #).
            raise ValueError(
                f"{shown}: the user:password holds a character that ends the host part:"
                f" percent-encode {RESERVED_IN_CREDENTIALS} in it (/ is %2F, # is %23)"
            )
        if not parts.hostname:
            raise ValueError(f"{shown} is not an HTTP URL; expected http://HOST:PORT")
        if parts.query or parts.fragment:
            raise ValueError(f"{shown}: give the server's base URL, without ?query or #fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{shown}: the port is not a number 0-65535") from None
        host = parts.hostname
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            authorization = basic_authorization(user, urllib.parse.unquote(parts.password or ""))
        # (a prefix as typed, `/mail box/é`, percent-encoded: a request line is ASCII)
        prefix = urllib.parse.quote(parts.path.rstrip("/"), safe="/%!$&'()*+,;=:@-._~")
        base = urllib.parse.urlunsplit((parts.scheme, netloc, prefix, "", ""))
        return cls(base, authorization, host.lower() in _LOOPBACK or host.startswith("127."))

    def request(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        body: Any = None,
        accept: tuple[int, ...] = (200, 201),
    ) -> tuple[int, Any]:
        """(status, the answer's JSON) for a status in `accept`, the whole answer read by
        `deadline` (time.monotonic()); NoAnswer after it. ApiFailure for any other status (its
        message the server's `error`) or an answer that is not a mailsink's JSON; Unreachable
        when nothing answers."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        if self.authorization:
            headers["Authorization"] = self.authorization
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        cutoff = _Cutoff(deadline)
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirects(),
            _CutOffHTTPHandler(cutoff),
            _CutOffHTTPSHandler(cutoff),
        ]
        if self.loopback:
            # A proxy from the environment (HTTP_PROXY in CI) cannot reach this machine's loopback.
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)
        with cutoff:
            try:
                try:
                    with opener.open(request, timeout=cutoff.left()) as answer:
                        status, raw = answer.status, answer.read(ANSWER_LIMIT + 1)
                except urllib.error.HTTPError as error:
                    with error:
                        status, raw = error.code, error.read(ANSWER_LIMIT + 1)
            except urllib.error.URLError as error:
                raise self._unreached(error.reason, cutoff) from None
            except (http.client.HTTPException, OSError) as error:  # mid-answer
                raise self._unreached(error, cutoff) from None
        if cutoff.expired:  # (a read the cut-off ended early looks like a short answer)
            raise self._no_answer(cutoff)
        return self._answer(status, raw, accept)

    def _no_answer(self, cutoff: _Cutoff) -> NoAnswer:
        if not cutoff.connected:
            return NoAnswer(f"{self.base} did not take the connection")
        return NoAnswer(f"{self.base} took the request but sent no whole answer")

    def _unreached(self, reason: object, cutoff: _Cutoff) -> Exception:
        if cutoff.expired or isinstance(reason, TimeoutError):
            return self._no_answer(cutoff)
        if isinstance(reason, ConnectionRefusedError):
            return Unreachable("connection refused")
        if isinstance(reason, ConnectionResetError | http.client.RemoteDisconnected):
            return Unreachable("the connection was closed before an answer")
        if isinstance(reason, socket.gaierror):
            return ApiFailure(f"unknown host: {reason.strerror or reason}")
        if isinstance(reason, OSError):
            return ApiFailure(reason.strerror or str(reason))
        return ApiFailure(str(reason))

    def _answer(self, status: int, raw: bytes, accept: tuple[int, ...]) -> tuple[int, Any]:
        if len(raw) > ANSWER_LIMIT:
            raise not_mailsink(f"an answer over {ANSWER_LIMIT // 2**20} MiB", status)
        if 300 <= status < 400:
            raise not_mailsink(
                f"HTTP {status}, a redirect (a mailsink never redirects: give its own URL)",
                status,
            )
        try:
            data = strict_json(raw) if raw.strip() else None
        except ValueError as not_json:
            if status in accept:
                raise not_mailsink(f"HTTP {status}, {not_json}", status) from None
            data = None
        if status in accept:
            return status, data
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, str):  # not mailsink's JSON error: the text's first line
            text = raw.decode("utf-8", "replace").strip().split("\n", 1)[0][:200]
            error = f"HTTP {status}" + (f": {text}" if text else "")
        elif status == 401:
            error += " (give user:password in the URL: http://USER:PASSWORD@HOST:PORT)"
        raise ApiFailure(error, status)


def strict_json(raw: bytes | str) -> Any:
    """JSON as a mailsink writes it: ValueError (in words) for what is not JSON, for NaN and
    numbers out of a float's range (Python's parser takes both), and for nesting too deep
    for the parser (its RecursionError)."""

    def constant(name: str) -> Any:
        raise _Refused(f"{name} is not a JSON number")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _Refused(f"the number {text[:40]} is out of range")
        return value

    try:
        return json.loads(raw, parse_constant=constant, parse_float=number)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except _Refused as error:
        raise ValueError(str(error)) from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise ValueError(f"not JSON ({error.msg}: {where})") from None
    except ValueError:  # (not UTF-8, an integer of over 4300 digits)
        raise ValueError("not JSON") from None


class _Refused(ValueError):
    """What strict_json refuses that Python's JSON parser would take."""


# ---- what an answer must hold: what the commands print is what a mailsink sends, checked

Check = tuple[Callable[[Any], bool], str]  # (is it right, what it should be in words)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


WHOLE: Check = (_whole, "a whole number")
WHOLE_OR_NULL: Check = (lambda value: value is None or _whole(value), "a whole number or null")
NUMBER: Check = (_number, "a number")
TEXT: Check = (lambda value: isinstance(value, str), "a string")
TEXT_OR_NULL: Check = (lambda value: value is None or isinstance(value, str), "a string or null")
TEXTS: Check = (_texts, "a list of strings")
FLAG: Check = (lambda value: isinstance(value, bool), "true or false")
TABLE: Check = (lambda value: isinstance(value, dict), "a JSON object")


def shape_problem(
    data: Any, checks: Mapping[str, Check], *, optional: Collection[str] = ()
) -> str | None:
    """What in `data` is not as a mailsink's JSON object of that kind (`checks`: key → Check)
    is, in words (`'id' is true, not a whole number`); None when all is. Keys in `optional`
    may be left out; keys not in `checks` are let through."""
    if not isinstance(data, dict):
        return "not a JSON object"
    for key, (valid, words) in checks.items():
        if key not in data:
            if key in optional:
                continue
            return f"no {key!r}"
        if not valid(data[key]):
            shown = json.dumps(data[key])
            shown = shown if len(shown) <= 40 else shown[:39] + "…"
            return f"{key!r} is {shown}, not {words}"
    return None


class _Cutoff:
    """Ends a request at its deadline, whatever the server does. A socket's timeout bounds
    each read, so a server sending a byte a second is never timed out by it: at the deadline
    the connection's socket is shut down instead (from a timer thread), which ends whatever
    read is blocked on it. Connecting is bounded by the socket's timeout, the time left."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True

    @property
    def connected(self) -> bool:
        return bool(self._sockets)

    def left(self) -> float:
        # (a timeout of 0 would make the socket non-blocking: the least is a millisecond)
        return max(0.001, self.deadline - time.monotonic())

    def guard(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def __enter__(self) -> _Cutoff:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, ValueError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


class _CutOff:
    """A connection whose socket the deadline's timer may shut (mixed in before http.client's)."""

    def __init__(self, *args: Any, cutoff: _Cutoff, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cutoff = cutoff

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._cutoff.guard(self.sock)  # type: ignore[attr-defined]


class _CutOffHTTPConnection(_CutOff, http.client.HTTPConnection):
    pass


class _CutOffHTTPSConnection(_CutOff, http.client.HTTPSConnection):
    pass


class _CutOffHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, cutoff: _Cutoff) -> None:
        super().__init__()
        self._cutoff = cutoff

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_CutOffHTTPConnection, cutoff=self._cutoff), req)


class _CutOffHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, cutoff: _Cutoff) -> None:
        super().__init__()
        self._cutoff = cutoff

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_CutOffHTTPSConnection, cutoff=self._cutoff)
        return self.do_open(connection, req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is handed back as it is (an HTTPError), never followed."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None
