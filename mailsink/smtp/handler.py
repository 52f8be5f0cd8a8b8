"""The one aiosmtpd handler: its hooks decide each reply; DATA stores the message before 250.

Each hook first asks the fault rules (which may delay, answer instead, or close the connection),
then applies the configured server behaviour (address validation), then accepts.
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

from mailsink.mail.addresses import syntax_error
from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import header_values
from mailsink.smtp import replies
from mailsink.smtp.protocol import introspected_names
from mailsink.store.db import IncomingMessage, StoreError, now_ms

if TYPE_CHECKING:
    from mailsink.smtp.protocol import SmtpConnection
    from mailsink.smtp.server import SmtpServer

log = logging.getLogger("mailsink.smtp")

# What a store that cannot take a message raises (a full disk, a locked or broken file, no
# writer): logged as one line with the cause. Anything else is a bug and gets its traceback.
_STORE_FAILURES = (StoreError, sqlite3.Error, OSError)

# Extensions aiosmtpd does not announce itself; mailsink implements each of them.
_EXTRA_EHLO = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN")


def auth_user(session: Session | None) -> str | None:
    if session is None or not session.authenticated:
        return None
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode("utf-8", "replace")
    return str(data) if data is not None else None


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
    )


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


class SmtpHandler:
    def __init__(self, server: SmtpServer):
        self.server = server

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
        reply = await protocol.fault("helo", helo=hostname)
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
        reply = await protocol.fault("helo", helo=hostname)
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
        reply = await protocol.fault(stage, **known)
        if reply is not None:
            return reply
        problem = address and self._address_problem(address, smtputf8)
        if not problem:
            return None
        what, code = ("sender", "5.1.7") if stage == "mail" else ("recipient", "5.1.3")
        if "SMTPUTF8" in problem:
            code = "5.6.7"
        return f"553 {code} Bad {what} address syntax: {problem}"

    async def handle_QUIT(
        self, protocol: SmtpConnection, session: Session, envelope: AiosmtpdEnvelope
    ) -> str:
        protocol.end_reason = "quit"
        return f"221 2.0.0 {protocol.hostname} closing connection"

    async def handle_DATA(
        self, protocol: SmtpConnection, session: Session, envelope: AiosmtpdEnvelope
    ) -> str:
        raw = envelope.original_content or b""
        headers = None
        if self.server.policy.needs_headers():
            headers = await asyncio.to_thread(header_values, raw)  # parsing stays off the loop
        decision = await protocol.consider("data", size=len(raw), headers=headers)
        message = IncomingMessage(
            session_id=protocol.session_id,
            envelope=envelope_of(protocol, session, envelope),
            raw=raw,
            received_at=now_ms(),
            check_addresses=self.server.settings.validation.addresses != "off",
        )
        if decision is not None and decision.answer is not None:
            # Kept, marked rejected, so the developer sees what their app tried to send.
            message.status = "rejected"
            message.reply = "\n".join(decision.reply_lines) or f"({decision.answer.action})"
            try:
                await self.server.save_message(protocol, message)
            except Exception as error:
                _log_store_failure(protocol, "could not keep a rejected message", error)
            return protocol.answer(decision) or ""
        try:
            stored = await self.server.save_message(protocol, message)
        except Exception as error:
            _log_store_failure(protocol, "could not store a message", error)
            return replies.STORE_FAILED
        return replies.queued(stored.id)

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
        """aiosmtpd's authenticator: the [auth] users table, or anything when it is empty."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        users = self.server.settings.auth.users
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        expected = users.get(login)
        success = not users or (
            expected is not None and hmac.compare_digest(expected.encode(), password.encode())
        )
        protocol.note(f"AUTH {mechanism} as {login!r}: {'accepted' if success else 'refused'}")
        return AuthResult(success=success, handled=False, auth_data=auth_data)

    def __repr__(self) -> str:  # aiosmtpd logs the handler
        return "SmtpHandler()"

    def __dir__(self) -> list[str]:
        # aiosmtpd finds the hooks with dir() on every connection; see SmtpConnection.__dir__.
        return introspected_names(type(self), ("handle_", "auth_"))


# aiosmtpd calls inspect.signature(handle_EHLO) on every connection to tell its two forms
# apart; a precomputed __signature__ answers at once.
SmtpHandler.handle_EHLO.__signature__ = inspect.signature(SmtpHandler.handle_EHLO)  # type: ignore[attr-defined]
