"""MailHog's API (github.com/mailhog/MailHog-Server, api/v1.go and api/v2.go), as its clients
use it: the v2 list and search, and v1's message, deletion and download. Shapes are in
mailhog_shapes; `DELETE /api/v1/messages` (all) is the Mailpit table's, which answers both.

MailHog's query on /api/v2/search is plain text, never mailsink's search language: it becomes
terms built here (quotes, colons, `%` and `_` in it are text), with MailHog's meaning of each
kind (its storage's Search, memory.go): `from` the envelope sender or the From header, `to` an
envelope recipient or the To header, `containing` the headers or the body.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from aiohttp import web

from mailsink.errors import ReleaseError
from mailsink.http import mailhog_shapes
from mailsink.http.native_api import stream_stored
from mailsink.http.request_params import ApiError, bad, json_body, path_id
from mailsink.http.routing import ApiRoutes, Param
from mailsink.http.web_service import SINK, PerSink, encode_json, json_response
from mailsink.query import MAX_QUERY, TEXT, WORDS, Query, Term
from mailsink.store import Reader

routes = ApiRoutes("MailHog")

DEFAULT_LIMIT = 50  # MailHog's getStartLimit
MAX_LIMIT = 250  # ... which clamps to this
# Of text (message bytes as JSON strings) in one answer: MailHog has no such bound, and 250
# large messages would otherwise take gigabytes.
PAGE_TEXT = 128 * 1024 * 1024
KINDS = ("from", "to", "containing")
# kind -> the prefixes whose matches are ORed (each a Query of one term); "" is any text.
_GO_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_PREFIXES = {"from": ("mailfrom", "from"), "to": ("rcpt", "to"), "containing": ("",)}
# MailHog answers its list and a message as "text/json" (its search as application/json).
TEXT_JSON = "text/json"

_PAGING = [
    Param("start", "integer", "how many of the newest to skip (default 0, as is anything else)"),
    Param(
        "limit",
        "integer",
        f"how many (default {DEFAULT_LIMIT}, as is anything not above 0; at most {MAX_LIMIT})",
    ),
]
_ID = Param("id", "string", "the message's ID, as the list gives it", where="path", required=True)


def _json(data: Any) -> bytes:
    return encode_json(data)


# Each message's item as JSON, kept: a message never changes (its MailHog shape has no read
# state or tags), and MailHog's clients poll the same newest page again and again. Bounded by
# the bytes kept; an item whose nested levels the page's budget cut is never kept.
ITEMS_KEPT_BYTES = 64 * 1024 * 1024


class _Kept:
    def __init__(self) -> None:
        self.items: OrderedDict[int, tuple[bytes, int]] = OrderedDict()
        self.size = 0

    def get(self, message_id: int) -> tuple[bytes, int] | None:
        found = self.items.get(message_id)
        if found is not None:
            self.items.move_to_end(message_id)
        return found

    def put(self, message_id: int, item: bytes, emitted: int) -> None:
        if len(item) > ITEMS_KEPT_BYTES // 4 or message_id in self.items:
            return
        self.items[message_id] = (item, emitted)
        self.size += len(item)
        while self.size > ITEMS_KEPT_BYTES:
            _, (dropped, _) = self.items.popitem(last=False)
            self.size -= len(dropped)


# One per sink (its ids are never reused); used on its reader thread only.
_kept = PerSink(_Kept)


def _answer(body: bytes, content_type: str = TEXT_JSON) -> web.Response:
    # Set as a header, not content_type=: aiohttp would add "; charset=utf-8", MailHog does not.
    return web.Response(body=body, headers={"Content-Type": content_type})


def _go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64): a sign and decimal digits within int64, else None."""
    if not _GO_INT.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _paging(request: web.Request) -> tuple[int, int]:
    """MailHog's getStartLimit (api/v2.go): a start or limit that is not a whole number above
    0 is the default (0 and 50), never an error: its clients send what it took; past 250, 250."""
    start = _go_int(request.query.get("start", ""))
    limit = _go_int(request.query.get("limit", ""))
    start = start if start is not None and start > 0 else 0
    limit = min(limit, MAX_LIMIT) if limit is not None and limit > 0 else DEFAULT_LIMIT
    return start, limit


def _items(reader: Reader, kept: _Kept, records: list[Any]) -> list[bytes]:
    """The shapes of `records` as JSON, in order, while the JSON stays within PAGE_TEXT (one
    at least): each message is in the answer about three times over (Raw.Data, Body, the
    top-level parts; more where its bytes need escapes) and its nested levels add a bounded
    share more (mailhog_shapes.Budget). `count` says how many came; `start` pages on. A
    message deleted since the list was read is left out, not shown empty or from `kept`."""
    items: list[tuple[int, bytes]] = []
    used = 0  # bytes of JSON so far
    for record in records:
        base = mailhog_shapes.text_size(record.size)
        if items and used + base > PAGE_TEXT:
            break
        whole = mailhog_shapes.Budget(record.size).text  # its nested levels, uncut
        room = max(0, PAGE_TEXT - used - base)
        known = kept.get(record.id) if room >= whole else None
        if known is not None:
            item = known[0]
        else:
            raw = reader.get_raw(record.id)
            if raw is None:
                continue
            budget = mailhog_shapes.Budget(len(raw), min(room, mailhog_shapes.NESTED_TEXT))
            item = encode_json(mailhog_shapes.message(record, raw, budget))
            if room >= whole:
                kept.put(record.id, item, budget.emitted)
        items.append((record.id, item))
        used += len(item)
    if any(kept.get(message_id) is not None for message_id, _ in items):
        # A kept item says nothing of whether its message is still there.
        ids = [message_id for message_id, _ in items]
        marks = ",".join("?" * len(ids))  # (a page is at most MAX_LIMIT ids)
        rows = reader.conn.execute(f"SELECT id FROM messages WHERE id IN ({marks})", ids)
        there = {row[0] for row in rows}
        items = [(i, item) for i, item in items if i in there]
    return [item for _, item in items]


def _listing(total: int, start: int, items: list[bytes]) -> bytes:
    head = f'{{"total":{total},"count":{len(items)},"start":{start},"items":['.encode()
    return head + b",".join(items) + b"]}"


def _page(reader: Reader, kept: _Kept, start: int, limit: int) -> bytes:
    """On the reader thread: the rows, their raw bytes, the shapes and the JSON text."""
    records = reader.list_messages(limit=limit, offset=start)
    items = _items(reader, kept, records)
    return _listing(reader.count_messages(), start, items)


def _found(reader: Reader, kept: _Kept, queries: list[Query], start: int, limit: int) -> bytes:
    """The union of the queries' matches (accepted messages), newest first, one page of it."""
    ids: set[int] = set()
    for query in queries:
        ids.update(reader.message_index(query=query, include_rejected=False))
    ordered = sorted(ids, reverse=True)
    page = ordered[start : start + limit]
    found = reader.messages_by_id(page)
    items = _items(reader, kept, [found[i] for i in page if i in found])
    return _listing(len(ordered), start, items)


def search_queries(kind: str, text: str) -> list[Query]:
    """MailHog's search as mailsink queries whose matches are ORed. Terms are made directly,
    not parsed: the text is matched as text, whatever it holds."""
    queries = []
    for prefix in _PREFIXES[kind]:
        if prefix:
            term = Term(prefix, TEXT, text, typed=f"{prefix}:{text}")
        else:
            term = Term("", WORDS, text.strip(), typed=text)
        queries.append(Query((term,), term.typed))
    return queries


@routes.get(
    "/api/v2/messages",
    "MailHog: list messages, newest first",
    params=_PAGING,
    content_type=TEXT_JSON,
)
async def list_messages(request: web.Request) -> web.StreamResponse:
    start, limit = _paging(request)
    sink = request.app[SINK]
    return _answer(await sink.read(_page, _kept(sink), start, limit))


@routes.get(
    "/api/v2/search",
    "MailHog: search (kind from, to or containing; the query is plain text)",
    params=[
        Param("kind", "string", "from | to | containing", required=True),
        Param("query", "string", "plain text (not mailsink's language)", required=True),
        *_PAGING,
    ],
    responses={"400": "kind is not one of from, to, containing; query is empty"},
)
async def search(request: web.Request) -> web.StreamResponse:
    kind = request.query.get("kind", "")
    if kind not in KINDS:
        raise bad("kind", f"expected from, to or containing, got {kind[:40]!r}")
    text = request.query.get("query", "")
    if not text.strip():
        raise bad("query", "expected text to look for")
    if len(text) > MAX_QUERY:
        raise bad("query", f"{len(text)} characters long; at most {MAX_QUERY}")
    if "\x00" in text or not _is_utf8(text):
        raise bad("query", "expected UTF-8 text without NUL characters")
    start, limit = _paging(request)
    sink = request.app[SINK]
    body = await sink.read(_found, _kept(sink), search_queries(kind, text), start, limit)
    return _answer(body, "application/json")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the URL, carried as surrogates
        return False
    return True


def _one(reader: Reader, message_id: int) -> bytes | None:
    record = reader.get_message(message_id)
    raw = reader.get_raw(message_id) if record is not None else None
    if record is None or raw is None:  # (or deleted between the two reads)
        return None
    return _json(mailhog_shapes.message(record, raw))


@routes.get(
    "/api/v1/messages/{id}",
    "MailHog: one message",
    params=[_ID],
    responses={"404": "no such message"},
    content_type=TEXT_JSON,
)
async def get_message(request: web.Request) -> web.StreamResponse:
    message_id = path_id(request)
    body = await request.app[SINK].read(_one, message_id)
    if body is None:
        raise ApiError(404, f"no message {message_id}")
    return _answer(body)


@routes.delete(
    "/api/v1/messages/{id}",
    "MailHog: delete one message (an empty 200)",
    params=[_ID],
    responses={"404": "no such message"},
)
async def delete_message(request: web.Request) -> web.StreamResponse:
    message_id = path_id(request)
    if not await request.app[SINK].delete_message(message_id):
        raise ApiError(404, f"no message {message_id}")
    # Empty: the npm client parses a body as JSON, and MailHog sends none.
    return web.Response(headers={"Content-Type": TEXT_JSON})


@routes.get(
    "/api/v1/messages/{id}/download",
    "MailHog: the message as received, as an .eml attachment",
    params=[_ID],
    responses={"404": "no such message"},
    content_type="message/rfc822",
)
async def download(request: web.Request) -> web.StreamResponse:
    message_id = path_id(request)
    # A piece at a time from the reader thread: a stalled reader holds a piece, not the message.
    disposition = f'attachment; filename="{message_id}.eml"'
    return await stream_stored(request, message_id, {"Content-Disposition": disposition})


# ---- release (api/v1.go release_one): through [relay], never a server the body names

# MailHog's ReleaseConfig (config.OutgoingSMTP): the keys a body may hold, read as Go reads
# them (in any case: npm's mailhog client sends them lower-case).
RELEASE_KEYS = ("Name", "Save", "Email", "Host", "Port", "Username", "Password", "Mechanism")
ONLY_RELAY = "mailsink releases only through its [relay] server"


def _release_config(data: dict[str, Any]) -> dict[str, Any]:
    """The body's ReleaseConfig fields by their MailHog names (an exact key first, else one in
    another case, as encoding/json); other keys are ignored, as MailHog ignores them."""
    found: dict[str, Any] = {}
    for name in RELEASE_KEYS:
        if name in data:
            found[name] = data[name]
            continue
        folded = name.casefold()
        for key, value in data.items():
            if isinstance(key, str) and key.casefold() == folded:
                found[name] = value
                break
    return found


def _text_field(config: dict[str, Any], name: str) -> str:
    value = config.get(name)
    if value is None:
        return ""
    if name == "Port" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # MailHog's is a string; a number is taken as its digits
    if not isinstance(value, str):
        raise bad(name, "expected a string")
    return value.strip()


def _same_host(given: str, host: str) -> bool:
    def bare(name: str) -> str:
        return name.strip().removeprefix("[").removesuffix("]").removesuffix(".").lower()

    return bare(given) == bare(host)


@routes.post(
    "/api/v1/messages/{id}/release",
    "MailHog: release the message to the [relay] server (Email: the one recipient)",
    params=[_ID],
    body={
        "type": "object",
        "required": ["Email"],
        "properties": {
            "Email": {"type": "string", "description": "the address to release to"},
            "Host": {"type": "string", "description": "if given: [relay]'s host"},
            "Port": {"type": "string", "description": "if given: [relay]'s port"},
            "Name": {"type": "string", "description": "not taken: no named servers"},
            "Save": {"type": "boolean", "description": "not taken: no named servers"},
            "Username": {"type": "string", "description": "not taken: [relay]'s login"},
            "Password": {"type": "string", "description": "not taken: [relay]'s login"},
            "Mechanism": {"type": "string", "description": "not taken: [relay]'s login"},
        },
    },
    responses={
        "400": "a bad body, a server or login named, or the recipient refused",
        "404": "no such message",
        "409": "releasing is off: no [relay] host in the config",
        "502": "the upstream refused or failed (`release`: the record)",
        "504": "the upstream did not answer in time (`release`: the record)",
    },
)
async def release(request: web.Request) -> web.StreamResponse:
    from mailsink.http.native_release import BODY_LIMIT, release_refusal

    message_id = path_id(request)
    data = await json_body(request, limit=BODY_LIMIT)
    if not isinstance(data, dict):
        raise ApiError(400, "expected a JSON object with Email (MailHog's ReleaseConfig)")
    config = _release_config(data)
    fields = {name: _text_field(config, name) for name in RELEASE_KEYS if name != "Save"}
    email = fields["Email"]
    if not email:
        raise bad("Email", "expected the address to release to")
    save = config.get("Save")
    if save is not None and not isinstance(save, bool):
        raise bad("Save", "expected true or false")
    if save or fields["Name"]:
        which = "Save" if save else "Name"
        raise bad(which, f"mailsink keeps no named servers: {ONLY_RELAY}")
    for name in ("Username", "Password", "Mechanism"):
        if fields[name]:  # (the value itself is never repeated: it may be a password)
            raise bad(name, f"the login is [relay]'s, never a request's: {ONLY_RELAY}")
    sink = request.app[SINK]
    relay = sink.settings.relay
    if not relay.configured:
        from mailsink.sink import NOT_CONFIGURED

        raise ApiError(409, NOT_CONFIGURED)
    host, port = fields["Host"], fields["Port"]
    if (host and not _same_host(host, relay.host)) or (port and port != str(relay.effective_port)):
        raise ApiError(400, f"{ONLY_RELAY} ({relay.upstream})")
    try:
        record = await sink.release(message_id, [email], trigger="http")
    except ReleaseError as error:
        return release_refusal(error)
    if record.outcome != "sent":  # (one recipient: refused is failed, but should it come)
        from mailsink.cli_release import partial_text

        return json_response({"error": partial_text(record), "release": record.as_json()}, 502)
    # As MailHog: a 200 with no body (npm's client parses a body as JSON, and MailHog sends none).
    return web.Response(headers={"Content-Type": TEXT_JSON})
