"""The SMTP envelope of a message: what the client said, kept apart from the message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RefusedRecipient:
    """A RCPT TO the server refused: what the client gave, and the reply it got."""

    address: str  # as given (the text after TO: when it could not be parsed as an address)
    options: list[str]  # its parameters, as given (NOTIFY=, ORCPT=)
    reply: str  # the reply sent, lines joined by "\n"
    rule: str | None = None  # the fault rule that answered, when one did
    reason: str = "fault_rule"  # REFUSAL_REASONS

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "options": self.options,
            "reply": self.reply,
            "rule": self.rule,
            "reason": self.reason,
        }


# Why a recipient was refused: a fault rule answered; [validation] addresses = "reject"; the
# address or its parameters could not be parsed; anything else the server refuses (a session
# state, a limit).
REFUSAL_REASONS = ("fault_rule", "validation", "syntax", "parameters", "other")


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
    # Every RCPT TO the server refused in this transaction, in the order given; rcpt_to holds
    # only the accepted ones.
    rcpt_refused: list[RefusedRecipient] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        """The Envelope stored by `stored_json()` (or `as_json()`): rows without rcpt_refused
        (older ones, and those with no refusal) have none."""
        refused = [RefusedRecipient(**item) for item in data.get("rcpt_refused", ())]
        return cls(**{**data, "rcpt_refused": refused})

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
            "rcpt_refused": [refused.as_json() for refused in self.rcpt_refused],
        }

    def stored_json(self) -> dict[str, Any]:
        """`as_json()` as the store keeps it: without rcpt_refused when it is empty. A viewer
        from before rcpt_refused builds Envelope(**data) and would fail on every message a newer
        server stored; this way only on those that had a refusal. from_json defaults it."""
        data = self.as_json()
        if not self.rcpt_refused:
            del data["rcpt_refused"]
        return data
