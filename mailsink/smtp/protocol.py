"""The SMTP protocol: aiosmtpd's SMTP with mailsink's command loop, MAIL/RCPT/DATA and transcripts.

aiosmtpd supplies the transport plumbing, STARTTLS, AUTH and the simple commands. mailsink owns the
command loop (so every line received is in the transcript), MAIL/RCPT (the null sender, DSN
parameters kept per recipient) and DATA (read in blocks rather than line by line; size limit with
552 5.3.4; the envelope is reset even when the handler fails; a bare-LF client's message ends at
a lone "." line), adds CRAM-MD5, and records what it refused: each 4xx/5xx reply counts for the
session, and a refused RCPT TO is kept on the envelope with who decided it (the handler says so
with a replies.Decided reply).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import logging
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException, syntax

from mailsink.clock import now_ms
from mailsink.events import LiveSession
from mailsink.mail.addresses import has_control_character
from mailsink.mail.envelope import RefusedRecipient
from mailsink.smtp import replies
from mailsink.smtp.aiosmtpd_contract import confirm_live_settings, live_setting, watch_live_settings
from mailsink.smtp.params import mail_params, rcpt_params
from mailsink.smtp.transcript import CLIENT, DATA, NOTE, SERVER, Transcript, redact

if TYPE_CHECKING:
    from mailsink.smtp.server import SmtpServer

log = logging.getLogger("mailsink.smtp")
# aiosmtpd's own AUTH code sets this deprecated attribute; the warning is not ours to act on.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")

_END_OF_DATA = b"\r\n.\r\n"
# The end of a bare-LF client's message: a line holding only ".", ended by LF or CRLF, after a
# line ended by either (the DATA line's own end counts: the first line may be the ".").
_LF_END_OF_DATA = re.compile(rb"\n\.\r?\n")
# How much of that end can be in the block before the one that completes it ("\n.\r").
_LF_END_CARRY = 3
# A bare-LF client's dot-stuffed line (after LF or CRLF; the first line's after the DATA line).
_LF_STUFFED = b"\n."
_ATOM = r'[^\s<>()\[\]\\",;:@.]+'
# <local@dot.separated.domain>, then nothing or whitespace and the parameters.
# Only a space or a tab separates the path from its parameters (as between parameters).
_SIMPLE_PATH = re.compile(
    rf'[ \t]*<([^\s<>()\[\]\\",;:@]+@{_ATOM}(?:\.{_ATOM})*)>([ \t].*)?', re.DOTALL
)
# Lines that are not a command count towards this: an unknown verb, an empty or non-ASCII one,
# arguments that are not UTF-8, a line over the length limit; and commands refused because the
# session serves nothing else (STARTTLS required first, a refused greeting). Other refusals of
# known commands do not.
_MAX_UNRECOGNIZED = 10
_VERB = re.compile(r"[A-Z0-9-]{1,20}")
# RFC 5321 4.5.3.1.4 allows 512 octets; DSN and SMTPUTF8 parameters make MAIL/RCPT longer.
_COMMAND_LIMITS = {"MAIL": 1000, "RCPT": 1000, "AUTH": 1000}
_COMMAND_LIMIT = 512
# A live session's progress (transcript, HELO, state) is written this long after its first
# unwritten event, for views of the store from another process (`mailsink tui --attach`). Most
# sessions end sooner, and then only their last write is made, as before.
PROGRESS_DELAY = 0.2
# The commands whose 4xx/5xx replies count as the session's refusals (with the greeting and the
# end of DATA); NOOP, VRFY, HELP, RSET and lines that are not a command do not.
_REFUSALS_COUNTED = frozenset({"HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA"})
# What a refusal answered, as last_refusal names it: the command line, cut to this length.
_ANSWERED_WIDTH = 200
_THE_LINE = ""  # _answering: the command line being answered
# What the transcript and last_refusal show of a line withheld after a failed AUTH.
_WITHHELD = "[line after a failed AUTH redacted]"
_PARAMETER_SEPARATOR = re.compile(r"[ \t]+")


class ClientFinished(Exception):
    """The client closed its side and every command it sent has been answered."""


class SinkEnvelope(Envelope):
    """aiosmtpd's Envelope plus what it cannot hold: a null sender, per-recipient parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_given = False
        self.rcpt_params: list[list[str]] = []
        # Each RCPT TO of this transaction that got a 4xx/5xx reply, as the connection sent it.
        self.rcpt_refused: list[RefusedRecipient] = []


@dataclass(frozen=True)
class CramMd5Response:
    """What a CRAM-MD5 client answered (RFC 2195): its login and the HMAC-MD5 of the
    challenge keyed with its password, in hex as sent; for the handler to check."""

    login: bytes
    challenge: bytes
    digest: bytes


# The reply to "send" once the connection was closed without one (a fault's drop).
NO_REPLY = ""


def auth_user(session: Session | None) -> str | None:
    if session is None or not session.authenticated:
        return None
    data = session.auth_data
    login = getattr(data, "login", None)  # LoginPassword (PLAIN, LOGIN), CramMd5Response
    if isinstance(login, bytes):
        return login.decode("utf-8", "replace")
    return str(data) if data is not None else None


def format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


def shown_verb(command: str) -> str:
    """What a reply may echo of an unknown command: its leading letters, digits and hyphens,
    and only "AUTH" of anything that starts with it (the rest could be a secret)."""
    if redact(command) != command:
        return "AUTH"
    verb = _VERB.match(command)
    shown = verb.group() if verb else ""
    return shown + "..." if len(shown) < len(command) else shown


@functools.cache
def introspected_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    return [name for name in dir(cls) if name.startswith(prefixes)]


class SmtpConnection(SMTP):
    """One client connection. It speaks; what it answers is decided by the handler
    (mailsink.smtp.handler), which asks the fault controls before each reply they may refuse."""

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ looks for its auth_ and smtp_ methods with dir() and
        # inspect.getmembers on every connection, which reads every attribute (properties
        # included): a third of the loop's time with a new connection per message. Those
        # names are fixed per class, so dir() answers just them, from a cache.
        # mypy takes type(self) for unhashable (python/mypy#20409): a class always hashes.
        return introspected_names(type(self), ("auth_", "smtp_"))  # type: ignore[arg-type]

    # The stream reader's buffer limit. Command lengths are checked separately; a large buffer lets
    # DATA arrive in big blocks.
    line_length_limit = 64 * 1024
    # aiosmtpd's auth_LOGIN prompts with these (base64-encoded); its own are "User Name\0" and
    # "Password\0", which clients and tutorials do not expect.
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    # aiosmtpd's __init__ assigns these and its code reads them (see aiosmtpd_contract.py).
    hostname = live_setting(lambda self: self.server.settings.smtp.hostname)
    data_size_limit = live_setting(lambda self: self.server.settings.smtp.max_message_size)
    _timeout_duration = live_setting(lambda self: self.server.settings.smtp.timeout)
    # TLS from STARTTLS or from an implicit-TLS listener both count.
    _auth_require_tls = live_setting(
        lambda self: not self.server.settings.auth.allow_insecure and not self.tls
    )
    require_starttls = live_setting(
        lambda self: self.server.settings.tls.require and self.tls_context is not None
    )

    def __init__(self, handler: Any, server: SmtpServer, **kwargs: Any):
        self.server = server  # before aiosmtpd's __init__, which sets the live settings above
        # A class's first connection checks that aiosmtpd assigned every live setting.
        first = watch_live_settings(self)
        super().__init__(handler, **kwargs)
        if first:
            confirm_live_settings(self)
        self.session_id = 0
        self.started_at = 0
        self.transcript = Transcript(self._progress_due)
        self._progress: asyncio.TimerHandle | None = None  # the next progress write
        self.tls = False
        self.end_reason: str | None = None
        self.ended_at: int | None = None
        self.in_data = False  # reading DATA or waiting for its commit
        self.closing = False  # server shutdown: close after the reply in flight
        self.message_ids: list[int] = []
        self.last_reply: str | None = None
        self.faults_fired = 0
        self.refusals = 0  # see LiveSession.refusals
        self.last_refusal: str | None = None
        self._command = ""  # the command being answered
        self._line_text = ""  # its line as received (decoded), for what a refusal answered
        self._line_bare_lf = False  # that line ended in LF alone
        # The last command was an AUTH that failed; the line withheld: see _withheld.
        self._auth_failed = False
        self._line_withheld = False
        # What a 4xx/5xx reply sent now answers, for last_refusal: "greeting", "end of DATA",
        # "AUTH", _THE_LINE (the command line); None: it does not count as a refusal.
        self._answering: str | None = None
        # Who decided a refusal of the RCPT being answered (RefusedRecipient.reason, .rule).
        self._refusal_reason = "other"
        self._refusal_rule: str | None = None
        self._greeted = False
        self._refused = False  # a fault answered the greeting: only QUIT is served
        self._close_after_reply = False  # a fault's disconnect
        self._fault_reply: str | None = None  # sent exactly as configured
        self._auth_response_pending = False
        self._ended = False
        self._held: list[bytes] = []  # the first lines of a multi-line reply, written with its last
        self._unrecognized = 0  # lines that were not a command, see _MAX_UNRECOGNIZED
        # While DATA is being read: every byte received restarts the idle timeout (RFC 5321
        # 4.5.3.2.5's data block timeout), which _timeout_cb checks against _data_seen_at.
        self._reading_data = False
        self._data_bytes = 0  # message bytes received so far, for the note on an unfinished DATA
        self._data_bare_lf = False  # the DATA being read is a bare-LF client's
        self._data_seen_at = 0.0

    # ---- connection lifecycle

    def _create_envelope(self) -> SinkEnvelope:
        return SinkEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self._original_transport is not None
        super().connection_made(transport)
        if starttls:
            self.tls = True
            self.transcript.add(NOTE, "TLS established")
            return
        self.tls = transport.get_extra_info("ssl_object") is not None
        assert self.session is not None
        self.session_id = self.server.store.new_session_id()
        self.started_at = now_ms()
        self.transcript.publish_to(self.server.events, self.session_id)
        self.server.session_started(self)

    @property
    def peer(self) -> str:
        return format_peer(self.session.peer if self.session else None)

    @property
    def state(self) -> str:
        """What the session is at, for the TUI: the last command, DATA while a message arrives."""
        if self.in_data:
            return "DATA"
        return self._command or "connected"

    def snapshot(self) -> LiveSession:
        """The session as this connection knows it now, frozen (for faces: no protocol object
        leaves mailsink.smtp)."""
        session = self.session
        ended = self._ended
        return LiveSession(
            id=self.session_id,
            peer=self.peer,
            started_at=self.started_at,
            helo=(session.host_name or None) if session else None,
            state=self.state,
            tls=self.tls,
            auth_user=auth_user(session),
            last_reply=self.last_reply,
            faults_fired=self.faults_fired,
            message_ids=tuple(self.message_ids),
            transcript_lines=self.transcript.count,
            unwritten=tuple(self.transcript.uncommitted()),
            end_reason=self.end_reason if ended else None,
            ended_at=self.ended_at if ended else None,
            refusals=self.refusals,
            last_refusal=self.last_refusal,
        )

    def _progress_due(self) -> None:
        if self._progress is None and not self._ended:
            self._progress = self.loop.call_later(PROGRESS_DELAY, self._write_progress)

    def _write_progress(self) -> None:
        self._progress = None
        if not self._ended:
            self.server.session_progress(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._ended:
            return  # a failed TLS handshake ends the session before asyncio would
        self._ended = True
        if self._progress is not None:  # the session's last write has it all
            self._progress.cancel()
            self._progress = None
        self._note_unfinished_data()
        if self.end_reason is None:
            self.end_reason = "aborted" if self.in_data else "client_closed"
        if self.end_reason in ("aborted", "client_closed"):
            self.transcript.add(NOTE, "connection closed by the client")
        self.ended_at = now_ms()
        try:
            self.server.session_ended(self)
        finally:
            super().connection_lost(error)  # aiosmtpd's clean-up, whatever happened above

    def eof_received(self) -> bool | None:
        """The client has finished sending (it may still read): answer what it already sent.

        aiosmtpd cancels the session here, dropping the replies to pipelined commands that are
        still buffered, after the message they belong to may have been stored."""
        self._reader.feed_eof()
        return not self.tls  # keep a plain socket half-open; TLS transports cannot be

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading_data:
            self._data_bytes += len(data)
            self._data_seen_at = self.loop.time()

    def _timeout_cb(self) -> None:
        if self._reading_data:
            # In DATA the timeout runs from the last bytes received, not from the last block
            # read: a slow client that keeps sending is not cut.
            remaining = self._data_seen_at + self._timeout_duration - self.loop.time()
            if remaining > 0:
                self._reset_timeout(remaining)
                return
            self._note_unfinished_data()
        self.end_reason = "timeout"
        self._auth_response_pending = False  # the client answered nothing
        self._send_now(replies.TIMEOUT.format(hostname=self.hostname))
        super()._timeout_cb()

    def shutdown(self) -> None:
        """Server stopping: say so and close; with a message in flight, after its reply."""
        self.closing = True
        if not self.in_data and self.transport is not None:
            self.end_reason = self.end_reason or "server_shutdown"
            self._send_now(replies.SHUTTING_DOWN.format(hostname=self.hostname))
            self.transport.close()

    def _send_now(self, line: str) -> None:
        """Write a reply from a callback, where push() cannot be awaited."""
        if self.transport is None or self.transport.is_closing():
            return
        line = replies.printable(line)
        self._record_reply(line)
        held, self._held = self._held, []
        self._writer.write(b"".join(h + b"\r\n" for h in held) + line.encode("utf-8") + b"\r\n")

    # ---- replies

    def _record_auth_response(self) -> None:
        """aiosmtpd reads AUTH responses itself: record one, redacted, before what follows it."""
        if self._auth_response_pending:
            self._auth_response_pending = False
            self.transcript.add(CLIENT, "[auth response redacted]")

    def _record_reply(self, line: str) -> None:
        self._record_auth_response()
        self.transcript.add(SERVER, line)
        self.last_reply = line
        if line.startswith("334"):
            self._auth_response_pending = True

    async def push(self, status: str | bytes) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if self.transport is None or self.transport.is_closing():
            return  # a fault dropped the connection: nothing more is said
        exact = text == self._fault_reply  # configured replies are sent exactly as written
        if exact:
            self._fault_reply = None
        # Fault replies may be multi-line.
        sent = [await self._push_line(line, exact) for line in text.split("\r\n")]
        if exact and self._held:  # a configured reply that never reached a last line
            await self._push_held(b"")
        if sent[0][:1] in ("4", "5") and self._answering is not None:
            self._record_refusal("\n".join(sent))
        if self._close_after_reply and self.transport is not None:
            self.transport.close()

    def _record_refusal(self, reply: str) -> None:
        """A 4xx/5xx reply was sent to what `_answering` names: counted for the session and, for
        a RCPT TO inside a transaction, kept on the envelope with who decided it."""
        answered = self._answering
        if answered == _THE_LINE:
            answered = replies.printable(self._line_text)
            if len(answered) > _ANSWERED_WIDTH:
                answered = answered[: _ANSWERED_WIDTH - 1] + "…"
        self.refusals += 1
        self.last_refusal = f"{answered}: {reply}"
        envelope: SinkEnvelope | None = self.envelope  # type: ignore[assignment]
        if self._command != "RCPT" or envelope is None or not envelope.mail_given:
            return
        address, options = self._rcpt_as_given(self._line_text.partition(" ")[2].strip())
        envelope.rcpt_refused.append(
            RefusedRecipient(address, options, reply, self._refusal_rule, self._refusal_reason)
        )

    def _rcpt_as_given(self, arg: str) -> tuple[str, list[str]]:
        """A RCPT argument's address and parameters as the client gave them; the raw text
        after TO: as the address when it does not parse."""
        rest = self._strip_command_keyword("TO:", arg)
        if rest is None:
            rest = arg
        address, params = self._getaddr(rest) if rest else (None, None)
        if not address:
            return rest, []
        return address, _PARAMETER_SEPARATOR.split(params) if params else []

    async def _push_held(self, last: bytes) -> None:
        """One write for a multi-line reply: aiosmtpd pushes EHLO's lines one by one, a system
        call each, which is a tenth of the loop's time with a new connection per message."""
        held, self._held = self._held, []
        await super().push(b"\r\n".join([*held, last]) if last else b"\r\n".join(held))

    async def _push_line(self, line: str, exact: bool) -> str:
        """Send one line of a reply (with its enhanced code added); returns it as sent."""
        line = replies.printable(line)  # whatever a reply echoes of the client's line
        exempt = (
            exact
            or not self._greeted
            or line.startswith(("334", "354"))
            or (self._command in ("EHLO", "HELO") and line.startswith("250"))
        )
        if not exempt:
            if self._command == "HELP" and line.startswith("250 "):
                line = "214" + line[3:]  # RFC 5321 4.2.2: help is 214; aiosmtpd says 250
            line = replies.with_enhanced_code(line)
        self._greeted = True
        self._record_reply(line)
        data = line.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        if line[3:4] == "-":  # more lines of this reply follow
            self._held.append(data)
        elif self._held:
            await self._push_held(data)
        else:
            await super().push(data)
        return line

    async def handle_exception(self, error: Exception) -> str:
        log.error("session %s: internal error: %r", self.session_id, error, exc_info=error)
        self.transcript.add(NOTE, f"internal error: {type(error).__name__}")
        return replies.INTERNAL_ERROR

    # ---- the command loop

    async def _handle_client(self) -> None:
        refusal = await self.event_handler.refuse_connect(self)
        if refusal == NO_REPLY:
            return
        self._answering = "greeting"
        if refusal is not None:
            self._refused = True  # RFC 5321 3.1: after a 554 greeting only QUIT is served
            await self.push(refusal)
        else:
            await self.push(f"220 {self.hostname} {self.server.ident}")
        # Once mailsink closed the connection (too many bad lines, a fault's disconnect),
        # pipelined commands still buffered are not carried out.
        while self.transport is not None and not self.transport.is_closing():
            try:
                line = await self._read_command_line()
                self._command = ""
                self._answering = None
                self._refusal_reason, self._refusal_rule = "other", None
                if line is None:
                    await self._not_a_command(replies.LINE_TOO_LONG)
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self._not_a_command(replies.BAD_SYNTAX)
                    continue
                method = self._smtp_methods.get(command)
                # Only a verb mailsink knows is kept (the live state the TUI shows, HELP and
                # EHLO replies): any other first word may carry a secret (`AUTH\tPLAIN\t<b64>`).
                self._command = command if method is not None else ""
                if command in _REFUSALS_COUNTED:
                    self._answering = "AUTH" if command == "AUTH" else _THE_LINE
                if self._line_bare_lf and self.server.settings.smtp.bare_lf == "reject":
                    if self._answering is None:  # its verb only, as a 500 reply would echo
                        shown = _WITHHELD if self._line_withheld else shown_verb(command)
                        self._answering = shown or "(no command)"
                    await self._refuse_bare_lf()
                    continue
                try:
                    arg = arg_bytes.strip().decode("utf-8") or None
                except UnicodeDecodeError:
                    await self._not_a_command(replies.NOT_UTF8)
                    continue
                if method is None:
                    if self._line_withheld:
                        reply = replies.NOT_RECOGNIZED_WITHHELD
                    else:
                        reply = replies.NOT_RECOGNIZED.format(command=shown_verb(command))
                    await self._not_a_command(reply if command else replies.BAD_SYNTAX)
                    continue
                # Refusals that leave the client nothing it could do count as lines that are
                # not commands: else a client could be answered without end.
                if self._refused and command != "QUIT":
                    await self._not_a_command("503 5.5.1 Error: no SMTP service here, only QUIT")
                    continue
                if len(line) > _COMMAND_LIMITS.get(command, _COMMAND_LIMIT):
                    await self._not_a_command(replies.LINE_TOO_LONG)
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 5.7.0 Command refused due to lack of security")
                    continue
                if (
                    self.require_starttls
                    and not self._tls_protocol
                    and command not in ("NOOP", "EHLO", "STARTTLS", "QUIT")
                ):
                    await self._not_a_command("530 5.7.0 Must issue a STARTTLS command first")
                    continue
                self._reset_timeout()
                await method(arg)
                self._reset_timeout()
                # The client may still be sending its credentials: see _withheld.
                self._auth_failed = command == "AUTH" and not (
                    self.session and self.session.authenticated
                )
                if self.closing and not self.in_data:
                    self.shutdown()
            except (ClientFinished, ConnectionResetError):
                self._writer.close()
                return
            except asyncio.CancelledError:
                self._writer.close()
                raise
            except TLSSetupException:
                self._tls_failed()
                return
            except Exception as error:
                await self.push(await self.handle_exception(error))

    async def _read_command_line(self) -> bytes | None:
        """One command line without its CRLF, recorded; None when it was too long (skipped)."""
        after_failed_auth, self._auth_failed = self._auth_failed, False
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as error:
            skipped = await self._skip_line(error)
            self.transcript.add(CLIENT, f"[command line too long: {skipped} bytes]")
            return None
        except asyncio.IncompleteReadError as error:
            if error.partial.strip():
                text = error.partial.decode("utf-8", "replace")
                withheld = after_failed_auth and self._withheld(error.partial)
                self.transcript.add(CLIENT, _WITHHELD if withheld else redact(text))
            raise ClientFinished from None
        self._line_bare_lf = line[-2:-1] != b"\r"
        line = line.rstrip(b"\r\n")
        self._line_withheld = after_failed_auth and self._withheld(line)
        if self._line_withheld:
            self._line_text = _WITHHELD
            self.transcript.add(CLIENT, _WITHHELD)
        else:
            self._line_text = text = line.decode("utf-8", "replace")
            self.transcript.add(CLIENT, redact(text))
        return line

    def _withheld(self, line: bytes) -> bool:
        """Whether the line right after a failed AUTH is kept out of the transcript and the
        replies: when it does not start with a verb mailsink knows. A client that answered the
        Username: prompt in clear got 501 (not base64), the exchange was over, and it typed its
        password next: read as a command, it would be recorded and echoed in the 500."""
        verb = line.partition(b" ")[0].upper()
        return not verb.isascii() or verb.decode("ascii") not in self._smtp_methods

    async def _refuse_bare_lf(self) -> None:
        """[smtp] bare_lf = "reject": a command line that ended in LF alone gets Postfix's
        reply (smtpd_forbid_bare_newline = reject), then the connection is closed."""
        self.end_reason = "bare_lf"
        await self.push(replies.BARE_LF.format(hostname=self.hostname))
        if self.transport is not None:
            self.transport.close()

    async def _skip_line(self, overrun: asyncio.LimitOverrunError) -> int:
        """Throw away the rest of a line longer than the reader's buffer; its length."""
        skipped = overrun.consumed + len(await self._reader.read(overrun.consumed))
        while True:
            try:
                return skipped + len(await self._reader.readuntil(b"\n"))
            except asyncio.LimitOverrunError as more:
                skipped += len(await self._reader.read(more.consumed))
            except asyncio.IncompleteReadError as end:
                return skipped + len(end.partial)

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> Any:
        """aiosmtpd's, but the response is read as command lines are: one longer than the buffer
        is thrown away to its end. aiosmtpd's readline raises there and leaves the rest of the
        line, a secret, to be read (and echoed, and recorded) as a command."""
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(data) if encode_to_b64 else data))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as error:
            await self._skip_line(error)
            await self.push("500 5.5.6 Authentication exchange line is too long")
            return MISSING
        except asyncio.IncompleteReadError as error:
            line = error.partial
        blob = line.strip()
        if blob == b"*":  # RFC 4954: the client cancels the exchange
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _not_a_command(self, reply: str) -> None:
        """Answer a line that is not a command; the tenth such line closes the connection."""
        self._unrecognized += 1
        if self._unrecognized < _MAX_UNRECOGNIZED:
            await self.push(reply)
            return
        self.end_reason = "error"
        await self.push(replies.TOO_MANY_BAD)
        if self.transport is not None:
            self.transport.close()

    def _pause_timeout(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def _tls_failed(self) -> None:
        """The STARTTLS handshake failed (often: the client rejected the self-signed
        certificate). asyncio will not report the loss, so the session is ended here."""
        self.end_reason = "tls_failed"
        self.note("TLS handshake failed")
        if self._original_transport is not None:
            self._original_transport.close()
        self.connection_lost(None)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """(address, parameters) of a MAIL/RCPT/VRFY argument; address None if malformed.

        Plain <local@domain> paths, nearly all of them, are taken apart with a regular
        expression; anything else (quoting, source routes, literals) goes to aiosmtpd's parser,
        which uses the stdlib's and costs ten times more."""
        simple = _SIMPLE_PATH.fullmatch(arg)
        if simple:
            return simple.group(1), (simple.group(2) or "").strip(" \t")
        try:
            return super()._getaddr(arg)
        except Exception:  # the stdlib address parser raises on some malformed input
            return None, None

    # ---- speaking for the handler (injected faults), authentication

    async def wait(self, seconds: float) -> None:
        """mailsink's own wait before a reply (a fault's delay): the idle timeout measures
        the client, not mailsink, so it stops meanwhile. uvloop's timers have a millisecond
        grain and may fire just before the time asked, so the wait goes on until the whole
        delay has passed: a 400 ms delay is never 399.8 ms."""
        self._pause_timeout()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(left)
        self._reset_timeout()

    def reply_as_configured(self, lines: tuple[str, ...], *, then_close: bool = False) -> str:
        """The reply to send exactly as written (no enhanced code added, multi-line as given),
        and with `then_close` the connection closed after it."""
        if then_close:
            self._close_after_reply = True
        self._fault_reply = "\r\n".join(lines)
        return self._fault_reply

    def drop(self) -> str:
        """Close the connection without a word; returns NO_REPLY, the reply not to send."""
        if self.transport is not None:
            self.transport.close()
        return NO_REPLY

    def _note_unfinished_data(self, pending: bytes | None = None) -> None:
        """The session ends in the middle of DATA: say how much arrived, and for a CRLF client
        whether its lines end in a bare LF (then the CRLF.CRLF that ends its DATA never comes).
        `pending`: what is read but not yet consumed, by default the reader's buffer."""
        if not self._reading_data:
            return
        self._reading_data = False  # noted once
        if self._data_bare_lf:  # its DATA ends at a lone "." whatever the line ending
            self.note(f'DATA unfinished: {self._data_bytes} bytes received, no lone "." line yet')
            return
        if pending is None:
            pending = bytes(getattr(self._reader, "_buffer", b""))
        text = f"DATA unfinished: {self._data_bytes} bytes received, no CRLF.CRLF yet"
        if pending.count(b"\n") > pending.count(b"\r\n"):
            text += " (lines end in a bare LF, not CRLF)"
        self.note(text)

    def note(self, text: str) -> None:
        """Something mailsink observed, for the transcript."""
        self._record_auth_response()
        self.transcript.add(NOTE, text)

    async def check_auth_needed(self, caller_method: str) -> bool:
        """[auth] mode = "required": the transaction needs AUTH first (HELP, VRFY, NOOP do not)."""
        if caller_method not in ("MAIL", "RCPT", "DATA"):
            return False
        # aiosmtpd's connection_made creates the session before any command is read.
        assert self.session is not None
        if self.server.settings.auth.mode == "required" and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return True
        return False

    async def _bad_hostname(self, command: str, hostname: str | None) -> bool:
        """A HELO/EHLO name with a control character is refused (it is stored and shown)."""
        if hostname and has_control_character(hostname):
            await self.push(replies.HELO_CONTROL.format(command=command))
            return True
        return False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        if not await self._bad_hostname("HELO", hostname):
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not await self._bad_hostname("EHLO", hostname):
            await super().smtp_EHLO(hostname)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        # aiosmtpd would start a second TLS layer inside the first (after STARTTLS, or on the
        # implicit-TLS listener), which asyncio cannot do: a traceback and a hung session.
        if self.tls:
            await self.push(replies.TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.server.settings.auth.mode == "off":
            await self.push("502 5.5.1 Error: AUTH is not available")
            return
        reply = await self.event_handler.refuse_auth(self)
        if reply is not None:
            await self.push(reply)
            return
        await super().smtp_AUTH(arg)

    async def auth_CRAM__MD5(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-MD5 (RFC 2195): a fresh challenge, answered with "login hexdigest" (HMAC-MD5 of
        the challenge keyed with the password); the handler's authenticator checks it.
        aiosmtpd finds it by its name (auth_ + the mechanism, "__" for "-")."""
        if len(args) > 1:
            await self.push("501 5.5.4 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        # RFC 2195's form, <random.timestamp@hostname>: never the same twice.
        challenge = f"<{secrets.randbelow(10**10)}.{now_ms()}@{self.hostname}>".encode()
        response = await self.challenge_auth(challenge)
        if response is MISSING:  # cancelled or not base64: answered already
            return AuthResult(success=False, handled=True)
        login, _, digest = response.rpartition(b" ")
        if not login or not digest:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return self._authenticate("CRAM-MD5", CramMd5Response(login, challenge, digest))

    # ---- the transaction

    async def _helo_first(self) -> bool:
        """With [smtp] helo_required, MAIL, RCPT and DATA need HELO/EHLO first (aiosmtpd's
        503); else they are served before it, as Postfix does (smtpd_helo_required = no). The
        session is not extended then: ESMTP parameters stay refused."""
        if not self.server.settings.smtp.helo_required:
            return False
        return await self.check_helo_needed()

    def _refusing(self, reason: str, rule: str | None = None) -> None:
        """Who decides the refusal about to be sent to this RCPT (see RefusedRecipient)."""
        self._refusal_reason, self._refusal_rule = reason, rule

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._helo_first() or await self.check_auth_needed("MAIL"):
            return
        envelope: SinkEnvelope = self.envelope  # type: ignore[assignment]
        syntax_error = "501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]"
        rest = self._strip_command_keyword("FROM:", arg or "")
        if not rest:
            await self.push(syntax_error)
            return
        address, params_text = self._getaddr(rest)
        if address is None or not address:
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        if has_control_character(address):
            await self.push("501 5.1.7 Bad sender address syntax: control character")
            return
        if envelope.mail_given:
            await self.push(replies.NESTED_MAIL)
            return
        assert self.session is not None  # see check_auth_needed
        if params_text and not self.session.extended_smtp:
            await self.push(syntax_error)
            return
        params = mail_params(params_text or "", max_size=self.data_size_limit)
        if params.error:
            await self.push(params.error)
            return
        if address == "<>":
            address = ""
        status = await self._call_handler_hook("MAIL", address, params.options)
        if status is MISSING:
            status = replies.MAIL_OK
        if status.startswith("2"):
            envelope.mail_given = True
            envelope.mail_from = address
            envelope.mail_options = params.options
            envelope.smtp_utf8 = params.smtputf8
            envelope.rcpt_refused = []
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._helo_first() or await self.check_auth_needed("RCPT"):
            return
        envelope: SinkEnvelope = self.envelope  # type: ignore[assignment]
        if not envelope.mail_given:
            await self.push(replies.NEED_MAIL)
            return
        syntax_error = "501 5.5.4 Syntax: RCPT TO:<address> [SP <mail-parameters>]"
        rest = self._strip_command_keyword("TO:", arg or "")
        self._refusing("syntax")
        if not rest:
            await self.push(syntax_error)
            return
        address, params_text = self._getaddr(rest)
        if address is None or not address or address == "<>":
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        if has_control_character(address):
            await self.push("501 5.1.3 Bad recipient address syntax: control character")
            return
        assert self.session is not None  # see check_auth_needed
        self._refusing("parameters")
        if params_text and not self.session.extended_smtp:
            await self.push(syntax_error)
            return
        params = rcpt_params(params_text or "")
        if params.error:
            await self.push(params.error)
            return
        self._refusing("other")
        status = await self._call_handler_hook("RCPT", address, params.options)
        if status is MISSING:
            status = replies.RCPT_OK
        elif isinstance(status, replies.Decided):
            self._refusing(status.reason, status.rule)
        if status.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_params.append(params.options)
        await self.push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self._helo_first() or await self.check_auth_needed("DATA"):
            return
        # aiosmtpd makes an envelope before the first command and a new one after each reset.
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push(replies.START_DATA)
        self.in_data = True
        bare_lf = self._line_bare_lf
        try:
            content, wire_size = await self._read_data(bare_lf)
            self._pause_timeout()  # from here mailsink is working (faults, commit), not waiting
            self._answering = "end of DATA"
            summary = f"{wire_size} bytes"
            if bare_lf:
                summary += ', ended by a lone "." (bare-LF client)'
            self.transcript.add(DATA, f"[message data: {summary}]")
            if content is None:
                status = replies.TOO_BIG
            else:
                self.envelope.content = self.envelope.original_content = content
                status = await self._call_handler_hook("DATA")
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away before the end of the message (or before its reply).
            self.end_reason = self.end_reason or "aborted"
            raise
        finally:
            # Reset even when the handler raised: aiosmtpd would keep the old envelope.
            self._set_post_data_state()
            self.in_data = False
        await self.push(status)

    async def _read_data(self, bare_lf: bool) -> tuple[bytes | None, int]:
        """Read up to the lone dot; returns (content, bytes on the wire), content None if too big.

        Reads in blocks up to the end-of-data marker instead of a line at a time. A CRLF is put in
        front of the stream so that an empty message (".\r\n" straight away) ends the same way.
        The content is gathered in a BytesIO, whose getvalue() hands over its buffer without a
        copy: a 25 MB message is held once, not twice, unless it has dot-stuffed lines.

        `bare_lf`: the DATA line ended in LF alone (`nc` without -C, a hand-rolled client). For
        such a client a line holding only "." ends the message also when it ends in LF alone;
        a CRLF client's message ends only at CRLF.CRLF (see README, "What the server speaks").
        """
        reader = self._reader
        # Bytes already buffered came right behind the DATA line: message data too.
        self._data_bytes = len(reader._buffer)  # type: ignore[attr-defined]
        self._data_seen_at = self.loop.time()
        self._reading_data = True
        self._data_bare_lf = bare_lf
        try:
            if bare_lf:
                return await self._read_lf_blocks(reader)
            return await self._read_blocks(reader)
        finally:
            self._reading_data = False

    async def _read_blocks(self, reader: asyncio.StreamReader) -> tuple[bytes | None, int]:
        reader._buffer[0:0] = b"\r\n"  # type: ignore[attr-defined]  # private, also used by aiosmtpd
        limit = self.data_size_limit
        content = io.BytesIO()
        wire_size, size = -2, 0
        skip = 2  # the CRLF put in front
        tail = b""  # the previous block's last two bytes: a "\r\n." can straddle two blocks
        stuffed = 0  # "\r\n." seen: the marker's own and one per dot-stuffed line
        too_big = False
        while True:
            try:
                block = await reader.readuntil(_END_OF_DATA)
                done = True
            except asyncio.LimitOverrunError as error:
                block = await reader.readexactly(error.consumed)
                done = False
            except asyncio.IncompleteReadError as error:
                self._note_unfinished_data(error.partial)
                raise ConnectionResetError("connection closed during DATA") from None
            wire_size += len(block)
            if not too_big:
                stuffed += (tail + block[:2]).count(b"\r\n.") + block.count(b"\r\n.")
                tail = (tail + block)[-2:] if len(block) < 2 else block[-2:]
                cut, skip = min(skip, len(block)), max(0, skip - len(block))
                size += content.write(memoryview(block)[cut:])
                # The marker's 3 bytes may be in; anything beyond them is content over the limit.
                if limit and size - stuffed > limit + 3:
                    too_big, content = True, io.BytesIO()
            if done:
                break
        if too_big:
            return None, wire_size
        content.truncate(size - 3)  # ".\r\n" of the marker; the CRLF before it ends the last line
        data = content.getvalue()
        del content
        if stuffed > 1:  # RFC 5321 4.5.2 dot-unstuffing
            data = data.replace(b"\r\n.", b"\r\n")
        if data.startswith(b"."):  # the first line is stuffed too
            data = data[1:]
        if limit and len(data) > limit:
            return None, wire_size
        return data, wire_size

    async def _read_lf_blocks(self, reader: asyncio.StreamReader) -> tuple[bytes | None, int]:
        """DATA from a bare-LF client, read in blocks up to the first "." line that ends in LF or
        CRLF; every other line that starts with a dot loses it (dot-unstuffing). The rest is
        kept as it came: line endings are not rewritten.

        Each block is searched once, together with the previous block's last bytes (the end can
        straddle two), and the content is unstuffed once at the end: a read per dot line made a
        client sending many of them cost microseconds each and hold the loop while they were
        buffered."""
        limit = self.data_size_limit
        content = io.BytesIO()
        size = wire_size = 0  # bytes written to content, bytes of DATA consumed
        # The last bytes seen, searched again with the next block; first the DATA line's end.
        # Window index i is content position size - len(tail) + i (the DATA line's CRLF sits
        # before position 0).
        tail = b"\r\n"
        stuffed = 0  # "\n." written: stuffed lines, perhaps the start of the end
        too_big = False
        while True:
            block = await reader.read(self.line_length_limit)
            if not block:
                self._note_unfinished_data(b"")
                raise ConnectionResetError("connection closed during DATA")
            window = tail + block
            end = _LF_END_OF_DATA.search(window)
            if end is None:
                wire_size += len(block)
                if not too_big:
                    size += content.write(block)
                    stuffed += window.count(_LF_STUFFED) - tail.count(_LF_STUFFED)
                    # The end's first bytes may be in; anything beyond them is over the limit.
                    if limit and size - stuffed > limit + _LF_END_CARRY:
                        too_big, content = True, io.BytesIO()  # from here only the end is sought
                tail = window[-_LF_END_CARRY:]
                continue
            used = end.end() - len(tail)  # the bytes of this block up to the end's last
            wire_size += used
            if used < len(block):  # pipelined commands behind the message: the loop reads them
                reader._buffer[0:0] = block[used:]  # type: ignore[attr-defined]  # as in _read_blocks
            if too_big:
                return None, wire_size
            last = size - len(tail) + end.start() + 1  # the content ends with the "\n" before "."
            if last >= size:
                content.write(memoryview(block)[: last - size])
            else:  # the end began in the previous block: what it wrote of it goes
                content.truncate(last)
            break
        data = content.getvalue()
        del content
        # RFC 5321 4.5.2 dot-unstuffing, after an LF or a CRLF; without a stuffed line this is
        # the same bytes object, no copy.
        data = data.replace(_LF_STUFFED, b"\n")
        if data.startswith(b"."):  # the first line is stuffed too
            data = data[1:]
        if limit and len(data) > limit:
            return None, wire_size
        return data, wire_size
