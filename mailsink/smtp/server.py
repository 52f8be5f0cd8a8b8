"""The SMTP listeners on the running loop, the set of live sessions, and graceful shutdown;
the sessions' rows and messages handed to the store, and what happens told on the event bus.

Fault rules are not decided here (mailsink.faults.controls, asked by mailsink.smtp.handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sqlite3
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from mailsink.clock import now_ms
from mailsink.config import Settings, is_loopback
from mailsink.events import (
    EventBus,
    LiveSession,
    MessageStored,
    SessionChanged,
    SessionEnded,
    SessionStarted,
)
from mailsink.faults.controls import FaultControls
from mailsink.mail.envelope import Envelope
from mailsink.smtp import replies
from mailsink.smtp.handler import SmtpHandler
from mailsink.smtp.protocol import SmtpConnection, auth_user
from mailsink.smtp.transcript import DATA, NOTE, SERVER, Transcript
from mailsink.store import (
    IncomingMessage,
    Operation,
    Store,
    Stored,
    StoreError,
    WriterLost,
    committed_message,
)
from mailsink.store.operations import insert_session, record_server, store_message
from mailsink.store.operations import update_session as write_session
from mailsink.text import visible
from mailsink.tls import server_context
from mailsink.units import format_bytes

log = logging.getLogger("mailsink")

# A message's log line names this many recipients, then counts the rest, and cuts the subject.
_LOGGED_RECIPIENTS = 3
_LOGGED_SUBJECT = 200
# A session write lost with a dying writer is sent again to the next one, this many times at most.
_RESENDS = 3
# The end reason of the session of a message another face handed over (SmtpServer.inject).
INJECTED_END = "api"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def listen_backlog() -> int:
    """The listen queue: the system's maximum (net.core.somaxconn on Linux), at least 1024.
    asyncio's default of 100 stalls a burst of connections for a SYN retry (1 s) every ~100."""
    backlog = max(1024, socket.SOMAXCONN)
    # Elsewhere than Linux the kernel caps the value itself.
    with contextlib.suppress(OSError, ValueError), open("/proc/sys/net/core/somaxconn") as limit:
        backlog = max(backlog, int(limit.read()))
    return min(backlog, 65535)


def recipients_text(recipients: list[str]) -> str:
    """The first few recipients, then how many more (a message may have 50 000)."""
    shown = ", ".join(f"<{visible(r, emoji=False)}>" for r in recipients[:_LOGGED_RECIPIENTS])
    more = len(recipients) - _LOGGED_RECIPIENTS
    return f"{shown} and {more} more" if more > 0 else shown


def _session_write(protocol: SmtpConnection, events: list[Any], **fields: Any) -> Operation:
    session = protocol.session
    return partial(
        write_session,
        session_id=protocol.session_id,
        events=events,
        started_at=protocol.started_at,
        peer=protocol.peer,
        helo=session.host_name if session else None,
        tls=protocol.tls,
        auth_user=auth_user(session) if session else None,
        last_reply=protocol.last_reply,
        faults=protocol.faults_fired,
        refusals=protocol.refusals,
        last_refusal=protocol.last_refusal,
        **fields,
    )


class SmtpServer:
    """The SMTP listener(s) of one mailsink, sharing the loop with whatever else runs (the TUI).
    `faults` decides the replies that fault rules change; `events` hears about every session
    and message."""

    ident = "ESMTP mailsink"

    def __init__(
        self, settings: Settings, store: Store, faults: FaultControls, events: EventBus
    ) -> None:
        self.settings = settings
        self.store = store
        self.faults = faults
        self.events = events
        self.tls_context: ssl.SSLContext | None = None
        self.handler = SmtpHandler(self)
        self._live: dict[int, SmtpConnection] = {}  # by session id
        # Ended, their last row not yet committed: still shown as live sessions meanwhile, so
        # that a view of the store and of the live sessions never misses one.
        self._ending: dict[int, SmtpConnection] = {}
        # Messages being committed, by session id: a client that leaves meanwhile cancels the
        # command loop, not the commit, and its session ends once the commit has answered.
        # A message's save on each connection, settled once its outcome is told (see
        # session_ended).
        self._saving: dict[int, asyncio.Future[None]] = {}
        self.addresses: list[tuple[str, int]] = []
        self.labels: list[str] = []  # what each address serves: "SMTP" or "SMTPS, implicit TLS"
        self._servers: list[asyncio.base_events.Server] = []
        self._idle = asyncio.Event()
        self._store_refused = False  # the last session row could not be handed to the store
        self._started_at = 0
        self._idle.set()
        # Sessions of messages handed over by another face (inject), until their end commits.
        self._injected: dict[int, LiveSession] = {}

    @property
    def sessions(self) -> set[SmtpConnection]:
        """The connections being served (for mailsink.smtp and its tests: faces use
        `live_sessions`)."""
        return set(self._live.values())

    def live_sessions(self) -> list[LiveSession]:
        """Snapshots of the sessions being served and of those that ended but whose last row
        the store has not committed yet, by session id."""
        connections = [*self._live.values(), *self._ending.values()]
        snapshots = [*(c.snapshot() for c in connections), *self._injected.values()]
        return sorted(snapshots, key=lambda session: session.id)

    def live_session(self, session_id: int) -> LiveSession | None:
        """The session's snapshot while it is served or its end is not yet committed; else
        None (then the store has it, if anything does)."""
        connection = self._live.get(session_id) or self._ending.get(session_id)
        if connection is None:
            return self._injected.get(session_id)
        return connection.snapshot()

    def _protocol(self, implicit_tls: bool = False) -> SmtpConnection:
        tls = self.settings.tls
        offers_starttls = not implicit_tls and (tls.starttls or tls.require)
        return SmtpConnection(
            self.handler,
            self,
            # Read live from the settings; given here so that aiosmtpd does not look up the
            # machine's name (a blocking DNS query) for every connection.
            hostname=self.settings.smtp.hostname,
            enable_SMTPUTF8=True,
            decode_data=False,
            ident=self.ident,
            tls_context=self.tls_context if offers_starttls else None,
            authenticator=self.handler.authenticate,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        smtp, tls = self.settings.smtp, self.settings.tls
        loop = asyncio.get_running_loop()
        # A first connection confirms that aiosmtpd still assigns the live settings. Made here,
        # without a client, a mismatch stops the start; in the listener's protocol factory it
        # would only be logged (or not at all), each client left hanging.
        self._protocol()
        if tls.enabled:
            self.tls_context = await asyncio.to_thread(server_context, tls, self.store.directory)
        backlog = await asyncio.to_thread(listen_backlog)
        self._started_at = now_ms()
        listeners: list[tuple[int, ssl.SSLContext | None, str]] = [(smtp.port, None, "SMTP")]
        if tls.implicit_port:
            listeners.append((tls.implicit_port, self.tls_context, "SMTPS, implicit TLS"))
        for port, context, label in listeners:
            factory = partial(self._protocol, implicit_tls=context is not None)
            server = await loop.create_server(
                factory, smtp.host, port, ssl=context, backlog=backlog
            )
            self._servers.append(server)
            for sock in server.sockets:
                address = sock.getsockname()[:2]
                self.addresses.append(address)
                self.labels.append(label)
                log.info("listening on %s:%s (%s)", address[0], address[1], label)
        self._record_server()
        if tls.starttls or tls.require:
            log.info("STARTTLS offered%s", " and required" if tls.require else "")
        if not is_loopback(smtp.host):
            log.warning(
                "listening on %s: other machines can reach this server (the default is 127.0.0.1)",
                smtp.host,
            )

    def apply_settings(self, settings: Settings) -> None:
        """Swap in a reloaded config; it applies from each connection's next command. The
        fault rules are the fault controls' (the caller reloads them too)."""
        old = self.settings
        self.settings = settings
        self.store.max_messages = settings.storage.max_messages
        if settings.storage.max_messages != old.storage.max_messages:
            self._record_server()

    def _record_server(self) -> None:
        """Where this server listens, for views of the store from other processes."""
        listeners = [
            (label.split(",")[0], str(host), int(port))
            for (host, port), label in zip(self.addresses, self.labels, strict=True)
        ]
        self._record(
            partial(
                record_server,
                pid=os.getpid(),
                started_at=self._started_at,
                addresses=listeners,
                max_messages=self.settings.storage.max_messages,
            )
        )

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening, let messages in flight finish (up to `grace` s), close the rest."""
        for server in self._servers:
            server.close()
        for protocol in list(self.sessions):
            protocol.shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            for protocol in list(self.sessions):
                protocol.end_reason = protocol.end_reason or "server_shutdown"
                if protocol.transport is not None:
                    cast(asyncio.Transport, protocol.transport).abort()
            # connection_lost runs on the next loop iterations; it queues the sessions' last
            # writes, which must reach the store before it closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
        self._servers.clear()

    # ---- called by the protocol

    def session_started(self, protocol: SmtpConnection) -> None:
        self._live[protocol.session_id] = protocol
        self._idle.clear()
        self._record(
            partial(
                insert_session,
                session_id=protocol.session_id,
                started_at=protocol.started_at,
                peer=protocol.peer,
            )
        )
        if self.events.wants(SessionStarted):
            self.events.publish(SessionStarted(protocol.snapshot()))

    def session_progress(self, protocol: SmtpConnection) -> None:
        """A live session's new transcript lines and what it is at, which nobody waits for:
        they share the next commit (see store.writer.LAZY_COMMIT)."""
        transcript = protocol.transcript
        events = transcript.take()
        if not events:
            return  # its message's commit took them
        try:
            write = _session_write(protocol, events, state=protocol.state)
            self._write_kept(write, partial(transcript.settled, events))
        except StoreError:
            transcript.restore(events)  # for the session's next write
        if self.events.wants(SessionChanged):
            self.events.publish(SessionChanged(protocol.snapshot()))

    def session_ended(self, protocol: SmtpConnection) -> None:
        """The connection is gone. With a message still committing, the session ends once the
        commit has answered (its MessageStored first, and the id in its last row and in
        SessionEnded); meanwhile it counts as live and a server stop waits for it."""
        saving = self._saving.get(protocol.session_id)
        if saving is not None and not saving.done():
            saving.add_done_callback(lambda _: self._end_session(protocol))
            return
        self._end_session(protocol)

    def _end_session(self, protocol: SmtpConnection) -> None:
        session_id = protocol.session_id
        self._live.pop(session_id, None)
        if not self._live:
            self._idle.set()
        self._ending[session_id] = protocol
        events = protocol.transcript.take()
        ended_at = protocol.ended_at if protocol.ended_at is not None else now_ms()
        self._record(
            _session_write(protocol, events, end_reason=protocol.end_reason, ended_at=ended_at),
            partial(self._end_settled, protocol, events),
        )
        if self.events.wants(SessionEnded):
            self.events.publish(SessionEnded(protocol.snapshot()))
        log.info(
            "session %s %s ended (%s) after %.2fs: %d message(s), %d transcript line(s)",
            session_id,
            protocol.peer,
            protocol.end_reason,
            (ended_at - protocol.started_at) / 1000,
            len(protocol.message_ids),
            protocol.transcript.count,
        )

    def _end_settled(self, protocol: SmtpConnection, events: list[Any]) -> None:
        """The store answered for the session's last row (committed, or failed for good):
        from now on it is the store's to show."""
        protocol.transcript.settled(events)
        if self._ending.get(protocol.session_id) is protocol:
            del self._ending[protocol.session_id]

    def _record(self, operation: Operation, settled: Callable[[], None] | None = None) -> None:
        """A session's row, which nobody waits for: a store that cannot take it is logged (once)
        and the session goes on; its DATA will get 451. `settled` is called once the store has
        answered for it, or at once when the store refuses it."""
        try:
            self._write_kept(operation, settled)
        except StoreError as error:
            self._refused(error)
            if settled is not None:
                settled()
        else:
            self._store_refused = False

    def _refused(self, error: BaseException) -> None:
        if not self._store_refused:
            log.error("session rows are not being stored: %s", error)
        self._store_refused = True

    def _write_kept(
        self,
        operation: Operation,
        settled: Callable[[], None] | None = None,
        resends: int = 0,
    ) -> None:
        """Submit a session write that nobody waits for, kept until the writer answers: one
        the writer took with it when it died is sent again to the next writer, as it was.
        Its transcript lines have left the Transcript, and putting them back could not keep
        them in order with what later writes (a message, the session's end) have taken since;
        sent again as the same chunk, a write that had in fact committed is merely replaced
        (transcript chunks are keyed by their first line). `settled` is called once the
        writer has answered for good (committed, or failed and not sent again)."""
        future = asyncio.get_running_loop().create_future()
        self.store.submit(operation, future)
        future.add_done_callback(partial(self._kept_answered, operation, settled, resends))

    def _kept_answered(
        self,
        operation: Operation,
        settled: Callable[[], None] | None,
        resends: int,
        future: asyncio.Future[Any],
    ) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, WriterLost) and resends < _RESENDS:
            try:
                self._write_kept(operation, settled, resends + 1)
                return
            except StoreError as refused:
                error = refused
        if settled is not None:
            settled()
        if error is None:
            return
        if isinstance(error, StoreError):
            self._refused(error)
        else:
            log.error("store operation failed: %s", error)

    async def _committed_anyway(
        self, protocol: SmtpConnection, message: IncomingMessage
    ) -> Stored | None:
        """After the writer died with this session's message unanswered: the message, if its
        transaction committed all the same (a 451 would make the client deliver it twice)."""
        after = protocol.message_ids[-1] if protocol.message_ids else 0
        try:
            found = await asyncio.to_thread(committed_message, self.store.path, message, after)
        except (StoreError, sqlite3.Error) as error:
            log.error(
                "session %s: cannot tell whether a message was stored: %s",
                protocol.session_id,
                error,
            )
            return None
        if found is not None:
            log.info(
                "session %s: message %s had committed when the writer ended; answering 250",
                protocol.session_id,
                found.id,
            )
        return found

    async def save_message(self, protocol: SmtpConnection, message: IncomingMessage) -> Stored:
        """Commit the message with the transcript so far; returns once it is on disk.

        A client that leaves meanwhile (aiosmtpd then cancels the command loop, which waits
        here) takes no reply with it, but the message may still commit: it is then told and
        counted all the same, and its session ends only after that (see session_ended)."""
        events = protocol.transcript.take()
        write = partial(
            store_message,
            session_id=protocol.session_id,
            events=events,
            started_at=protocol.started_at,
            peer=protocol.peer,
            message=message,
        )
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._saving[protocol.session_id] = settled
        nobody = partial(self._outcome_for_nobody, protocol, message, events, settled)
        handed_over = False  # the outcome is a callback's to tell (the waiter was cancelled)
        try:
            committing: asyncio.Future[Stored] = self.store.begin(write)
            try:
                # Shielded: a cancelled waiter must not cancel the commit's future, which the
                # writer answers whatever happens to the connection.
                stored: Stored = await asyncio.shield(committing)
            except asyncio.CancelledError:
                committing.add_done_callback(nobody)
                handed_over = True
                raise
            except WriterLost:
                looking = asyncio.ensure_future(self._committed_anyway(protocol, message))
                try:
                    found = await asyncio.shield(looking)
                except asyncio.CancelledError:
                    looking.add_done_callback(nobody)
                    handed_over = True
                    raise
                if found is None:
                    protocol.transcript.restore(events)
                    raise
                stored = found
            except BaseException:
                protocol.transcript.restore(events)
                raise
            self._stored(protocol, message, events, stored)
            return stored
        finally:
            if not handed_over:
                self._settle(protocol.session_id, settled)

    def _settle(self, session_id: int, settled: asyncio.Future[None]) -> None:
        if self._saving.get(session_id) is settled:
            del self._saving[session_id]
        if not settled.done():
            settled.set_result(None)

    def _outcome_for_nobody(
        self,
        protocol: SmtpConnection,
        message: IncomingMessage,
        events: list[Any],
        settled: asyncio.Future[None],
        outcome: asyncio.Future[Any],
    ) -> None:
        """What became of the save of a message whose client left before its reply (the
        commit's answer, or the look-up after the writer died): told and counted if it was
        stored, its transcript lines kept for the session's end row if not; then the session
        may end."""
        handed_over = False  # to the look-up after a writer's death, which settles it
        try:
            if outcome.cancelled():
                protocol.transcript.restore(events)
                return
            error = outcome.exception()
            if isinstance(error, WriterLost):
                looking = asyncio.ensure_future(self._committed_anyway(protocol, message))
                looking.add_done_callback(
                    partial(self._outcome_for_nobody, protocol, message, events, settled)
                )
                handed_over = True
                return
            result = None if error is not None else outcome.result()
            if result is None:  # failed, or not found committed after all
                protocol.transcript.restore(events)
                why = error or "the store's writer ended before it answered"
                log.error("session %s: a message was not stored: %s", protocol.session_id, why)
                return
            self._stored(protocol, message, events, result)
        finally:
            if not handed_over:
                self._settle(protocol.session_id, settled)

    def _stored(
        self, protocol: SmtpConnection, message: IncomingMessage, events: list[Any], stored: Stored
    ) -> None:
        protocol.transcript.settled(events)
        protocol.message_ids.append(stored.id)
        bus = self.events
        if bus.wants(MessageStored):
            rejected = message.status == "rejected"
            bus.publish(MessageStored(stored.id, protocol.session_id, rejected))
        if bus.wants(SessionChanged):
            bus.publish(SessionChanged(protocol.snapshot()))
        envelope = message.envelope
        log.info(
            "message %s from <%s> to %s, %s, subject %r%s",
            stored.id,
            visible(envelope.mail_from, emoji=False),
            recipients_text(envelope.rcpt_to),
            format_bytes(len(message.raw)),
            _cut(visible(stored.subject or ""), _LOGGED_SUBJECT),
            f" [{', '.join(sorted(set(stored.finding_kinds)))}]" if stored.finding_kinds else "",
        )

    # ---- messages handed over by another face

    def _injected_settled(self, session_id: int) -> None:
        self._injected.pop(session_id, None)

    async def inject(self, raw: bytes, envelope: Envelope, note: str) -> Stored:
        """Store a message that came by another way than SMTP (POST /api/v1/send) as an SMTP
        client's is stored: the same write (store_message: findings, X-Tags, plus-address tags
        as configured), in a session of its own whose peer and HELO are the envelope's (saying
        where it came from) and whose transcript is `note`, told on the bus as a session and a
        message are (SessionStarted, TranscriptLine, MessageStored, SessionChanged,
        SessionEnded). Returns once the message has committed (the session's end row follows
        in the next commit, as an SMTP session's does); a store that fails raises as it would
        for SMTP (StoreError, WriterLost)."""
        session_id = self.store.new_session_id()
        started_at = now_ms()
        peer = envelope.peer or "api"
        transcript = Transcript()
        transcript.publish_to(self.events, session_id)
        message = IncomingMessage(
            session_id=session_id,
            envelope=envelope,
            raw=raw,
            received_at=started_at,
            check_addresses=self.settings.validation.addresses != "off",
            plus_tags=self.settings.tags.plus_addresses,
        )
        live = LiveSession(
            id=session_id,
            peer=peer,
            started_at=started_at,
            helo=envelope.helo,
            state="DATA",
            tls=envelope.tls,
            auth_user=envelope.auth_user,
            last_reply=None,
            faults_fired=0,
            message_ids=(),
            transcript_lines=0,
            unwritten=(),
        )
        self._injected[session_id] = live
        handed_over = False  # the end row's answer takes the snapshot away
        try:
            if self.events.wants(SessionStarted):
                self.events.publish(SessionStarted(live))
            transcript.add(NOTE, note)
            transcript.add(DATA, f"[message data: {len(raw)} bytes]")
            events = transcript.take()
            self._injected[session_id] = live = dataclasses.replace(
                live, transcript_lines=transcript.count, unwritten=tuple(events)
            )
            write = partial(
                store_message,
                session_id=session_id,
                events=events,
                started_at=started_at,
                peer=peer,
                message=message,
            )
            # Shielded: a request given up on must not cancel a commit the writer will answer.
            stored: Stored = await asyncio.shield(self.store.begin(write))
            reply = replies.queued(stored.id)
            transcript.add(SERVER, reply)
            live = dataclasses.replace(
                live, message_ids=(stored.id,), last_reply=reply, state="api"
            )
            self._injected[session_id] = live
            if self.events.wants(MessageStored):
                self.events.publish(MessageStored(stored.id, session_id, False))
            if self.events.wants(SessionChanged):
                self.events.publish(SessionChanged(live))
            ended_at = now_ms()
            last = transcript.take()
            end = partial(
                write_session,
                session_id=session_id,
                events=last,
                started_at=started_at,
                peer=peer,
                helo=envelope.helo,
                tls=envelope.tls,
                auth_user=envelope.auth_user,
                last_reply=reply,
                end_reason=INJECTED_END,
                ended_at=ended_at,
            )
            ended = dataclasses.replace(
                live,
                transcript_lines=transcript.count,
                unwritten=tuple(last),
                end_reason=INJECTED_END,
                ended_at=ended_at,
            )
            # As an SMTP session's end row: not waited for (it shares the next commit), its
            # snapshot standing in for it until the store has answered.
            self._injected[session_id] = ended
            self._record(end, partial(self._injected_settled, session_id))
            handed_over = True
            if self.events.wants(SessionEnded):
                self.events.publish(SessionEnded(ended))
        finally:
            if not handed_over:
                self._injected.pop(session_id, None)
        log.info(
            "message %s from <%s> to %s, %s, by %s",
            stored.id,
            visible(envelope.mail_from, emoji=False),
            recipients_text(envelope.rcpt_to),
            format_bytes(len(raw)),
            visible(peer, emoji=False),
        )
        return stored
