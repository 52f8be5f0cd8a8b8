"""A message's snippet as Mailpit makes it (internal/tools/snippets.go CreateSnippet): the HTML
part as text if there is one, else the text part; white space collapsed; at most 200 bytes of
UTF-8, cut on a character's boundary, with "..." after a cut. Made when the message is indexed
(operations.prepare_index) and kept in `messages.snippet` (schema 7), so that a list of
summaries reads it instead of parsing every message it shows."""

from __future__ import annotations

import re

SNIPPET_BYTES = 200  # Mailpit's limit, in bytes of UTF-8
_SPACES = re.compile(r"\s+")


def make_snippet(text: str | None, html_text: str | None) -> str:
    """`text`: the text part; `html_text`: the HTML part already as text (mail/html.py)."""
    source = ""
    if html_text and html_text.strip():
        source = html_text
    elif text:
        source = text
    flat = _SPACES.sub(" ", source.replace("\ufeff", " ")).strip()
    encoded = flat.encode("utf-8", "surrogatepass")
    if len(encoded) <= SNIPPET_BYTES:
        return flat
    # Back to the start of a character (a continuation byte is 10xxxxxx), as Mailpit's truncate.
    end = SNIPPET_BYTES
    while end > 0 and encoded[end] & 0xC0 == 0x80:
        end -= 1
    return encoded[:end].decode("utf-8", "surrogatepass") + "..."
