"""What a message contributes to the search indexes (store/search.py reads them).

Two parts, both made outside the writer's transactions (operations.prepare_index, in the
writer's extractor process) and by search.PendingIndex for a message not indexed yet, with the
same functions, so that a message is found the same way whether or not the index holds it:

- its fields (`fields_of_summary`): header addresses with their names, subject, Message-ID,
  the envelope and every header line, folded as the search language compares text
  (query.fold); from the header summary ingest stored, and the header block;
- its text (`body`): the text part, or the HTML part as text, and the attachments' file
  names: the whole MIME parse, bounded (MAX_PARSED, MAX_HTML, `trimmed`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import (
    DEPTH_NOTICE,
    PARTS_NOTICE,
    HeaderSummary,
    ParsedMessage,
    decode_value,
    parse_message,
)
from mailsink.mail.snippet import make_snippet
from mailsink.query import fold

# The columns of message_fields, in order (schema 6), and what each prefix searches.
FIELD_COLUMNS = (
    "from_",
    "to_",
    "cc",
    "bcc",
    "reply_to",
    "subject",
    "message_id",
    "mail_from",
    "rcpt",
    "headers",
)
MAX_HEADERS = 16 * 1024  # characters of header lines indexed
# Bytes of the header block split into lines for the `headers` column: 120 000 short lines
# (all of them From:, which has a column of its own) would otherwise be split one by one.
MAX_HEADER_SCAN = 64 * 1024
# Headers with a column of their own: left out of the `headers` column (half its trigrams, and
# the index's cost at ingest), header:Name=value looks in their column instead.
OWN_COLUMN = {
    "from": "from_",
    "to": "to_",
    "cc": "cc",
    "bcc": "bcc",
    "reply-to": "reply_to",
    "subject": "subject",
    "message-id": "message_id",
}
MAX_BODY = 256 * 1024  # characters of text indexed
# Bytes of a message parsed for its text: the text comes first in nearly every message, and a
# 25 MB message would otherwise hold the writer for a second.
MAX_PARSED = 4 * 1024 * 1024
# Characters of HTML converted to text: html_to_text costs about 1.5 s a million characters of
# hostile markup (<p>a</p> repeated), and a text of MAX_BODY rarely needs more than this.
MAX_HTML = 2 * MAX_BODY

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# A header line starts at the beginning of a line that is not a fold (space or tab).
_HEADER_START = re.compile(r"(?:\r?\n)(?=[^ \t\r\n])")
_WORD = re.compile(r"[^\W_]+")  # what unicode61 counts as a token: letters and digits


def header_lines(raw: bytes) -> list[tuple[str, str]]:
    """(name, decoded value) of each header line, in order, without the email parser (this
    runs at ingest; parse_headers has just parsed what it needs)."""
    end = _HEADER_END.search(raw, 0, MAX_HEADER_SCAN)
    block = raw[: end.start()] if end else raw[:MAX_HEADER_SCAN]
    lines = []
    for line in _HEADER_START.split(block.decode("ascii", "surrogateescape")):
        name, colon, value = line.partition(":")
        if colon and name and " " not in name:
            lines.append((name.strip(), value))
    return lines


def _headers_text(raw: bytes) -> str:
    parts, size = [], 0
    for name, value in header_lines(raw):
        if name.lower() in OWN_COLUMN:
            continue
        line = f"\n{name}: {decode_value(value)}"
        parts.append(line)
        size += len(line)
        if size >= MAX_HEADERS:
            break
    # Each line begins with "\n" so that header:Name finds "\nname:" only at a line's start.
    return "".join(parts)[:MAX_HEADERS]


def fields(summary: HeaderSummary, envelope: Envelope, raw: bytes) -> tuple[str, ...]:
    """The values of FIELD_COLUMNS for a message, folded."""
    return fields_of_summary(summary.as_json(), envelope, raw)


def fields_of_summary(summary: dict[str, Any], envelope: Envelope, raw: bytes) -> tuple[str, ...]:
    """The same from a summary as stored (HeaderSummary.as_json: the messages' `headers`);
    of `raw`, only the header block is read (its first MAX_HEADER_SCAN bytes)."""
    values = (
        "\n".join(summary.get("from") or ()),
        "\n".join(summary.get("to") or ()),
        "\n".join(summary.get("cc") or ()),
        "\n".join(summary.get("bcc") or ()),
        "\n".join(summary.get("reply_to") or ()),
        summary.get("subject") or "",
        summary.get("message_id") or "",
        envelope.mail_from,
        "\n".join(envelope.rcpt_to),
        _headers_text(raw),
    )
    return tuple(fold(value) for value in values)


@dataclass(frozen=True)
class Body:
    text: str  # the text part, or the HTML part as text; at most MAX_BODY characters; folded
    attachments: str  # file names, one a line; folded
    has_attachments: bool = False  # a part is an attachment (named or not)
    complete: bool = True  # the whole MIME tree was parsed: has_attachments is exact
    snippet: str = ""  # Mailpit's snippet (mail/snippet.py), not folded


_MIME_LINE = re.compile(rb"\n(?:content-|mime-version)[^\n]*(?:\n[ \t][^\n]*)*", re.IGNORECASE)


def trimmed(raw: bytes) -> bytes:
    """`raw` with a header block of more than MAX_HEADER_SCAN bytes cut down to its start and
    its MIME headers (what the parse of the body needs): the email parser takes about 2 s for
    120 000 header lines, parse_headers 0.6 s."""
    end = _HEADER_END.search(raw)
    if end is None or end.start() <= MAX_HEADER_SCAN:
        return raw
    block = raw[: end.start()]
    start = block.rfind(b"\n", 0, MAX_HEADER_SCAN)
    mime = b"".join(m.group() for m in _MIME_LINE.finditer(block, max(start, 0)))
    return block[: max(start, 0)] + mime + raw[end.start() :]


def _parse(raw: bytes) -> tuple[ParsedMessage, str | None]:
    """The bounded parse that both body and snippet read: the message and its HTML as text."""
    parsed = parse_message(trimmed(raw[:MAX_PARSED]))
    from mailsink.mail.html import html_to_text  # (not in every CLI command's start-up)

    html_text = html_to_text(parsed.html[:MAX_HTML]) if parsed.html is not None else None
    return parsed, html_text


def snippet(raw: bytes) -> str:
    """Mailpit's snippet of a message, exactly as `body(raw).snippet` (the one the store
    keeps): the HTTP API makes a message's with it until the indexer has stored it, and the
    extractor fills it in for messages indexed before schema 7."""
    parsed, html_text = _parse(raw)
    return make_snippet(parsed.text, html_text)


def body(raw: bytes) -> Body:
    """What message_body holds of a message, folded as query text is (so that the tokenizer's
    own case folding never disagrees with query.fold: ß and ss). Never raises (parse_message
    does not)."""
    parsed, html_text = _parse(raw)
    complete = len(raw) <= MAX_PARSED and not any(
        defect in (PARTS_NOTICE, DEPTH_NOTICE) or defect.startswith("message could not be parsed")
        for defect in parsed.defects
    )
    if parsed.text is not None:
        text = parsed.text
    elif html_text is not None:
        text = html_text
    else:
        text = ""
    names = [a.filename for a in parsed.attachments if a.filename]
    found = bool(parsed.attachments)
    made = make_snippet(parsed.text, html_text)
    return Body(fold(text[:MAX_BODY]), fold("\n".join(names)), found, complete, made)


# ---- matching in Python, as the indexes match (for messages they do not hold yet)


def _plain(text: str) -> str:
    """Folded, diacritics taken off: as unicode61 with remove_diacritics 2 compares words."""
    decomposed = unicodedata.normalize("NFKD", fold(text))
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def words(text: str) -> list[str]:
    """The words (tokens) of `text` as message_body's tokenizer makes them."""
    return _WORD.findall(_plain(text))


def has_words(text: str, wanted: list[str], *, prefix: bool) -> bool:
    """Whether the words `wanted` come one after another in `text` (the last one only as the
    start of a word when `prefix`): what `"w1 w2"` (or `"w1 w2"*`) matches in FTS5."""
    if not wanted:
        return False
    joined = " " + " ".join(words(text)) + " "
    needle = " " + " ".join(wanted) + ("" if prefix else " ")
    return needle in joined
