"""Tags: labels on a message, from its X-Tags header, from plus-addresses (opt-in), or added
by hand (TUI, `mailsink tag`). Cleaned as Mailpit cleans them, so that a tag means the same
in both: letters, digits, space, - _ . @ only (anything else becomes a space), spaces
collapsed, at most MAX_TAG characters; compared without regard to case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TAG = 100
MAX_TAGS = 50  # on one message, whatever its X-Tags header says
_INVALID = re.compile(r"[^a-zA-Z0-9\- _.@]")
_SPACES = re.compile(r"\s+")
_PLUS = re.compile(r"^[^@+]+\+([^@]+)@")


def clean_tag(text: str) -> str:
    """The tag `text` makes ("" if nothing is left of it)."""
    return _SPACES.sub(" ", _INVALID.sub(" ", text)).strip()[:MAX_TAG].strip()


def unique_tags(tags: Iterable[str]) -> list[str]:
    """Cleaned, the first spelling of each kept (case-insensitively), empty ones dropped."""
    seen: dict[str, str] = {}
    for tag in tags:
        cleaned = clean_tag(tag)
        if cleaned and cleaned.casefold() not in seen and len(seen) < MAX_TAGS:
            seen[cleaned.casefold()] = cleaned
    return list(seen.values())


def header_tags(value: str | None) -> list[str]:
    """X-Tags: comma-separated, as Mailpit reads it."""
    return unique_tags(value.split(",")) if value else []


def plus_tags(addresses: Iterable[str]) -> list[str]:
    """user+signup@x -> signup (user+a+b@x -> a, b), as Mailpit's plus-address tagging."""
    tags: list[str] = []
    for address in addresses:
        if match := _PLUS.match(address):
            tags += match.group(1).split("+")
    return unique_tags(tags)


def given_tag(text: str) -> str:
    """A tag given by hand (TUI, CLI), cleaned; ValueError when nothing is left of it."""
    cleaned = clean_tag(text)
    if not cleaned:
        raise ValueError(f"{text!r} is not a tag: a tag has letters, digits, spaces and - _ . @")
    return cleaned
