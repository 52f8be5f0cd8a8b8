"""Message and session content as Rich Text: every untrusted string goes in as plain text
(Text.append never reads markup) after `visible` has made its control characters harmless."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from mailsink.clock import local_time
from mailsink.mail.addresses import normalize
from mailsink.mail.envelope import RefusedRecipient
from mailsink.mail.parse import MimePart, ParsedMessage
from mailsink.store.reader import MessageRecord, SessionRecord
from mailsink.text import visible, visible_block
from mailsink.units import format_bytes

if TYPE_CHECKING:
    from mailsink.relay import ReleaseRecord

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
REFUSED = "bold red"  # the server's no: a refused RCPT TO, a rejected message's reply
RELEASES_SHOWN = 50  # the newest; `mailsink show` lists them all
OUTCOME_STYLES = {"sent": "green", "partial": "yellow", "retrying": "yellow", "failed": REFUSED}


def plain(text: str | None, style: str = "", *, emoji: bool = True) -> Text:
    """`emoji=False` for addresses: see text.visible."""
    return Text(visible(text or "", emoji=emoji), style=style)


def _labelled(label: str, value: Text) -> Text:
    return Text.assemble((f"{label}: ", "bold"), value)


def _address_lines(
    label: str, values: list[str], specs: list[str], marks: dict[str, tuple[str, str]]
) -> list[Text]:
    """One line per address, marked by its addr-spec (`marks` by addresses.normalize, as the
    findings compare them). parse.py keeps `values` (display forms) and `specs` in step; when it
    could not (a header it failed to parse), nothing is marked."""
    paired = len(specs) == len(values)
    lines = []
    for position, value in enumerate(values[:ADDRESSES_SHOWN]):
        line = _labelled(label, plain(value, emoji=False))
        mark = marks.get(normalize(specs[position])) if paired else None
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
    marked = Counter(mark for spec in specs if (mark := marks.get(normalize(spec))))
    for (note, style), count in marked.items():
        line.append(f"; {count:,} of them {note}", style)
    return line


class OneLineOrTwo:
    """`head` and `tail` on one line when the column has room, else `tail` below, indented (and
    wrapped there): a refused recipient's reply never splits at a random word. `tail` may be
    one of these itself, to break again inside it."""

    def __init__(
        self, head: Text, tail: Text | OneLineOrTwo, gap: str = "  ", indent: int = 4
    ) -> None:
        self.head, self.tail, self.gap, self.indent = head, tail, gap, indent

    def joined(self) -> Text:
        """All of it on one line (a "\n" inside still breaks it)."""
        tail = self.tail.joined() if isinstance(self.tail, OneLineOrTwo) else self.tail
        return Text.assemble(self.head, self.gap, tail)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        whole = self.joined()
        if whole.cell_len <= options.max_width and "\n" not in whole.plain:
            yield whole
        else:
            yield self.head
            yield Padding(self.tail, (0, 0, 0, self.indent))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        whole = self.joined().cell_len
        return Measurement(min(whole, 10), whole)


def first_line(reply: str | None) -> str:
    """A reply's first line (replies are stored with their lines joined by "\n")."""
    return (reply or "").split("\n", 1)[0]


def refused_line(refused: RefusedRecipient) -> OneLineOrTwo:
    """`RCPT TO: <full@x.test>  ✗ 452 4.2.2 Mailbox full` (the reply's first line: the Findings
    and `mailsink show` have it all). Refused for its syntax, the address is what the client
    gave (the text after TO: when it did not parse), shown as it is: `RCPT TO: <<u@x.test>`;
    refused for its parameters, they follow it: `RCPT TO: <u@x.test> NOTIFY=NEVR`."""
    given = refused.address if refused.reason == "syntax" else f"<{refused.address}>"
    if refused.reason == "parameters":
        given = " ".join([given, *refused.options])
    head = _labelled("RCPT TO", plain(given, emoji=False))
    reply = Text.assemble(
        ("✗ ", REFUSED), plain(first_line(refused.reply), REFUSED), overflow="fold"
    )
    return OneLineOrTwo(head, reply)


def _refused_lines(refused: list[RefusedRecipient]) -> list[RenderableType]:
    lines: list[RenderableType] = [refused_line(r) for r in refused[:ADDRESSES_SHOWN]]
    if len(refused) > ADDRESSES_SHOWN:
        more = len(refused) - ADDRESSES_SHOWN
        lines.append(Text(f"RCPT TO: … and {more:,} more refused", REFUSED))
    return lines


def status_line(record: MessageRecord) -> RenderableType:
    """`Status: rejected  452 4.3.1 Insufficient system storage  (rule "storage full")`: the
    reply's first line on the Status line, wrapping there; its further lines, and the rule when
    it does not fit beside them, below. All of it lines up after `Status: `."""
    rejected = record.status != "accepted"
    value = Text(record.status, REFUSED if rejected else "green")
    value.overflow = "fold"  # a reply's long word goes on, not cut with "…"
    first, *more = (record.reply or "").split("\n")
    if first:
        value.append("  ")
        value.append_text(plain(first))
    below = [plain(line) for line in more]
    if record.reply_rule:
        below.append(plain(f'(rule "{record.reply_rule}")', "dim"))
    if not first and not below:
        return _labelled("Status", value)
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column()
    shown = OneLineOrTwo(value, Text("\n", overflow="fold").join(below), indent=0)
    grid.add_row(Text("Status: ", "bold"), shown if below else value)
    return grid


def reply_of(code: int | None, reply: str) -> str:
    """An upstream's reply with its code first ("250 2.0.0 Ok: queued as X"), made visible."""
    if code is not None and not reply.startswith(str(code)):
        reply = f"{code} {reply}".rstrip()
    return visible(reply)


def release_lines(releases: Sequence[ReleaseRecord], message_id: int) -> RenderableType:
    """The Overview's releases, newest last, as `mailsink show` lists them: when, who asked,
    the outcome, then (wrapping in its own column) to whom, via which upstream, its answer;
    under a partial one each recipient the upstream refused, with its reply."""
    heading = Text(f"\nReleases ({len(releases)})", "bold underline")
    grid = Table.grid(padding=(0, 2, 0, 0))
    grid.add_column(no_wrap=True)  # when, who asked, the outcome: one line, in columns
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")  # a long address or reply goes on, not cut
    if len(releases) > RELEASES_SHOWN:
        earlier = len(releases) - RELEASES_SHOWN
        grid.add_row(Text(f"… {earlier:,} earlier: mailsink show {message_id}", "dim"))
    for release in releases[-RELEASES_SHOWN:]:
        outcome = release.outcome
        if release.attempt > 1 or outcome == "retrying":
            outcome += f" (try {release.attempt})"
        what = Text.assemble(
            "to ",
            visible(", ".join(release.recipients), emoji=False),
            (f" via {visible(release.upstream)}: ", "dim"),
            reply_of(release.code, release.reply),
        )
        grid.add_row(
            Text(local_time(release.at, missing="-"), "dim"),
            Text(visible(release.trigger)),
            Text(visible(outcome), OUTCOME_STYLES.get(release.outcome, "")),
            what,
        )
        for recipient, reply in release.refused.items():
            refused = Text.assemble(
                ("✗ ", REFUSED), (visible(recipient, emoji=False), REFUSED), "  ", visible(reply)
            )
            grid.add_row("", "", "", refused)
    return Group(heading, Padding(grid, (0, 0, 0, 1)))


def overview(
    record: MessageRecord, parsed: ParsedMessage, releases: Sequence[ReleaseRecord] = ()
) -> RenderableType:
    """Envelope beside headers, what differs marked, then the findings with their explanation,
    the attachments and the releases to the [relay] server."""
    envelope, headers = record.envelope, parsed.headers
    # Addresses compared as the findings compare them (addresses.normalize): a header address
    # the Findings call refused is marked refused here, never "no RCPT TO".
    header_recipients = {
        normalize(a) for a in (*headers.to_addrs, *headers.cc_addrs, *headers.bcc_addrs)
    }
    delivered = {normalize(r) for r in envelope.rcpt_to}
    sender_differs = bool(headers.from_addrs) and normalize(envelope.mail_from) not in {
        normalize(a) for a in headers.from_addrs
    }

    left: list[RenderableType] = []
    mail_from = _labelled("MAIL FROM", plain(f"<{envelope.mail_from}>", emoji=False))
    if sender_differs:
        mail_from.stylize(MISMATCH, len("MAIL FROM: "))
        mail_from.append("  ≠ From", MISMATCH)
    left.append(mail_from)
    hidden = {
        normalize(r): ("hidden (in no To/Cc)", HIDDEN)
        for r in envelope.rcpt_to
        if normalize(r) not in header_recipients
    }
    shown = [f"<{recipient}>" for recipient in envelope.rcpt_to]
    left += _address_lines("RCPT TO", shown, envelope.rcpt_to, hidden)
    left += _refused_lines(envelope.rcpt_refused)
    left.append(Text())
    left.append(_labelled("HELO", plain(envelope.helo or "")))
    left.append(_labelled("Peer", plain(envelope.peer)))
    left.append(_labelled("TLS", Text("yes" if envelope.tls else "no")))
    if envelope.auth_user:
        left.append(_labelled("AUTH", plain(envelope.auth_user)))
    left.append(_labelled("Size", Text(format_bytes(record.size))))
    left.append(status_line(record))

    refused = {normalize(r.address) for r in envelope.rcpt_refused}
    undelivered = {
        normalize(a): (
            ("refused", REFUSED)
            if normalize(a) in refused
            else ("not delivered to (no RCPT TO)", UNDELIVERED)
        )
        for a in (*headers.to_addrs, *headers.cc_addrs, *headers.bcc_addrs)
        if normalize(a) not in delivered
    }
    right: list[Text] = []
    from_marks = (
        {normalize(a): ("≠ MAIL FROM", MISMATCH) for a in headers.from_addrs}
        if sender_differs
        else {}
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
    if record.tags:
        right.append(_labelled("Tags", plain(", ".join(record.tags))))

    table = Table(expand=True, box=None, padding=(0, 2), show_edge=False)
    table.add_column(Text("Envelope (SMTP: who it was really for)", "bold underline"), ratio=1)
    table.add_column(Text("Headers (what the message says)", "bold underline"), ratio=1)
    table.add_row(Group(*left), Text("\n").join(right))

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
    if releases:
        return Group(table, found, release_lines(releases, record.id))
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


def refusal_text(refusals: int, last_refusal: str | None) -> Text:
    """`✗ 2 refused, last: RCPT TO:<full@x.test> 452 4.2.2 Mailbox full`"""
    text = Text.assemble(("✗ ", REFUSED), (f"{refusals} refused", REFUSED))
    if last_refusal:
        text.append(", last: ")
        text.append_text(plain(last_refusal))
    return text


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
    )
    if session.refusals:
        head.append("\n")
        head.append_text(refusal_text(session.refusals, session.last_refusal))
    head.append("\n")
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
