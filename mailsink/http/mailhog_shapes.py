"""MailHog's Message, as its API sends it (github.com/mailhog/data, message.go): the same keys,
the same nulls, and the same way of cutting the raw message into Content and MIME parts, so
that a client written against MailHog (npm `mailhog`, cypress-mailhog) finds each part where
MailHog put it: `MIME.Parts` is the body split at `--boundary` (the preamble and the closing
`--` are parts too, as in MailHog), each part's Headers raw (encoded words not decoded: the
clients decode them), its Body as sent (base64 or quoted-printable: the clients decode that).

Everything works on the bytes (Go's strings are bytes; `Size` counts bytes) and turns into text
only at the end, invalid UTF-8 as U+FFFD (what Go's json.Marshal writes). Pure functions, run
on the sink's reader thread: never on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from mailsink.store.reader import MessageRecord

# Nested multiparts deeper than this are parts without a MIME of their own.
MAX_DEPTH = 8
# Parts in one message, all levels: past it, the rest are left out.
MAX_PARTS = 1000
# Header fields read from one header section (the message's or a part's): past it, the rest
# of the section is not read. MailHog has no bound; a million tiny fields took seconds.
MAX_FIELDS = 1000
MAX_VALUE = 1024 * 1024  # bytes of one header value kept (the whole section is bounded too)
MAX_LINES = 100_000  # lines of one header section read (a To: folded per recipient fits)
# Each nesting level repeats its share of the message as text (its parts' Body), so a legal
# 23 MB message nested 12 deep made 239 MB of JSON. The message is always there as Raw.Data,
# as Content.Body and split into the top-level parts (about three times its size); the deeper
# levels may add at most min(2 x size + 1 MiB, NESTED_TEXT) of text more. A part whose split
# would pass that stays one part, its MIME null, its Body holding the rest undecomposed.
NESTED_TEXT = 16 * 1024 * 1024


class Budget:
    """Text bytes the nested levels of one message may still emit, and parts it may add."""

    def __init__(self, size: int, limit: int = NESTED_TEXT) -> None:
        self.text = max(0, min(2 * size + 1024 * 1024, limit))
        self.parts = MAX_PARTS
        self.emitted = 0  # of text in the nested levels, for the page's account

    def spend(self, size: int) -> bool:
        if size > self.text:
            return False
        self.text -= size
        self.emitted += size
        return True


_LINE_END = re.compile(rb"\r?\n")
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]*)"|([^;\s"]+))', re.IGNORECASE)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def path(address: str) -> dict[str, Any]:
    """data.PathFromString: `@relay1,@relay2:mailbox@domain` into its pieces."""
    relays: list[str] | None = None
    email = address
    if ":" in address:
        route, email = address.split(":", 1)
        relays = route.split(",")
    mailbox, _, domain = email.partition("@")
    return {"Relays": relays, "Mailbox": mailbox, "Domain": domain, "Params": ""}


def _split(data: bytes) -> tuple[bytes | None, bytes]:
    """(header section, body) at the first empty line; (None, data) without one. MailHog looks
    for CRLF CRLF only; a bare-LF message is cut at LF LF too, rather than having no headers."""
    ends = [at for at in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if at != -1]
    if not ends:
        return None, data
    at = min(ends)
    gap = 4 if data.startswith(b"\r\n\r\n", at) else 2
    return data[:at], data[at + gap :]


def _lines(section: bytes) -> Iterator[bytes]:
    """The lines of a header section, one at a time (never split further than read)."""
    start = 0
    for end in _LINE_END.finditer(section):
        yield section[start : end.start()]
        start = end.end()
    yield section[start:]


def _headers(section: bytes) -> dict[str, list[str]]:
    """Name as written -> [its value] (a folded value unfolded by dropping the line break, as
    MailHog does). As MailHog's ContentFromString (`h[key] = []string{value}`), a field that
    comes again replaces the earlier one: the list holds the last. A line that is not a header
    field is skipped, as MailHog does; past MAX_FIELDS fields the rest is not read, and a value
    keeps MAX_VALUE bytes (a To: of thousands of folded recipients stays whole up to there;
    the fields after it are still read)."""
    fields: dict[bytes, list[bytes]] = {}
    last: list[bytes] | None = None
    kept = 0  # bytes of `last`
    seen = 0
    for count, line in enumerate(_lines(section)):
        if count >= MAX_LINES:
            break
        if last is not None and line[:1] in (b" ", b"\t"):
            if kept < MAX_VALUE:
                last.append(line[: MAX_VALUE - kept])
                kept += len(last[-1])
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            continue
        seen += 1
        if seen > MAX_FIELDS:
            break
        last = [value.lstrip(b" \t")[:MAX_VALUE]]
        kept = len(last[0])
        fields.pop(name, None)  # re-inserted: ordered where its last value is
        fields[name] = last
    return {_text(name): [_text(b"".join(pieces))] for name, pieces in fields.items()}


def _content_type(headers: dict[str, list[str]]) -> str | None:
    values = headers.get("Content-Type")
    if values is None:  # MailHog wants the name so spelled; any spelling is the same field
        values = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    return values[0] if values else None


def content(data: bytes) -> dict[str, Any]:
    """data.ContentFromString: Headers, Body, Size, and MIME null (set on parts only)."""
    section, body = _split(data)
    headers = _headers(section) if section is not None else {}
    return {"Headers": headers, "Body": _text(body), "Size": len(data), "MIME": None}


def _is_multipart(headers: dict[str, list[str]]) -> bool:
    value = _content_type(headers)
    return value is not None and value.lower().startswith("multipart/")


def _mime(data: bytes, headers: dict[str, list[str]], depth: int, budget: Budget) -> Any:
    """data.ParseMIMEBody: the body split at `--boundary`, each non-empty piece with CR and LF
    trimmed from both ends; `Parts` null when there is no boundary (Go's nil slice)."""
    value = _content_type(headers) or ""
    match = _BOUNDARY.search(value.encode("utf-8", "replace"))
    parts: list[dict[str, Any]] = []
    if match and (boundary := match.group(1) or match.group(2)):
        _, body = _split(data)
        # At most as many pieces as may still be parts: a body of nothing but boundaries
        # would otherwise become millions of them.
        for piece in body.split(b"--" + boundary, budget.parts):
            if not piece:
                continue
            if budget.parts <= 0:
                break
            budget.parts -= 1
            trimmed = piece.strip(b"\r\n")
            part = content(trimmed)
            if depth < MAX_DEPTH and _is_multipart(part["Headers"]) and budget.spend(len(trimmed)):
                part["MIME"] = _mime(trimmed, part["Headers"], depth + 1, budget)
            parts.append(part)
    return {"Parts": parts or None}


def created(ms: int) -> str:
    """Go's time.Time in JSON (RFC 3339), in UTC."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text_size(size: int) -> int:
    """About how much text the shape of a message of `size` bytes holds before its nested
    levels: Raw.Data, Content.Body and the top-level parts."""
    return 3 * size


def message(record: MessageRecord, raw: bytes, budget: Budget | None = None) -> dict[str, Any]:
    """data.Message for a stored message: its Raw is the SMTP envelope, which mailsink kept.
    `budget` bounds the text of the nested levels (by default, Budget(len(raw)))."""
    envelope = record.envelope
    body = content(raw)
    headers = body["Headers"]
    # MailHog's Parse appends the envelope sender to the Return-Path the message had (a name
    # in any case; the one value ContentFromString kept), or sets it.
    name = next((k for k in headers if k.lower() == "return-path"), "Return-Path")
    headers.setdefault(name, []).append(f"<{envelope.mail_from}>")
    if budget is None:
        budget = Budget(len(raw))
    mime = _mime(raw, headers, 1, budget) if _is_multipart(headers) else None
    return {
        "ID": str(record.id),
        "From": path(envelope.mail_from),
        "To": [path(rcpt) for rcpt in envelope.rcpt_to] or None,
        "Content": body,
        "Created": created(record.received_at),
        "MIME": mime,
        "Raw": {
            "From": envelope.mail_from,
            "To": list(envelope.rcpt_to) or None,
            "Data": _text(raw),
            "Helo": envelope.helo or "",
        },
    }
