"""The one aiosmtpd handler: its hooks decide each reply; DATA stores the message before 250."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiosmtpd.smtp import Envelope as AiosmtpdEnvelope
from aiosmtpd.smtp import LoginPassword, Session

from mailsink.mail.envelope import Envelope
from mailsink.smtp import replies
from mailsink.store.db import IncomingMessage, now_ms

if TYPE_CHECKING:
    from mailsink.smtp.protocol import SinkSMTP
    from mailsink.smtp.server import SinkServer

log = logging.getLogger("mailsink.smtp")

# Extensions aiosmtpd does not announce itself; mailsink implements each of them.
_EXTRA_EHLO = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN")


def auth_user(session: Session) -> str | None:
    if not session.authenticated:
        return None
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode("utf-8", "replace")
    return str(data) if data is not None else None


def envelope_of(protocol: SinkSMTP, session: Session, envelope: AiosmtpdEnvelope) -> Envelope:
    return Envelope(
        mail_from=envelope.mail_from or "",
        rcpt_to=list(envelope.rcpt_tos),
        mail_options=list(envelope.mail_options),
        rcpt_options=[list(p) for p in getattr(envelope, "rcpt_params", [])],
        helo=session.host_name or None,
        peer=protocol.peer,
        auth_user=auth_user(session),
        tls=session.ssl is not None,
    )


class SinkHandler:
    def __init__(self, server: SinkServer):
        self.server = server

    async def handle_HELO(
        self, protocol: SinkSMTP, session: Session, envelope: AiosmtpdEnvelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return f"250 {protocol.hostname}"

    async def handle_EHLO(
        self,
        protocol: SinkSMTP,
        session: Session,
        envelope: AiosmtpdEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        *lines, last = responses  # the last is "250 HELP"
        return [*lines, *_EXTRA_EHLO, last]

    async def handle_QUIT(
        self, protocol: SinkSMTP, session: Session, envelope: AiosmtpdEnvelope
    ) -> str:
        protocol.end_reason = "quit"
        return f"221 2.0.0 {protocol.hostname} closing connection"

    async def handle_DATA(
        self, protocol: SinkSMTP, session: Session, envelope: AiosmtpdEnvelope
    ) -> str:
        message = IncomingMessage(
            session_id=protocol.session_id,
            envelope=envelope_of(protocol, session, envelope),
            raw=envelope.original_content or b"",
            received_at=now_ms(),
        )
        try:
            stored = await self.server.save_message(protocol, message)
        except Exception:
            log.exception("session %s: could not store a message", protocol.session_id)
            return replies.STORE_FAILED
        return replies.queued(stored.id)

    async def handle_exception(self, error: Exception) -> str:
        log.error("internal error: %r", error, exc_info=error)
        return replies.INTERNAL_ERROR

    def __repr__(self) -> str:  # aiosmtpd logs the handler
        return "SinkHandler()"


__all__ = ["SinkHandler", "envelope_of"]
