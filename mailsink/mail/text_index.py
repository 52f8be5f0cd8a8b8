"""What a message contributes to the search indexes (store/search.py reads them).

Two parts, written at different times:

- its fields (`fields`): header addresses with their names, subject, Message-ID, the envelope
  and every header line, folded as the search language compares text (query.fold). Cheap:
  from the header summary ingest makes anyway, written with the message;
- its text (`body`): the text part, or the HTML part as text, and the attachments' file
  names. That needs the whole MIME parse, so the writer does it when it is idle.

The same functions feed the Python matcher that covers messages not indexed yet, so that a
message is found the same way whether or not the index holds it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import MAX_HEADER_BLOCK, HeaderSummary, decode_value, parse_message
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

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# A header line starts at the beginning of a line that is not a fold (space or tab).
_HEADER_START = re.compile(r"(?:\r?\n)(?=[^ \t\r\n])")
_WORD = re.compile(r"[^\W_]+")  # what unicode61 counts as a token: letters and digits


def header_lines(raw: bytes) -> list[tuple[str, str]]:
    """(name, decoded value) of each header line, in order, without the email parser (this
    runs at ingest; parse_headers has just parsed what it needs)."""
    end = _HEADER_END.search(raw, 0, MAX_HEADER_BLOCK)
    block = raw[: end.start()] if end else raw[:MAX_HEADER_BLOCK]
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
    values = (
        "\n".join(summary.from_),
        "\n".join(summary.to),
        "\n".join(summary.cc),
        "\n".join(summary.bcc),
        "\n".join(summary.reply_to),
        summary.subject or "",
        summary.message_id or "",
        envelope.mail_from,
        "\n".join(envelope.rcpt_to),
        _headers_text(raw),
    )
    return tuple(fold(value) for value in values)


@dataclass(frozen=True)
class Body:
    text: str  # the text part, or the HTML part as text; at most MAX_BODY characters; folded
    attachments: str  # file names, one a line; folded


def body(raw: bytes) -> Body:
    """What message_body holds of a message, folded as query text is (so that the tokenizer's
    own case folding never disagrees with query.fold: ß and ss). Never raises (parse_message
    does not)."""
    parsed = parse_message(raw[:MAX_PARSED])
    if parsed.text is not None:
        text = parsed.text
    elif parsed.html is not None:
        from mailsink.mail.html import html_to_text  # (not in every CLI command's start-up)

        text = html_to_text(parsed.html[: MAX_BODY * 4])
    else:
        text = ""
    names = [a.filename for a in parsed.attachments if a.filename]
    return Body(fold(text[:MAX_BODY]), fold("\n".join(names)))


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
