"""Listeners on the running loop, the set of live sessions, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from mailsink.config import Settings, is_loopback
from mailsink.faults.policy import Policy, Rule
from mailsink.faults.presets import BY_KEY, preset_rules
from mailsink.smtp.handler import SmtpHandler, auth_user
from mailsink.smtp.protocol import SmtpConnection
from mailsink.store.db import (
    IncomingMessage,
    Operation,
    Store,
    Stored,
    StoreError,
    WriterLost,
    committed_message,
    insert_session,
    now_ms,
    record_server,
    store_message,
)
from mailsink.store.db import update_session as write_session
from mailsink.text import visible
from mailsink.tls import server_context
from mailsink.units import format_bytes

log = logging.getLogger("mailsink")

# A message's log line names this many recipients, then counts the rest, and cuts the subject.
_LOGGED_RECIPIENTS = 3
_LOGGED_SUBJECT = 200
# A session write lost with a dying writer is sent again to the next one, this many times at most.
_RESENDS = 3


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
        **fields,
    )


class SmtpServer:
    """The SMTP listener(s) of one mailsink, sharing the loop with whatever else runs (the TUI)."""

    ident = "ESMTP mailsink"

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        # Changes made while running (the TUI's Faults screen), kept over config reloads.
        self.toggles: dict[str, bool] = {}
        self.policy = Policy(self._rules(), settings.faults.seed)
        # Called after every change of the rules in force (reload, toggle, preset).
        self.policy_listeners: list[Callable[[], None]] = []
        self.store = store
        self.tls_context: ssl.SSLContext | None = None
        self.handler = SmtpHandler(self)
        self.sessions: set[SmtpConnection] = set()
        self.addresses: list[tuple[str, int]] = []
        self.labels: list[str] = []  # what each address serves: "SMTP" or "SMTPS, implicit TLS"
        self._servers: list[asyncio.base_events.Server] = []
        self._idle = asyncio.Event()
        self._store_refused = False  # the last session row could not be handed to the store
        self._started_at = 0
        self._idle.set()

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
        if tls.enabled:
            self.tls_context = await asyncio.to_thread(server_context, tls, self.store.directory)
        backlog = await asyncio.to_thread(listen_backlog)
        self._started_at = now_ms()
        listeners = [(smtp.port, None, "SMTP")]
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
        """Swap in a reloaded config; it applies from each connection's next command."""
        old = self.settings
        self.settings = settings
        names = {rule.name for rule in (*preset_rules(), *settings.rules)}
        self.toggles = {name: on for name, on in self.toggles.items() if name in names}
        if settings.rules != old.rules or settings.faults.seed != old.faults.seed:
            self._new_policy()
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

    # ---- run-time control of the rules (the TUI's Faults screen)

    def _rules(self) -> list[Rule]:
        """Presets (off unless switched on) before the config's rules; the switches applied."""
        return [
            dataclasses.replace(rule, enabled=self.toggles.get(rule.name, rule.enabled))
            for rule in (*preset_rules(), *self.settings.rules)
        ]

    def _new_policy(self, *, same_random: bool = False) -> None:
        policy = Policy(self._rules(), self.settings.faults.seed)
        policy.carry_over(self.policy, same_random=same_random)
        self.policy = policy
        for listener in self.policy_listeners:
            listener()

    def set_rule_enabled(self, name: str, enabled: bool) -> None:
        """Switch a rule (a preset or the config's) on or off from the next SMTP command on.
        Its hit count stays, and so does the sequence of a seeded `probability`."""
        if name not in {rule.name for rule in self.policy.rules}:
            raise KeyError(name)
        self.toggles[name] = enabled
        self._new_policy(same_random=True)

    def toggle_preset(self, key: str) -> bool:
        """Switch a preset (mailsink.faults.presets) on or off; True when it is now on."""
        name = BY_KEY[key].name
        enabled = not next(rule.enabled for rule in self.policy.rules if rule.name == name)
        self.set_rule_enabled(name, enabled)
        return enabled

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
                    protocol.transport.abort()
            # connection_lost runs on the next loop iterations; it queues the sessions' last
            # writes, which must reach the store before it closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
        self._servers.clear()

    # ---- called by the protocol

    def session_started(self, protocol: SmtpConnection) -> None:
        self.sessions.add(protocol)
        self._idle.clear()
        self._record(
            partial(
                insert_session,
                session_id=protocol.session_id,
                started_at=protocol.started_at,
                peer=protocol.peer,
            )
        )

    def session_progress(self, protocol: SmtpConnection) -> None:
        """A live session's new transcript lines and what it is at, which nobody waits for:
        they share the next commit (see store.writer.LAZY_COMMIT)."""
        events = protocol.transcript.take()
        if not events:
            return  # its message's commit took them
        try:
            self._write_kept(_session_write(protocol, events, state=protocol.state))
        except StoreError:
            protocol.transcript.restore(events)  # for the session's next write

    def session_ended(self, protocol: SmtpConnection) -> None:
        self.sessions.discard(protocol)
        if not self.sessions:
            self._idle.set()
        self._record(
            _session_write(
                protocol,
                protocol.transcript.take(),
                end_reason=protocol.end_reason,
                ended_at=int(time.time() * 1000),
            )
        )
        seconds = (int(time.time() * 1000) - protocol.started_at) / 1000
        log.info(
            "session %s %s ended (%s) after %.2fs: %d message(s), %d transcript line(s)",
            protocol.session_id,
            protocol.peer,
            protocol.end_reason,
            seconds,
            len(protocol.message_ids),
            protocol.transcript.count,
        )

    def _record(self, operation: Operation) -> None:
        """A session's row, which nobody waits for: a store that cannot take it is logged (once)
        and the session goes on; its DATA will get 451."""
        try:
            self._write_kept(operation)
        except StoreError as error:
            self._refused(error)
        else:
            self._store_refused = False

    def _refused(self, error: BaseException) -> None:
        if not self._store_refused:
            log.error("session rows are not being stored: %s", error)
        self._store_refused = True

    def _write_kept(self, operation: Operation, resends: int = 0) -> None:
        """Submit a session write that nobody waits for, kept until the writer answers: one
        the writer took with it when it died is sent again to the next writer, as it was.
        Its transcript lines have left the Transcript, and putting them back could not keep
        them in order with what later writes (a message, the session's end) have taken since;
        sent again as the same chunk, a write that had in fact committed is merely replaced
        (transcript chunks are keyed by their first line)."""
        future = asyncio.get_running_loop().create_future()
        self.store.submit(operation, future)
        future.add_done_callback(partial(self._kept_answered, operation, resends))

    def _kept_answered(
        self, operation: Operation, resends: int, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            return
        if isinstance(error, WriterLost) and resends < _RESENDS:
            try:
                self._write_kept(operation, resends + 1)
                return
            except StoreError as refused:
                error = refused
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
        """Commit the message with the transcript so far; returns once it is on disk."""
        events = protocol.transcript.take()
        write = partial(
            store_message,
            session_id=protocol.session_id,
            events=events,
            started_at=protocol.started_at,
            peer=protocol.peer,
            message=message,
        )
        try:
            stored: Stored = await self.store.run(write)
        except WriterLost:
            found = await self._committed_anyway(protocol, message)
            if found is None:
                protocol.transcript.restore(events)
                raise
            stored = found
        except BaseException:
            protocol.transcript.restore(events)
            raise
        protocol.message_ids.append(stored.id)
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
        return stored
