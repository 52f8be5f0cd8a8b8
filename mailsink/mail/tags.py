"""Tags: labels on a message, from its X-Tags header, from plus-addresses (opt-in), or added
by hand (TUI, `mailsink tag`). Those from a message are cleaned as Mailpit cleans them, so that
a tag means the same in both: ASCII letters, digits, space, - _ . @ only (anything else becomes
a space), spaces collapsed, at most MAX_TAG characters. One given by hand that cleaning would
change is refused instead (`Straße` would become `Stra e`): told, not silently rewritten.
Compared without regard to case; a message holds at most MAX_TAGS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TAG = 100
MAX_TAGS = 50  # on one message, whatever its X-Tags header says
MAX_GIVEN = 20 * MAX_TAGS  # tags given in one change, repeats included
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
    """A tag given by hand (TUI, CLI), without the spaces around it or doubled inside it;
    ValueError for one that cleaning would change otherwise (a character Mailpit's tags do not
    hold, more than MAX_TAG characters) or empty."""
    tidy = " ".join(text.split())
    quoted = repr(text) if len(text) <= 40 else f"{text[:40]!r}…"  # one line, however long
    if not tidy or _INVALID.search(text):
        raise ValueError(
            f"{quoted} is not a tag: tags hold ASCII letters, digits, spaces and - _ . @"
            " (as Mailpit's)"
        )
    if len(tidy) > MAX_TAG:
        raise ValueError(f"{quoted} is not a tag: a tag has at most {MAX_TAG} characters")
    return tidy


def given_tags(texts: Iterable[str]) -> list[str]:
    """Tags given by hand, each once (the first spelling, case aside); ValueError for one that
    is not a tag (given_tag) or for more than MAX_TAGS of them, which no message can hold."""
    seen: dict[str, str] = {}
    # Counted as they come: a client's list of millions costs at most MAX_GIVEN checks (a
    # check each would hold the caller, the event loop, for seconds). Repeats are allowed,
    # up to MAX_GIVEN in all.
    for given, text in enumerate(texts, 1):
        if given > MAX_GIVEN:
            raise ValueError(f"over {MAX_GIVEN} tags given: a message holds at most {MAX_TAGS}")
        tag = given_tag(text)
        seen.setdefault(tag.casefold(), tag)
        if len(seen) > MAX_TAGS:
            raise ValueError(f"{len(seen)} tags given: a message holds at most {MAX_TAGS}")
    return list(seen.values())
