"""The SMTP envelope of a message: what the client said, kept apart from the message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Envelope:
    """What the client said in SMTP, kept apart from anything in the message."""

    mail_from: str  # "" for the null sender <>
    rcpt_to: list[str]
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[list[str]] = field(default_factory=list)
    helo: str | None = None
    peer: str | None = None
    auth_user: str | None = None
    tls: bool = False

    def as_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy costs more than the rest of this per message.
        return {
            "mail_from": self.mail_from,
            "rcpt_to": self.rcpt_to,
            "mail_options": self.mail_options,
            "rcpt_options": self.rcpt_options,
            "helo": self.helo,
            "peer": self.peer,
            "auth_user": self.auth_user,
            "tls": self.tls,
        }
