"""Message list rows: the fields of a stored message as the list shows them, made safe once."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mailsink.store.queries import MessageRecord
from mailsink.text import format_bytes, visible


@dataclass(frozen=True)
class Row:
    id: int
    time: str
    sender: str
    from_: str
    to: str
    subject: str
    size: str
    findings: int
    worst: str  # the most severe finding: "error", "warning", "info" or ""
    attachments: bool
    rejected: bool


def _joined(values: list[str]) -> str:
    return visible(", ".join(values))


def row_of(record: MessageRecord) -> Row:
    headers = record.headers
    severities = {finding.get("severity") for finding in record.findings}
    worst = next((s for s in ("error", "warning", "info") if s in severities), "")
    recipients = headers.get("to") or record.envelope.rcpt_to
    return Row(
        id=record.id,
        time=time.strftime("%H:%M:%S", time.localtime(record.received_at / 1000)),
        sender=visible(record.envelope.mail_from or "<>"),
        from_=_joined(headers.get("from") or []),
        to=_joined(recipients),
        subject=visible(headers.get("subject") or ""),
        size=format_bytes(record.size),
        findings=len(record.findings),
        worst=worst,
        attachments=record.has_attachments,
        rejected=record.status != "accepted",
    )


def gone(message_id: int) -> Row:
    """A row whose message was deleted (by another process) after the index was read."""
    return Row(message_id, "", "", "", "", "(deleted)", "", 0, "", False, False)
