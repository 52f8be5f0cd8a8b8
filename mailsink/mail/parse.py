"""Raw message bytes -> decoded headers (cheap, at ingest) and the full MIME view (on demand).

Parsing never raises: a message that the stdlib cannot make sense of is still described, and what
went wrong is reported in `defects` (it becomes a `parse_defect` finding).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import errors, policy
from email._header_value_parser import get_unstructured
from email.feedparser import FeedParser
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import EmailPolicy
from email.utils import getaddresses
from typing import Any, cast

MAX_DECODED = 16 * 1024  # characters of one header value that are decoded for display
MAX_HEADER_BLOCK = 1024 * 1024  # bytes of header block summarised at ingest
MAX_DEPTH = 50  # MIME nesting levels parsed; deeper parts are kept whole, as one unshown part
DEPTH_NOTICE = f"MIME nested deeper than {MAX_DEPTH} levels: the rest is not shown"
MAX_PARTS = 1000  # MIME parts parsed and shown
PARTS_NOTICE = f"more than {MAX_PARTS} MIME parts: only the first {MAX_PARTS} are shown"

# Since 3.11.10/3.12.6, getaddresses(strict=True) by default drops a whole header over one odd
# address (a trailing comma, a comment with a comma); a sink must show what was sent.
_LENIENT = {"strict": False} if "strict" in inspect.signature(getaddresses).parameters else {}

_FAST_PARSER = BytesHeaderParser(policy=policy.compat32)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


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
    x_tags: str | None = None  # the X-Tags header, decoded (mail/tags.py reads it)
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
    index: int = 0  # position in message.walk() order, for `part_payload`
    filename: str | None = None
    disposition: str | None = None
    children: list[MimePart] = field(default_factory=list)
    cut: bool = False  # nested deeper than MAX_DEPTH: its content is not parsed or shown


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


def decode_value(value: str) -> str:
    """A raw header value -> readable text: unfolded, RFC 2047 words decoded, bytes as UTF-8.

    Values longer than MAX_DECODED are cut first: decoding encoded words takes time that grows
    faster than their number, and a header is read by people, who stop long before that."""
    cut = len(value) > MAX_DECODED
    if cut:
        value = value[:MAX_DECODED].rsplit(" ", 1)[0]
    value = _FOLD.sub("", value)
    if "=?" in value:
        # The unstructured-text parser policy.default uses: it decodes each encoded word on its
        # own (a bad one stays as it came) and leaves raw 8-bit bytes to `clean` below.
        with contextlib.suppress(Exception):
            value = str(get_unstructured(value))
    if cut:
        value += " […]"
    return clean(value).strip()


def _display(name: str, address: str) -> str:
    if not name:
        return address
    if _SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _addresses(values: list[str]) -> tuple[list[str], list[str]]:
    """Raw address header values -> (display forms, addr-specs)."""
    shown: list[str] = []
    specs: list[str] = []
    for name, address in getaddresses([_FOLD.sub("", v) for v in values], **_LENIENT):
        address = clean(address)
        if not address or address == "<>":
            continue  # an empty group such as "undisclosed-recipients:;"
        shown.append(_display(decode_value(name), address))
        specs.append(address)
    return shown, specs


def _raw_values(message: Message) -> dict[str, list[str]]:
    """Header values as received (8-bit bytes kept as surrogate escapes), by lower-cased name.

    compat32's own accessors turn 8-bit values into Header objects that lose the bytes."""
    values: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        values.setdefault(name.lower(), []).append(str(value))
    return values


def _header_block(raw: bytes) -> bytes:
    end = _HEADER_END.search(raw, 0, MAX_HEADER_BLOCK)
    return raw[: end.end()] if end else raw[:MAX_HEADER_BLOCK]


def parse_headers(raw: bytes) -> HeaderSummary:
    """Only the header block: what ingest needs for listing, searching and findings.

    The stdlib's compat32 parser and email.utils rather than policy.default's header registry:
    six times faster, and this runs for every message received.
    """
    try:
        message = _FAST_PARSER.parsebytes(_header_block(raw))
    except Exception as error:
        return HeaderSummary(defects=[f"headers could not be parsed: {error}"])
    summary = HeaderSummary(defects=[f"{type(d).__name__}: {d}" for d in message.defects])
    raw_values = _raw_values(message)

    def addresses(name: str) -> tuple[list[str], list[str]]:
        values = raw_values.get(name.lower(), [])
        try:
            return _addresses(values)
        except Exception as error:  # e.g. RecursionError on deeply nested comments
            summary.defects.append(f"{name} header could not be parsed: {type(error).__name__}")
            return [decode_value(v)[:200] for v in values], []

    def text(name: str) -> str | None:
        values = raw_values.get(name.lower())
        return decode_value(values[0]) if values else None

    summary.from_, summary.from_addrs = addresses("From")
    senders, sender_specs = addresses("Sender")
    summary.sender = senders[0] if senders else None
    summary.sender_addr = sender_specs[0] if sender_specs else None
    summary.reply_to, _ = addresses("Reply-To")
    summary.to, summary.to_addrs = addresses("To")
    summary.cc, summary.cc_addrs = addresses("Cc")
    summary.bcc, summary.bcc_addrs = addresses("Bcc")
    summary.bcc_present = "bcc" in raw_values
    summary.subject = text("Subject")
    summary.date = text("Date")
    summary.message_id = text("Message-ID")
    summary.x_tags = text("X-Tags")
    return summary


def header_values(raw: bytes) -> dict[str, str]:
    """Decoded header values by lower-cased name (the first of each), for fault rules' regexes."""
    try:
        message = _FAST_PARSER.parsebytes(_header_block(raw))
    except Exception:
        return {}  # an unparseable header block matches no header rule
    return {name: decode_value(values[0]) for name, values in _raw_values(message).items()}


# Structured header values longer than this are not parsed as they are: the stdlib's parser
# takes time that grows with a value's length (10 000 Content-Type parameters: 100 ms for each
# 16 KiB, per access), and a message can carry thousands of them.
MAX_STRUCTURED = 1024
# What a long Content-Type or Content-Disposition is reduced to: its type and the parameters
# that decide how the message is read and shown (RFC 2231 continuations included).
_ESSENTIAL_NAME = re.compile(
    r"(?:boundary|charset|name|filename|format|delsp|type|start|protocol|micalg)"
    r"(?:\*[0-9]{0,3})?\*?",
    re.IGNORECASE,
)
# A quoted string (backslash escapes, folds, maybe unterminated), a run of anything else but
# quotes and semicolons, or a semicolon: the pieces a parameter list is split into, in one pass.
_PIECE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^";]+|;', re.DOTALL)
_MAX_ESSENTIAL = 64  # parameters kept (a file name may come in many RFC 2231 pieces)


def _parameters(value: str) -> list[str]:
    """`value` split at the semicolons that are not inside a quoted string."""
    params: list[str] = []
    current: list[str] = []
    for piece in _PIECE.findall(value):
        if piece == ";":
            params.append("".join(current))
            current = []
        else:
            current.append(piece)
    params.append("".join(current))
    return params


def _essential(name: str, value: str) -> str:
    """A long header value cut down to what can be parsed in little time."""
    if name.lower() in ("content-type", "content-disposition"):
        kind, *params = _parameters(value)
        kept = [kind.strip()[:256]]
        for param in params:
            key, equals, given = param.partition("=")
            if equals and _ESSENTIAL_NAME.fullmatch(key.strip()) and len(given) <= MAX_DECODED:
                kept.append(f"{key.strip()}={given.strip()}")
                if len(kept) > _MAX_ESSENTIAL:
                    break
        return "; ".join(kept)
    head = value[:MAX_STRUCTURED]
    return head.rsplit(" ", 1)[0] if " " in head else head


class _CappedPolicy(EmailPolicy):
    """policy.default with each header value parsed once per message (the stdlib parses a
    structured header again on every access) and long values reduced first (`_essential`)."""

    header_cache: dict[tuple[str, str], Any] | None = None  # one per parse, see _parse

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value
        cache = self.header_cache if self.header_cache is not None else {}
        key = (name, value)
        if key not in cache:
            short = _essential(name, value) if len(value) > MAX_STRUCTURED else value
            try:
                cache[key] = super().header_fetch_parse(name, short)
            except Exception:  # e.g. RecursionError on thousands of nested comments
                cache[key] = super().header_fetch_parse(name, "")
        return cache[key]


_POLICY = _CappedPolicy()


class _BoundedMessage(EmailMessage):
    """A part that knows how deep it is nested and how many came before it. Past MAX_DEPTH it
    claims to be a plain leaf, so that the parser, whose recursion follows the nesting, reads it
    whole and goes no deeper; past MAX_PARTS it is not shown at all."""

    depth = 0
    serial = 0  # parts begun before this one, in the parser's order (= walk order)
    parts_seen = 0  # on the root: how many parts the parser began

    def declared_type(self) -> str:
        return super().get_content_type()

    @property
    def cut(self) -> bool:
        return self.depth > MAX_DEPTH or self.serial >= MAX_PARTS

    def get_content_type(self) -> str:
        return "application/octet-stream" if self.cut else super().get_content_type()


class _BoundedParser(FeedParser):
    # _new_message, _cur and _msgstack are FeedParser's internals (the same since Python 3.2);
    # were they to change, the deep-MIME tests fail and parse_message's fallback still answers.
    parts = 0

    def _new_message(self) -> None:
        super()._new_message()  # type: ignore[misc]
        self._cur.depth = len(self._msgstack) - 1  # type: ignore[attr-defined]
        self._cur.serial = self.parts  # type: ignore[attr-defined]
        self.parts += 1


# Fed in pieces, so that parsing stops soon after MAX_PARTS parts: 100 000 parts would take
# seconds to parse only to be left out.
_FEED = 64 * 1024


def _parse(raw: bytes) -> _BoundedMessage:
    """policy.default's full parse, nesting and number of parts bounded (see _BoundedMessage)."""
    # clone takes any attribute the policy's class has; typeshed knows only the stdlib's.
    capped = _POLICY.clone(header_cache={})  # type: ignore[call-arg]
    parser = _BoundedParser(_BoundedMessage, policy=capped)
    text = raw.decode("ascii", "surrogateescape")
    for start in range(0, len(text), _FEED):
        parser.feed(text[start : start + _FEED])
        if parser.parts > MAX_PARTS:
            break  # the rest is not shown; close() ends the open parts as at a cut-off message
    root: _BoundedMessage = parser.close()  # type: ignore[assignment]
    root.parts_seen = parser.parts
    return root


def _walk(message: _BoundedMessage) -> Iterator[tuple[_BoundedMessage, int]]:
    """(part, depth) in message.walk() order, without its recursion, up to MAX_PARTS parts."""
    stack: list[tuple[_BoundedMessage, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        if part.serial >= MAX_PARTS:
            return  # parts are numbered in walk order: all that follow are past it too
        yield part, depth
        if part.is_multipart():
            children = cast("list[_BoundedMessage]", part.get_payload())
            stack.extend((child, depth + 1) for child in reversed(children))


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


def _mime_part(part: _BoundedMessage, index: int) -> MimePart:
    if part.cut:
        payload = part.get_payload()
        size = len(payload) if isinstance(payload, str) else 0
        return MimePart(clean(part.declared_type()), size, index, cut=True)
    return MimePart(
        content_type=clean(part.get_content_type()),
        size=0 if part.is_multipart() else len(_decoded_payload(part)),
        index=index,
        filename=_filename(part),
        disposition=part.get_content_disposition(),
    )


def _mime_tree(message: _BoundedMessage) -> MimePart:
    root: MimePart | None = None
    parents: list[MimePart] = []  # the containers open at each depth, for the next child
    for index, (part, depth) in enumerate(_walk(message)):
        node = _mime_part(part, index)
        del parents[depth:]
        if parents:
            parents[-1].children.append(node)
        else:
            root = node
        parents.append(node)
    assert root is not None
    return root


def _body_part(message: _BoundedMessage, kind: str) -> _BoundedMessage | None:
    try:
        # Every part of the message is one the parser made: a _BoundedMessage.
        part = cast("_BoundedMessage | None", message.get_body(preferencelist=(kind,)))
    except Exception:
        return None
    return None if part is None or part.cut else part


def _unparsed(raw: bytes, summary: HeaderSummary, error: Exception) -> ParsedMessage:
    summary.defects.append(f"message could not be parsed: {type(error).__name__}: {error}")
    text = raw.decode("utf-8", "replace")
    return ParsedMessage(
        summary, [], text, None, [], MimePart("text/plain", len(raw)), summary.defects
    )


def parse_message(raw: bytes) -> ParsedMessage:
    """The full view: bodies, attachments and the MIME tree."""
    summary = parse_headers(raw)
    try:
        return _full_view(_parse(raw), summary)
    except Exception as error:  # a stdlib failure on hostile input: show what can be shown
        return _unparsed(raw, summary, error)


def _full_view(message: _BoundedMessage, summary: HeaderSummary) -> ParsedMessage:
    defects = summary.defects
    parts = list(_walk(message))
    truncated = message.parts_seen > MAX_PARTS
    for part, _depth in parts:
        for defect in part.defects:
            if truncated and isinstance(defect, errors.CloseBoundaryNotFoundDefect):
                continue  # the parse stopped before the closing boundary, not the message
            described = f"{clean(part.declared_type())}: {type(defect).__name__}"
            if described not in defects:
                defects.append(described)
        if part.cut and DEPTH_NOTICE not in defects:
            defects.append(DEPTH_NOTICE)
    if truncated:
        defects.append(PARTS_NOTICE)
    text_part = _body_part(message, "plain")
    html_part = _body_part(message, "html")
    text = _text_content(text_part, defects) if text_part is not None else None
    html = _text_content(html_part, defects) if html_part is not None else None

    attachments = []
    for part, _depth in parts:
        if part.is_multipart() or part is text_part or part is html_part or part.cut:
            continue
        filename = _filename(part)
        if filename or part.is_attachment() or part.get_content_maintype() not in ("text",):
            attachments.append(
                Attachment(filename, clean(part.get_content_type()), len(_decoded_payload(part)))
            )
    header_lines = [(clean(k), decode_value(str(v))) for k, v in message.raw_items()]
    return ParsedMessage(
        summary, header_lines, text, html, attachments, _mime_tree(message), defects
    )


def part_payload(raw: bytes, index: int) -> bytes | None:
    """The decoded content of the part at `index` (MimePart.index), None if there is none."""
    try:
        message = _parse(raw)
        for position, (part, _depth) in enumerate(_walk(message)):
            if position == index:
                return None if part.is_multipart() or part.cut else _decoded_payload(part)
    except Exception:
        return None
    return None
