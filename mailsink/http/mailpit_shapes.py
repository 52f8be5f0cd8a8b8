"""Mailpit v1's JSON shapes, made from what mailsink stores: MessageSummary, Message, the
headers map, attachments with their PartIDs. Field names are Mailpit's (internal/storage/
structs.go); `Envelope`, `Findings` and `Status` are mailsink's additions (clients ignore keys
they do not know).

PartIDs are numbered as enmime (the MIME library Mailpit uses, part.go) numbers them, so that a
client that kept a PartID from Mailpit finds the same part here:

- the message itself is "0";
- the parts of a multipart message are "1", "2", ... in order;
- a part inside a nested multipart "N" is "N.1", "N.2", ...; once its parts are numbered, the
  nested multipart itself becomes "N.0" (so a multipart/alternative first inside a
  multipart/mixed is "1.0" and its text/plain part "1.1");
- message/rfc822 parts are leaves (enmime does not look inside them).

Which part is an attachment and which inline is enmime's rule too (envelope.go): attachments are
the parts with Content-Disposition attachment or of type application/octet-stream; Inline are
the other parts with Content-Disposition inline, then the parts with no disposition that are not
text/plain or text/html; Mailpit lists only those with a file name or a Content-ID.

Everything here runs on the sink's reader thread (`message_view`, `part_content`, `headers`
parse MIME); the summary functions only reshape stored records and are cheap.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, cast

from mailsink.mail import text_index
from mailsink.mail.html import html_to_text

# The bounded parser (nesting, number of parts, long header values) and its decoding helpers:
# the same parse the TUI shows, so hostile input costs here what it costs there.
from mailsink.mail.parse import (
    MAX_HEADER_BLOCK,
    _decoded_payload,
    _filename,
    _parse,
    _text_content,
)
from mailsink.store import MessageRecord, Reader

# Characters kept of one header value in the headers map (the block itself is at most
# MAX_HEADER_BLOCK bytes): enough for any real header, and a bound on a hostile one's answer.
MAX_HEADER_VALUE = 64 * 1024
_SPACES = re.compile(r"\s+")
_LINK = re.compile(r"<([^<>]*)>")
_QUOTED = re.compile(r"\\(.)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


# ---- small pieces


def go_time(ms: int) -> str:
    """A time as Go's encoding/json writes a time.Time (RFC 3339 with nanoseconds, trailing
    zeros of the fraction dropped), in UTC: 2026-12-01T14:15:16.12Z."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    fraction = f"{ms % 1000:03d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _go_date(value: str | None, fallback_ms: int) -> str:
    """The Date header as Go's time (with the offset it was written in), or the received time
    when there is none or it does not parse (Mailpit does the same)."""
    if value:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            moment = None
        if moment is not None and 1 <= moment.year <= 9999:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            offset = moment.utcoffset()
            text = moment.strftime("%Y-%m-%dT%H:%M:%S")
            if moment.microsecond:
                text += "." + f"{moment.microsecond:06d}".rstrip("0")
            if not offset:
                return text + "Z"
            return text + moment.strftime("%z")[:3] + ":" + moment.strftime("%z")[3:]
    return go_time(fallback_ms)


def address(shown: str) -> dict[str, str]:
    """One stored address as Go's mail.Address. The ingest summary writes `a@x`, `Name <a@x>`
    or `"Name, with specials" <a@x>` (mail/parse.py _display): read back by those rules,
    which is 30 times faster than getaddresses, called 50 times for every page listed."""
    if not shown.endswith(">"):
        return {"Name": "", "Address": shown}
    name, bracket, spec = shown[:-1].rpartition(" <")
    if not bracket:
        pairs = getaddresses([shown])
        found = pairs[0] if pairs else ("", shown)
        return {"Name": found[0], "Address": found[1]}
    if len(name) >= 2 and name[0] == '"' and name[-1] == '"':
        name = _QUOTED.sub(r"\1", name[1:-1])
    return {"Name": name, "Address": spec}


def addresses(shown: Iterable[str]) -> list[dict[str, str]]:
    return [address(item) for item in shown]


def bcc(record: MessageRecord, to: list[dict[str, str]], cc: list[dict[str, str]]) -> list:
    """Mailpit's meaning of Bcc: the header's (rarely present) plus every envelope recipient
    that no To, Cc or Bcc header names. Computed for the answer; the stored bytes are as sent."""
    listed = addresses(record.headers.get("bcc") or [])
    if not record.envelope.rcpt_to:
        return listed
    named = {item["Address"].casefold() for group in (to, cc, listed) for item in group}
    for recipient in record.envelope.rcpt_to:
        if recipient.casefold() not in named:
            named.add(recipient.casefold())
            listed.append({"Name": "", "Address": recipient})
    return listed


def message_id(record: MessageRecord) -> str:
    return (record.headers.get("message_id") or "").strip().strip("<>")


def envelope(record: MessageRecord) -> dict[str, Any]:
    """mailsink's addition: what the client said in SMTP."""
    env = record.envelope
    return {
        "mail_from": env.mail_from,
        "rcpt_to": env.rcpt_to,
        "rcpt_refused": [refused.as_json() for refused in env.rcpt_refused],
        "helo": env.helo,
        "peer": env.peer,
        "tls": env.tls,
        "auth_user": env.auth_user,
    }


# Parsing stops for one request after this long; the rest get "" now and theirs next time.
SNIPPET_BUDGET_S = 0.03
# Only a message up to this size gets its snippet made here: the indexer's parse of a bigger
# one (up to text_index.MAX_PARSED) costs 0.4-0.9 s for 4 MiB; it shows "" until indexed.
SNIPPET_PARSE = 256 * 1024
SNIPPETS_KEPT = 20_000  # about 5 MB


class Snippets:
    """Mailpit's Snippet of each message (mail/snippet.py): as the store keeps it once the
    message is indexed; until then made here, within a time budget and for a message of up to
    SNIPPET_PARSE bytes, by the function the indexer uses (text_index.snippet: the same parse,
    the same bounds), so the two never differ. A stored one is kept, since a message never
    changes; one made here only until the store has one (looked up again by id at each use,
    which is cheap), which replaces it. Used on the reader thread only."""

    def __init__(self, kept: int = SNIPPETS_KEPT) -> None:
        self.kept = kept
        self.items: OrderedDict[int, str] = OrderedDict()  # as stored
        self.made: OrderedDict[int, str] = OrderedDict()  # made here; none stored yet

    def _keep(self, items: OrderedDict[int, str], message_id: int, text: str) -> None:
        items[message_id] = text
        if len(items) > self.kept:
            items.popitem(last=False)

    def of(self, reader: Reader, ids: Iterable[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        missing: list[int] = []
        for message_id in ids:
            known = self.items.get(message_id)
            if known is not None:
                self.items.move_to_end(message_id)
                found[message_id] = known
            else:
                missing.append(message_id)
        stored = reader.snippets(missing) if missing else {}
        deadline = time.monotonic() + SNIPPET_BUDGET_S
        for message_id in missing:
            text = stored.get(message_id)
            if text is not None:
                self.made.pop(message_id, None)
                self._keep(self.items, message_id, text)
            elif (text := self.made.get(message_id)) is None:
                if time.monotonic() >= deadline:
                    continue  # "" this time; the indexer or the next request makes it
                piece = reader.raw_piece(message_id, 0, SNIPPET_PARSE + 1)
                if piece is None or piece[0] > SNIPPET_PARSE:
                    continue  # deleted since; or too big: the indexer's to make
                text = text_index.snippet(piece[1])
                self._keep(self.made, message_id, text)
            found[message_id] = text
        return found


def _sender(record: MessageRecord) -> dict[str, str]:
    found = record.headers.get("from") or []
    return address(found[0]) if found else {"Name": "", "Address": ""}


def _extras(record: MessageRecord) -> dict[str, Any]:
    return {
        "Envelope": envelope(record),
        "Findings": record.findings,
        "Status": record.status,
    }


# ---- MessageSummary and MessagesSummary


def summary(record: MessageRecord, snippet: str | None) -> dict[str, Any]:
    """Mailpit's MessageSummary; `snippet` as Snippets.of makes it."""
    to = addresses(record.headers.get("to") or [])
    cc = addresses(record.headers.get("cc") or [])
    return {
        "ID": str(record.id),
        "MessageID": message_id(record),
        "Read": record.seen,
        "From": _sender(record),
        "To": to,
        "Cc": cc,
        "Bcc": bcc(record, to, cc),
        "ReplyTo": addresses(record.headers.get("reply_to") or []),
        "Subject": record.headers.get("subject") or "",
        "Created": go_time(record.received_at),
        "Username": record.envelope.auth_user or "",
        "Tags": sorted(record.tags),  # Mailpit's ORDER BY Name: byte order
        "Size": record.size,
        "Attachments": int(record.has_attachments),
        "Snippet": snippet or "",
        **_extras(record),
    }


# ---- the MIME tree, numbered as enmime numbers it


@dataclass
class Part:
    part_id: str
    message: Message
    content_type: str  # the media type only, lower case (enmime's ContentType)
    disposition: str  # "attachment", "inline" or ""
    multipart: bool
    children: list[Part] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return _filename(cast("Any", self.message)) or ""

    @property
    def content_id(self) -> str:
        try:
            value = self.message.get("Content-ID")
        except Exception:  # an unparseable value names nothing
            return ""
        return str(value).strip().strip("<>") if value else ""

    def content(self) -> bytes:
        """The decoded content (a message/rfc822 part: the message it holds)."""
        if self.multipart:
            return b""
        payload = self.message.get_payload()
        if isinstance(payload, list):
            try:
                return b"".join(cast("Message", inner).as_bytes() for inner in payload)
            except Exception:
                return b""
        return _decoded_payload(cast("Any", self.message))


def _node(message: Message, part_id: str) -> Part:
    cut = bool(getattr(message, "cut", False))
    kind = "application/octet-stream" if cut else message.get_content_type().lower()
    try:
        disposition = (message.get_content_disposition() or "").lower()
    except Exception:
        disposition = ""
    multipart = not cut and kind.startswith("multipart/") and message.is_multipart()
    return Part(part_id, message, kind, disposition, multipart)


def part_tree(raw: bytes) -> Part:
    """The message's parts as enmime numbers them (see the module's docstring). The parse is
    bounded (mail/parse.py: MAX_DEPTH levels, MAX_PARTS parts), so this recursion is too."""
    root = _node(_parse(raw), "0")

    def number(parent: Part, prefix: str) -> None:
        payload = parent.message.get_payload()
        for position, child in enumerate(cast("list[Message]", payload), 1):
            node = _node(child, f"{prefix}.{position}" if prefix else str(position))
            parent.children.append(node)
            if node.multipart:
                number(node, node.part_id)
                node.part_id += ".0"

    if root.multipart:
        number(root, "")
    return root


def _depth_first(root: Part) -> Iterator[Part]:
    stack = [root]
    while stack:
        part = stack.pop()
        yield part
        stack.extend(reversed(part.children))


def _breadth_first(root: Part) -> Iterator[Part]:
    queue = deque([root])
    while queue:
        part = queue.popleft()
        yield part
        queue.extend(part.children)


def _is_binary(part: Part) -> bool:
    return part.disposition == "attachment" or not part.content_type.startswith("text/")


def _text(part: Part) -> str:
    return _text_content(cast("Any", part.message), [])


@dataclass
class MimeView:
    """What Mailpit's Message shows of the MIME structure."""

    text: str
    html: str
    inline: list[Part]
    attachments: list[Part]
    parts: dict[str, Part]  # every listed part by PartID, for /part/{PartID}


def mime_view(raw: bytes, *, text_from_html: bool = True) -> MimeView:
    """`text_from_html=False`: an HTML-only message's text is left empty, not made from the
    HTML (seconds for a large one) when the caller shows only the HTML or a part."""
    root = part_tree(raw)
    text = html = ""
    inlines: list[Part] = []
    attachments: list[Part] = []
    others: list[Part] = []
    if root.multipart:
        body = [
            p
            for p in _depth_first(root)
            if p.content_type == "text/plain" and p.disposition != "attachment"
        ]
        if root.content_type == "multipart/alternative":
            first = next(
                (
                    p
                    for p in _breadth_first(root)
                    if p.content_type == "text/plain" and p.disposition != "attachment"
                ),
                None,
            )
            text = _text(first) if first is not None else ""
        else:
            text = "\n--\n".join(_text(p) for p in body)
        html_part = next(
            (
                p
                for p in _depth_first(root)
                if p.content_type == "text/html" and p.disposition != "attachment"
            ),
            None,
        )
        html = _text(html_part) if html_part is not None else ""
        for part in _breadth_first(root):
            if part.multipart:
                continue
            if part.disposition == "attachment" or part.content_type == "application/octet-stream":
                attachments.append(part)
            if part.disposition == "inline":
                inlines.append(part)
            elif (
                not part.disposition
                and part.content_type != "application/octet-stream"
                and part.content_type not in ("text/plain", "text/html")
            ):
                others.append(part)
    elif _is_binary(root):
        (inlines if root.disposition == "inline" else attachments).append(root)
    elif root.content_type == "text/html":
        html = _text(root)
    else:
        text = _text(root)
    if not text and html and text_from_html:
        text = html_to_text(html)
    # Mailpit lists only the parts that have a name or a Content-ID.
    inline = [p for p in inlines + others if p.filename or p.content_id]
    attached = [p for p in attachments if p.filename or p.content_id]
    parts = {p.part_id: p for p in inlines + others + attachments}
    return MimeView(text, html, inline, attached, parts)


def attachment(part: Part) -> dict[str, Any]:
    """Mailpit's Attachment (AttachmentSummary)."""
    content = part.content()
    return {
        "PartID": part.part_id,
        "FileName": part.filename or part.content_id,
        "ContentType": part.content_type,
        "ContentID": part.content_id,
        "Size": len(content),
        "Checksums": {
            "MD5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
            "SHA1": hashlib.sha1(content, usedforsecurity=False).hexdigest(),
            "SHA256": hashlib.sha256(content).hexdigest(),
        },
    }


def _list_unsubscribe(lines: dict[str, list[str]]) -> dict[str, Any]:
    header = (lines.get("List-Unsubscribe") or [""])[0]
    links = [link.strip() for link in _LINK.findall(header)]
    kept = [link for link in links if link.lower().startswith(("mailto:", "http:", "https:"))]
    errors = "" if kept or not header else "no valid unsubscribe links found"
    return {
        "Header": header,
        "Links": kept[:2],
        "Errors": errors,
        "HeaderPost": (lines.get("List-Unsubscribe-Post") or [""])[0],
    }


def message(record: MessageRecord, raw: bytes) -> tuple[dict[str, Any], MimeView]:
    """Mailpit's Message (GetMessage), for the reader thread: it parses the MIME."""
    view = mime_view(raw)
    lines = headers(raw)
    to = addresses(record.headers.get("to") or [])
    cc = addresses(record.headers.get("cc") or [])
    shape = {
        "ID": str(record.id),
        "MessageID": message_id(record),
        "From": _sender(record),
        "To": to,
        "Cc": cc,
        "Bcc": bcc(record, to, cc),
        "ReplyTo": addresses(record.headers.get("reply_to") or []),
        "ReturnPath": record.envelope.mail_from,
        "Subject": record.headers.get("subject") or "",
        "ListUnsubscribe": _list_unsubscribe(lines),
        "Date": _go_date(record.headers.get("date"), record.received_at),
        "Tags": sorted(record.tags),  # Mailpit's ORDER BY Name: byte order
        "Username": record.envelope.auth_user or "",
        "Text": view.text,
        "HTML": view.html,
        "Size": record.size,
        "Inline": [attachment(p) for p in view.inline],
        "Attachments": [attachment(p) for p in view.attachments],
        **_extras(record),
    }
    return shape, view


# ---- headers as Go's net/mail reads them


def canonical_key(name: str) -> str:
    """textproto.CanonicalMIMEHeaderKey: `message-id` -> `Message-Id`; a name with a byte that
    is not a token character is left as it is."""
    if not _TOKEN.fullmatch(name):
        return name
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


def headers(raw: bytes) -> dict[str, list[str]]:
    """The header block as Go's mail.ReadMessage gives it (textproto.MIMEHeader): canonical
    keys in sorted order, each value's continuation lines joined by one space, the values of a
    repeated header in order. Not RFC 2047-decoded, as Mailpit's are not. Each value is cut at
    MAX_HEADER_VALUE characters (Go keeps it whole): a header folded 100 000 times is 100 000
    pieces, joined once here, never grown one line at a time (which is quadratic)."""
    end = _HEADER_END.search(raw, 0, MAX_HEADER_BLOCK)
    block = raw[: end.start()] if end else raw[:MAX_HEADER_BLOCK]
    found: dict[str, list[list[str]]] = {}
    current: list[str] | None = None  # the pieces of the value being read
    size = 0  # characters in `current`
    for line in block.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t"):
            piece = line.strip()
            if current is not None and piece and size < MAX_HEADER_VALUE:
                current.append(piece)
                size += len(piece) + 1
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            current = None  # not a header line: Go stops with an error; skipped here
            continue
        current = [value.strip()]
        size = len(current[0])
        found.setdefault(canonical_key(name.strip()), []).append(current)
    return {
        key: [" ".join(piece for piece in pieces if piece)[:MAX_HEADER_VALUE] for pieces in values]
        for key, values in sorted(found.items())
    }
