"""The search language: one parser for the TUI's `/`, `mailsink list --search` and the API.

A query is terms separated by spaces, all of which a message must match (AND). A term is a
bare word or a "quoted phrase" (text anywhere: subject, addresses and names, the envelope,
the body, attachment names), or `prefix:value`; a `-` or `!` before a term negates it.
Mailpit's prefixes mean what they mean in Mailpit (`from:` `to:` `subject:` `is:read`
`larger:1M` ...); mailsink adds its own (`mailfrom:` `rcpt:` `helo:` `finding:KIND` ...).
`PREFIXES` lists them all, with an example each: README's table and the TUI's help follow it.

Parsing resolves what depends on the moment (`after:2h`) to milliseconds since the epoch, and
checks every value, so that a query that parsed can only fail for reasons of the store's.
A malformed query raises QueryError naming the term; nothing is ever silently dropped.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailsink.errors import QueryError
from mailsink.mail.findings import KINDS

__all__ = ["PREFIXES", "Prefix", "Query", "QueryError", "Term", "parse_query"]

# What a term's value is, and so how it is matched (store/search.py).
TEXT = "text"  # a substring, case-insensitive (Unicode case folding)
WORDS = "words"  # bare words: substring of the indexed fields, or words of the body
EXACT = "exact"  # the whole value, case-insensitive (tag:)
FLAG = "flag"  # is:/has: with one of a few values
DATE = "date"  # ms since the epoch
SIZE = "size"  # bytes
CHOICE = "choice"  # one of a few values (status:, finding:)
NUMBER = "number"  # a whole number (session:)
GLOB = "glob"  # a filename pattern (attachment:)
HEADER = "header"  # (name, value or None)


@dataclass(frozen=True)
class Prefix:
    name: str  # as typed, without the colon
    kind: str
    example: str
    meaning: str
    mailpit: bool = False  # Mailpit has it, with this meaning


PREFIXES: dict[str, Prefix] = {
    p.name: p
    for p in (
        Prefix("from", TEXT, "from:zoe", "From header address or name", True),
        Prefix("to", TEXT, "to:bob@x.test", "To header address or name", True),
        Prefix("cc", TEXT, "cc:team", "Cc header address or name", True),
        Prefix("bcc", TEXT, "bcc:audit", "Bcc header address or name", True),
        Prefix("reply-to", TEXT, "reply-to:support", "Reply-To header address or name", True),
        Prefix("addressed", TEXT, "addressed:x.test", "any of From, To, Cc, Bcc, Reply-To", True),
        Prefix("subject", TEXT, 'subject:"order 1014"', "the subject", True),
        Prefix("message-id", TEXT, "message-id:abc123@app", "the Message-ID header", True),
        Prefix("tag", EXACT, "tag:signup", "a tag (X-Tags, plus-address, or added)", True),
        Prefix("is", FLAG, "is:unread", "read, unread or tagged", True),
        Prefix("has", FLAG, "has:attachment", "attachment(s), or findings", True),
        Prefix("after", DATE, "after:2h", "received at or after a date, or this long ago", True),
        Prefix(
            "before", DATE, "before:2026-11-30", "received before a date, or this long ago", True
        ),
        Prefix(
            "larger", SIZE, "larger:1M", "bigger than a size (1K = 1024 bytes, as Mailpit)", True
        ),
        Prefix("smaller", SIZE, "smaller:20K", "smaller than a size", True),
        Prefix("mailfrom", TEXT, "mailfrom:bounce@", "the envelope sender (MAIL FROM)"),
        Prefix("rcpt", TEXT, "rcpt:audit@x.test", "an envelope recipient (RCPT TO) accepted"),
        Prefix("helo", TEXT, "helo:app-server", "the HELO/EHLO name the client gave"),
        Prefix("peer", TEXT, "peer:127.0.0.1", "the client's address"),
        Prefix("auth", TEXT, "auth:alice", "the AUTH user"),
        Prefix("finding", CHOICE, "finding:hidden_recipient", "a finding of this kind"),
        Prefix("status", CHOICE, "status:rejected", "accepted (the default), rejected, or any"),
        Prefix("session", NUMBER, "session:42", "sent in this SMTP session"),
        Prefix("attachment", GLOB, "attachment:invoice-*.pdf", "an attachment's file name"),
        Prefix("header", HEADER, "header:X-Mailer=PHPMailer", "a header (Name=value, or Name)"),
    )
}

FLAGS: dict[str, dict[str, str]] = {
    "is": {"read": "read", "unread": "unread", "tagged": "tagged"},
    "has": {"attachment": "attachment", "attachments": "attachment", "findings": "findings"},
}
STATUSES = ("accepted", "rejected", "any")

# A word before a colon that reads as a prefix (letters and dashes); anything else with a colon
# (10:30, [::1]) is text.
_PREFIX_LIKE = re.compile(r"[A-Za-z][A-Za-z-]*")
# Sizes as Mailpit reads them (1K is 1024 bytes), and the explicit binary and decimal units.
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)")
_AGO_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The values SQLite's integers hold: a size or a time beyond them means "beyond any message".
LARGEST = 2**63 - 1
MAX_TERMS = 64  # a query is typed by a person; past this it is a mistake (or an attack)
MAX_QUERY = 4096  # characters


@dataclass(frozen=True)
class Term:
    """One condition. `value` by `kind`: str (TEXT, WORDS, EXACT, FLAG, CHOICE, GLOB), int ms
    (DATE), int bytes (SIZE), int (NUMBER), (name, value or None) (HEADER)."""

    prefix: str  # "" for a bare word or phrase
    kind: str
    value: object
    negated: bool = False
    typed: str = ""  # the term as written, for messages

    @property
    def phrase(self) -> bool:
        """A bare "quoted phrase" (words that must come together) rather than a word."""
        return self.kind == WORDS and " " in str(self.value)


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...] = ()
    text: str = ""  # as typed

    @property
    def status(self) -> str:
        """accepted | rejected | any: which messages the query looks at (a negated status: the
        others). Without a status: term, rejected messages are left out, as `list` does."""
        wanted = "accepted"
        for term in self.terms:
            if term.prefix == "status":
                wanted = str(term.value)
                if term.negated:
                    wanted = {"accepted": "rejected", "rejected": "accepted", "any": "none"}[wanted]
        return wanted

    @property
    def conditions(self) -> tuple[Term, ...]:
        """The terms other than status: (which `status` says)."""
        return tuple(term for term in self.terms if term.prefix != "status")

    @property
    def needs_body(self) -> bool:
        """Whether any term looks into what only the body index has (words, attachment names)."""
        return any(term.kind in (WORDS, GLOB) for term in self.terms)

    def __bool__(self) -> bool:
        return bool(self.terms)


def prefix_list() -> str:
    return " ".join(f"{name}:" for name in PREFIXES)


def _error(term: str, why: str, *, prefixes: bool = False) -> QueryError:
    message = f"{term!r}: {why}"
    if prefixes:
        message += f"; the prefixes are {prefix_list()}"
    return QueryError(message, term=term)


def split_terms(text: str) -> list[tuple[str, str, bool]]:
    """The terms of `text` as (term, as typed, quoted): spaces split them except inside double
    quotes, which are taken out (`from:"Zoe Q"` and `"from:Zoe Q"` are one term, as in
    Mailpit). An unclosed quote runs to the end: the query is being typed. `quoted`: the term
    began with a quote (after any - or !), so it is text, never a prefix."""
    terms: list[tuple[str, str, bool]] = []
    current: list[str] = []
    typed: list[str] = []
    quoted = started_quoted = False
    for char in text:
        if char.isspace() and not quoted:
            if typed:
                terms.append(("".join(current), "".join(typed), started_quoted))
            current, typed, started_quoted = [], [], False
            continue
        typed.append(char)
        if char == '"':
            if not quoted and "".join(current).lstrip("-!") == "":
                started_quoted = True
            quoted = not quoted
        else:
            current.append(char)
    if typed:
        terms.append(("".join(current), "".join(typed), started_quoted))
    return terms


def fold(text: str) -> str:
    """Text as it is compared: case folded, compatibility characters composed (NFKC)."""
    return unicodedata.normalize("NFKC", text).casefold()


def parse_query(text: str, *, now: float | None = None) -> Query:
    """The query `text` means, with dates resolved against `now` (seconds since the epoch;
    default: the time now). Raises QueryError for a malformed term."""
    if len(text) > MAX_QUERY:
        raise QueryError(f"the query is {len(text)} characters long; at most {MAX_QUERY}")
    moment = time.time() if now is None else now
    terms: list[Term] = []
    for body, typed, quoted in split_terms(text):
        term = _term(body, typed, quoted, moment)
        if term is not None:
            terms.append(term)
    if len(terms) > MAX_TERMS:
        raise QueryError(f"the query has {len(terms)} terms; at most {MAX_TERMS}")
    return Query(tuple(terms), text)


def _term(body: str, typed: str, quoted: bool, now: float) -> Term | None:
    if "\x00" in typed:
        raise _error(typed, "a query cannot hold a NUL character")
    try:
        typed.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 (a shell argument, JSON's \udcff)
        raise _error(typed, "not UTF-8 text") from None
    negated = False
    # Only a - or ! typed before the term negates it: "-x" in quotes is the text -x.
    if typed[:1] in ("-", "!") and body[:1] == typed[:1]:
        body, negated = body[1:], True
    if not body.strip():
        return None  # a lone - or !, or "": nothing to match
    name, colon, value = body.partition(":")
    if quoted or not colon or not _PREFIX_LIKE.fullmatch(name):
        return Term("", WORDS, body.strip(), negated, typed)
    prefix = PREFIXES.get(name.lower())
    if prefix is None:
        raise _error(
            typed,
            f'unknown prefix {name.lower()}: (to search for the text, quote it: "{body}")',
            prefixes=True,
        )
    value = value.strip()
    if not value:
        raise _error(typed, f"{prefix.name}: needs a value, as in {prefix.example}")
    return Term(prefix.name, prefix.kind, _value(prefix, value, typed, now), negated, typed)


def _value(prefix: Prefix, value: str, typed: str, now: float) -> object:
    kind, lowered = prefix.kind, value.lower()
    if kind in (TEXT, GLOB):
        return value
    if kind == EXACT:
        return value
    if kind == FLAG:
        flags = FLAGS[prefix.name]
        if lowered not in flags:
            names = list(dict.fromkeys(flags))
            raise _error(typed, f"{prefix.name}: takes {', '.join(names[:-1])} or {names[-1]}")
        return flags[lowered]
    if kind == CHOICE:
        allowed: Iterable[str] = STATUSES if prefix.name == "status" else KINDS
        if lowered not in allowed:
            what = "statuses" if prefix.name == "status" else "finding kinds"
            raise _error(typed, f"unknown {prefix.name}; the {what} are {', '.join(allowed)}")
        return lowered
    if kind == NUMBER:
        if (
            not value.isascii()
            or not value.isdigit()
            or len(value.lstrip("0")) > 19
            or not 0 < int(value) <= LARGEST
        ):
            raise _error(typed, f"{prefix.name}: takes a session number, as in {prefix.example}")
        return int(value)
    if kind == SIZE:
        return _size(prefix, lowered, typed)
    if kind == DATE:
        return _date(prefix, value, typed, now)
    if kind == HEADER:
        name, equals, wanted = value.partition("=")
        name = name.strip()
        if not name or not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
            raise _error(typed, f"header: takes Name=value or Name, as in {prefix.example}")
        return (name, wanted.strip() if equals else None)
    raise AssertionError(kind)


def _size(prefix: Prefix, lowered: str, typed: str) -> int:
    match = _SIZE.fullmatch(lowered)
    if not match or match.group(2) not in _SIZE_UNITS:
        raise _error(
            typed, f"{prefix.name}: takes a size such as 500, 20K, 1.5M or 2MiB (1K = 1024 bytes)"
        )
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    return int(size) if size < LARGEST else LARGEST  # (inf: 400 digits)


def _clamped(ms: float) -> int:
    return int(max(-LARGEST, min(LARGEST, ms)))


def _date(prefix: Prefix, value: str, typed: str, now: float) -> int:
    """ms since the epoch: an ISO date or date-time (local time unless it gives an offset),
    today, yesterday, or how long ago (30m, 2h, 1d, 1w)."""
    lowered = value.lower()
    # Local midnight as a naive time, given its own offset only then: on the day the clocks
    # change, midnight's offset is not the one in force now.
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if lowered == "today":
        return int(midnight.astimezone().timestamp() * 1000)
    if lowered == "yesterday":
        return int((midnight - timedelta(days=1)).astimezone().timestamp() * 1000)
    if match := _AGO.fullmatch(lowered):
        return _clamped((now - float(match.group(1)) * _AGO_SECONDS[match.group(2)]) * 1000)
    try:
        moment = datetime.fromisoformat(value.upper() if "t" in lowered else value)
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time, as the TUI shows it
        return _clamped(moment.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):  # (also a date the platform cannot place)
        raise _error(
            typed,
            f"{prefix.name}: takes a date (2026-11-30, 2026-11-30T14:00, today, yesterday)"
            " or how long ago (30m, 2h, 1d, 1w)",
        ) from None


def describe(query: Query) -> str:
    """The query in force, as the status line says it."""
    return " ".join(term.typed for term in query.terms)
