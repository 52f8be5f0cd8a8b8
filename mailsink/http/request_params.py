"""Reading a request's parameters: each bad one is an ApiError (400) that names it, so that no
bad input reaches a handler's logic or ends as a 500."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from mailsink.errors import QueryError
from mailsink.query import Query, parse_query

# SQLite's largest integer: an id or a limit beyond it is a 400, not an overflow.
LARGEST = 2**63 - 1
# Every body but /api/v1/send's (a whole message, base64), as Mailpit caps them.
BODY_LIMIT = 5 * 1024 * 1024
# A body over this is parsed on a worker thread: megabytes of JSON take the loop for seconds.
OFF_LOOP_BODY = 64 * 1024
# Arrays and objects a body other than /api/v1/send's may hold. Each costs json.loads about
# 0.5 µs with the GIL held (worker thread or not, the loop waits), and 4.9 MB of `[[[[[]]]]]`
# is 2.2 million of them: 1.5-2 s with SMTP replies stalled. The bodies these routes take
# are flat (`{"IDs": [...], "Read": true}`, a fault rule's table of a few tables): a handful.
# 10 000 is a thousand times that, and at most ~5 ms of parsing.
CONTAINERS = 10_000
_OPENING = (b"[", b"{")
_COUNTED = 1024 * 1024
# int() would take " 5", "1_000" and other scripts' digits: a parameter is ASCII digits.
_INTEGER = re.compile(r"-?[0-9]{1,25}")
# What Go's strconv.Atoi reads: a sign, then decimal digits (no spaces, no underscores).
_GO_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
# A lone surrogate as JSON writes it (an escape) or as bytes (json.loads reads them through).
_MAY_HOLD_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    if not _INTEGER.fullmatch(raw):
        if re.fullmatch(r"-?[0-9]+", raw):  # too many digits: out of any range
            raise bad(name, f"expected {minimum} to {maximum}, got {raw[:40]}…", text=text)
        raise bad(name, f"expected a whole number, got {raw[:40]!r}", text=text)
    value = int(raw)
    if not minimum <= value <= maximum:
        raise bad(name, f"expected {minimum} to {maximum}, got {value}", text=text)
    return value


def go_int(text: str) -> int | None:
    """strconv.Atoi(text) on a 64-bit Go: a sign and decimal digits within int64, else None
    (Go's error), for the routes that fall back to a default as Mailpit and MailHog do."""
    if len(text) > 25 or not _GO_INT.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


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


def _too_large(limit: int, text: bool) -> ApiError:
    size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
    return ApiError(413, f"the body is over {size}", text=text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _without_surrogates(data: Any) -> Any:
    """Each lone surrogate in the strings (keys too) replaced by U+FFFD, as Go's decoder (and
    so Mailpit) reads them: one would fail where the text is encoded (SQLite, a log line).
    Iterative: the depth is the client's."""
    if isinstance(data, str):
        return _SURROGATE.sub("\ufffd", data)
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            fixed = {
                _SURROGATE.sub("\ufffd", key) if isinstance(key, str) else key: value
                for key, value in item.items()
            }
            item.clear()
            item.update(fixed)
            pairs: Any = item.items()
        elif isinstance(item, list):
            pairs = enumerate(item)
        else:
            continue
        for key, value in list(pairs):
            if isinstance(value, str):
                if _SURROGATE.search(value):
                    item[key] = _SURROGATE.sub("\ufffd", value)
            elif isinstance(value, dict | list):
                stack.append(value)
    return data


def _count(raw: bytes, marks: tuple[bytes, ...], start: int, end: int, bound: int) -> int:
    """How many of `marks` lie in raw[start:end], counted a MiB at a time and only until
    there are more than `bound`: no single call holds the GIL for long."""
    found = 0
    for at in range(start, end, _COUNTED):
        stop = min(at + _COUNTED, end)
        found += sum(raw.count(mark, at, stop) for mark in marks)
        if found > bound:
            break
    return found


def too_many_containers(raw: bytes, bound: int) -> bool:
    """Whether the JSON text `raw` holds over `bound` arrays and objects: checked before
    json.loads, whose time is theirs. `[` and `{` are counted at C speed; only when there are
    more than `bound` (CSS in an HTML body, a JSON document as a Text) are those inside
    strings left out, which is exact for any text json.loads reads up to its first error (and
    so for what it builds before failing)."""
    if _count(raw, _OPENING, 0, len(raw), bound) <= bound:
        return False
    # UTF-16 and -32 (json.loads reads them too) are not split on ASCII quotes: refused.
    if b"\x00" in raw[:4]:
        return True
    if b"\\" in raw:
        # Each backslash in JSON starts an escape: pairs go first, so that `\\"` still ends
        # a string; the quotes left then each open or close one.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # A body of more strings than containers allowed is refused too: each string is a
    # step of the walk below (which, in Python, lets the loop run between steps).
    if _count(raw, (b'"',), 0, len(raw), 2 * bound + 2) > 2 * bound + 2:
        return True
    found, at, inside = 0, 0, False
    while True:
        quote = raw.find(b'"', at)
        end = len(raw) if quote < 0 else quote
        if not inside:
            found += _count(raw, _OPENING, at, end, bound - found)
            if found > bound:
                return True
        if quote < 0:
            return False
        inside = not inside
        at = quote + 1


def containers_refused(bound: int) -> str:
    return f"the body holds more than {bound} JSON arrays and objects"


def _parse(raw: bytes, bound: int, text: bool) -> Any:
    if too_many_containers(raw, bound):
        raise ApiError(413, containers_refused(bound), text=text)
    # NaN and Infinity: Python reads them, JSON (and Go, and so Mailpit) does not.
    data = json.loads(raw, parse_constant=_no_constant)
    # (A body in UTF-16 or -32, which json.loads also reads, is walked whatever it holds.)
    if _MAY_HOLD_SURROGATE.search(raw) or b"\x00" in raw[:4]:
        return _without_surrogates(data)
    return data


async def json_body(
    request: web.Request,
    *,
    required: bool = True,
    text: bool = False,
    limit: int = BODY_LIMIT,
    most_containers: int = CONTAINERS,
) -> Any:
    """The body as JSON (lone surrogates replaced by U+FFFD); absent (and not `required`):
    None. Over `limit` bytes: 413 (the middleware caps every body at BODY_LIMIT). A route
    whose bodies are small says so: json.loads keeps the GIL, so that even on a worker thread
    megabytes of JSON hold the event loop (4.8 MB of numbers: 0.3 s). More than
    `most_containers` arrays and objects: 413, unparsed (see CONTAINERS)."""
    if (request.content_length or 0) > limit:
        raise _too_large(limit, text)
    raw = await request.read()
    if len(raw) > limit:
        raise _too_large(limit, text)
    if not raw.strip():
        if required:
            raise ApiError(400, "expected a JSON body", text=text)
        return None
    try:
        if len(raw) > OFF_LOOP_BODY:
            return await asyncio.to_thread(_parse, raw, most_containers, text)
        return _parse(raw, most_containers, text)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"the body is not JSON: {error}"[:200], text=text) from None
