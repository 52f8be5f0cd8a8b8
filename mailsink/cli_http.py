"""The CLI's client of a running mailsink's HTTP API (`mailsink wait --url`, `mailsink faults`):
JSON over the standard library's urllib, so the commands need nothing the server does not.

A URL may carry HTTP Basic credentials (`http://ci:secret@127.0.0.1:8025`); they are sent as an
Authorization header and never shown again (errors name the URL without them).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8025"
# What an answer may hold: a wait's 1000 summaries are a few MB; more is not mailsink talking.
ANSWER_LIMIT = 64 * 1024 * 1024
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def basic_authorization(user: str, password: str) -> str:
    """The Authorization header of HTTP Basic auth (UTF-8, as the server's realm says)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Unreachable(Exception):
    """Nothing answered at the address (refused, reset, closed before answering): a server not
    listening yet, or gone."""


class ApiFailure(Exception):
    """An answer that is an error (`status`), or no usable answer at all (`status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ApiTarget:
    base: str  # scheme://host:port[/prefix], without credentials: what messages show
    authorization: str | None  # the Authorization header the URL's credentials make
    loopback: bool

    @classmethod
    def parse(cls, url: str) -> ApiTarget:
        """ValueError, in words for the user, for anything that is not an http(s) base URL."""
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an HTTP URL; expected http://HOST:PORT")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: give the server's base URL, without ?query or #fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number 0-65535") from None
        host = parts.hostname
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            authorization = basic_authorization(user, urllib.parse.unquote(parts.password or ""))
        base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return cls(base, authorization, host.lower() in _LOOPBACK or host.startswith("127."))

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        timeout: float = 30.0,
        accept: tuple[int, ...] = (200, 201),
    ) -> tuple[int, Any]:
        """(status, the answer's JSON) for a status in `accept`; ApiFailure for any other status
        (its message the server's `error`) or an answer that is not JSON; Unreachable when
        nothing answers."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.authorization:
            headers["Authorization"] = self.authorization
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        # A proxy from the environment (HTTP_PROXY in CI) cannot reach this machine's loopback.
        handlers = [urllib.request.ProxyHandler({})] if self.loopback else []
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=timeout) as answer:
                return self._answer(answer.status, answer.read(ANSWER_LIMIT + 1), accept)
        except urllib.error.HTTPError as error:
            with error:
                return self._answer(error.code, error.read(ANSWER_LIMIT + 1), accept)
        except urllib.error.URLError as error:
            raise self._unreached(error.reason) from None
        except (http.client.HTTPException, OSError) as error:  # mid-answer
            raise self._unreached(error) from None

    def _unreached(self, reason: object) -> Exception:
        if isinstance(reason, ConnectionRefusedError):
            return Unreachable("connection refused")
        if isinstance(reason, ConnectionResetError | http.client.RemoteDisconnected):
            return Unreachable("the connection was closed before an answer")
        if isinstance(reason, TimeoutError):
            return ApiFailure("no answer in time")
        if isinstance(reason, socket.gaierror):
            return ApiFailure(f"unknown host: {reason.strerror or reason}")
        if isinstance(reason, OSError):
            return ApiFailure(reason.strerror or str(reason))
        return ApiFailure(str(reason))

    def _answer(self, status: int, raw: bytes, accept: tuple[int, ...]) -> tuple[int, Any]:
        if len(raw) > ANSWER_LIMIT:
            raise ApiFailure(f"an answer over {ANSWER_LIMIT // 2**20} MiB", status)
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError:
            data = None
            if status in accept:
                raise ApiFailure(
                    f"HTTP {status} but not JSON: is this a mailsink?", status
                ) from None
        if status in accept:
            return status, data
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, str):  # not mailsink's JSON error: the text's first line
            text = raw.decode("utf-8", "replace").strip().split("\n", 1)[0][:200]
            error = f"HTTP {status}" + (f": {text}" if text else "")
        elif status == 401:
            error += " (give user:password in the URL: http://USER:PASSWORD@HOST:PORT)"
        raise ApiFailure(error, status)
