"""Live events (Mailpit's WebSocket, mailsink's Server-Sent Events), the server-side wait.

All three wake on the sink's event bus (mailsink.events), never on a timer that looks at the
store. Each read they make runs on the sink's reader thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import time
import weakref
from collections.abc import Awaitable
from typing import Any

from aiohttp import WSCloseCode, web

from mailsink import __version__
from mailsink import events as ev
from mailsink.clock import iso_ms
from mailsink.http import mailpit_api
from mailsink.http.request_params import ApiError, bad, integer, search
from mailsink.http.routing import ApiRoutes, Param
from mailsink.http.web_service import SERVICE, SINK, HttpService, json_response
from mailsink.sink import Sink
from mailsink.store import MessageRecord, Reader
from mailsink.units import parse_duration

log = logging.getLogger("mailsink")

routes = ApiRoutes("mailsink")

# ---- the server-side wait

WAIT_DEFAULT_SECONDS = 10.0
# A wait holds a connection and a subscription: past this, the client asks again.
WAIT_MAX_SECONDS = 300.0
WAIT_MAX_COUNT = 1000
WAKING_KINDS = (ev.MessageStored, ev.MessagesDeleted, ev.MessagesChanged, ev.StoreChanged)
# How often a wait or an event stream with nothing to say looks whether its client has gone
# (aiohttp does not cancel a handler whose client left): the client's socket, not the store.
DISCONNECT_POLL = 1.0


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _next_or_gone(
    subscription: ev.Subscription, request: web.Request, seconds: float
) -> bool:
    """Wait up to `seconds` for the subscription's next event (which is taken): False once
    the client has gone, True otherwise (an event, the time is up, or the subscription closed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        try:
            await asyncio.wait_for(subscription.get(), min(remaining, DISCONNECT_POLL))
        except StopAsyncIteration:
            return True  # closed: the caller says so
        except TimeoutError:
            if _gone(request):
                return False
            continue
        return True
    return True


def _duration(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError as error:
        raise bad(name, str(error)[:120]) from None
    return min(seconds, WAIT_MAX_SECONDS)


@routes.get(
    "/api/mailsink/wait",
    "Wait until `count` messages match the query (newest first, as `mailsink list --json`)",
    params=[
        Param("query", description="the search language (as `mailsink list --search`)"),
        Param("count", "integer", f"how many messages to wait for (1 to {WAIT_MAX_COUNT})"),
        Param(
            "timeout",
            description=f"how long to wait: 10s, 500ms, 2m (default 10s, at most "
            f"{WAIT_MAX_SECONDS:.0f}s)",
        ),
        Param("since", "integer", "only messages with a greater id (the newest id you know)"),
    ],
    responses={
        "400": "a bad parameter (named)",
        "408": 'timed out: {"error", "messages": what matched so far}',
        "503": "the server is stopping",
    },
)
async def wait_for_messages(request: web.Request) -> web.StreamResponse:
    sink, service = request.app[SINK], request.app[SERVICE]
    query = search(request, "query")
    count = integer(request, "count", 1, minimum=1, maximum=WAIT_MAX_COUNT)
    since = integer(request, "since", 0)
    timeout = _duration(request, "timeout", WAIT_DEFAULT_SECONDS)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def newest(reader: Reader) -> list[MessageRecord]:
        return reader.newest_above(query=query, above=since, limit=count)

    # Subscribed before the first read: a message committed in between wakes the wait.
    subscription = sink.subscribe(*WAKING_KINDS)

    async def close() -> None:
        subscription.close()

    service.streams.add(close)
    try:
        if service.stopping.is_set():
            subscription.close()
        while True:
            found = await sink.read(newest)
            if len(found) >= count:
                return json_response([record.summary_json() for record in found])
            if subscription.closed:
                raise ApiError(
                    503,
                    "the server is stopping (or reloading its users or allowed hosts): ask again",
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                return json_response(
                    {
                        "error": f"timed out after {timeout:g}s: {len(found)} of {count} "
                        "matching messages",
                        "messages": [record.summary_json() for record in found],
                    },
                    408,
                )
            if not await _next_or_gone(subscription, request, remaining):
                return web.Response(status=408)  # the client has gone: nobody to answer
            subscription.pending()  # a burst of commits costs one read
    finally:
        service.streams.discard(close)
        subscription.close()


# ---- the event stream (Server-Sent Events)

# Events kept for `Last-Event-ID`: some seconds of a busy server, minutes of a quiet one.
RING_SIZE = 5000
# A comment line this often keeps proxies from closing an idle stream and finds gone clients.
HEARTBEAT_SECONDS = 15.0
CHUNK = 500  # events written at once to one client, so that none waits long for the others


def _kebab(name: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in name).lstrip("-")


def session_json(session: ev.LiveSession) -> dict[str, Any]:
    """A live session with the keys of `mailsink sessions --json` (SessionRecord.as_json), plus
    what only a live one has; its transcript comes as transcript-line events."""
    return {
        "id": session.id,
        "started_at": iso_ms(session.started_at),
        "ended_at": iso_ms(session.ended_at),
        "peer": session.peer,
        "helo": session.helo,
        "tls": session.tls,
        "auth_user": session.auth_user,
        "end_reason": session.end_reason,
        "message_count": len(session.message_ids),
        "last_reply": session.last_reply,
        "faults": session.faults_fired,
        "refusals": session.refusals,
        "last_refusal": session.last_refusal,
        "messages": list(session.message_ids),
        "state": session.state,
        "live": session.live,
        "transcript_lines": session.transcript_lines,
    }


def event_json(event: Any) -> dict[str, Any]:
    """One event as the stream sends it: `type` is the record's name in kebab case
    (MessageStored -> message-stored)."""
    data: dict[str, Any] = {"type": _kebab(type(event).__name__)}
    if isinstance(event, ev.SessionStarted | ev.SessionChanged | ev.SessionEnded):
        data["session"] = session_json(event.session)
    elif isinstance(event, ev.TranscriptLine):
        seq, at, direction, text = event.line
        data.update(
            session_id=event.session_id, seq=seq, at=iso_ms(at), direction=direction, text=text
        )
    elif isinstance(event, ev.FaultFired):
        data.update(
            session_id=event.session_id,
            rule=event.rule,
            stage=event.stage,
            action=event.action,
            reply=event.reply,
            at=iso_ms(event.at),
        )
    else:  # flat records of plain values
        for field in dataclasses.fields(event):
            value = getattr(event, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
    return data


def _frame(data: dict[str, Any], event_id: int | None = None) -> bytes:
    # ASCII JSON: a CR or LF in untrusted text cannot end the SSE line, and a lone surrogate
    # (a stray byte kept from a transcript) stays an escape rather than failing to encode.
    text = json.dumps(data, separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {text}\n\n".encode("ascii")


# The event log lives while clients read it and this long after the last one left (its
# subscription to everything, TranscriptLine included, costs the SMTP server a record per
# line); a client resuming after that is told its events are lost.
LOG_GRACE_SECONDS = 60.0
# Ids are unique across starts of the log (and of the server): the log's start in ms times
# this, plus the event's number, so an id from an earlier log resumes nothing by mistake.
ID_SPAN = 10**6
_last_base = 0


def _new_base() -> int:
    global _last_base
    _last_base = max(time.time_ns() // 10**6 * ID_SPAN, _last_base + ID_SPAN)
    return _last_base


class EventLog:
    """Every event of the sink, numbered and framed once, the newest RING_SIZE kept: each SSE
    client is a position in it, so a slow one costs no memory (it is told what it missed).
    Positions are numbers from 1; the id a client sees is `base` + its position."""

    def __init__(self, sink: Sink, service: HttpService) -> None:
        self.service = service
        self.base = _new_base()
        self.ring: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=RING_SIZE)
        self.last = 0  # the newest event's position
        self.wakeup = asyncio.Event()
        self.closed = False
        self.clients = 0
        self.expiry: asyncio.TimerHandle | None = None
        # Everything: TranscriptLine makes the SMTP server build a record per line, which is
        # why the log starts with the first client, not with the server.
        self.subscription = sink.subscribe(limit=RING_SIZE)
        self.task = asyncio.create_task(self._run(), name="mailsink-sse-log")
        self.ended = 0  # how many times its clients' streams were ended (end_streams)
        service.streams.add(self.end_streams)

    async def _run(self) -> None:
        async for event in self.subscription:
            for each in (event, *self.subscription.pending()):
                self.last += 1
                self.ring.append((self.last, _frame(event_json(each), self.base + self.last)))
            self._wake()

    def _wake(self) -> None:
        woken, self.wakeup = self.wakeup, asyncio.Event()
        woken.set()

    def attach(self) -> None:
        self.clients += 1
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def detach(self) -> None:
        self.clients -= 1
        if self.clients <= 0 and not self.closed:
            loop = asyncio.get_running_loop()
            self.expiry = loop.call_later(LOG_GRACE_SECONDS, self._expire)

    def _expire(self) -> None:
        self.expiry = None
        if self.clients <= 0:
            if _logs.get(self.service) is self:  # a client from now on starts a new log
                del _logs[self.service]
            task = asyncio.ensure_future(self.close())
            _background.add(task)
            task.add_done_callback(_background.discard)

    def position(self, event_id: int) -> int | None:
        """The position of a client's Last-Event-ID in this log; None if not from it."""
        cursor = event_id - self.base
        return cursor if 0 <= cursor <= self.last else None

    def after(self, cursor: int) -> tuple[list[bytes], int, int]:
        """(frames after `cursor`, the new cursor, how many were lost before them)."""
        first = self.ring[0][0] if self.ring else self.last + 1
        lost = 0
        if cursor < first - 1:
            lost, cursor = first - 1 - cursor, first - 1
        start = cursor - first + 1
        frames = [frame for _, frame in itertools.islice(self.ring, start, start + CHUNK)]
        return frames, cursor + len(frames), lost

    async def end_streams(self) -> None:
        """Its closer in service.streams. On a stop the log closes; on a reload that changes
        who may read (HttpService.apply_settings) only the streams end: their clients are let
        in again as the new settings say, and resume from their Last-Event-ID in this log,
        missing nothing."""
        if self.service.stopping.is_set():
            await self.close()
            return
        self.ended += 1
        self._wake()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.service.streams.discard(self.end_streams)
        if _logs.get(self.service) is self:
            del _logs[self.service]
        if self.expiry is not None:
            self.expiry.cancel()
        self.subscription.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self._wake()


_logs: weakref.WeakKeyDictionary[HttpService, EventLog] = weakref.WeakKeyDictionary()
_background: set[asyncio.Task[Any]] = set()


def _event_log(service: HttpService, sink: Sink) -> EventLog:
    found = _logs.get(service)
    if found is None or found.closed:
        found = _logs[service] = EventLog(sink, service)
    return found


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 24:
        return -1  # not one of ours
    return int(raw)


@routes.get(
    "/api/mailsink/events",
    "The sink's events as Server-Sent Events (JSON with a `type` each; Last-Event-ID resumes)",
    params=[
        Param(
            "Last-Event-ID",
            "integer",
            f"resume after this event (the last {RING_SIZE} are kept while the log lives)",
            where="header",
        )
    ],
    content_type="text/event-stream",
    responses={"503": "the server is stopping"},
)
async def event_stream(request: web.Request) -> web.StreamResponse:
    sink, service = request.app[SINK], request.app[SERVICE]
    if service.stopping.is_set():
        raise ApiError(503, "the server is stopping")
    resume = _last_event_id(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would hold the events back
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":  # the headers only: a stream nobody reads would never end
        return response
    events = _event_log(service, sink)
    events.attach()
    try:
        with contextlib.suppress(ConnectionResetError):  # the client went: nothing to answer
            await _send_events(request, response, events, service, resume)
    finally:
        events.detach()
    return response


async def _send_events(
    request: web.Request,
    response: web.StreamResponse,
    events: EventLog,
    service: HttpService,
    resume: int | None,
) -> None:
    await response.write(b"retry: 2000\n\n")
    cursor = events.last
    if resume is not None:
        position = events.position(resume)
        if position is not None:
            cursor = position
        else:  # from an earlier log (before a restart, or an idle spell), or not an id
            await response.write(_frame({"type": "events-lost", "count": None}))
    loop = asyncio.get_running_loop()
    beat = loop.time() + HEARTBEAT_SECONDS
    ended = events.ended
    while not (events.closed or service.stopping.is_set() or events.ended != ended):
        wakeup = events.wakeup
        frames, cursor, lost = events.after(cursor)
        if lost:
            await response.write(_frame({"type": "events-lost", "count": lost}))
        if frames:
            await response.write(b"".join(frames))
            continue
        try:
            await asyncio.wait_for(wakeup.wait(), min(DISCONNECT_POLL, HEARTBEAT_SECONDS))
        except TimeoutError:
            if _gone(request):
                return
            if loop.time() >= beat:
                await response.write(b": keep-alive\n\n")
                beat = loop.time() + HEARTBEAT_SECONDS
        else:
            beat = loop.time() + HEARTBEAT_SECONDS


# ---- Mailpit's WebSocket

# Mailpit's client buffer (server/websockets/client.go): a client this far behind is dropped.
CLIENT_BUFFER = 256
# Mailpit pings every 54 s; aiohttp closes a client that has not answered within half of this.
PING_SECONDS = 54.0
# Mailpit sends its "stats" at most four times a second (internal/storage/notifications.go).
STATS_DELAY = 0.25
# A batch of more new, deleted or changed messages than this is one `prune` (reload), as
# Mailpit's DeleteMessages by search does past 200 (internal/storage/search.go): one event per
# message would pass CLIENT_BUFFER and drop every client.
PRUNE_OVER = 200


class MailpitClient:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_BUFFER)

    async def pump(self) -> None:
        while True:
            text = await self.queue.get()
            await self.ws.send_str(text)


def _summaries(
    reader: Reader, snippets: Any, new: list[int], changed: list[int]
) -> tuple[list[dict[str, Any]], list[MessageRecord]]:
    """On the reader thread: Mailpit's summary of each new message (its snippet made as the
    lists make it, and kept for them), and the changed records."""
    from mailsink.http import mailpit_shapes

    records = reader.messages_by_id([*new, *changed])
    texts = snippets.of(reader, [i for i in new if i in records])
    summaries = [
        mailpit_shapes.summary(records[i], texts.get(i, ""))
        for i in new
        if i in records  # (deleted since)
    ]
    return summaries, [records[i] for i in dict.fromkeys(changed) if i in records]


class MailpitHub:
    """Mailpit's event types and payloads (grep `websockets.Broadcast` in Mailpit's source):
    `new` (the message summary), `delete` ({ID}), `truncate` (null), `update` ({ID, Read} and
    {ID, Tags}, sent here as one), `stats` ({Total, Unread, Version}) and `prune` (null: reload;
    sent when events were lost)."""

    def __init__(self, sink: Sink, service: HttpService) -> None:
        self.sink = sink
        self.service = service
        self.clients: set[MailpitClient] = set()
        self.subscription = sink.subscribe(*WAKING_KINDS)
        self.stats_due: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.task = asyncio.create_task(self._run(), name="mailsink-mailpit-events")

    def broadcast(self, kind: str, data: Any) -> None:
        if not self.clients:
            return
        text = json.dumps({"Type": kind, "Data": data}, ensure_ascii=False, separators=(",", ":"))
        for client in list(self.clients):
            try:
                client.queue.put_nowait(text)
            except asyncio.QueueFull:  # as Mailpit's hub: a client that cannot keep up goes
                self.clients.discard(client)
                self._spawn(client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self) -> None:
        async for event in self.subscription:
            batch = [event, *self.subscription.pending()]
            if self.clients:
                try:
                    await self._tell(batch)
                except Exception as error:  # the store busy or gone: the next event tries again
                    log.warning("Mailpit events: %s", error)
                # Let the clients' pumps send what was queued before the next batch adds more.
                await asyncio.sleep(0)

    async def _tell(self, batch: list[Any]) -> None:
        if self._many(batch):
            if any(isinstance(e, ev.MessagesDeleted) and e.everything for e in batch):
                self.broadcast("truncate", None)
            else:
                self.broadcast("prune", None)
            self._stats_soon()
            return
        new: list[int] = []
        changed: list[int] = []
        for event in batch:
            if isinstance(event, ev.MessageStored) and not event.rejected:
                new.append(event.message_id)
            elif isinstance(event, ev.MessagesDeleted):
                if event.everything:
                    self.broadcast("truncate", None)
                for message_id in event.message_ids:
                    self.broadcast("delete", {"ID": str(message_id)})
            elif isinstance(event, ev.MessagesChanged):
                changed.extend(event.message_ids)
            elif isinstance(event, ev.EventsLost):
                self.broadcast("prune", None)
        if new or changed:
            summaries, records = await self.sink.read(
                _summaries, mailpit_api.sink_snippets(self.sink), new, changed
            )
            for summary in summaries:
                self.broadcast("new", summary)
            for record in records:
                self.broadcast(
                    "update", {"ID": str(record.id), "Read": record.seen, "Tags": record.tags}
                )
        self._stats_soon()

    @staticmethod
    def _many(batch: list[Any]) -> bool:
        count = 0
        for event in batch:
            if isinstance(event, ev.MessagesDeleted | ev.MessagesChanged):
                count += len(event.message_ids)
            elif isinstance(event, ev.MessageStored):
                count += 1
        return count > PRUNE_OVER

    def _stats_soon(self) -> None:
        if self.stats_due is None:
            loop = asyncio.get_running_loop()
            self.stats_due = loop.call_later(STATS_DELAY, self._spawn_stats)

    def _spawn_stats(self) -> None:
        self.stats_due = None
        self._spawn(self.stats())

    async def stats(self) -> None:
        def counts(reader: Reader) -> tuple[int, int]:
            return reader.count_messages(), reader.unread_count()

        try:
            total, unread = await self.sink.read(counts)
        except Exception as error:
            log.warning("Mailpit stats: %s", error)
            return
        self.broadcast("stats", {"Total": total, "Unread": unread, "Version": __version__})

    async def close(self) -> None:
        self.closed = True
        self.service.streams.discard(self.close)
        if _hubs.get(self.service) is self:
            del _hubs[self.service]
        self.subscription.close()
        self.task.cancel()
        if self.stats_due is not None:
            self.stats_due.cancel()
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        self.clients.clear()
        for task in list(self.tasks):
            task.cancel()


_hubs: weakref.WeakKeyDictionary[HttpService, MailpitHub] = weakref.WeakKeyDictionary()


def _hub(service: HttpService, sink: Sink) -> MailpitHub:
    found = _hubs.get(service)
    if found is None or found.closed:  # (closed on a reload of the users: a new one)
        found = _hubs[service] = MailpitHub(sink, service)
        service.streams.add(found.close)
    return found


@routes.get(
    "/api/events",
    "Mailpit's WebSocket of events: new, delete, truncate, update, stats, prune",
    content_type="application/json",
    responses={"400": "not a WebSocket upgrade", "503": "the server is stopping"},
)
async def mailpit_events(request: web.Request) -> web.StreamResponse:
    sink, service = request.app[SINK], request.app[SERVICE]
    if service.stopping.is_set():
        raise ApiError(503, "the server is stopping")
    ws = web.WebSocketResponse(heartbeat=PING_SECONDS)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "expected a WebSocket upgrade (Connection: Upgrade)")
    await ws.prepare(request)
    hub = _hub(service, sink)
    client = MailpitClient(ws)
    hub.clients.add(client)
    pump = asyncio.create_task(client.pump())
    try:
        async for _message in ws:  # as Mailpit's readPump: what the client says is ignored
            pass
    finally:
        hub.clients.discard(client)
        pump.cancel()
    return ws
