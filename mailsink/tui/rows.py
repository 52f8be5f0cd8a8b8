"""Message list rows: the fields of a stored message as the list shows them, made safe once, and
how a field is fitted into a column of a given width."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size

from mailsink.clock import local_time
from mailsink.store.reader import MessageRecord
from mailsink.text import visible
from mailsink.units import format_bytes, short_size


@dataclass(frozen=True)
class Address:
    """One address of a From or To header, each form through `visible`."""

    full: str  # as the headers show it: `Name <address>`, or the address alone
    name: str  # the display name unquoted, or ""
    address: str  # or "" when the header could not be parsed (then `full` is what it said)


@dataclass(frozen=True)
class Row:
    id: int
    time: str
    sender: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    subject: str
    size: str
    size_short: str  # at most 5 cells: 412B 9.5K 870K 1.2M 20M
    findings: int
    worst: str  # the most severe finding: "error", "warning", "info" or ""
    attachments: bool
    rejected: bool
    sender_differs: bool  # the envelope sender is not From's (first) address
    unread: bool = False
    tags: str = ""  # `[signup] [beta]`, each through `visible`; "" without tags


def address_of(shown: str) -> Address:
    """A display form as the header summary stores it (`Name <a@x>`, `"N, M" <a@x>`, `a@x`)."""
    name, address = "", shown
    if shown.endswith(">") and " <" in shown:
        name, address = shown[:-1].rsplit(" <", 1)
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    elif "@" not in shown:  # what an unparseable header said, kept as it came
        address = ""
    # No emoji sequence in an address or beside it: `x@👨‍👨.test` must not pass for another.
    return Address(
        visible(shown, emoji=False), visible(name, emoji=False), visible(address, emoji=False)
    )


def row_of(record: MessageRecord) -> Row:
    headers = record.headers
    severities = {finding.get("severity") for finding in record.findings}
    worst = next((s for s in ("error", "warning", "info") if s in severities), "")
    from_ = tuple(address_of(a) for a in headers.get("from") or [])
    recipients = headers.get("to") or record.envelope.rcpt_to
    sender = record.envelope.mail_from or ""
    first = from_[0].address if from_ else None
    return Row(
        id=record.id,
        time=local_time(record.received_at)[11:],
        sender=visible(sender or "<>", emoji=False),
        from_=from_,
        to=tuple(address_of(a) for a in recipients),
        subject=visible(headers.get("subject") or ""),
        size=format_bytes(record.size),
        size_short=short_size(record.size),
        findings=len(record.findings),
        worst=worst,
        attachments=record.has_attachments,
        rejected=record.status != "accepted",
        sender_differs=first is None or first.lower() != visible(sender, emoji=False).lower(),
        # As the status line counts them: a rejected message was never delivered to be read.
        unread=not record.seen and record.status == "accepted",
        tags=tag_text(record.tags),
    )


def tag_text(tags: list[str]) -> str:
    """Tags as the list shows them: bracketed, since a tag may hold spaces."""
    return " ".join(f"[{visible(tag)}]" for tag in tags)


def gone(message_id: int) -> Row:
    """A row whose message was deleted (by another process) after the index was read."""
    return Row(message_id, "", "", (), (), "(deleted)", "", "", 0, "", False, False, False)


# ---- fitting text into columns (every cell exactly `width` cells wide)


def cut(text: str, width: int) -> str:
    """`text` in `width` cells: padded, or cut with `…` as its last cell."""
    if width <= 0:
        return ""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width)


# `@` and the at signs that look like it (fullwidth, small); a dot between two word characters.
_AT_SIGNS = re.compile("[@\uff20\ufe6b]")
_DOMAIN = re.compile(r"\w\.\w")


def looks_like_an_address(name: str) -> bool:
    """A display name that could pass for an address or a domain (`service＠paypal.test`,
    `paypal.test`): never shown without its address."""
    return bool(_AT_SIGNS.search(name)) or (" " not in name.strip() and bool(_DOMAIN.search(name)))


def fit_addresses(addresses: tuple[Address, ...], width: int) -> str:
    """All the addresses if they fit; else the first as a whole (`Name <address>`), its address,
    or its name, whichever fits first, and `+N` for the others; cut only when none fits."""
    if not addresses:
        return cut("", width)
    whole = ", ".join(a.full for a in addresses)
    if cell_len(whole) <= width:
        return set_cell_size(whole, width)
    first = addresses[0]
    more = f" +{len(addresses) - 1}" if len(addresses) > 1 else ""
    if len(more) > width // 2:
        more = ""
    room = width - len(more)
    name = "" if looks_like_an_address(first.name) else first.name
    for candidate in (first.full, first.address, name):
        if candidate and cell_len(candidate) <= room:
            return set_cell_size(candidate + more, width)
    return cut(first.address or first.full, room) + more
