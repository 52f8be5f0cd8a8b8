"""Message and session content as Rich Text: every untrusted string goes in as plain text
(Text.append never reads markup) after `visible` has made its control characters harmless."""

from __future__ import annotations

from collections import Counter

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mailsink.clock import local_time
from mailsink.mail.parse import MimePart, ParsedMessage
from mailsink.store.reader import MessageRecord, SessionRecord
from mailsink.text import visible, visible_block
from mailsink.units import format_bytes

SEVERITY_STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_MARKS = {"error": "✗", "warning": "!", "info": "i"}
DIRECTION_STYLES = {"C": "bold", "S": "green", "D": "dim", "I": "yellow"}
ATTACHMENTS_SHOWN = 50
HEADERS_SHOWN = 1000
HEADER_CHARS = 256 * 1024  # of header text: 300 folded 50 KB fields would stall the UI for seconds
ADDRESSES_SHOWN = 200  # lines per address field; a message can name tens of thousands
FINDINGS_SHOWN = 200  # and have a finding for each of them
HIDDEN = "yellow"
UNDELIVERED = "bold red"
MISMATCH = "yellow"


def plain(text: str | None, style: str = "", *, emoji: bool = True) -> Text:
    """`emoji=False` for addresses: see text.visible."""
    return Text(visible(text or "", emoji=emoji), style=style)


def _labelled(label: str, value: Text) -> Text:
    return Text.assemble((f"{label}: ", "bold"), value)


def _address_lines(
    label: str, values: list[str], specs: list[str], marks: dict[str, tuple[str, str]]
) -> list[Text]:
    """One line per address, marked by its addr-spec. parse.py keeps `values` (display forms) and
    `specs` in step; when it could not (a header it failed to parse), nothing is marked."""
    paired = len(specs) == len(values)
    lines = []
    for position, value in enumerate(values[:ADDRESSES_SHOWN]):
        line = _labelled(label, plain(value, emoji=False))
        mark = marks.get(specs[position].lower()) if paired else None
        if mark is not None:
            note, style = mark
            line.stylize(style, len(label) + 2)
            line.append(f"  ← {note}", style)
        lines.append(line)
    if len(values) > ADDRESSES_SHOWN:
        rest = specs[ADDRESSES_SHOWN:] if paired else []
        lines.append(_more_addresses(label, len(values) - ADDRESSES_SHOWN, rest, marks))
    return lines


def _more_addresses(
    label: str, more: int, specs: list[str], marks: dict[str, tuple[str, str]]
) -> Text:
    """The line that stands for the addresses not shown, with how many of them are marked."""
    line = Text(f"{label}: … and {more:,} more", "dim")
    marked = Counter(mark for spec in specs if (mark := marks.get(spec.lower())))
    for (note, style), count in marked.items():
        line.append(f"; {count:,} of them {note}", style)
    return line


def overview(record: MessageRecord, parsed: ParsedMessage) -> RenderableType:
    """Envelope beside headers, what differs marked, then the findings with their explanation."""
    envelope, headers = record.envelope, parsed.headers
    header_recipients = {
        a.lower() for a in (*headers.to_addrs, *headers.cc_addrs, *headers.bcc_addrs)
    }
    delivered = {r.lower() for r in envelope.rcpt_to}
    sender_differs = bool(headers.from_addrs) and envelope.mail_from.lower() not in {
        a.lower() for a in headers.from_addrs
    }

    left: list[Text] = []
    mail_from = _labelled("MAIL FROM", plain(f"<{envelope.mail_from}>", emoji=False))
    if sender_differs:
        mail_from.stylize(MISMATCH, len("MAIL FROM: "))
        mail_from.append("  ≠ From", MISMATCH)
    left.append(mail_from)
    hidden = {
        r.lower(): ("hidden (in no To/Cc)", HIDDEN)
        for r in envelope.rcpt_to
        if r.lower() not in header_recipients
    }
    shown = [f"<{recipient}>" for recipient in envelope.rcpt_to]
    left += _address_lines("RCPT TO", shown, envelope.rcpt_to, hidden)
    left.append(Text())
    left.append(_labelled("HELO", plain(envelope.helo or "")))
    left.append(_labelled("Peer", plain(envelope.peer)))
    left.append(_labelled("TLS", Text("yes" if envelope.tls else "no")))
    if envelope.auth_user:
        left.append(_labelled("AUTH", plain(envelope.auth_user)))
    left.append(_labelled("Size", Text(format_bytes(record.size))))
    status = Text(record.status, "bold red" if record.status != "accepted" else "green")
    if record.reply:
        status.append("  ")
        status.append_text(plain(record.reply))
    left.append(_labelled("Status", status))

    undelivered = {
        a.lower(): ("not delivered to (no RCPT TO)", UNDELIVERED)
        for a in (*headers.to_addrs, *headers.cc_addrs, *headers.bcc_addrs)
        if a.lower() not in delivered
    }
    right: list[Text] = []
    from_marks = (
        {a.lower(): ("≠ MAIL FROM", MISMATCH) for a in headers.from_addrs} if sender_differs else {}
    )
    right += _address_lines("From", headers.from_ or ["(none)"], headers.from_addrs, from_marks)
    if headers.sender:
        right += _address_lines("Sender", [headers.sender], [], {})
    right += _address_lines("Reply-To", headers.reply_to, [], {})
    right += _address_lines("To", headers.to, headers.to_addrs, undelivered)
    right += _address_lines("Cc", headers.cc, headers.cc_addrs, undelivered)
    right += _address_lines("Bcc", headers.bcc, headers.bcc_addrs, undelivered)
    right.append(Text())
    right.append(_labelled("Subject", plain(headers.subject)))
    right.append(_labelled("Date", plain(headers.date)))
    right.append(_labelled("Message-ID", plain(headers.message_id)))

    table = Table(expand=True, box=None, padding=(0, 2), show_edge=False)
    table.add_column(Text("Envelope (SMTP: who it was really for)", "bold underline"), ratio=1)
    table.add_column(Text("Headers (what the message says)", "bold underline"), ratio=1)
    table.add_row(Text("\n").join(left), Text("\n").join(right))

    found = Text()
    if record.findings:
        found.append(f"\nFindings ({len(record.findings)})\n", "bold underline")
        for finding in record.findings[:FINDINGS_SHOWN]:
            severity = str(finding.get("severity", "info"))
            style = SEVERITY_STYLES.get(severity, "")
            found.append(f" {SEVERITY_MARKS.get(severity, '?')} {severity:<7} ", style)
            found.append(visible(str(finding.get("kind", ""))), "bold")
            found.append("  ")
            found.append(visible(str(finding.get("detail", ""))))
            found.append("\n")
        if len(record.findings) > FINDINGS_SHOWN:
            more = len(record.findings) - FINDINGS_SHOWN
            found.append(f" … and {more:,} more: mailsink show {record.id}\n", "dim")
    else:
        found.append("\nNo findings: envelope and headers agree.\n", "green")
    if parsed.attachments:
        found.append(f"\nAttachments ({len(parsed.attachments)})\n", "bold underline")
        for attachment in parsed.attachments[:ATTACHMENTS_SHOWN]:
            found.append(f" @ {visible(attachment.filename or '(no name)')}")
            found.append(
                f"  {visible(attachment.content_type)}, {format_bytes(attachment.size)}\n", "dim"
            )
        if len(parsed.attachments) > ATTACHMENTS_SHOWN:
            found.append(f" … and {len(parsed.attachments) - ATTACHMENTS_SHOWN} more\n", "dim")
    return Group(table, found)


def body(text: str | None, missing: str) -> str:
    return visible_block(text) if text is not None else missing


def header_text(parsed: ParsedMessage) -> Text:
    """The decoded header fields, up to HEADERS_SHOWN of them and HEADER_CHARS of text."""
    out = Text()
    room = HEADER_CHARS
    for index, (name, value) in enumerate(parsed.header_lines[:HEADERS_SHOWN]):
        name, value = visible(name), visible(value)
        room -= len(name) + len(value) + 3
        if room < 0:
            left = len(parsed.header_lines) - index
            out.append(
                f"[cut: only the first {HEADER_CHARS // 1024} KiB of header text is shown;"
                f" {left:,} more header fields (r shows the raw block)]\n",
                "dim",
            )
            return out
        out.append(name, "bold")
        out.append(": ")
        out.append(value)
        out.append("\n")
    if len(parsed.header_lines) > HEADERS_SHOWN:
        more = len(parsed.header_lines) - HEADERS_SHOWN
        out.append(f"… {more} more header fields (r shows the raw block)\n", "dim")
    return out


def raw_header_block(raw: bytes) -> str:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    block = raw if end < 0 else raw[:end]
    return visible_block(block[: 1024 * 1024].decode("utf-8", "replace"))


def transcript_line(event: tuple[int, str, str]) -> Text:
    at, direction, text = event
    line = Text(local_time(at, with_ms=True)[11:], "dim")
    line.append(f" {direction} ", DIRECTION_STYLES.get(direction, ""))
    line.append(visible(text), DIRECTION_STYLES.get(direction, "") if direction != "C" else "")
    return line


def transcript(session: SessionRecord | None, *, limit: int | None = None) -> Text:
    if session is None:
        return Text("The session that delivered this message was pruned from the store.", "dim")
    head = Text.assemble(
        (f"Session {session.id}", "bold"),
        f"  {visible(session.peer)}  HELO {visible(session.helo or '-')}",
        f"  TLS {'yes' if session.tls else 'no'}",
        f"  started {local_time(session.started_at)}",
        f"  ended {local_time(session.ended_at)} ({visible(session.end_reason)})"
        if session.end_reason
        else "  (still open)",
        "\n",
    )
    events = session.events if limit is None else session.events[:limit]
    lines = [transcript_line(event) for event in events]
    if len(session.events) > len(events):
        more = len(session.events) - len(events)
        lines.append(Text(f"… {more} more lines: mailsink session {session.id}", "dim"))
    return Text("\n").join([head, *lines])


def mime_label(part: MimePart) -> Text:
    label = Text(visible(part.content_type), "bold" if part.children else "")
    if part.filename:
        label.append("  ")
        label.append(visible(part.filename), "cyan")
    if part.cut:
        label.append(f"  {format_bytes(part.size)}, not shown: nested too deep", "yellow")
    elif not part.children:
        label.append(f"  {format_bytes(part.size)}", "dim")
    if part.disposition:
        label.append(f"  {visible(part.disposition)}", "dim")
    return label
