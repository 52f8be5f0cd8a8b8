"""Raw message bytes -> decoded headers (cheap, at ingest) and the full MIME view (on demand).

Parsing never raises: a message that the stdlib cannot make sense of is still described, and what
went wrong is reported in `defects` (it becomes a `parse_defect` finding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from typing import Any

_HEADER_PARSER = BytesHeaderParser(policy=policy.default)
_PARSER = BytesParser(policy=policy.default)


@dataclass
class HeaderSummary:
    """The headers that matter for comparing with the envelope, decoded."""

    from_: list[str] = field(default_factory=list)
    sender: str | None = None
    reply_to: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str | None = None
    date: str | None = None
    message_id: str | None = None
    bcc_present: bool = False
    # addr-specs, for comparisons
    from_addrs: list[str] = field(default_factory=list)
    sender_addr: str | None = None
    to_addrs: list[str] = field(default_factory=list)
    cc_addrs: list[str] = field(default_factory=list)
    bcc_addrs: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.from_,
            "sender": self.sender,
            "reply_to": self.reply_to,
            "to": self.to,
            "cc": self.cc,
            "bcc": self.bcc,
            "subject": self.subject,
            "date": self.date,
            "message_id": self.message_id,
        }


@dataclass
class Attachment:
    filename: str | None
    content_type: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "content_type": self.content_type, "size": self.size}


@dataclass
class MimePart:
    content_type: str
    size: int
    filename: str | None = None
    disposition: str | None = None
    charset: str | None = None
    children: list[MimePart] = field(default_factory=list)


@dataclass
class ParsedMessage:
    headers: HeaderSummary
    header_lines: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[Attachment]
    mime: MimePart
    defects: list[str]


def clean(text: str) -> str:
    """Undo surrogate escapes left by non-UTF-8 header bytes, so the text prints and stores."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _header_text(message: EmailMessage, name: str, defects: list[str]) -> str | None:
    try:
        value = message.get(name)
    except Exception as error:  # the header registry can raise on odd input
        defects.append(f"{name} header could not be decoded: {error}")
        return _raw_header(message, name)
    return None if value is None else clean(str(value))


def _raw_header(message: EmailMessage, name: str) -> str | None:
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return clean(str(value))
    return None


def _address_header(
    message: EmailMessage, name: str, defects: list[str]
) -> tuple[list[str], list[str]]:
    """All `name` headers -> (display forms, addr-specs)."""
    shown: list[str] = []
    specs: list[str] = []
    try:
        values = message.get_all(name) or []
        for value in values:
            for address in getattr(value, "addresses", ()):
                shown.append(clean(str(address)))
                if address.addr_spec and address.addr_spec != "<>":
                    specs.append(clean(address.addr_spec))
            for defect in getattr(value, "defects", ()):
                defects.append(f"{name}: {defect}")
    except Exception as error:
        defects.append(f"{name} header could not be parsed: {error}")
        raw = _raw_header(message, name)
        if raw:
            shown.append(raw)
    return shown, specs


def _summarize(message: EmailMessage) -> HeaderSummary:
    defects = [f"{type(d).__name__}: {d}" for d in message.defects]
    summary = HeaderSummary(defects=defects)
    summary.from_, summary.from_addrs = _address_header(message, "From", defects)
    senders, sender_specs = _address_header(message, "Sender", defects)
    summary.sender = senders[0] if senders else None
    summary.sender_addr = sender_specs[0] if sender_specs else None
    summary.reply_to, _ = _address_header(message, "Reply-To", defects)
    summary.to, summary.to_addrs = _address_header(message, "To", defects)
    summary.cc, summary.cc_addrs = _address_header(message, "Cc", defects)
    summary.bcc, summary.bcc_addrs = _address_header(message, "Bcc", defects)
    summary.bcc_present = "Bcc" in message
    summary.subject = _header_text(message, "Subject", defects)
    summary.date = _header_text(message, "Date", defects)
    summary.message_id = _header_text(message, "Message-ID", defects)
    return summary


def parse_headers(raw: bytes) -> HeaderSummary:
    """Only the header block: what ingest needs for listing, searching and findings."""
    try:
        return _summarize(_HEADER_PARSER.parsebytes(raw))
    except Exception as error:
        return HeaderSummary(defects=[f"headers could not be parsed: {error}"])


def _decoded_payload(part: EmailMessage) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    return payload if isinstance(payload, bytes) else b""


def _text_content(part: EmailMessage, defects: list[str]) -> str:
    if part.get_content_charset() in (None, "us-ascii", "ascii"):
        payload = _decoded_payload(part)
        if not payload.isascii():
            # Undeclared 8-bit text is UTF-8 far more often than anything else.
            return payload.decode("utf-8", "replace").replace("\r\n", "\n")
    try:
        content = part.get_content()
        if not isinstance(content, str):
            raise TypeError("not text")
        text = clean(content)
    except Exception as error:  # unknown charset, broken transfer encoding
        defects.append(f"{part.get_content_type()} body could not be decoded: {error}")
        text = _decoded_payload(part).decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _filename(part: EmailMessage) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return clean(name) if name else None


def _mime_tree(part: EmailMessage) -> MimePart:
    children = [_mime_tree(child) for child in part.iter_parts()] if part.is_multipart() else []
    size = 0 if children else len(_decoded_payload(part))
    return MimePart(
        content_type=part.get_content_type(),
        size=size,
        filename=_filename(part),
        disposition=part.get_content_disposition(),
        charset=part.get_content_charset(),
        children=children,
    )


def _body_part(message: EmailMessage, kind: str) -> EmailMessage | None:
    try:
        return message.get_body(preferencelist=(kind,))
    except Exception:
        return None


def parse_message(raw: bytes) -> ParsedMessage:
    """The full view: bodies, attachments and the MIME tree."""
    try:
        message = _PARSER.parsebytes(raw)
    except Exception as error:
        summary = parse_headers(raw)
        summary.defects.append(f"message could not be parsed: {error}")
        text = raw.decode("utf-8", "replace")
        return ParsedMessage(
            summary, [], text, None, [], MimePart("text/plain", len(raw)), summary.defects
        )

    summary = _summarize(message)
    defects = summary.defects
    for part in message.walk():
        if part is not message:
            defects.extend(f"{part.get_content_type()}: {type(d).__name__}" for d in part.defects)
    text_part = _body_part(message, "plain")
    html_part = _body_part(message, "html")
    text = _text_content(text_part, defects) if text_part is not None else None
    html = _text_content(html_part, defects) if html_part is not None else None

    attachments = []
    for part in message.walk():
        if part.is_multipart() or part is text_part or part is html_part:
            continue
        filename = _filename(part)
        if filename or part.is_attachment() or part.get_content_maintype() not in ("text",):
            attachments.append(
                Attachment(filename, part.get_content_type(), len(_decoded_payload(part)))
            )
    header_lines = [(clean(k), clean(str(v))) for k, v in message.raw_items()]
    return ParsedMessage(
        summary, header_lines, text, html, attachments, _mime_tree(message), defects
    )


def header_values(raw: bytes) -> dict[str, str]:
    """Decoded header values by lower-cased name (the first of each), for fault rules' regexes."""
    values: dict[str, str] = {}
    try:
        message = _HEADER_PARSER.parsebytes(raw)
        for name in message:
            key = name.lower()
            if key not in values:
                values[key] = _header_text(message, name, []) or ""
    except Exception:
        pass  # an unparseable header block matches no header rule
    return values
