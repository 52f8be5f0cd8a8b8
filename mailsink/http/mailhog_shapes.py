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
from datetime import UTC, datetime
from typing import Any

from mailsink.store.reader import MessageRecord

# Nested multiparts deeper than this are parts without a MIME of their own; each level copies
# its share of the bytes once more, so this bounds the work a hostile nesting makes.
MAX_DEPTH = 8
# Parts in one message, all levels: past it, the rest are left out.
MAX_PARTS = 1000

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


def _headers(section: bytes) -> dict[str, list[str]]:
    """Name as written -> its values in order (a folded value unfolded by dropping the line
    break, as MailHog does). A line that is not a header field is skipped, as MailHog does."""
    fields: dict[str, list[list[bytes]]] = {}
    last: list[bytes] | None = None
    for line in _LINE_END.split(section):
        if last is not None and line[:1] in (b" ", b"\t"):
            last.append(line)
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            continue
        last = [value.lstrip(b" \t")]
        fields.setdefault(_text(name), []).append(last)
    return {name: [_text(b"".join(pieces)) for pieces in values] for name, values in fields.items()}


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


def _mime(data: bytes, headers: dict[str, list[str]], depth: int, budget: list[int]) -> Any:
    """data.ParseMIMEBody: the body split at `--boundary`, each non-empty piece with CR and LF
    trimmed from both ends; `Parts` null when there is no boundary (Go's nil slice)."""
    value = _content_type(headers) or ""
    match = _BOUNDARY.search(value.encode("utf-8", "replace"))
    parts: list[dict[str, Any]] = []
    if match and (boundary := match.group(1) or match.group(2)):
        _, body = _split(data)
        # At most as many pieces as may still be parts: a body of nothing but boundaries
        # would otherwise become millions of them.
        for piece in body.split(b"--" + boundary, budget[0]):
            if not piece:
                continue
            if budget[0] <= 0:
                break
            budget[0] -= 1
            trimmed = piece.strip(b"\r\n")
            part = content(trimmed)
            if depth < MAX_DEPTH and _is_multipart(part["Headers"]):
                part["MIME"] = _mime(trimmed, part["Headers"], depth + 1, budget)
            parts.append(part)
    return {"Parts": parts or None}


def created(ms: int) -> str:
    """Go's time.Time in JSON (RFC 3339), in UTC."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(record: MessageRecord, raw: bytes) -> dict[str, Any]:
    """data.Message for a stored message: its Raw is the SMTP envelope, which mailsink kept."""
    envelope = record.envelope
    body = content(raw)
    headers = body["Headers"]
    # MailHog's Parse adds the envelope sender as Return-Path (after any the message had).
    headers.setdefault("Return-Path", []).append(f"<{envelope.mail_from}>")
    mime = _mime(raw, headers, 1, [MAX_PARTS]) if _is_multipart(headers) else None
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
