"""Releasing a captured message to a real SMTP server (`[relay]`), on purpose and only to
allowed recipients.

    refused = refused_recipients(settings.relay, ["ann@example.test"])   # before anything
    outcome = deliver(settings.relay, raw, mail_from, recipients)           # blocking: a thread

mailsink relays nothing by itself: a release is asked for (`mailsink release`, the TUI, the
HTTP API) or, with `[relay] auto`, made for the recipients `auto_recipients` names. Every
recipient is checked against `allowed_recipients` before any connection is made. The stored
bytes go unchanged (with `trace_header`, one `X-Mailsink-Released-From:` line before them)
but for SMTP's own framing: every line end goes as CRLF (a stored bare LF, or a lone CR, as
CRLF: done here, since smtplib sends bytes as they are) and a leading dot is doubled (smtplib).

The SMTP client is the stdlib's smtplib, run on a thread of its own (`deliver` blocks): well
kept, speaks STARTTLS, implicit TLS and AUTH, and keeps the event loop free. The password is
read when a release is made (so a rotated password file is used at once) and is never logged,
recorded or put in an error.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import functools
import os
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailsink.clock import iso_ms
from mailsink.config import RelaySettings
from mailsink.errors import ReleaseError, UpstreamError

# Who asked for a release (the `trigger` of its record).
TRIGGERS = ("cli", "tui", "http", "auto")
# What became of it.
SENT, PARTIAL, FAILED, RETRYING = "sent", "partial", "failed", "retrying"
OUTCOMES = (SENT, PARTIAL, FAILED, RETRYING)
TRACE_HEADER = "X-Mailsink-Released-From"
# A whole release (connect to QUIT) takes at most this many times `[relay] timeout`: each reply
# is bounded by the timeout, and an upstream slow at every one of a hundred RCPTs would
# otherwise hold a relay thread (and a server's stop) for a hundred timeouts.
WHOLE_RELEASE_TIMEOUTS = 4
# What was being done when a release failed, as Delivery.stage says it.
STAGES = ("connect", "tls", "ehlo", "auth", "mail", "rcpt", "data", "quit")
# A stage as an error names it: SMTP's commands as they are spelt on the wire.
STAGE_NAMES = {"tls": "TLS", "ehlo": "EHLO", "auth": "AUTH", "mail": "MAIL", "rcpt": "RCPT"}
STAGE_NAMES |= {"data": "DATA", "quit": "QUIT", "connect": "connect"}
# EHLO names that say nothing about this machine: the address literal of the connection goes
# instead (RFC 5321 4.1.4: an FQDN or, without one, an address literal).
_NOT_A_NAME = ("localhost", "localhost.localdomain", "localhost6.localdomain6")


@dataclass(frozen=True)
class Delivery:
    """What the upstream answered to one release that reached DATA's end (or failed): `code`
    and `reply` are its last reply (the end of DATA's on success), `accepted` the recipients
    it took, `refused` those it refused with the reply each got ("550 5.1.1 no such user").

    A reply is one line, its code first ("250 2.0.0 Ok: queued as 4F2"; a multi-line one's
    lines joined by a space). A failure without one (`code` None) has the reason instead: the
    OS's ("Connection refused"), TLS's ("certificate verify failed: ..."), mailsink's ("the
    upstream does not offer STARTTLS ...") or, `timed_out`, what was waited for ("timed out
    after 5 s waiting for the upstream's reply to DATA"). `accepted` is empty on a failure:
    nobody got the message."""

    upstream: str
    mail_from: str
    recipients: tuple[str, ...]
    outcome: str  # sent | partial | failed
    code: int | None
    reply: str
    accepted: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)
    stage: str = ""  # failed: what was being done (connect, tls, ehlo, auth, mail, rcpt, data)
    timed_out: bool = False


@dataclass(frozen=True)
class ReleaseRecord:
    """One row of the store's `releases` table: one release tried."""

    id: int
    message_id: int
    at: int  # ms since the epoch
    trigger: str
    upstream: str
    mail_from: str
    recipients: tuple[str, ...]
    outcome: str
    code: int | None
    reply: str
    refused: dict[str, str] = field(default_factory=dict)
    attempt: int = 1

    def as_json(self) -> dict[str, Any]:
        """The record as `mailsink show --json` and the native API give it: keys id,
        message_id, at (ISO 8601 UTC with ms, as clock.iso_ms), trigger, upstream, mail_from,
        recipients (list), outcome, code, reply, refused ({recipient: reply}), attempt."""
        return {
            "id": self.id,
            "message_id": self.message_id,
            "at": iso_ms(self.at),
            "trigger": self.trigger,
            "upstream": self.upstream,
            "mail_from": self.mail_from,
            "recipients": list(self.recipients),
            "outcome": self.outcome,
            "code": self.code,
            "reply": self.reply,
            "refused": dict(self.refused),
            "attempt": self.attempt,
        }

    def summary(self) -> str:
        """One line for a person: "sent to ann@example.test via smtp.example.test:587: 250 2.0.0
        Ok: queued as 4F2" (untrusted text made visible by the face that shows it). A partial
        one adds "; refused bob@example.test (550 5.1.1 no such user)", a later try "(try 2)"."""
        outcome = self.outcome if self.attempt <= 1 else f"{self.outcome} (try {self.attempt})"
        line = (
            f"{outcome} to {', '.join(self.recipients)} via {self.upstream}:"
            f" {reply_with_code(self.code, self.reply)}"
        )
        if self.refused:
            refused = "; ".join(f"{rcpt} ({reply})" for rcpt, reply in self.refused.items())
            line += f"; refused {refused}"
        return line

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseRecord:
        """The record back from `as_json` (an attached sink reads the server's answer)."""
        code = data.get("code")
        return cls(
            id=int(data["id"]),
            message_id=int(data["message_id"]),
            at=_ms(data["at"]),
            trigger=str(data["trigger"]),
            upstream=str(data["upstream"]),
            mail_from=str(data.get("mail_from") or ""),
            recipients=tuple(str(rcpt) for rcpt in data.get("recipients") or ()),
            outcome=str(data["outcome"]),
            code=None if code is None else int(code),
            reply=str(data.get("reply") or ""),
            refused={str(k): str(v) for k, v in (data.get("refused") or {}).items()},
            attempt=int(data.get("attempt") or 1),
        )


@dataclass(frozen=True)
class ReleasePlan:
    """What releasing a message would do, before anything is sent: the TUI dialog's prefill,
    `GET /api/mailsink/messages/{id}/release`. `recipients` are the defaults: the envelope's
    RCPT TOs that `allowed_recipients` allows; `not_allowed` the envelope's others."""

    message_id: int
    configured: bool
    upstream: str  # "" when not configured
    mail_from: str  # the MAIL FROM a release sends ('' = <>)
    recipients: tuple[str, ...]
    not_allowed: tuple[str, ...]
    allowed_recipients: tuple[str, ...]  # the globs

    def as_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "configured": self.configured,
            "upstream": self.upstream,
            "mail_from": self.mail_from,
            "recipients": list(self.recipients),
            "not_allowed": list(self.not_allowed),
            "allowed_recipients": list(self.allowed_recipients),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleasePlan:
        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(value) for value in data.get(key) or ())

        return cls(
            message_id=int(data["message_id"]),
            configured=bool(data.get("configured")),
            upstream=str(data.get("upstream") or ""),
            mail_from=str(data.get("mail_from") or ""),
            recipients=strings("recipients"),
            not_allowed=strings("not_allowed"),
            allowed_recipients=strings("allowed_recipients"),
        )


def _ms(value: Any) -> int:
    """An `at` of as_json (clock.iso_ms) as ms since the epoch (a number is taken as ms)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    # Whole milliseconds, without a float's rounding (iso_ms wrote exactly these).
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def reply_with_code(code: int | None, reply: str) -> str:
    """ "250 2.0.0 Ok" whether `reply` holds its code already (a Delivery's does) or not."""
    if code is None or reply.startswith(str(code)):
        return reply
    return f"{code} {reply}".rstrip()


# ---- who may be released to


def once_each(addresses: Iterable[str]) -> list[str]:
    """`addresses` without repeats (compared lower-cased), in their order, as first given."""
    seen: set[str] = set()
    kept = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            kept.append(address)
    return kept


def glob_matches(globs: Iterable[str], address: str) -> bool:
    """Whether a glob of `globs` matches `address`, both lower-cased: `*` any run of
    characters, `?` one, and nothing else special (a `[` is itself, not a set as fnmatch has
    it: the globs are documented so, and an address may hold one)."""
    lowered = address.lower()
    return any(fnmatch.fnmatchcase(lowered, glob.lower().replace("[", "[[]")) for glob in globs)


def _is_address(address: str) -> bool:
    from mailsink.mail.addresses import syntax_error  # (email-validator: imported when used)

    return not _unsendable(address) and syntax_error(address) is None


def _unsendable(address: str) -> bool:
    """Whether `address` cannot go inside SMTP's <...> as it is: a line end (which would end
    the command), a bracket or a control character."""
    return any(char in "<>" or ord(char) < 32 or ord(char) == 127 for char in address)


def plan(relay: RelaySettings, message_id: int, mail_from: str, rcpt_to: list[str]) -> ReleasePlan:
    """The plan for a message whose envelope is (mail_from, rcpt_to)."""
    envelope = once_each(rcpt_to)
    refused = set(refused_recipients(relay, envelope))
    return ReleasePlan(
        message_id=message_id,
        configured=relay.configured,
        upstream=relay.upstream if relay.configured else "",
        mail_from=relay.mail_from or mail_from,
        recipients=tuple(rcpt for rcpt in envelope if rcpt not in refused),
        not_allowed=tuple(rcpt for rcpt in envelope if rcpt in refused),
        allowed_recipients=tuple(relay.allowed_recipients),
    )


def refused_recipients(relay: RelaySettings, recipients: list[str]) -> list[str]:
    """Those of `recipients` that are no address, or that no glob of `allowed_recipients`
    matches (compared lower-cased); empty when every one may be released to. Each refused one
    is named once (as first given), in the order given."""
    return [
        rcpt
        for rcpt in once_each(recipients)
        if not (glob_matches(relay.allowed_recipients, rcpt) and _is_address(rcpt))
    ]


def auto_recipients(relay: RelaySettings, rcpt_to: list[str]) -> list[str]:
    """Those of a message's envelope recipients that auto release sends to: matched by
    `auto_recipients` and allowed by `allowed_recipients`."""
    return [
        rcpt
        for rcpt in once_each(rcpt_to)
        if glob_matches(relay.auto_recipients, rcpt)
        and glob_matches(relay.allowed_recipients, rcpt)
        and _is_address(rcpt)
    ]


# ---- the secret


def read_password(relay: RelaySettings) -> str:
    """The password to log in with: `password`, or `password_file`'s content (read now, so
    that a rotated file is used at once; one trailing newline dropped), or the environment
    variable `password_env` names (read now); "" when none is set. ReleaseError naming the
    file or the variable (never what it holds) when it cannot be had."""
    if relay.password:
        return relay.password
    if relay.password_file:
        path = os.path.expanduser(relay.password_file)
        try:
            with open(path, encoding="utf-8") as file:
                secret = file.read()
        except OSError as error:
            why = error.strerror or type(error).__name__
            raise ReleaseError(f"[relay] password_file {relay.password_file}: {why}") from None
        except UnicodeDecodeError:
            raise ReleaseError(
                f"[relay] password_file {relay.password_file}: not UTF-8 text"
            ) from None
        return secret.removesuffix("\n").removesuffix("\r")
    if relay.password_env:
        value = os.environ.get(relay.password_env)
        if not value:
            state = "is empty" if value == "" else "is not set"
            raise ReleaseError(
                f"[relay] password_env: the environment variable {relay.password_env} {state}"
            )
        return value
    return ""


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/=]{8,}")


def _scrub(text: str, secret: str, user: str = "") -> str:
    """`text` (an upstream's reply, an OS error) with the secret in any of the forms a login
    sends it hidden: an upstream that echoes what it got must not put it in a record. The
    base64 forms (of the password; of AUTH PLAIN's "\\0user\\0password" and
    "user\\0password"), and any base64-looking token that decodes to bytes holding the
    password, always; the password in plain text only from 6 characters on ("0" would take
    the zeros out of every "250 2.0.0"). (CRAM-MD5 sends a digest: nothing to hide.)"""
    if not secret:
        return text
    raw, name = secret.encode(), user.encode()
    forms = {
        base64.b64encode(form).decode()
        for form in (raw, b"\0" + name + b"\0" + raw, name + b"\0" + raw)
    }
    logins = {raw, b"\0" + name + b"\0" + raw, name + b"\0" + raw}
    if len(secret) >= 6:
        forms.add(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "(hidden)")

    def hide(match: re.Match[str]) -> str:
        token = match.group()
        try:
            decoded = base64.b64decode(token, validate=True)
        except ValueError:  # (binascii.Error is one)
            return token
        # A short password is in many random bytes (a queue id's): only a login's own forms.
        held = raw in decoded if len(secret) >= 6 else decoded in logins
        return "(hidden)" if held else token

    return _BASE64_TOKEN.sub(hide, text)


# ---- the error a face shows


def error_text(delivery: Delivery, message_id: int | None = None) -> str:
    """A delivery that was not "sent", in one line quoting the upstream (its text made
    visible): `release of message 12 failed at RCPT: the upstream (mx:587) answered 550 5.1.1
    no such user`, `... failed at connect: mx:587: Connection refused`, `... timed out after
    5 s waiting for the upstream's reply to DATA`, `... failed at TLS: mx:587: certificate
    verify failed: ...`, `... was partial: the upstream (mx:587) refused bob@x.test (550 5.1.1
    no such user); ann@x.test got it: 250 2.0.0 Ok`."""
    from mailsink.text import visible

    head = "release" if message_id is None else f"release of message {message_id}"
    reply = visible(reply_with_code(delivery.code, delivery.reply))
    if delivery.outcome == PARTIAL:
        refused = "; ".join(
            f"{visible(rcpt, emoji=False)} ({visible(why)})"
            for rcpt, why in delivery.refused.items()
        )
        got = ", ".join(visible(rcpt, emoji=False) for rcpt in delivery.accepted)
        return (
            f"{head} was partial: the upstream ({delivery.upstream}) refused {refused};"
            f" {got} got it: {reply}"
        )
    if delivery.timed_out:
        return f"{head} {reply}"  # its reply says what was waited for, and how long
    stage = STAGE_NAMES.get(delivery.stage, delivery.stage or "connect")
    if delivery.code is not None:
        return f"{head} failed at {stage}: the upstream ({delivery.upstream}) answered {reply}"
    return f"{head} failed at {stage}: {delivery.upstream}: {reply}"


def release_error(
    delivery: Delivery, message_id: int | None = None, *, record: object = None
) -> UpstreamError:
    """The UpstreamError for a delivery that was not "sent" (error_text its words; `record`
    the row written for it)."""
    return UpstreamError(
        error_text(delivery, message_id),
        code=delivery.code,
        stage=delivery.stage or ("rcpt" if delivery.outcome == PARTIAL else ""),
        timed_out=delivery.timed_out,
        record=record,
    )


# ---- sending


@functools.cache
def _fqdn() -> str:
    # Once a process: with a slow resolver getfqdn takes seconds, and the name stays.
    return socket.getfqdn()


def helo_name(relay: RelaySettings, local_address: str = "") -> str:
    """The name a release says in EHLO (and the trace header): `[relay] helo`; else this
    machine's fully qualified name (socket.getfqdn()) when it is one (it has a dot and is no
    "localhost..."); else the address literal of the connection's own end, `[192.0.2.7]` or
    `[IPv6:2001:db8::7]` (RFC 5321 4.1.4), which is what the upstream sees and checks; else
    (no address known) "mailsink.localdomain". Never `localhost`, which upstreams refuse."""
    if relay.helo:
        return relay.helo
    name = _fqdn().rstrip(".")
    if "." in name and name.lower() not in _NOT_A_NAME and not _is_ip(name):
        return name
    if local_address:
        literal = local_address.split("%", 1)[0]  # (an IPv6 zone is not the upstream's)
        return f"[IPv6:{literal}]" if ":" in literal else f"[{literal}]"
    return "mailsink.localdomain"


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def wire_bytes(raw: bytes, trace_line: str = "") -> bytes:
    """The message as DATA carries it (before smtplib doubles leading dots): `trace_line`
    first, and every line end CRLF. smtplib sends bytes as they are, and a bare LF or lone
    CR on the wire is refused by many servers and read differently by others (SMTP
    smuggling): so each goes as CRLF, as SMTP says a line ends."""
    data = trace_line.encode("ascii", "replace") + raw if trace_line else raw
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def trace_line(name: str, message_id: int | None) -> str:
    """The `X-Mailsink-Released-From:` line of `trace_header = true` (CRLF-ended)."""
    of = "" if message_id is None else f", message {message_id}"
    return f"{TRACE_HEADER}: mailsink on {name}{of}\r\n"


def tls_context(relay: RelaySettings) -> ssl.SSLContext:
    """verify = true: the system's CAs (or ca_file's), name checked; false: no check at all."""
    if relay.verify:
        return ssl.create_default_context(
            cafile=os.path.expanduser(relay.ca_file) if relay.ca_file else None
        )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Reader:
    """The client's reply reader (smtplib's `file`): lines from `sock`, every read bounded by
    what is left until `deadline` (time.monotonic()), TimeoutError once it has passed. A
    socket's own timeout is per recv: an upstream sending a byte now and then would hold a
    release forever."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = float("inf")
        self._buffer = b""

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self._buffer.find(b"\n") + 1
            if end == 0 and 0 <= limit < len(self._buffer):
                end = limit
            if end:
                line, self._buffer = self._buffer[:end], self._buffer[end:]
                return line
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(4096)
            if not chunk:  # closed: what is left (smtplib takes b"" as the close)
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += chunk

    def close(self) -> None:
        self._buffer = b""


class _Client(smtplib.SMTP):
    """smtplib's client, remembering for the error what it last heard (the 421 before a
    closed connection: smtplib's login() tries its next mechanism after a 421, and it is the
    closed connection that it raises), and awaiting each whole reply `timeout` at most (the
    greeting's too; smtplib's socket timeout bounds each recv only). Sending is bounded as a
    whole by sendall's own timeout (plain sockets; TLS's sendall bounds each write)."""

    last_reply: tuple[int, bytes] | None = None

    def __init__(self, *args: Any, whole: float = float("inf"), **options: Any) -> None:
        self.whole_deadline = time.monotonic() + whole  # (before the connect: the greeting)
        super().__init__(*args, **options)

    def _left(self) -> float:
        """The timeout, or less when the whole release's time is nearly up."""
        return max(0.001, min(self.timeout, self.whole_deadline - time.monotonic()))

    def getreply(self) -> tuple[int, bytes]:
        sock = self.sock
        if sock is not None and not (isinstance(self.file, _Reader) and self.file.sock is sock):
            self.file = _Reader(sock)  # (a new one after STARTTLS, which dropped smtplib's)
        if isinstance(self.file, _Reader):
            self.file.deadline = min(time.monotonic() + self.timeout, self.whole_deadline)
        try:
            code, text = super().getreply()
        finally:
            if self.sock is not None:
                self.sock.settimeout(self._left())  # (sending: the timeout again, or what is left)
        self.last_reply = (code, text)
        return code, text


class _ImplicitClient(_Client, smtplib.SMTP_SSL):
    """The same, TLS from the first byte (SMTP_SSL)."""


class _Failed(Exception):
    """The release ends here: at `stage`, with the upstream's `code` (None: no reply) and
    `reply` (the code first) or the reason."""

    def __init__(self, stage: str, code: int | None, reply: str) -> None:
        super().__init__(reply)
        self.stage, self.code, self.reply = stage, code, reply


def _text(code: int, text: bytes | str) -> str:
    """A reply as a record keeps it: its code first, its lines joined by a space (one line:
    every face shows it in one)."""
    decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    lines = decoded.split("\n")
    return " ".join([str(code), *(line.strip() for line in lines if line.strip())])


@dataclass
class _Progress:
    stage: str = "connect"
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def deliver(
    relay: RelaySettings,
    raw: bytes,
    mail_from: str,
    recipients: list[str],
    *,
    message_id: int | None = None,
) -> Delivery:
    """Send `raw` to `recipients` through the upstream (blocking: call it on a thread). Never
    raises for what the upstream or the network does: that is a Delivery with outcome "failed",
    its stage, and the upstream's code and text (or the OS's / TLS's reason). Raises
    ReleaseError only when the password cannot be had (password_env unset, password_file
    unreadable): nothing is sent then.

    The conversation, each reply awaited `[relay] timeout` at most (as is the connection):
    the greeting; EHLO (HELO if EHLO is refused) with helo_name's name; tls = "starttls":
    STARTTLS, which the upstream must offer (else a failure at "tls" before any AUTH or MAIL:
    nothing goes in clear by surprise), then EHLO again; AUTH (smtplib's login(): CRAM-MD5,
    PLAIN or LOGIN, as the upstream offers) when `username` is set; MAIL FROM:<mail_from>
    (SIZE when offered; BODY=8BITMIME for 8-bit bytes when offered; SMTPUTF8 when the header
    or an address is not ASCII and it is offered: required for an address, else a failure at
    "mail"); RCPT TO each (250/251 taken, others refused with their reply: "partial" when some
    were taken, "failed" at "rcpt" when none was); DATA with wire_bytes; QUIT (its failure
    ignored). A 421 anywhere ends it as a failure quoting the 421. Replies are kept with their
    code first and their lines joined by a space; the secret is never in them."""
    password = read_password(relay) if relay.username else ""
    recipients = list(recipients)
    progress = _Progress()
    client: _Client | None = None

    def outcome(state: str, code: int | None, reply: str, *, timed_out: bool = False) -> Delivery:
        return Delivery(
            upstream=relay.upstream,
            mail_from=mail_from,
            recipients=tuple(recipients),
            outcome=state,
            code=code,
            reply=_scrub(reply, password, relay.username),
            accepted=tuple(progress.accepted) if state != FAILED else (),
            refused={
                rcpt: _scrub(why, password, relay.username)
                for rcpt, why in progress.refused.items()
            },
            stage=progress.stage if state == FAILED else "",
            timed_out=timed_out,
        )

    def waited(greeting: bool) -> str:
        after = f"timed out after {relay.timeout:g} s"
        if progress.stage == "connect":
            # smtplib's reading of a reply turns its timeout into SMTPServerDisconnected; a
            # bare TimeoutError is the connection's own (TCP, or implicit TLS's handshake).
            if greeting:
                return f"{after} waiting for the upstream's greeting"
            return f"{after} connecting to {relay.upstream}"
        if progress.stage == "tls":
            return f"{after} in the upstream's STARTTLS"
        return f"{after} waiting for the upstream's reply to {STAGE_NAMES[progress.stage]}"

    try:
        client = _converse(relay, raw, mail_from, recipients, password, message_id, progress)
        code, text = client.last_reply or (250, b"")
        result = PARTIAL if progress.refused else SENT
        progress.stage = "quit"
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()  # (the message is the upstream's now: a failed QUIT changes nothing)
        return outcome(result, code, _text(code, text))
    except _Failed as failed:
        return outcome(FAILED, failed.code, failed.reply)
    except _ClientFailed as failed:
        client = failed.client
        error = failed.error
        if isinstance(error, _Failed):
            if error.code != 421:
                _quit_quietly(client)
            return outcome(FAILED, error.code, error.reply)
        heard = client.last_reply if client is not None else None
        if heard is not None and heard[0] == 421:
            # The upstream said why it closed: that, rather than the closed connection.
            return outcome(FAILED, 421, _text(*heard))
        cause = error.__context__ if isinstance(error, smtplib.SMTPServerDisconnected) else None
        if isinstance(error, TimeoutError) or isinstance(cause, TimeoutError):
            return outcome(FAILED, None, waited(cause is not None), timed_out=True)
        if isinstance(error, ssl.SSLError) or isinstance(cause, ssl.SSLError):
            if progress.stage == "connect":
                progress.stage = "tls"
            return outcome(FAILED, None, _tls_reason(error if cause is None else cause))
        if isinstance(error, smtplib.SMTPServerDisconnected):
            why = f": {cause.strerror or cause}" if isinstance(cause, OSError) else ""
            return outcome(FAILED, None, f"the upstream closed the connection{why}")
        if isinstance(error, smtplib.SMTPResponseException):
            code = error.smtp_code
            if code != 421:
                _quit_quietly(client)
            return outcome(FAILED, code, _text(code, error.smtp_error))
        if isinstance(error, OSError):
            return outcome(FAILED, None, error.strerror or str(error) or type(error).__name__)
        _quit_quietly(client)
        return outcome(FAILED, None, str(error) or type(error).__name__)
    finally:
        if client is not None:
            client.close()


class _ClientFailed(Exception):
    """What ended a conversation, with the client it ended (for its last reply)."""

    def __init__(self, client: _Client | None, error: BaseException) -> None:
        super().__init__(str(error))
        self.client, self.error = client, error


def _tls_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    # "[SSL: WRONG_VERSION_NUMBER] wrong version number", without OpenSSL's source line.
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(error)) or type(error).__name__


def _quit_quietly(client: _Client | None) -> None:
    """A polite QUIT after a refusal (the upstream still talks); nothing if it does not."""
    if client is None:
        return
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()


def _converse(
    relay: RelaySettings,
    raw: bytes,
    mail_from: str,
    recipients: list[str],
    password: str,
    message_id: int | None,
    progress: _Progress,
) -> _Client:
    """The conversation up to DATA's 2xx; returns the client (its last_reply DATA's). Raises
    _Failed before a connection, _ClientFailed (wrapping _Failed, or smtplib's or the OS's
    error) after."""
    bad = next((address for address in [mail_from, *recipients] if _unsendable(address)), None)
    if bad is not None or not recipients:
        progress.stage = "mail" if bad is not None and bad == mail_from else "rcpt"
        why = f"{bad!r} cannot be sent in SMTP" if bad is not None else "no recipients"
        raise _Failed(progress.stage, None, why)
    try:
        context = tls_context(relay) if relay.tls != "none" else None
    except (OSError, ssl.SSLError) as error:
        progress.stage = "tls"
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise _Failed("tls", None, f"ca_file {relay.ca_file}: {why}") from None
    client: _Client | None = None
    try:
        # Connected by the constructor, so that smtplib knows the name TLS checks; "-" until
        # the EHLO name is known (it may be the connection's own address).
        port = relay.effective_port
        whole = relay.timeout * WHOLE_RELEASE_TIMEOUTS
        if relay.tls == "implicit":
            client = _ImplicitClient(
                relay.host,
                port,
                local_hostname="-",
                timeout=relay.timeout,
                context=context,
                whole=whole,
            )
        else:
            client = _Client(
                relay.host, port, local_hostname="-", timeout=relay.timeout, whole=whole
            )
        _talk(client, relay, raw, mail_from, recipients, password, message_id, context, progress)
    except (_Failed, smtplib.SMTPException, OSError, ValueError) as error:
        # (sorted out by deliver, with what the client last heard)
        raise _ClientFailed(client, error) from None
    return client


def _talk(
    client: _Client,
    relay: RelaySettings,
    raw: bytes,
    mail_from: str,
    recipients: list[str],
    password: str,
    message_id: int | None,
    context: ssl.SSLContext | None,
    progress: _Progress,
) -> None:
    """The SMTP conversation itself (deliver's docstring says what it does)."""
    # (a greeting but 220 was the constructor's SMTPConnectError)
    local = client.sock.getsockname()[0] if client.sock is not None else ""
    name = helo_name(relay, local)
    client.local_hostname = name
    progress.stage = "ehlo"
    _hello(client)
    if relay.tls == "starttls":
        progress.stage = "tls"
        if not client.has_extn("starttls"):
            # Never the login or the message in clear because the upstream did not offer it.
            raise _Failed(
                "tls", None, 'the upstream does not offer STARTTLS (and [relay] tls = "starttls")'
            )
        # smtplib's starttls(): a reply but 220 is an SMTPResponseException; the name checked
        # is relay.host (connect()'s); what was learnt before TLS is forgotten (RFC 3207).
        client.starttls(context=context)
        progress.stage = "ehlo"
        _hello(client)
    if relay.username:
        progress.stage = "auth"
        if not client.has_extn("auth"):
            raise _Failed("auth", None, "the upstream offers no AUTH (and [relay] username is set)")
        try:
            client.login(relay.username, password)
        except smtplib.SMTPAuthenticationError as error:
            code = error.smtp_code
            raise _Failed("auth", code, _text(code, error.smtp_error)) from None
        except smtplib.SMTPException as error:
            if isinstance(error, smtplib.SMTPResponseException | smtplib.SMTPServerDisconnected):
                raise
            offered = client.esmtp_features.get("auth", "").strip()
            raise _Failed(
                "auth", None, f"no AUTH mechanism both speak (the upstream offers {offered})"
            ) from None
    body = wire_bytes(raw, trace_line(name, message_id) if relay.trace_header else "")
    progress.stage = "mail"
    options = _mail_options(client, body, mail_from, recipients)
    code, text = client.docmd("MAIL", f"FROM:<{mail_from}>{options}")
    if code != 250:
        raise _Failed("mail", code, _text(code, text))
    progress.stage = "rcpt"
    last: tuple[int, bytes] = (0, b"")
    for rcpt in recipients:
        code, text = client.docmd("RCPT", f"TO:<{rcpt}>")
        if code in (250, 251):
            progress.accepted.append(rcpt)
            continue
        if code == 421:  # closing: the others cannot be tried
            raise _Failed("rcpt", code, _text(code, text))
        progress.refused[rcpt] = _text(code, text)
        last = (code, text)
    if not progress.accepted:
        raise _Failed("rcpt", last[0], _text(*last))
    progress.stage = "data"
    try:
        code, text = client.data(body)
    except smtplib.SMTPDataError as error:  # DATA itself refused (no 354)
        raise _Failed("data", error.smtp_code, _text(error.smtp_code, error.smtp_error)) from None
    if not 200 <= code < 300:
        raise _Failed("data", code, _text(code, text))


def _hello(client: _Client) -> None:
    code, text = client.ehlo()
    if code != 250:
        code, text = client.helo()
        if code != 250:
            raise _Failed("ehlo", code, _text(code, text))


def _mail_options(client: _Client, body: bytes, mail_from: str, recipients: list[str]) -> str:
    """MAIL FROM's parameters for this message and upstream (" SIZE=123 BODY=8BITMIME")."""
    options = []
    if client.has_extn("size"):
        options.append(f"SIZE={len(body)}")
    if not body.isascii() and client.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    header = body.split(b"\r\n\r\n", 1)[0]
    need_utf8 = not all(address.isascii() for address in [mail_from, *recipients])
    if (need_utf8 or not header.isascii()) and client.has_extn("smtputf8"):
        options.append("SMTPUTF8")
        client.command_encoding = "utf-8"  # the addresses go as UTF-8 (RFC 6531)
    elif need_utf8:
        raise _Failed(
            "mail",
            None,
            "an address is not ASCII and the upstream does not offer SMTPUTF8 (RFC 6531)",
        )
    return "".join(f" {option}" for option in options)
