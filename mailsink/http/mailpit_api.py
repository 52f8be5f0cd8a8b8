"""Mailpit v1's reading and state routes (server/apiv1/*.go): lists, search, one message, its
headers, raw source, parts and views, info, web UI settings, read state, deletion, tags, and
release (through `[relay]` only: mailsink.http.native_release has the JSON routes).

Errors are text/plain as Mailpit sends them (a 400 names the parameter). Search takes
mailsink's query language, a superset of Mailpit's; rejected messages stay out of lists,
`latest` and searches unless the query asks for them (`status:`), as `mailsink list` does.

`DELETE /api/v1/messages` is also MailHog's "delete all" (no body): it answers an empty 200,
which Mailpit's clients (they ignore the body) and MailHog's both accept.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.parse
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiohttp import web

import mailsink
from mailsink.errors import (
    NoSuchMessage,
    QueryError,
    RecipientsRefused,
    ReleaseError,
    UpstreamError,
)
from mailsink.http import mailpit_shapes as shapes
from mailsink.http.native_api import stream_stored
from mailsink.http.request_params import ApiError, go_int, json_body, path_id, search
from mailsink.http.routing import ApiRoutes, Param
from mailsink.http.web_service import SINK, PerSink, encode_json, json_response
from mailsink.mail.tags import given_tag, given_tags
from mailsink.query import DATE, EXACT, FLAG, Query, Term, parse_query
from mailsink.store import MEMORY, MessageRecord, Reader
from mailsink.text import visible

if TYPE_CHECKING:
    from mailsink.sink import Sink

routes = ApiRoutes("Mailpit")

DEFAULT_LIMIT = 50  # Mailpit's
# A page is at most this long (Mailpit's limit=0, "all", is this too): a list of 100 000
# summaries would be 60 MB of JSON built on one request.
MAX_LIMIT = 1000
# Content-Security-Policy of anything a message supplies that a browser may render from the
# API's own origin (the HTML view, a part): no script, nothing fetched, a sandboxed origin.
VIEW_POLICY = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; sandbox"
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
UNREAD = Term("is", FLAG, "unread", False, "is:unread")

QUERY_LATEST = Param("query", description="with ID latest: the newest message matching it")
START = Param("start", "integer", "messages to skip (default 0)")
LIMIT = Param(
    "limit", "integer", f"messages per page (default 50; 0 or over {MAX_LIMIT}: {MAX_LIMIT})"
)
NOT_FOUND = {"404": "no such message (text)"}
BAD = {"400": "a bad parameter, named (text)"}


# ---- small helpers


def _sink(request: web.Request) -> Sink:
    return request.app[SINK]


def _text(body: str = "ok", status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain")


def _json(body: bytes) -> web.Response:
    """JSON already encoded (on the reader thread, with the shape it encodes)."""
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _done() -> web.Response:
    """An empty 200: what every DELETE answers (Mailpit sends "ok", MailHog's clients parse the
    body as JSON; an empty one satisfies both)."""
    return web.Response(status=200)


def _page_limits(request: web.Request) -> tuple[int, int]:
    """Mailpit's getStartLimit (server/apiv1/api.go): what strconv.Atoi cannot read, a start
    below 1 or a limit below 0 is the default (0, 50), never a 400; "+5" is 5."""
    start = go_int(request.query.get("start", ""))
    limit = go_int(request.query.get("limit", ""))
    start = start if start is not None and start > 0 else 0
    limit = limit if limit is not None and limit > -1 else DEFAULT_LIMIT
    return start, MAX_LIMIT if limit == 0 else min(limit, MAX_LIMIT)


def _required_query(request: web.Request) -> Query:
    if not request.query.get("query", "").strip():
        raise ApiError(400, "query: Error: no search query", text=True)
    return search(request, "query", text=True)


def _unread(query: Query) -> Query:
    return Query((*query.terms, UNREAD), query.text)


def _ids(values: Any, name: str) -> list[int]:
    """Message IDs as Mailpit's clients send them (strings; numbers taken too). One that names
    no mailsink message is left out, as Mailpit ignores an unknown ID."""
    if values is None:
        return []
    if not isinstance(values, list):
        raise ApiError(400, f"{name}: expected an array of message IDs", text=True)
    ids: list[int] = []
    for value in values:
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if text.isascii() and text.isdigit() and 0 < int(text) < 2**63:
            ids.append(int(text))
    return ids


# More IDs than this are read on a worker thread (a million take half a second).
IDS_ON_LOOP = 10_000
# Deleted (or marked) this many at a time: each is one writer transaction and one event.
IDS_PER_CHANGE = 10_000


def _known(reader: Reader, values: Any, name: str) -> list[int]:
    """The IDs given that name a stored message, once each, in the order given: what Mailpit
    does with the others is nothing, so they cost the writer nothing here either."""
    ids = _ids(values, name)
    if len(ids) <= 1000:
        held = reader.messages_by_id(ids)
        return [i for i in dict.fromkeys(ids) if i in held]
    stored = set(reader.message_index(include_rejected=True))
    return [i for i in dict.fromkeys(ids) if i in stored]


async def _given_ids(sink: Sink, values: Any, name: str) -> list[int]:
    if isinstance(values, list) and len(values) > IDS_ON_LOOP:
        return await sink.read(_known, values, name)
    return _ids(values, name)


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + IDS_PER_CHANGE] for i in range(0, len(ids), IDS_PER_CHANGE)]


async def _json_object(request: web.Request) -> dict[str, Any]:
    data = await json_body(request, text=True)
    if not isinstance(data, dict):
        raise ApiError(400, "expected a JSON object", text=True)
    return data


def _newest(reader: Reader, query: Query | None) -> int | None:
    found = reader.list_messages(limit=1, query=query)
    return found[0].id if found else None


async def _message_id(request: web.Request) -> int:
    """The {ID} of a message route: a number, or `latest` (`?query=`: the newest match)."""
    if request.match_info.get("id") == "latest":
        query = search(request, "query", text=True) if request.query.get("query") else None
        found = await _sink(request).read(_newest, query)
        if found is None:
            raise ApiError(404, "Message not found", text=True)
        return found
    return path_id(request, "id", text=True)


def _loaded(reader: Reader, message_id: int) -> tuple[MessageRecord, bytes] | None:
    record = reader.get_message(message_id)
    raw = reader.get_raw(message_id) if record is not None else None
    return (record, raw) if record is not None and raw is not None else None


# Each sink's snippets, kept while it lives (its ids are never reused).
sink_snippets = PerSink(shapes.Snippets)


def _tag_names(reader: Reader) -> list[str]:
    return sorted(reader.tag_counts())  # Mailpit's ORDER BY Name: byte order


# ---- lists and search


class Mailbox:
    """The counts every list answers with (accepted messages, unread ones: kept by the
    store's triggers, one row read) and the tags, counted again only when the store has
    changed (PRAGMA data_version). Used on the reader thread only."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.tags: list[str] = []

    def counts(self, reader: Reader) -> tuple[int, int, list[str]]:
        """(accepted messages, unread accepted messages, tag names)."""
        version = reader.data_version()
        if version != self.version:
            self.tags = _tag_names(reader)
            self.version = version
        accepted, unread = reader.message_counts()
        return accepted, unread, self.tags


# Each sink's counts, kept while it lives.
_mailbox = PerSink(Mailbox)


# Each message's summary as JSON, kept with the read state and tags it was made with (all
# else in it never changes): a test suite polls the same newest page ten times a second, and
# making 50 summaries from their rows was most of each answer's cost (and of the polls' toll
# on SMTP's throughput, which shares the process). A summary whose snippet is not made yet
# is not kept.
SUMMARIES_KEPT = 20_000


class Summaries:
    def __init__(self) -> None:
        self.items: OrderedDict[int, tuple[bool, str, bytes]] = OrderedDict()

    def page(
        self, reader: Reader, snippets: shapes.Snippets, keys: list[tuple[int, bool, str]]
    ) -> list[bytes]:
        found: dict[int, bytes] = {}
        for message_id, seen, tags in keys:
            kept = self.items.get(message_id)
            if kept is not None and kept[:2] == (seen, tags):
                self.items.move_to_end(message_id)
                found[message_id] = kept[2]
        missing = {key[0]: key for key in keys if key[0] not in found}
        if missing:
            records = reader.messages_by_id(list(missing))
            texts = snippets.of(reader, list(records))
            for message_id, record in records.items():
                text = texts.get(message_id)
                made = found[message_id] = encode_json(shapes.summary(record, text))
                if text:
                    # Kept under the key as read: if the row changed since, the next page's
                    # key differs and the summary is made again.
                    _, seen, tags = missing[message_id]
                    self.items[message_id] = (seen, tags, made)
                    if len(self.items) > SUMMARIES_KEPT:
                        self.items.popitem(last=False)
        # (A message deleted since the keys were read is left out.)
        return [found[key[0]] for key in keys if key[0] in found]


_sink_summaries = PerSink(Summaries)


def _listing_json(
    reader: Reader,
    kept: Summaries,
    snippets: shapes.Snippets,
    mailbox: Mailbox,
    start: int,
    limit: int,
    query: Query | None,
) -> bytes:
    """One reader-thread trip for the whole answer, encoded there (a page of 1000 summaries is
    megabytes, not the loop's work): the page, its snippets, the counts."""
    keys = reader.page_keys(limit=limit, offset=start, query=query)
    summaries = kept.page(reader, snippets, keys)
    total, unread, tags = mailbox.counts(reader)
    if query is None:
        matching, matching_unread = total, unread
    else:
        matching = reader.count_messages(query=query)
        matching_unread = reader.count_messages(query=_unread(query))
    head = encode_json(
        {
            "total": total,
            "unread": unread,
            "count": len(summaries),
            "messages_count": matching,
            "messages_unread": matching_unread,
            "start": start,
            "tags": tags,
        }
    )
    return head[:-1] + b',"messages":[' + b",".join(summaries) + b"]}"


@routes.get(
    "/api/v1/messages",
    "List messages (Mailpit MessagesSummary), newest first",
    params=[START, LIMIT],
    responses=BAD,
)
async def list_messages(request: web.Request) -> web.StreamResponse:
    return await _page_answer(request, None)


async def _page_answer(request: web.Request, query: Query | None) -> web.StreamResponse:
    start, limit = _page_limits(request)
    sink = _sink(request)
    kept = (_sink_summaries(sink), sink_snippets(sink), _mailbox(sink))
    return _json(await sink.read(_listing_json, *kept, start, limit, query))


@routes.get(
    "/api/v1/search",
    "Search messages (mailsink's query language, a superset of Mailpit's)",
    params=[Param("query", description="the search", required=True), START, LIMIT],
    responses=BAD,
)
async def search_messages(request: web.Request) -> web.StreamResponse:
    return await _page_answer(request, _required_query(request))


@routes.delete(
    "/api/v1/search",
    "Delete the messages matching a search",
    params=[Param("query", description="the search", required=True)],
    responses=BAD,
    content_type="text/plain",
)
async def delete_search(request: web.Request) -> web.StreamResponse:
    query = _required_query(request)
    sink = _sink(request)
    ids = await sink.read(lambda r: r.message_index(query=query, include_rejected=False))
    for chunk in _chunks(list(ids)):
        await sink.delete_messages(chunk)
    return _done()


READ_BODY = {
    "type": "object",
    "properties": {
        "IDs": {"type": "array", "items": {"type": "string"}},
        "Read": {"type": "boolean"},
        "Search": {"type": "string"},
    },
}


@routes.put(
    "/api/v1/messages",
    "Mark messages read or unread: by IDs, by Search, or (neither) all",
    body=READ_BODY,
    responses=BAD,
    content_type="text/plain",
)
async def set_read(request: web.Request) -> web.StreamResponse:
    data = await _json_object(request)
    read = data.get("Read", False)
    if not isinstance(read, bool):
        raise ApiError(400, "Read: expected true or false", text=True)
    sink = _sink(request)
    ids = await _given_ids(sink, data.get("IDs"), "IDs")
    text = data.get("Search") or ""
    if not isinstance(text, str):
        raise ApiError(400, "Search: expected a string", text=True)
    if data.get("IDs") and text:
        raise ApiError(400, "You may specify either IDs or a search query, not both", text=True)
    if text:
        try:
            query = parse_query(text)
        except QueryError as error:
            raise ApiError(400, f"Search: {error}", text=True) from None
        ids = list(await sink.read(lambda r: r.message_index(query=query, include_rejected=False)))
    elif not data.get("IDs"):
        if read:
            await sink.mark_all_read()
            return _text()
        ids = list(await sink.read(lambda r: r.message_index(include_rejected=True)))
    for chunk in _chunks(ids):
        await sink.mark_read(chunk, read)
    return _text()


@routes.delete(
    "/api/v1/messages",
    "Delete messages by IDs; no body, a body that is not JSON or no IDs: all of them",
    body={"type": "object", "properties": {"IDs": {"type": "array", "items": {"type": "string"}}}},
    content_type="text/plain",
)
async def delete_messages(request: web.Request) -> web.StreamResponse:
    try:
        data = await json_body(request, required=False, text=True)
    except ApiError as error:
        if error.status != 400:  # too large: refused, not taken for "delete all"
            raise
        data = None
    given = data.get("IDs") if isinstance(data, dict) else None
    sink = _sink(request)
    if isinstance(given, list) and given:
        # As Mailpit: the IDs given, any number (unknown ones are nothing to delete), in
        # transactions of IDS_PER_CHANGE.
        for chunk in _chunks(await sink.read(_known, given, "IDs")):
            await sink.delete_messages(chunk)
    else:
        await sink.clear()
    return _done()


# ---- one message


@routes.get(
    "/api/v1/message/{id}",
    "One message (Mailpit Message); marks it read",
    params=[QUERY_LATEST],
    responses=NOT_FOUND,
)
async def get_message(request: web.Request) -> web.StreamResponse:
    message_id = await _message_id(request)
    sink = _sink(request)

    def build(reader: Reader) -> bytes | None:
        # Built and encoded here: a message's text and HTML may be tens of megabytes.
        loaded = _loaded(reader, message_id)
        return encode_json(shapes.message(*loaded)[0]) if loaded else None

    body = await sink.read(build)
    if body is None:
        raise ApiError(404, "404 page not found", text=True)
    if request.method == "GET":  # a HEAD reads nothing
        await sink.mark_read([message_id])
    return _json(body)


@routes.get(
    "/api/v1/message/{id}/headers",
    "The message's headers (Go-canonical names, sorted; values as sent)",
    params=[QUERY_LATEST],
    responses=NOT_FOUND,
)
async def get_headers(request: web.Request) -> web.StreamResponse:
    message_id = await _message_id(request)

    def build(reader: Reader) -> bytes | None:
        raw = reader.get_raw(message_id)
        return encode_json(shapes.headers(raw)) if raw is not None else None

    found = await _sink(request).read(build)
    if found is None:
        raise ApiError(404, "404 page not found", text=True)
    return _json(found)


@routes.get(
    "/api/v1/message/{id}/raw",
    "The message exactly as received",
    params=[QUERY_LATEST, Param("dl", description="1: as a download ({ID}.eml)")],
    responses=NOT_FOUND,
    content_type="text/plain",
)
async def get_raw(request: web.Request) -> web.StreamResponse:
    message_id = await _message_id(request)
    # The bytes as stored, a piece at a time from the reader thread: a stalled reader of a
    # 25 MB message holds one piece, not the message.
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
    if request.query.get("dl") == "1":
        headers["Content-Disposition"] = f'attachment; filename="{message_id}.eml"'
    missing = ApiError(404, "404 page not found", text=True)
    return await stream_stored(request, message_id, headers, missing=missing)


@routes.get(
    "/api/v1/message/{id}/part/{part}",
    "One attachment or inline part, by Mailpit's PartID",
    responses=NOT_FOUND,
    content_type="application/octet-stream",
)
async def get_part(request: web.Request) -> web.StreamResponse:
    message_id = await _message_id(request)
    part_id = request.match_info["part"]

    def find(reader: Reader) -> tuple[str, str, bytes] | None:
        raw = reader.get_raw(message_id)
        if raw is None:
            return None
        part = shapes.mime_view(raw, text_from_html=False).parts.get(part_id)
        if part is None:
            return None
        return part.content_type, part.filename or part.content_id, part.content()

    found = await _sink(request).read(find)
    if found is None:
        raise ApiError(404, "404 page not found", text=True)
    content_type, name, content = found
    response = web.Response(body=content)
    # The part's own type, as Mailpit sends it (the policy below keeps an HTML "attachment"
    # inert); one that is not a plain type/subtype is sent as bytes.
    if not _MEDIA_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream"
    response.headers["Content-Type"] = content_type
    response.headers["Content-Disposition"] = f'inline; filename="{urllib.parse.quote(name)}"'
    response.headers["Content-Security-Policy"] = VIEW_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# ---- release to the [relay] server (server/apiv1/release.go)


def _go_field(data: dict[str, Any], name: str) -> Any:
    """`data[name]` as Go's encoding/json finds a struct field: the key spelt exactly, else
    one spelt in another case (Mailpit takes `{"to": [...]}` for `To`)."""
    if name in data:
        return data[name]
    folded = name.casefold()
    return next((value for key, value in data.items() if key.casefold() == folded), None)


def _addresses(count: int) -> str:
    return f"{count} {'Address' if count == 1 else 'Addresses'}"  # Mailpit's tools.Plural


def _release_refused(error: RecipientsRefused) -> ApiError:
    """Mailpit's words for what its allowlist refuses; an address that is none comes first."""
    from mailsink.mail.addresses import syntax_error

    refused = list(error.recipients)
    invalid = [address for address in refused if syntax_error(address.strip())]
    if invalid:
        return ApiError(400, visible(f"Invalid email address: {', '.join(invalid)}"), text=True)
    if refused:
        listed = ", ".join(refused)
        line = f"Failed: {_addresses(len(refused))} do not match the allowlist: {listed}"
        return ApiError(400, visible(line), text=True)
    return ApiError(400, visible(str(error)), text=True)


@routes.post(
    "/api/v1/message/{id}/release",
    "Release the message to the [relay] server (mailsink's: the body names only recipients)",
    params=[QUERY_LATEST],
    body={
        "type": "object",
        "required": ["To"],
        "properties": {"To": {"type": "array", "items": {"type": "string"}}},
    },
    responses={
        "400": "a bad body, releasing off, recipients refused, or the upstream's error (text)",
        **NOT_FOUND,
    },
    content_type="text/plain",
)
async def release_message(request: web.Request) -> web.StreamResponse:
    from mailsink.cli_release import partial_text
    from mailsink.http.native_release import recipients_of

    sink = _sink(request)
    message_id = await _message_id(request)
    if await sink.message(message_id) is None:  # as Mailpit: the message before the body
        raise ApiError(404, "404 page not found", text=True)
    data = await _json_object(request)
    given = _go_field(data, "To")
    recipients = recipients_of([] if given is None else given, "To", text=True)
    if not recipients:
        raise ApiError(400, "No valid addresses found", text=True)
    try:
        record = await sink.release(message_id, recipients, trigger="http")
    except RecipientsRefused as error:
        raise _release_refused(error) from None
    except NoSuchMessage:
        raise ApiError(404, "404 page not found", text=True) from None
    except UpstreamError as error:
        raise ApiError(400, visible(f"SMTP error: {error}"), text=True) from None
    except ReleaseError as error:  # releasing is off, and anything else that sent nothing
        raise ApiError(400, visible(str(error)), text=True) from None
    if record.outcome != "sent":  # some went, some did not: not the "ok" of all sent
        raise ApiError(400, visible(f"SMTP error: {partial_text(record)}"), text=True)
    return _text()


# ---- the views cypress-mailpit and other UI tests load


async def _view(request: web.Request, html: bool) -> web.StreamResponse:
    message_id = await _message_id(request)
    sink = _sink(request)

    def body(reader: Reader) -> bytes | None:
        raw = reader.get_raw(message_id)
        if raw is None:
            return None
        view = shapes.mime_view(raw, text_from_html=not html)
        # Encoded here, not on the loop; a lone surrogate (from a byte that was not UTF-8)
        # is sent as U+FFFD.
        return (view.html if html else view.text).encode("utf-8", "replace")

    found = await sink.read(body)
    if found is None:
        raise ApiError(404, "Message not found", text=True)
    if html and not found:
        raise ApiError(404, "This message does not contain a HTML part", text=True)
    if request.method == "GET":  # as Mailpit, which loads the message to show it
        await sink.mark_read([message_id])
    response = web.Response(
        body=found, content_type="text/html" if html else "text/plain", charset="utf-8"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    if html:
        response.headers["Content-Security-Policy"] = VIEW_POLICY
    return response


VIEW_PARAMS = [QUERY_LATEST]


# cypress-mailpit joins its base URL and "/view/…" into "//view/…": served there too.
@routes.get(
    "//view/{id}.html",
    "/view/{ID}.html, as cypress-mailpit asks for it",
    params=VIEW_PARAMS,
    responses=NOT_FOUND,
    content_type="text/html",
)
@routes.get(
    "/view/{id}.html",
    "The message's HTML part, under a policy that blocks scripts and remote loads",
    params=VIEW_PARAMS,
    responses=NOT_FOUND,
    content_type="text/html",
)
async def view_html(request: web.Request) -> web.StreamResponse:
    return await _view(request, True)


@routes.get(
    "//view/{id}.txt",
    "/view/{ID}.txt, as cypress-mailpit asks for it",
    params=VIEW_PARAMS,
    responses=NOT_FOUND,
    content_type="text/plain",
)
@routes.get(
    "/view/{id}.txt",
    "The message's text",
    params=VIEW_PARAMS,
    responses=NOT_FOUND,
    content_type="text/plain",
)
async def view_text(request: web.Request) -> web.StreamResponse:
    return await _view(request, False)


# ---- application information


def _memory() -> int:
    """Resident memory now (Linux), else the peak (the best this platform tells)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # (Unix only: this is its fallback)

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _information(reader: Reader, mailbox: Mailbox, path: str, started_ms: int) -> dict[str, Any]:
    size = 0
    if path != MEMORY:
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):  # no -wal file: nothing to add
                size += os.path.getsize(path + suffix)
    messages, unread, _tags = mailbox.counts(reader)
    since = Term("after", DATE, started_ms, False, "after:start")
    rejected = parse_query("status:rejected")
    return {
        "Version": mailsink.__version__,
        "LatestVersion": "disabled",  # mailsink never calls home
        "Database": path,
        "DatabaseSize": size,
        "Messages": messages,
        "Unread": unread,
        "Tags": reader.tag_counts(),
        "RuntimeStats": {
            "Uptime": max(0, int(time.time() - started_ms / 1000)) if started_ms else 0,
            "Memory": _memory(),
            "MessagesDeleted": 0,
            "SMTPAccepted": reader.count_messages(query=Query((since,))) if started_ms else 0,
            "SMTPAcceptedSize": 0,
            "SMTPRejected": (
                reader.count_messages(query=Query((*rejected.terms, since))) if started_ms else 0
            ),
            "SMTPIgnored": 0,
        },
    }


@routes.get("/api/v1/info", "Application information (Mailpit AppInformation)")
async def info(request: web.Request) -> web.StreamResponse:
    sink = _sink(request)
    # When this server started taking mail (0 when attached): the runtime counts start there.
    started = int(getattr(sink.server, "_started_at", 0) or 0)
    return json_response(await sink.read(_information, _mailbox(sink), sink.path, started))


def glob_regexp(glob: str) -> str:
    """One `allowed_recipients` glob as a regular expression that Go's regexp (Mailpit's),
    JavaScript's and Python's read alike: `*` any run of characters, `?` one, every other
    character itself (as mailsink.relay.glob_matches reads a glob)."""
    wildcards = {"*": ".*", "?": "."}
    return "".join(
        wildcards.get(char) or ("\\" + char if char in _REGEXP_SPECIAL else char) for char in glob
    )


_REGEXP_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def allowed_regexp(globs: tuple[str, ...]) -> str:
    """`[relay] allowed_recipients` as Mailpit's AllowedRecipients, a regular expression an
    address must match: the globs, lower-cased (mailsink compares lower-cased addresses), as
    one alternation. None at all is `^$`, which no address matches (Mailpit's empty string
    would mean "any")."""
    if not globs:
        return "^$"
    return "^(?:" + "|".join(glob_regexp(glob.lower()) for glob in globs) + ")$"


def _message_relay(sink: Sink) -> dict[str, Any]:
    """Mailpit's MessageRelay from `[relay]`: its UI shows these before a release."""
    relay = sink.settings.relay
    allowed = allowed_regexp(relay.allowed_recipients) if relay.configured else ""
    return {
        "Enabled": relay.configured,
        "SMTPServer": relay.upstream if relay.configured else "",
        # The envelope sender a release sends (Mailpit's Return-Path is that too).
        "ReturnPath": relay.mail_from if relay.configured else "",
        "AllowedRecipients": allowed,
        "BlockedRecipients": "",
        "OverrideFrom": "",
        # The stored bytes go unchanged: Message-ID included (Mailpit makes a new one unless
        # this is set, and its UI says so).
        "PreserveMessageIDs": relay.configured,
        "RecipientAllowlist": allowed,  # (Mailpit's older name for AllowedRecipients)
    }


@routes.get("/api/v1/webui", "Web UI configuration (Mailpit WebUIConfiguration)")
async def webui(request: web.Request) -> web.StreamResponse:
    return json_response(
        {
            "Label": "mailsink",
            "MessageRelay": _message_relay(_sink(request)),
            "SpamAssassin": False,
            "ChaosEnabled": _sink(request).faults is not None,
            "DuplicatesIgnored": False,
            "HideDeleteAllButton": False,
        }
    )


# ---- tags


def _tagged(reader: Reader, tag: str) -> list[int]:
    query = Query((Term("tag", EXACT, tag, False, f"tag:{tag}"),))
    return list(reader.message_index(query=query, include_rejected=True))


@routes.get("/api/v1/tags", "Every tag in use, sorted")
async def get_tags(request: web.Request) -> web.StreamResponse:
    return json_response(await _sink(request).read(_tag_names))


def _tag_list(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"{name}: expected an array of strings", text=True)
    try:
        return given_tags(values)
    except ValueError as error:
        raise ApiError(400, f"{name}: {error}", text=True) from None


@routes.put(
    "/api/v1/tags",
    "Set exactly these tags on these messages (an empty Tags removes them all)",
    body={
        "type": "object",
        "required": ["IDs", "Tags"],
        "properties": {
            "IDs": {"type": "array", "items": {"type": "string"}},
            "Tags": {"type": "array", "items": {"type": "string"}},
        },
    },
    responses=BAD,
    content_type="text/plain",
)
async def set_tags(request: web.Request) -> web.StreamResponse:
    data = await _json_object(request)
    # null is Go's nil slice: no tags (Mailpit then removes them all).
    tags = _tag_list(data.get("Tags") or [], "Tags")
    sink = _sink(request)
    ids = await _given_ids(sink, data.get("IDs"), "IDs")
    if not ids:
        return _text()
    held = await sink.read(Reader.messages_by_id, ids)
    wanted = {tag.casefold() for tag in tags}
    removing = sorted(
        {t for record in held.values() for t in record.tags if t.casefold() not in wanted}
    )
    # A message holds at most 50 tags, and one change names at most that many: removals go
    # first in groups, the additions with the last group.
    groups = [removing[i : i + 50] for i in range(0, len(removing), 50)] or [[]]
    try:
        for number, group in enumerate(groups, 1):
            await sink.change_tags(list(held), tags if number == len(groups) else [], group)
    except ValueError as error:
        raise ApiError(400, f"Tags: {error}", text=True) from None
    return _text()


@routes.put(
    "/api/v1/tags/{tag}",
    "Rename a tag on every message",
    body={"type": "object", "required": ["Name"], "properties": {"Name": {"type": "string"}}},
    responses=BAD,
    content_type="text/plain",
)
async def rename_tag(request: web.Request) -> web.StreamResponse:
    old = request.match_info["tag"]
    data = await _json_object(request)
    name = data.get("Name")
    if not isinstance(name, str):
        raise ApiError(400, "Name: expected a string", text=True)
    try:
        new = given_tag(name)
    except ValueError as error:
        raise ApiError(400, f"Name: {error}", text=True) from None
    if new == old:
        return _text()
    sink = _sink(request)

    def look(reader: Reader) -> tuple[list[int], dict[str, int]]:
        return _tagged(reader, old), reader.tag_counts()

    ids, counts = await sink.read(look)
    if not ids:
        raise ApiError(400, f"tag not found: {old}", text=True)
    if new.casefold() != old.casefold() and any(t.casefold() == new.casefold() for t in counts):
        raise ApiError(400, f"tag already exists: {new}", text=True)
    if new.casefold() == old.casefold():  # another spelling: out, then in again
        await sink.change_tags(ids, remove=[old])
        await sink.change_tags(ids, add=[new])
    else:
        await sink.change_tags(ids, add=[new], remove=[old])
    return _text()


@routes.delete(
    "/api/v1/tags/{tag}",
    "Remove a tag from every message (the messages stay)",
    responses=BAD,
    content_type="text/plain",
)
async def delete_tag(request: web.Request) -> web.StreamResponse:
    tag = request.match_info["tag"]
    sink = _sink(request)
    ids = await sink.read(_tagged, tag)
    if not ids:
        raise ApiError(400, f"tag not found: {tag}", text=True)
    try:
        await sink.change_tags(ids, remove=[tag])
    except ValueError as error:
        raise ApiError(400, f"tag: {error}", text=True) from None
    return _text()  # Mailpit's "ok" (tags.go DeleteTag)
