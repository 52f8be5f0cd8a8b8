"""Plain-text and JSON renderings for the CLI.

Every string that comes from a message or a session passes through `visible`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailsink.clock import iso_ms, local_time
from mailsink.text import BEYOND_C0, characters, visible, visible_block
from mailsink.units import format_bytes

if TYPE_CHECKING:  # (their modules are imported by what made the values)
    from mailsink.config import Settings
    from mailsink.mail.parse import MimePart, ParsedMessage
    from mailsink.relay import ReleaseRecord
    from mailsink.store.reader import MessageRecord, SessionRecord

# Valid in JSON text, but each either moves or hides text when shown (text.INVISIBLE: C1
# controls, the line and paragraph separators, bidirectional controls, zero-width characters,
# tags) or cannot be printed at all (lone surrogates, what undecodable header bytes leave). They
# occur inside strings only; json.dumps escapes C0 controls itself.
_JSON_ESCAPED = re.compile(f"[{BEYOND_C0}\ud800-\udfff]")


@functools.cache
def _json_escapes() -> dict[int, str]:
    """Each as json.dumps spells it in ASCII: \\uXXXX, a surrogate pair beyond the BMP. (Made
    when first needed: 3000 characters, 10 ms, that most outputs never hold.)"""
    return {ord(c): json.dumps(c)[1:-1] for c in characters(BEYOND_C0 + "\ud800-\udfff")}


def to_json(data: Any) -> str:
    """JSON for a terminal: readable UTF-8, with what could disguise or drive it escaped."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return text.translate(_json_escapes()) if _JSON_ESCAPED.search(text) else text


def _cut(text: str, width: int) -> str:
    text = visible(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headings: list[str], rows: list[list[str]], widths: list[int]) -> str:
    lines = ["  ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [_cut(cell, w).ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


UNREAD = "•"  # the list's mark for a message not read yet (as the TUI's list marks it)


def message_table(records: list[MessageRecord]) -> str:
    if not records:
        return "no messages"
    rows = []
    for r in records:
        kinds = sorted({f["kind"] for f in r.findings})
        status = "" if r.status == "accepted" else f"[{r.status}] "
        rows.append(
            [
                str(r.id),
                "" if r.seen else UNREAD,
                local_time(r.received_at, missing="-"),
                # Addresses: no emoji sequence kept (see text.visible).
                visible(r.envelope.mail_from or "<>", emoji=False),
                visible(", ".join(r.envelope.rcpt_to), emoji=False),
                visible(", ".join(r.headers["from"]), emoji=False),
                status + (r.headers["subject"] or ""),
                ", ".join(r.tags),
                format_bytes(r.size),
                ", ".join(kinds),
            ]
        )
    headings = [
        "ID",
        "",  # UNREAD
        "RECEIVED",
        "MAIL FROM",
        "RCPT TO",
        "FROM",
        "SUBJECT",
        "TAGS",
        "SIZE",
        "FINDINGS",
    ]
    return _table(headings, rows, [6, 1, 19, 24, 28, 28, 32, 20, 9, 40])


def message_json(
    record: MessageRecord,
    parsed: ParsedMessage,
    releases: Sequence[ReleaseRecord] | None = None,
) -> dict[str, Any]:
    """What `show --json` prints: the contract in README's JSON section (`releases`, each try
    of a release to the [relay] server, when given)."""
    findings = list(record.findings)
    known = {f["detail"] for f in findings}
    # Defects in the body are only seen by the full parse, which runs on demand.
    findings += [
        {"kind": "parse_defect", "severity": "warning", "address": None, "detail": defect}
        for defect in parsed.defects
        if defect not in known
    ]
    data = {
        "id": record.id,
        "received_at": iso_ms(record.received_at),
        "size": record.size,
        "session_id": record.session_id,
        "status": record.status,
        "reply": record.reply,
        "reply_rule": record.reply_rule,
        "envelope": record.envelope.as_json(),
        "headers": record.headers,
        "findings": findings,
        "read": record.seen,
        "tags": record.tags,
        "attachments": [a.as_json() for a in parsed.attachments],
        "text": parsed.text,
        "html": parsed.html,
    }
    if releases is not None:
        data["releases"] = [release.as_json() for release in releases]
    return data


def _mime_lines(root: MimePart) -> list[str]:
    lines = []
    stack = [(root, 0)]  # iterative: the tree is as deep as the message made it
    while stack:
        part, depth = stack.pop()
        label = visible(part.content_type)
        if part.filename:
            label += f'  "{visible(part.filename)}"'
        if part.cut:
            label += f"  {format_bytes(part.size)}, not shown: nested too deep"
        elif not part.children:
            label += f"  {format_bytes(part.size)}"
        lines.append("  " * (depth + 1) + label)
        stack.extend((child, depth + 1) for child in reversed(part.children))
    return lines


def reply_lines(reply: str) -> list[str]:
    """A reply as stored (its lines joined by "\n"), each line made visible."""
    return [visible(line) for line in reply.split("\n")]


def refusal_cause(rule: str | None, reason: str | None = None) -> str:
    """Why the server said no, for a text line: `(rule "mailbox full")`, `(reason: syntax)`."""
    if rule:
        return f'(rule "{visible(rule)}")'
    return f"(reason: {visible(reason)})" if reason else ""


def _status_lines(record: MessageRecord) -> list[str]:
    """A rejected message's reply and the rule that answered (none for an accepted one)."""
    if record.status == "accepted":
        return []
    first, *more = reply_lines(record.reply or "")
    cause = refusal_cause(record.reply_rule)
    head = f"Status: {visible(record.status)}" + (f" — {first}" if first else "")
    return [f"{head} {cause}".rstrip(), *(f"{'':10}{line}" for line in more)]


def message_text(
    record: MessageRecord, parsed: ParsedMessage, releases: Sequence[ReleaseRecord] = ()
) -> str:
    data = message_json(record, parsed)
    envelope, headers = record.envelope, record.headers
    lines = [
        f"Message {record.id}  {record.status}  {local_time(record.received_at, missing='-')}  "
        f"{format_bytes(record.size)}  session {record.session_id}",
        *_status_lines(record),
        *([f"Tags: {visible(', '.join(record.tags))}"] if record.tags else []),
        "",
        "Envelope (what SMTP said)",
        f"  MAIL FROM  {visible(envelope.mail_from, emoji=False) or '<> (null sender)'}",
    ]
    if envelope.mail_options:
        lines.append(f"  options    {visible(' '.join(envelope.mail_options))}")
    recipients: list[str] = []  # the accepted, then the refused, each after its parameters
    for index, rcpt in enumerate(envelope.rcpt_to):
        params = envelope.rcpt_options[index] if index < len(envelope.rcpt_options) else []
        suffix = f"  {visible(' '.join(params))}" if params else ""
        recipients.append(f"{visible(rcpt, emoji=False)}{suffix}")
    for refused in envelope.rcpt_refused:
        suffix = f"  {visible(' '.join(refused.options))}" if refused.options else ""
        reply = reply_lines(refused.reply)[0]
        cause = refusal_cause(refused.rule, refused.reason)
        recipients.append(f"{visible(refused.address, emoji=False)}{suffix}  ✗ {reply}  {cause}")
    for index, shown in enumerate(recipients):
        lines.append(f"  {'RCPT TO' if index == 0 else '':9}  {shown}")
    lines += [
        f"  HELO       {visible(envelope.helo or '-')}",
        f"  peer       {visible(envelope.peer or '-')}   TLS {'yes' if envelope.tls else 'no'}"
        f"   auth {visible(envelope.auth_user) if envelope.auth_user else '-'}",
        "",
        "Headers (what the message says)",
    ]
    for label, key in (
        ("From", "from"),
        ("Sender", "sender"),
        ("Reply-To", "reply_to"),
        ("To", "to"),
        ("Cc", "cc"),
        ("Bcc", "bcc"),
    ):
        value = headers[key]
        if isinstance(value, list):
            value = ", ".join(value)
        if value:
            lines.append(f"  {label:9}  {visible(value, emoji=False)}")
    for label, key in (("Subject", "subject"), ("Date", "date"), ("Message-ID", "message_id")):
        lines.append(f"  {label:10} {visible(headers[key] or '-')}")
    if data["findings"]:
        lines += ["", "Findings"]
        for finding in data["findings"]:
            severity, kind = visible(str(finding["severity"])), visible(str(finding["kind"]))
            lines.append(f"  {severity:8} {kind:29} {visible(str(finding['detail']))}")
    if releases:
        lines += ["", "Releases (to the [relay] server)", *release_lines(releases)]
    lines += ["", "MIME structure", *_mime_lines(parsed.mime)]
    if parsed.attachments:
        lines += ["", "Attachments"]
        for attachment in parsed.attachments:
            name = visible(attachment.filename or "(no name)")
            content_type = visible(attachment.content_type)
            lines.append(f"  {name}  {content_type}  {format_bytes(attachment.size)}")
    body = parsed.text if parsed.text is not None else parsed.html
    if body is not None:
        lines += ["", "Text" if parsed.text is not None else "HTML (no text part)", ""]
        lines.append(visible_block(body).rstrip("\n"))
    return "\n".join(lines)


def upstream_reply(code: int | None, reply: str) -> str:
    """The upstream's reply, its code first ("250 2.0.0 Ok: queued as X"), made visible."""
    if code is not None and not reply.startswith(str(code)):
        reply = f"{code} {reply}".rstrip()
    return visible(reply)


def release_lines(releases: Sequence[ReleaseRecord]) -> list[str]:
    """Each try, oldest first: when, who asked, what came of it, to whom, the upstream's
    answer; under a partial one, each recipient the upstream refused with its reply."""
    lines = []
    for release in releases:
        outcome = release.outcome
        if release.trigger == "auto" and (release.attempt > 1 or outcome == "retrying"):
            outcome += f" (try {release.attempt})"
        to = visible(", ".join(release.recipients), emoji=False)
        lines.append(
            f"  {local_time(release.at, missing='-')}  {visible(release.trigger):4}"
            f"  {visible(outcome):9}  to {to} via {visible(release.upstream)}:"
            f" {upstream_reply(release.code, release.reply)}"
        )
        for recipient, reply in release.refused.items():
            lines.append(f"{'':24}✗ {visible(recipient, emoji=False)}  {visible(reply)}")
    return lines


def header_lines(parsed: ParsedMessage) -> str:
    return "\n".join(f"{visible(name)}: {visible(value)}" for name, value in parsed.header_lines)


# A session's last refusal goes under its row, wrapped at 80 columns, in this many lines at most.
REFUSAL_WIDTH = 80
REFUSAL_LINES = 3


def refusal_line(refusals: int, last_refusal: str | None) -> str:
    """`✗ 2 refused, last: RCPT TO:<full@x.test> 452 4.2.2 Mailbox full` (made visible)."""
    last = f", last: {visible(last_refusal)}" if last_refusal else ""
    return f"✗ {refusals} refused{last}"


def session_table(records: list[SessionRecord], *, empty: str = "no sessions") -> str:
    if not records:
        return empty
    rows = [
        [
            str(r.id),
            local_time(r.started_at, missing="-"),
            r.peer,
            r.helo or "-",
            r.end_reason or "live",
            str(r.message_count),
            r.last_reply or "-",
        ]
        for r in records
    ]
    headings = ["ID", "STARTED", "PEER", "HELO", "ENDED", "MSGS", "LAST REPLY"]
    widths = [6, 19, 22, 20, 15, 5, 50]
    lines = _table(headings, rows, widths).split("\n")
    shown = lines[:1]
    indent = " " * (widths[0] + 2)  # under the STARTED column
    for record, line in zip(records, lines[1:], strict=True):
        shown.append(line)
        if record.refusals:
            shown += _wrapped(refusal_line(record.refusals, record.last_refusal), indent)
    return "\n".join(shown)


def _wrapped(text: str, indent: str) -> list[str]:
    """`text` in at most REFUSAL_LINES lines of REFUSAL_WIDTH columns, the last cut with `…`."""
    lines = wrap_cells(text, REFUSAL_WIDTH, indent, indent + "  ")
    if len(lines) > REFUSAL_LINES:
        lines = lines[:REFUSAL_LINES]
        lines[-1] = _cut_cells(lines[-1], REFUSAL_WIDTH - 1) + "…"
    return lines


def wrap_cells(text: str, width: int, indent: str = "", later: str = "") -> list[str]:
    """textwrap.wrap by terminal cells, not characters: a wide (CJK) character takes two. A word
    goes whole onto the line it fits on; one wider than any line fills the line it starts on and
    goes on in the next (as textwrap breaks long words)."""
    from rich.cells import cell_len  # (only sessions wrap: not imported for messages)

    lines: list[str] = []
    line, used, empty = indent, cell_len(indent), True
    longest = width - cell_len(later)  # the widest word a line of its own holds
    for word in text.split():
        while word:
            gap = 0 if empty else 1
            size = cell_len(word)
            room = width - used - gap
            if size <= room:
                line, used, empty, word = line + " " * gap + word, used + gap + size, False, ""
                continue
            part = _cut_cells(word, room) if size > longest and room > 0 else ""
            if part:
                lines.append(line + " " * gap + part)
                word = word[len(part) :]
            elif not empty or size <= longest:
                lines.append(line)
            else:  # not one cell of room, ever: one character a line
                lines.append(line + word[0])
                word = word[1:]
            line, used, empty = later, cell_len(later), True
    if not empty:
        lines.append(line)
    return lines


def _cut_cells(text: str, width: int) -> str:
    """The longest start of `text` that takes at most `width` cells."""
    from rich.cells import cell_len

    while cell_len(text) > width:
        text = text[: -max(1, (cell_len(text) - width) // 2)]
    return text


_ARROWS = {"C": "C:", "S": "S:", "D": "C:", "I": "--"}


def transcript(record: SessionRecord) -> str:
    state = record.end_reason or "live"
    lines = [
        f"Session {record.id}  {visible(record.peer)}  HELO {visible(record.helo or '-')}  "
        f"started {local_time(record.started_at, missing='-')}  ended: {state}  "
        f"messages: {', '.join(map(str, record.message_ids)) or 'none'}",
    ]
    if record.refusals:
        lines.append(refusal_line(record.refusals, record.last_refusal))
    lines.append("")
    for at, direction, text in record.events:
        lines.append(
            f"{local_time(at, with_ms=True)[11:]}  {_ARROWS.get(direction, '??')} {visible(text)}"
        )
    return "\n".join(lines)


def relay_lines(settings: Settings) -> list[str]:
    """`check-config`'s [relay]: the secret itself never (only whether it is set, and where
    it is read from)."""
    import dataclasses

    relay = settings.relay
    lines = ["[relay]"]
    if not relay.configured:
        return [*lines, 'host = ""  # releasing is off']
    for field in dataclasses.fields(relay):
        value = getattr(relay, field.name)
        if field.name == "password":
            shown = "(set, hidden)" if value else '""'
        elif field.name == "port":
            shown = f"{relay.effective_port}" + ("" if value else f"  # by tls = {relay.tls}")
        elif field.name == "timeout":
            shown = f"{value:g}s"
        elif field.name == "helo" and not value:
            shown = '""  # this machine\'s fully qualified name'
        elif field.name == "mail_from" and not value:
            shown = '""  # each message\'s own envelope sender'
        elif isinstance(value, tuple):
            shown = json.dumps(list(value))
        else:
            shown = json.dumps(value)
        lines.append(f"{field.name} = {shown}")
    return lines


def settings_text(settings: Settings) -> str:
    """The effective configuration, TOML-like, then the fault rules in the order they are tried."""
    import dataclasses

    lines = [f"# {settings.source}: valid", ""]
    for section in ("smtp", "storage", "auth", "tls", "validation", "faults", "tags", "http"):
        lines.append(f"[{section}]")
        values = getattr(settings, section)
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if section == "http" and field.name == "users":  # passwords never shown
                shown = f"{len(value)} user(s){': ' if value else ''}{', '.join(sorted(value))}"
            elif section == "http" and field.name == "allowed_hosts":
                shown = json.dumps(list(value))
            elif section == "auth" and field.name == "users":
                shown = (
                    f"{len(value)} user(s): {', '.join(sorted(value)) or 'any credentials pass'}"
                )
            elif field.name == "max_message_size":
                shown = f"{value} bytes ({format_bytes(value)})"
            elif field.name == "timeout":
                shown = f"{value:g}s"
            else:
                shown = json.dumps(value)
            lines.append(f"{field.name} = {shown}")
        lines.append("")
    lines += [*relay_lines(settings), ""]
    if not settings.rules:
        lines.append("no fault rules: every command is accepted")
    else:
        lines.append(f"{len(settings.rules)} fault rule(s), tried in this order:")
        for number, rule in enumerate(settings.rules, 1):
            lines.append(f"  {number}. {rule.name}: {rule.describe()}")
    # The file's own words (rule names, replies, patterns, user names) may be hostile too.
    return "\n".join(visible(line) for line in lines)
