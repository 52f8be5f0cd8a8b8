"""Session transcripts: every line each way, in order, with millisecond timestamps."""

from __future__ import annotations

import re

from mailsink.store.db import SessionEvent, now_ms

CLIENT = "C"  # a command line from the client
SERVER = "S"  # a reply line from mailsink
DATA = "D"  # message content, summarised as its size
NOTE = "I"  # something mailsink observed (connection closed, timeout, ...)

_AUTH_COMMAND = re.compile(r"^(AUTH\s+\S+)(\s+\S.*)?$", re.IGNORECASE)


def redact(line: str) -> str:
    """AUTH PLAIN <secret> -> AUTH PLAIN [redacted]; other lines unchanged."""
    match = _AUTH_COMMAND.match(line)
    if match and match.group(2):
        return f"{match.group(1)} [redacted]"
    return line


class Transcript:
    """Events of one session; those not yet written are handed out with `take`."""

    def __init__(self) -> None:
        self._seq = 0
        self._pending: list[SessionEvent] = []
        self.count = 0

    def add(self, direction: str, text: str) -> None:
        self._seq += 1
        self.count += 1
        self._pending.append((self._seq, now_ms(), direction, text))

    def take(self) -> list[SessionEvent]:
        pending, self._pending = self._pending, []
        return pending

    def pending(self) -> list[SessionEvent]:
        """Events not yet handed to the store (a copy), for live views."""
        return list(self._pending)

    def restore(self, events: list[SessionEvent]) -> None:
        """Put back events whose write failed, ahead of anything newer."""
        self._pending = events + self._pending
