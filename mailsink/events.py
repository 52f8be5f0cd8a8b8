"""What happens in a running sink, as frozen records on one stream.

The SMTP server, the fault controls, the config watcher and the sink's own changes (deletions,
read state, tags) publish here; every face (the TUI, the HTTP API, test fixtures) subscribes
instead of polling:

    async with sink.subscribe(MessageStored, SessionEnded) as events:
        async for event in events:
            ...

A subscription has one reader: one task awaits its events (a second task awaiting `get()` on
it at the same time gets RuntimeError; faces that share events each subscribe). Closing it ends
the reader's `async for`, or its waiting `get()` with StopAsyncIteration.

Publishing happens on the sink's event loop and never waits: each subscription has a bounded
queue, and a subscriber that falls that far behind gets one `EventsLost` (how many it missed)
in place of what overflowed, so it can read the store afresh. A kind of event that nobody
subscribes to costs a dict lookup (`EventBus.wants`), so the SMTP path builds no records for
an empty room.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

# One transcript line: (seq, at_ms, direction, text); direction is C, S, D or I
# (mailsink.smtp.transcript).
TranscriptEvent = tuple[int, int, str, str]


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A session as its connection knows it right now, which the store may not have yet."""

    id: int
    peer: str
    started_at: int
    helo: str | None
    state: str  # the command being answered, DATA while a message arrives, "connected"
    tls: bool
    auth_user: str | None
    last_reply: str | None
    faults_fired: int
    message_ids: tuple[int, ...]
    transcript_lines: int  # lines so far, written or not
    unwritten: tuple[TranscriptEvent, ...]  # the newest lines, not yet handed to the store
    end_reason: str | None = None  # set once the connection is gone
    ended_at: int | None = None
    refusals: int = 0  # 4xx/5xx replies refusing the client something (SessionRecord's too)
    last_refusal: str | None = None  # the last of them: what it answered, then the reply

    @property
    def live(self) -> bool:
        return self.end_reason is None


@dataclass(frozen=True, slots=True)
class MessageStored:
    """Committed: a 250 (or, for a message a fault rejected, its reply) follows."""

    message_id: int
    session_id: int
    rejected: bool


@dataclass(frozen=True, slots=True)
class MessagesDeleted:
    """`message_ids` went; `everything` when the store was cleared (they are then not listed)."""

    message_ids: tuple[int, ...]
    everything: bool = False


@dataclass(frozen=True, slots=True)
class MessagesChanged:
    """The read state or the tags of messages changed: of some of `message_ids` (those asked
    for: a gone one changed nothing), of any message when it is empty ("mark all read"). A
    face shows those rows afresh."""

    message_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MessageReleased:
    """A release of a message to the `[relay]` server was tried and recorded (the store's
    `releases` row `release_id`): `outcome` is "sent", "partial" (some recipients refused),
    "failed", or "retrying" (an automatic release that failed for now and will be tried
    again); `code` and `reply` are the upstream's last answer (code None: none came)."""

    message_id: int
    release_id: int
    outcome: str
    recipients: tuple[str, ...]
    upstream: str
    code: int | None
    reply: str
    trigger: str  # cli | tui | http | auto
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session: LiveSession


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """What a live session is at changed (published at most every 0.2 s a session, as its
    progress is written)."""

    session: LiveSession


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The connection is gone; its last row is on its way to the store. A message that was
    committing as the client went has been told (MessageStored) before, and is counted here."""

    session: LiveSession


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    session_id: int
    line: TranscriptEvent


@dataclass(frozen=True, slots=True)
class FaultFired:
    session_id: int
    rule: str
    stage: str
    action: str
    reply: str | None
    at: int


@dataclass(frozen=True, slots=True)
class RulesChanged:
    """The rules in force changed: `why` is "enabled", "disabled", "added", "removed",
    "reloaded" or "reset" (counters zeroed); `rule` the rule concerned, when there is one.
    An attached sink's link also says "refreshed": the server's rules fetched again (their
    hits, after firings)."""

    why: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """The config file changed and was applied; `restart` names the settings that need one."""

    path: str
    applied: tuple[str, ...]
    restart: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConfigRejected:
    """The config file changed and was not applied: the old settings stay."""

    path: str
    error: str


@dataclass(frozen=True, slots=True)
class StoreChanged:
    """The store changed in a way no other event says (another process wrote to it)."""


@dataclass(frozen=True, slots=True)
class ServerLinkChanged:
    """An attached sink's link to the store's server (mailsink.server_link.ServerLink) changed:
    `state` is "connecting", "live" (fault switching and live sessions through its HTTP API at
    `url`) or "unreachable" (`reason` says why; the store is still read)."""

    state: str
    url: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EventsLost:
    """This subscriber fell behind and missed `count` events: read the store afresh."""

    count: int


Event = (
    MessageStored
    | MessagesDeleted
    | MessagesChanged
    | MessageReleased
    | SessionStarted
    | SessionChanged
    | SessionEnded
    | TranscriptLine
    | FaultFired
    | RulesChanged
    | ConfigReloaded
    | ConfigRejected
    | StoreChanged
    | ServerLinkChanged
    | EventsLost
)

ALL_KINDS: tuple[type, ...] = Event.__args__

# Events a subscription holds before it starts dropping them (then one EventsLost).
QUEUE_LIMIT = 10_000


class Subscription:
    """An async iterator of the events of the kinds asked for, in the order they happened.

    It has one reader: while a task awaits `get()`, another task's `get()` raises RuntimeError
    (each would see only some of the events, and one of them might never wake). `close()`
    wakes a waiting `get()`, which then raises StopAsyncIteration, as it does once closed."""

    def __init__(self, bus: EventBus, kinds: frozenset[type], limit: int):
        self._bus = bus
        self.kinds = kinds
        self._limit = limit
        self._queue: collections.deque[Any] = collections.deque()
        self._lost = 0
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def _put(self, event: Any) -> None:
        if len(self._queue) >= self._limit:
            self._lost += 1
        else:
            if self._lost:
                self._queue.append(EventsLost(self._lost))
                self._lost = 0
            self._queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> list[Any]:
        """Every event waiting, at once (for a face that redraws once for many)."""
        events = list(self._queue)
        self._queue.clear()
        if self._lost:
            events.append(EventsLost(self._lost))
            self._lost = 0
        return events

    async def get(self) -> Any:
        """The next event; waits for one. RuntimeError if another task is waiting here;
        StopAsyncIteration once the subscription is closed and its events are read."""
        if self._waiter is not None:
            raise RuntimeError(
                "a Subscription has one reader: another task is already waiting in get() "
                "(subscribe again for a second reader)"
            )
        while not self._queue and not self._lost:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._queue:
            lost, self._lost = self._lost, 0
            return EventsLost(lost)
        return self._queue.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        return await self.get()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class EventBus:
    """Fans each published event out to the subscriptions that asked for its kind. Used from
    the event loop's thread only."""

    def __init__(self) -> None:
        self._by_kind: dict[type, list[Subscription]] = {}

    def wants(self, kind: type) -> bool:
        """Whether anyone listens for `kind`: check before building an event on a hot path."""
        return kind in self._by_kind

    def publish(self, event: Any) -> None:
        for subscription in self._by_kind.get(type(event), ()):
            subscription._put(event)

    def subscribe(self, *kinds: type, limit: int = QUEUE_LIMIT) -> Subscription:
        """Events of `kinds` (all kinds when none is given) from now on."""
        wanted = frozenset(kinds or ALL_KINDS)
        unknown = wanted - set(ALL_KINDS)
        if unknown:
            names = ", ".join(sorted(kind.__name__ for kind in unknown))
            raise TypeError(f"not an event kind: {names}")
        subscription = Subscription(self, wanted, limit)
        for kind in wanted:
            self._by_kind.setdefault(kind, []).append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        for kind in subscription.kinds:
            listeners = self._by_kind.get(kind)
            if listeners and subscription in listeners:
                listeners.remove(subscription)
                if not listeners:
                    del self._by_kind[kind]

    async def stream(self, *kinds: type) -> AsyncIterator[Any]:
        """`async for event in bus.stream(...)`: a subscription closed when the loop ends."""
        with self.subscribe(*kinds) as subscription:
            async for event in subscription:
                yield event
