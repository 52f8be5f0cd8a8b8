"""mailsink's own API for messages and sessions, under /api/mailsink/: the same JSON as the
CLI's `list --json`, `show --json`, `sessions --json` and `session ID --json` (the functions
that make it are theirs), plus what only a server has: live sessions, with their transcript so
far.

A raw message is streamed from the store a piece at a time (each read on the reader thread),
so a download holds one piece, however large the message or slow the client; large JSON is
made and encoded on the sink's reader thread, off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from mailsink.events import LiveSession
from mailsink.http.request_params import ApiError, bad, integer, json_body, path_id, search
from mailsink.http.routing import ApiRoutes, Param
from mailsink.http.web_service import SINK, encode_json, json_response
from mailsink.output import message_json
from mailsink.sink import live_record
from mailsink.store.reader import Reader

log = logging.getLogger("mailsink")

routes = ApiRoutes("mailsink")

MAX_MESSAGES = 10_000  # in one list answer: past it, page with before_id
MAX_SESSIONS = 1_000  # each session is a few reads
PIECE = 1024 * 1024  # of a raw message, read from the store at a time
PUT_KEYS: dict[str, type] = {"read": bool, "add_tags": list, "remove_tags": list}
PUT_LIMIT = 256 * 1024  # bytes of a PUT's body: a thousand tags of a hundred characters

_ID = Param("id", "integer", "the message's id", where="path", required=True)
_SESSION_ID = Param("id", "integer", "the session's id", where="path", required=True)


def _answer(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


async def _json_off_loop(request: web.Request, make: Callable[[], Any]) -> web.Response:
    """JSON of a body that may be megabytes (a message's text, a transcript): `make()` builds
    it, and it is encoded, on the reader thread."""
    return _answer(await request.app[SINK].read(lambda _reader: encode_json(make())))


async def stream_stored(
    request: web.Request,
    message_id: int,
    headers: Mapping[str, str] | None = None,
    *,
    missing: ApiError | None = None,
) -> web.StreamResponse:
    """Message `message_id` byte for byte as message/rfc822 (or `headers`' Content-Type), read
    from the store a PIECE at a time: a 25 MB message costs a piece per download, and a
    stalled client holds one. No such message: `missing`, else a JSON 404."""
    sink = request.app[SINK]
    first = await sink.read(Reader.raw_piece, message_id, 0, PIECE)
    if first is None:
        raise missing or ApiError(404, f"no message {message_id}")
    length, piece = first
    response = web.StreamResponse(headers={"Content-Type": "message/rfc822", **(headers or {})})
    response.content_length = length
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        sent = 0
        while True:
            await response.write(piece)
            sent += len(piece)
            if sent >= length or not piece:
                break
            following = await sink.read(Reader.raw_piece, message_id, sent, PIECE)
            if following is None:  # deleted while it went out: cut short, as it is not whole
                log.debug("HTTP %s: message %d deleted while sent", request.path, message_id)
                if request.transport is not None:
                    request.transport.close()
                return response
            piece = following[1]
        await response.write_eof()
    except (ConnectionError, ClientConnectionResetError) as error:
        log.debug("HTTP %s: the client left: %s", request.path, error)
    return response


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise bad(name, f"expected 1 or 0, got {raw[:40]!r}")


def _session_id(request: web.Request) -> int:
    try:
        return path_id(request)
    except ApiError:
        raise ApiError(404, f"no session {request.match_info.get('id', '')[:40]!r}") from None


async def known_message(request: web.Request) -> int:
    message_id = path_id(request)
    if await request.app[SINK].message(message_id) is None:
        raise ApiError(404, f"no message {message_id}")
    return message_id


# ---- messages


@routes.get(
    "/api/mailsink/messages",
    "Messages, newest first: the JSON of `mailsink list --json`",
    params=[
        Param("query", "string", "the search language (README, Search), as `list --search`"),
        Param("limit", "integer", f"how many (default 50, at most {MAX_MESSAGES})"),
        Param("before_id", "integer", "only messages with a smaller id (the next page)"),
    ],
    responses={"400": "a parameter is malformed (the error names it)"},
)
async def list_messages(request: web.Request) -> web.StreamResponse:
    query = search(request, "query")
    limit = integer(request, "limit", 50, minimum=1, maximum=MAX_MESSAGES)
    before = integer(request, "before_id", 0, minimum=1)

    def page(reader: Any) -> bytes:
        records = reader.list_messages(limit=limit, query=query or None, below=before)
        return encode_json([record.summary_json() for record in records])

    return _answer(await request.app[SINK].read(page))


@routes.get(
    "/api/mailsink/messages/{id}",
    "One message: the JSON of `mailsink show --json` (marks it read, as show does)",
    params=[_ID],
    responses={"404": "no such message"},
)
async def get_message(request: web.Request) -> web.StreamResponse:
    sink = request.app[SINK]
    message_id = path_id(request)
    record = await sink.message(message_id)
    if record is None:
        raise ApiError(404, f"no message {message_id}")
    parsed = await sink.parsed(message_id)
    if parsed is None:  # deleted in between
        raise ApiError(404, f"no message {message_id}")
    # HEAD has no side effect: only a GET reads the message.
    if request.method == "GET" and not record.seen and await sink.mark_read([message_id]):
        record.seen = True
    releases = await sink.releases(message_id)  # (as `show --json` has them)
    return await _json_off_loop(request, lambda: message_json(record, parsed, releases))


@routes.get(
    "/api/mailsink/messages/{id}/raw",
    "The message exactly as received (message/rfc822, streamed)",
    params=[_ID],
    responses={"404": "no such message"},
    content_type="message/rfc822",
)
async def get_raw(request: web.Request) -> web.StreamResponse:
    return await stream_stored(request, path_id(request))


@routes.put(
    "/api/mailsink/messages/{id}",
    "Change a message's read state and tags",
    params=[_ID],
    body={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "read": {"type": "boolean"},
            "add_tags": {"type": "array", "items": {"type": "string"}},
            "remove_tags": {"type": "array", "items": {"type": "string"}},
        },
    },
    responses={"400": "an unknown key, a wrong type or a bad tag", "404": "no such message"},
)
async def change_message(request: web.Request) -> web.StreamResponse:
    sink = request.app[SINK]
    message_id = path_id(request)
    body = await json_body(request, limit=PUT_LIMIT)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with read, add_tags or remove_tags")
    for key, value in body.items():
        wanted = PUT_KEYS.get(key)
        if wanted is None:
            raise bad(str(key)[:40], f"unknown key; the keys are {', '.join(PUT_KEYS)}")
        if not isinstance(value, wanted) or (
            isinstance(value, list) and not all(isinstance(tag, str) for tag in value)
        ):
            kind = "true or false" if wanted is bool else "a list of strings"
            raise bad(key, f"expected {kind}")
    await known_message(request)
    try:  # tags first: a bad one is refused before anything is written
        await sink.change_tags(
            [message_id], add=body.get("add_tags", ()), remove=body.get("remove_tags", ())
        )
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    if "read" in body:
        await sink.mark_read([message_id], body["read"])
    record = await sink.message(message_id)
    if record is None:
        raise ApiError(404, f"no message {message_id}")
    return json_response(record.summary_json())


@routes.delete(
    "/api/mailsink/messages/{id}",
    "Delete one message",
    params=[_ID],
    responses={"404": "no such message"},
)
async def delete_message(request: web.Request) -> web.StreamResponse:
    message_id = path_id(request)
    if not await request.app[SINK].delete_message(message_id):
        raise ApiError(404, f"no message {message_id}")
    return json_response({"deleted": 1})


@routes.delete("/api/mailsink/messages", "Delete every message (and every finished session)")
async def delete_all(request: web.Request) -> web.StreamResponse:
    return json_response({"deleted": await request.app[SINK].clear()})


# ---- sessions


@routes.get(
    "/api/mailsink/sessions",
    "SMTP sessions, newest first, live ones included: the JSON of `mailsink sessions --json`",
    params=[
        Param("limit", "integer", f"how many (default 50, at most {MAX_SESSIONS})"),
        Param("refusals", "integer", "1: only sessions in which the server refused something"),
    ],
    responses={"400": "a parameter is malformed (the error names it)"},
)
async def list_sessions(request: web.Request) -> web.StreamResponse:
    limit = integer(request, "limit", 50, minimum=1, maximum=MAX_SESSIONS)
    refusals = _flag(request, "refusals")
    sessions = await request.app[SINK].sessions(limit=limit, with_refusals=refusals)
    # Live ones copied here, on the loop that changes them; the JSON of a thousand (tens of
    # ms) is made on the reader thread.
    records = [live_record(s) if isinstance(s, LiveSession) else s for s in sessions]

    def answer(_reader: Any) -> bytes:
        return encode_json([record.as_json() for record in records])

    return _answer(await request.app[SINK].read(answer))


@routes.get(
    "/api/mailsink/sessions/{id}",
    "One session with its transcript (so far, for a live one): `mailsink session ID --json`",
    params=[_SESSION_ID],
    responses={"404": "no such session"},
)
async def get_session(request: web.Request) -> web.StreamResponse:
    sink = request.app[SINK]
    session_id = _session_id(request)
    live = sink.live_session(session_id)
    if live is None:
        record = await sink.session(session_id)
    else:
        lines = await sink.transcript(session_id)
        record = live_record(live, [(at, direction, text) for _seq, at, direction, text in lines])
    if record is None:
        raise ApiError(404, f"no session {session_id}")
    found = record
    return await _json_off_loop(request, lambda: found.as_json(with_events=True))
