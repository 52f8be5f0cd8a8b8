"""Reading a request's parameters: each bad one is an ApiError (400) that names it, so that no
bad input reaches a handler's logic or ends as a 500."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from mailsink.errors import QueryError
from mailsink.query import Query, parse_query

# SQLite's largest integer: an id or a limit beyond it is a 400, not an overflow.
LARGEST = 2**63 - 1


class ApiError(Exception):
    """An answer other than 2xx, phrased for the client. `text=True`: sent as text/plain, for
    the Mailpit routes on which Mailpit itself answers errors as text."""

    def __init__(self, status: int, message: str, *, text: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.text = text


def bad(name: str, problem: str, *, text: bool = False) -> ApiError:
    return ApiError(400, f"{name}: {problem}", text=text)


def integer(
    request: web.Request,
    name: str,
    default: int,
    *,
    minimum: int = 0,
    maximum: int = LARGEST,
    text: bool = False,
) -> int:
    """A whole-number query parameter (absent or empty: `default`)."""
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise bad(name, f"expected a whole number, got {raw[:40]!r}", text=text) from None
    if not minimum <= value <= maximum:
        raise bad(name, f"expected {minimum} to {maximum}, got {value}", text=text)
    return value


def path_id(request: web.Request, name: str = "id", *, text: bool = False) -> int:
    """A message or session id in the path: not a number (or out of range) is a 404, as an id
    that names nothing; Mailpit and MailHog answer an unknown id so too."""
    raw = request.match_info.get(name, "")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= LARGEST:
        raise ApiError(404, f"no message {raw[:40]!r}", text=text)
    return int(raw)


def search(request: web.Request, name: str = "query", *, text: bool = False) -> Query:
    """The search language (mailsink.query), as `mailsink list --search` takes it."""
    try:
        return parse_query(request.query.get(name, ""))
    except QueryError as error:
        raise bad(name, str(error), text=text) from None


async def json_body(request: web.Request, *, required: bool = True, text: bool = False) -> Any:
    """The body as JSON; absent (and not `required`): None."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "expected a JSON body", text=text)
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"the body is not JSON: {error}"[:200], text=text) from None
