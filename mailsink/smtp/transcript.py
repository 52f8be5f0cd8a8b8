"""Session transcripts: every line each way, in order, with millisecond timestamps."""

from __future__ import annotations

import re
from collections.abc import Callable

from mailsink.clock import now_ms
from mailsink.events import EventBus, TranscriptLine
from mailsink.store import SessionEvent

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
# The bus of a transcript that publishes nowhere (yet): nobody ever listens to it.
_NOBODY = EventBus()


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
    """Lines of one session, and which of them the store has yet to commit.

    Lines not yet written are handed out with `take`; they stay "in flight" until the caller
    says the store has answered for them (`settled`) or gives them back (`restore`), so that
    `uncommitted` always has every line a view of the store does not have yet.
    `on_first_pending` is called when a line arrives and none was waiting to be written.
    With `publish_to`, each line is also told on the event bus (TranscriptLine), built only
    when someone listens: this is the SMTP path's busiest code."""

    def __init__(self, on_first_pending: Callable[[], None] | None = None) -> None:
        self._seq = 0  # the last line's number, and so how many there are
        self._pending: list[SessionEvent] = []
        self._in_flight: list[list[SessionEvent]] = []
        self.on_first_pending = on_first_pending
        self._events = _NOBODY
        self._session_id = 0

    @property
    def count(self) -> int:
        """Lines so far, written or not."""
        return self._seq

    def publish_to(self, events: EventBus, session_id: int) -> None:
        self._events = events
        self._session_id = session_id

    def add(self, direction: str, text: str) -> None:
        self._seq = seq = self._seq + 1
        if not self._pending and self.on_first_pending is not None:
            self.on_first_pending()
        self._pending.append(line := (seq, now_ms(), direction, text))
        if self._events.wants(TranscriptLine):
            self._events.publish(TranscriptLine(self._session_id, line))

    def take(self) -> list[SessionEvent]:
        """The lines not yet written, for a write to the store; in flight until `settled`."""
        pending, self._pending = self._pending, []
        if pending:
            self._in_flight.append(pending)
        return pending

    def settled(self, lines: list[SessionEvent]) -> None:
        """The store has answered for `lines` (from `take`): committed, or lost for good."""
        for index, chunk in enumerate(self._in_flight):
            if chunk is lines:
                del self._in_flight[index]
                return

    def pending(self) -> list[SessionEvent]:
        """Lines not yet handed to the store (a copy)."""
        return list(self._pending)

    def uncommitted(self) -> list[SessionEvent]:
        """Lines the store may not have committed yet, in order: those in writes it has not
        answered, and those not yet handed to it."""
        if not self._in_flight:
            return list(self._pending)
        lines = [line for chunk in self._in_flight for line in chunk]
        lines += self._pending
        lines.sort()
        return lines

    def restore(self, lines: list[SessionEvent]) -> None:
        """Put back lines whose write failed, ahead of anything newer."""
        self.settled(lines)
        if lines and not self._pending and self.on_first_pending is not None:
            self.on_first_pending()
        self._pending = lines + self._pending
