"""Session transcripts: every line each way, in order, with millisecond timestamps."""

from __future__ import annotations

import re
from collections.abc import Callable

from mailsink.store.db import SessionEvent, now_ms

CLIENT = "C"  # a command line from the client
SERVER = "S"  # a reply line from mailsink
DATA = "D"  # message content, summarised as its size
NOTE = "I"  # something mailsink observed (connection closed, timeout, ...)

# A line that opens with AUTH in any spelling: any case, after spaces or control characters,
# followed by a tab, "=" or nothing at all. A client that mangles the command still sends its
# secret, so every such line is redacted, not just the well-formed ones.
_AUTH_LINE = re.compile(r"[^A-Za-z0-9]*AUTH", re.IGNORECASE)
# The well-formed command keeps its mechanism in the transcript when it is a known one: a word
# that is not could be the secret itself (`AUTH dGVzdA==` with the mechanism left out).
_AUTH_COMMAND = re.compile(r"AUTH ([A-Z0-9_-]{1,20})(\s.*)?", re.IGNORECASE | re.DOTALL)
_MECHANISMS = frozenset(
    {
        "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2",
        "OAUTHBEARER", "GSSAPI", "NTLM", "EXTERNAL", "ANONYMOUS",
    }
)  # fmt: skip
REDACTED_AUTH = "AUTH [redacted]"


def redact(line: str) -> str:
    """AUTH PLAIN <secret> -> AUTH PLAIN [redacted]; any other line that starts with AUTH, in
    whatever spelling (`AUTH=PLAIN ...`, `AUTHPLAIN ...`, `auth\tplain\t...`), -> AUTH [redacted];
    other lines unchanged."""
    if not _AUTH_LINE.match(line):
        return line
    command = _AUTH_COMMAND.fullmatch(line)
    if command is None or command.group(1).upper() not in _MECHANISMS:
        return REDACTED_AUTH
    mechanism = f"AUTH {command.group(1)}"
    return f"{mechanism} [redacted]" if (command.group(2) or "").strip() else mechanism


class Transcript:
    """Events of one session; those not yet written are handed out with `take`.

    `unwritten` is called when an event arrives and none was waiting to be written."""

    def __init__(self, unwritten: Callable[[], None] | None = None) -> None:
        self._seq = 0
        self._pending: list[SessionEvent] = []
        self.count = 0
        self.unwritten = unwritten

    def add(self, direction: str, text: str) -> None:
        self._seq += 1
        self.count += 1
        if not self._pending and self.unwritten is not None:
            self.unwritten()
        self._pending.append((self._seq, now_ms(), direction, text))

    def take(self) -> list[SessionEvent]:
        pending, self._pending = self._pending, []
        return pending

    def pending(self) -> list[SessionEvent]:
        """Events not yet handed to the store (a copy), for live views."""
        return list(self._pending)

    def restore(self, events: list[SessionEvent]) -> None:
        """Put back events whose write failed, ahead of anything newer."""
        if events and not self._pending and self.unwritten is not None:
            self.unwritten()
        self._pending = events + self._pending
