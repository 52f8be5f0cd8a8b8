"""The one aiosmtpd handler: it decides each reply; DATA stores the message before 250.

Each hook first asks the fault controls (mailsink.faults.controls.FaultControls.consider, called
from here and nowhere else), which may delay, answer instead, or close the connection; then it
applies the configured server behaviour (address validation), then accepts. The connection
(mailsink.smtp.protocol) only speaks what is decided here.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as AiosmtpdEnvelope

from mailsink.clock import now_ms
from mailsink.faults.controls import FaultControls, Verdict
from mailsink.faults.policy import Context
from mailsink.mail.addresses import syntax_error
from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import header_values
from mailsink.smtp import replies
from mailsink.smtp.protocol import CramMd5Response, auth_user, introspected_names
from mailsink.store import IncomingMessage, StoreError

if TYPE_CHECKING:
    from mailsink.smtp.protocol import SinkEnvelope, SmtpConnection
    from mailsink.smtp.server import SmtpServer

log = logging.getLogger("mailsink.smtp")

# What a store that cannot take a message raises (a full disk, a locked or broken file, no
# writer): logged as one line with the cause. Anything else is a bug and gets its traceback.
_STORE_FAILURES = (StoreError, sqlite3.Error, OSError)

# Extensions aiosmtpd does not announce itself; mailsink implements each of them.
_EXTRA_EHLO = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN")


def envelope_of(protocol: SmtpConnection, session: Session, envelope: AiosmtpdEnvelope) -> Envelope:
    return Envelope(
        mail_from=envelope.mail_from or "",
        rcpt_to=list(envelope.rcpt_tos),
        mail_options=list(envelope.mail_options),
        rcpt_options=[list(p) for p in getattr(envelope, "rcpt_params", [])],
        helo=session.host_name or None,
        peer=protocol.peer,
        auth_user=auth_user(session),
        tls=protocol.tls,
        rcpt_refused=list(getattr(envelope, "rcpt_refused", ())),
    )


def has_bare_lf(data: bytes) -> bool:
    """Whether a line of `data` ends in LF alone (two counts in C: faster than a search)."""
    return data.count(b"\n") != data.count(b"\r\n")


async def _has_bare_lf(data: bytes) -> bool:
    # Some 20 ms for the largest message: off the loop beyond a MiB.
    if len(data) > 1024 * 1024:
        return await asyncio.to_thread(has_bare_lf, data)
    return has_bare_lf(data)


def _size_param(options: list[str]) -> int | None:
    for option in options:
        if option.startswith("SIZE="):
            return int(option[5:])
    return None


def _log_store_failure(protocol: SmtpConnection, what: str, error: Exception) -> None:
    if isinstance(error, _STORE_FAILURES):
        cause = str(error) if isinstance(error, StoreError) else f"{type(error).__name__}: {error}"
        log.error("session %s: %s: %s", protocol.session_id, what, cause)
    else:
        log.exception("session %s: %s", protocol.session_id, what)


def _context(protocol: SmtpConnection, stage: str, known: dict[str, Any]) -> Context:
    """What a fault rule can match on at this point of the session; `known` adds to it."""
    session = protocol.session
    envelope: SinkEnvelope = protocol.envelope  # type: ignore[assignment]
    peer = session.peer if session else None
    defaults: dict[str, Any] = {
        "peer_ip": str(peer[0]) if isinstance(peer, tuple) else "",
        "helo": session.host_name if session else None,
        "authenticated": bool(session and session.authenticated),
        "sender": envelope.mail_from if envelope.mail_given else None,
        "recipients": tuple(envelope.rcpt_tos),
    }
    return Context(stage=stage, **{**defaults, **known})


def _answering_rule(verdict: Verdict) -> str | None:
    """The rule whose reply `verdict` sends: the last that fired (those before it only
    waited)."""
    return verdict.fired[-1] if verdict.answers and verdict.fired else None


class SmtpHandler:
    def __init__(self, server: SmtpServer):
        self.server = server

    @property
    def faults(self) -> FaultControls:
        return self.server.faults

    # ---- injected faults: the one way to them

    async def _verdict(self, protocol: SmtpConnection, stage: str, **known: Any) -> Verdict | None:
        """Ask the fault controls about the reply due at `stage`; what fired goes into the
        transcript and its delay is waited out here. `known` adds to what rules can match on
        (the address, the size, ...)."""
        faults = self.faults
        if not faults.active_at(stage):
            return None  # the common case: no rule for this stage, no context to build
        verdict = faults.consider(stage, _context(protocol, stage, known), protocol.session_id)
        if verdict is None:
            return None
        protocol.faults_fired += len(verdict.fired)
        for note in verdict.notes:
            protocol.note(note)
        if verdict.delay:
            await protocol.wait(verdict.delay)
        return verdict

    @staticmethod
    def _carry_out(protocol: SmtpConnection, verdict: Verdict | None) -> str | None:
        """Have the connection do what `verdict` says: returns the reply to send instead of
        the normal one (NO_REPLY once the connection is closed without one), or None to carry
        on."""
        if verdict is None or not verdict.answers or protocol.transport is None:
            return None
        if verdict.end_reason is not None:
            protocol.end_reason = verdict.end_reason
        if verdict.then == "drop":
            return protocol.drop()
        close = verdict.then == "close"
        reply = protocol.reply_as_configured(verdict.reply_lines, then_close=close)
        return replies.Decided(reply, "fault_rule", _answering_rule(verdict))

    async def _fault(self, protocol: SmtpConnection, stage: str, **known: Any) -> str | None:
        return self._carry_out(protocol, await self._verdict(protocol, stage, **known))

    async def refuse_connect(self, protocol: SmtpConnection) -> str | None:
        """The reply that takes the place of the greeting (after it, only QUIT is served),
        NO_REPLY when the connection was closed without one; None to greet."""
        return await self._fault(protocol, "connect")

    async def refuse_auth(self, protocol: SmtpConnection) -> str | None:
        """The reply that refuses an AUTH command before its exchange starts; None to go on."""
        return await self._fault(protocol, "auth")

    def _address_problem(self, address: str, smtputf8: bool) -> str | None:
        """Why [validation] addresses = "reject" refuses `address`, or None."""
        if self.server.settings.validation.addresses != "reject":
            return None
        if not smtputf8 and not address.isascii():
            return "non-ASCII address needs SMTPUTF8"
        return syntax_error(address)

    async def handle_HELO(
        self, protocol: SmtpConnection, session: Session, envelope: AiosmtpdEnvelope, hostname: str
    ) -> str:
        reply = await self._fault(protocol, "helo", helo=hostname)
        if reply is not None:
            return reply
        session.host_name = hostname
        return f"250 {protocol.hostname}"

    async def handle_EHLO(
        self,
        protocol: SmtpConnection,
        session: Session,
        envelope: AiosmtpdEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        reply = await self._fault(protocol, "helo", helo=hostname)
        if reply is not None:
            return [reply]
        session.host_name = hostname
        *lines, last = responses  # the last is "250 HELP"
        if self.server.settings.auth.mode == "off":
            lines = [line for line in lines if not line.startswith("250-AUTH")]
        return [*lines, *_EXTRA_EHLO, last]

    async def handle_MAIL(
        self,
        protocol: SmtpConnection,
        session: Session,
        envelope: AiosmtpdEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        refusal = await self._refusal(
            protocol,
            address,
            "SMTPUTF8" in options,
            "mail",
            sender=address,
            size=_size_param(options),
        )
        return refusal or replies.MAIL_OK

    async def handle_RCPT(
        self,
        protocol: SmtpConnection,
        session: Session,
        envelope: AiosmtpdEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        refusal = await self._refusal(
            protocol, address, envelope.smtp_utf8, "rcpt", recipient=address
        )
        return refusal or replies.RCPT_OK

    async def _refusal(
        self, protocol: SmtpConnection, address: str, smtputf8: bool, stage: str, **known: Any
    ) -> str | None:
        """The reply refusing a MAIL FROM or RCPT TO address: a fault rule's, else a 553 from
        [validation] addresses = "reject"; None to accept it."""
        reply = await self._fault(protocol, stage, **known)
        if reply is not None:
            return reply
        problem = address and self._address_problem(address, smtputf8)
        if not problem:
            return None
        what, code = ("sender", "5.1.7") if stage == "mail" else ("recipient", "5.1.3")
        if "SMTPUTF8" in problem:
            code = "5.6.7"
        return replies.Decided(f"553 {code} Bad {what} address syntax: {problem}", "validation")

    async def handle_QUIT(
        self, protocol: SmtpConnection, session: Session, envelope: AiosmtpdEnvelope
    ) -> str:
        protocol.end_reason = "quit"
        return f"221 2.0.0 {protocol.hostname} closing connection"

    async def handle_DATA(
        self, protocol: SmtpConnection, session: Session, envelope: AiosmtpdEnvelope
    ) -> str:
        raw = envelope.original_content or b""
        if self.server.settings.smtp.bare_lf == "reject" and await _has_bare_lf(raw):
            # Postfix (smtpd_forbid_bare_newline = reject) answers the end of DATA so.
            reply = replies.BARE_LF.format(hostname=protocol.hostname)
            await self._keep_rejected(protocol, session, envelope, raw, reply, None)
            return reply
        verdict = None
        if self.faults.active_at("data"):
            headers = None
            if self.faults.policy.needs_headers():
                headers = await asyncio.to_thread(header_values, raw)  # parsing stays off the loop
            verdict = await self._verdict(protocol, "data", size=len(raw), headers=headers)
        if verdict is not None and verdict.answers:
            # Kept as the connection sends it: control characters escaped (replies.printable).
            reply = "\n".join(map(replies.printable, verdict.reply_lines)) or f"({verdict.action})"
            rule = _answering_rule(verdict)
            await self._keep_rejected(protocol, session, envelope, raw, reply, rule)
            return self._carry_out(protocol, verdict) or ""
        message = self._message(protocol, session, envelope, raw)
        try:
            stored = await self.server.save_message(protocol, message)
        except Exception as error:
            _log_store_failure(protocol, "could not store a message", error)
            return replies.STORE_FAILED
        return replies.queued(stored.id)

    def _message(
        self,
        protocol: SmtpConnection,
        session: Session,
        envelope: AiosmtpdEnvelope,
        raw: bytes,
    ) -> IncomingMessage:
        return IncomingMessage(
            session_id=protocol.session_id,
            envelope=envelope_of(protocol, session, envelope),
            raw=raw,
            received_at=now_ms(),
            check_addresses=self.server.settings.validation.addresses != "off",
            plus_tags=self.server.settings.tags.plus_addresses,
        )

    async def _keep_rejected(
        self,
        protocol: SmtpConnection,
        session: Session,
        envelope: AiosmtpdEnvelope,
        raw: bytes,
        reply: str,
        rule: str | None,
    ) -> None:
        """Keep a message refused at the end of DATA, marked rejected with the reply it gets
        and the fault rule that refused it, so the developer sees what their app tried to
        send."""
        message = self._message(protocol, session, envelope, raw)
        message.status, message.reply, message.reply_rule = "rejected", reply, rule
        try:
            await self.server.save_message(protocol, message)
        except Exception as error:
            _log_store_failure(protocol, "could not keep a rejected message", error)

    async def handle_exception(self, error: Exception) -> str:
        log.error("internal error: %r", error, exc_info=error)
        return replies.INTERNAL_ERROR

    def authenticate(
        self,
        protocol: SmtpConnection,
        session: Session,
        envelope: AiosmtpdEnvelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        """aiosmtpd's authenticator: the [auth] users table, or anything when it is empty.
        PLAIN and LOGIN give the password; CRAM-MD5 its HMAC-MD5 of the challenge."""
        if not isinstance(auth_data, LoginPassword | CramMd5Response):
            return AuthResult(success=False, handled=False)
        users = self.server.settings.auth.users
        login = auth_data.login.decode("utf-8", "replace")
        expected = users.get(login)
        if not users:
            success = True
        elif expected is None:
            success = False
        elif isinstance(auth_data, CramMd5Response):
            digest = hmac.new(expected.encode(), auth_data.challenge, "md5").hexdigest()
            success = hmac.compare_digest(digest.encode(), auth_data.digest.lower())
        else:
            success = hmac.compare_digest(expected.encode(), auth_data.password)
        protocol.note(f"AUTH {mechanism} as {login!r}: {'accepted' if success else 'refused'}")
        return AuthResult(success=success, handled=False, auth_data=auth_data)

    def __repr__(self) -> str:  # aiosmtpd logs the handler
        return "SmtpHandler()"

    def __dir__(self) -> list[str]:
        # aiosmtpd finds the hooks with dir() on every connection; see SmtpConnection.__dir__
        # (also for the ignore).
        return introspected_names(type(self), ("handle_", "auth_"))  # type: ignore[arg-type]


# aiosmtpd calls inspect.signature(handle_EHLO) on every connection to tell its two forms
# apart; a precomputed __signature__ answers at once.
SmtpHandler.handle_EHLO.__signature__ = inspect.signature(SmtpHandler.handle_EHLO)  # type: ignore[attr-defined]
