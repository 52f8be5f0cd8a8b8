"""Releasing a captured message to a real SMTP server (`[relay]`), on purpose and only to
allowed recipients.

    refused = refused_recipients(settings.relay, ["ann@example.test"])   # before anything
    outcome = deliver(settings.relay, raw, mail_from, recipients)           # blocking: a thread

mailsink relays nothing by itself: a release is asked for (`mailsink release`, the TUI, the
HTTP API) or, with `[relay] auto`, made for the recipients `auto_recipients` names. Every
recipient is checked against `allowed_recipients` before any connection is made. The stored
bytes go unchanged (with `trace_header`, one `X-Mailsink-Released-From:` line before them);
SMTP itself needs each line to end in CRLF and a leading dot doubled, which smtplib does.

The SMTP client is the stdlib's smtplib, run on a thread of its own (`deliver` blocks): well
kept, speaks STARTTLS, implicit TLS and AUTH, and keeps the event loop free. The password is
read when a release is made (so a rotated password file is used at once) and is never logged,
recorded or put in an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailsink.config import RelaySettings

# Who asked for a release (the `trigger` of its record).
TRIGGERS = ("cli", "tui", "http", "auto")
# What became of it.
SENT, PARTIAL, FAILED, RETRYING = "sent", "partial", "failed", "retrying"
OUTCOMES = (SENT, PARTIAL, FAILED, RETRYING)
TRACE_HEADER = "X-Mailsink-Released-From"


@dataclass(frozen=True)
class Delivery:
    """What the upstream answered to one release that reached DATA's end (or failed): `code`
    and `reply` are its last reply (the end of DATA's on success), `accepted` the recipients
    it took, `refused` those it refused with the reply each got ("550 5.1.1 no such user")."""

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
        raise NotImplementedError

    def summary(self) -> str:
        """One line for a person: "sent to ann@example.test via smtp.example.test:587: 250 2.0.0
        Ok: queued as 4F2" (untrusted text made visible by the face that shows it)."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseRecord:
        """The record back from `as_json` (an attached sink reads the server's answer)."""
        raise NotImplementedError


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
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleasePlan:
        raise NotImplementedError


def plan(relay: RelaySettings, message_id: int, mail_from: str, rcpt_to: list[str]) -> ReleasePlan:
    """The plan for a message whose envelope is (mail_from, rcpt_to)."""
    raise NotImplementedError


def refused_recipients(relay: RelaySettings, recipients: list[str]) -> list[str]:
    """Those of `recipients` that are no address, or that no glob of `allowed_recipients`
    matches (compared lower-cased); empty when every one may be released to."""
    raise NotImplementedError


def auto_recipients(relay: RelaySettings, rcpt_to: list[str]) -> list[str]:
    """Those of a message's envelope recipients that auto release sends to: matched by
    `auto_recipients` and allowed by `allowed_recipients`."""
    raise NotImplementedError


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
    its stage, and the upstream's code and text (or the OS's / TLS's reason)."""
    raise NotImplementedError
