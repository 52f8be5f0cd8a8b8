"""The search language (mailsink/query.py) in SQL, for the Reader.

Every term becomes one condition on a `messages` row that is never NULL, so that `NOT (...)`
is exactly the other messages. Text goes to the search indexes (schema 6):

- `message_fields` (FTS5, trigram): addresses and names, subject, Message-ID, the envelope,
  header lines; written with each message, folded (query.fold). A needle of 3 characters or
  more is a trigram MATCH (a substring, any case); a shorter one is a scan with instr().
- `message_body` (FTS5, unicode61, diacritics folded): the text and attachment names, written
  by the writer when it is idle. A bare word matches a word's start (`"word"*`), a quoted
  phrase the words together.

A message the indexes do not hold yet (just arrived in a burst, or stored before schema 6) is
matched in Python (`PendingMatcher`, SQL function ms_match) from its raw bytes, as the indexes
would match it: the newest PENDING_WINDOW such messages at most, and `Reader.unsearched` says
how many are left out. Without FTS5 (schema.fts5_available) the same tables are ordinary ones,
scanned with the same functions.
"""

from __future__ import annotations

import collections
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import parse_headers
from mailsink.mail.tags import clean_tag
from mailsink.mail.text_index import (
    FIELD_COLUMNS,
    OWN_COLUMN,
    Body,
    body,
    fields,
    has_words,
    words,
)
from mailsink.query import (
    CHOICE,
    DATE,
    EXACT,
    FLAG,
    GLOB,
    HEADER,
    NUMBER,
    SIZE,
    TEXT,
    WORDS,
    Query,
    Term,
    fold,
)

# Messages not indexed yet that a search still covers, newest first. Their fields cost about
# 0.25 ms each to read, their text 1.5 ms (the whole MIME parse) the first time; the matcher
# keeps what it parsed, so the next search (the TUI's, a key later) costs little.
PENDING_WINDOW = 1000

FIELDS_OF: dict[str, tuple[str, ...]] = {
    "from": ("from_",),
    "to": ("to_",),
    "cc": ("cc",),
    "bcc": ("bcc",),
    "reply-to": ("reply_to",),
    "addressed": ("from_", "to_", "cc", "bcc", "reply_to"),
    "subject": ("subject",),
    "message-id": ("message_id",),
    "mailfrom": ("mail_from",),
    "rcpt": ("rcpt",),
}
SESSION_COLUMNS = {"helo": "helo", "peer": "peer", "auth": "auth_user"}
_COLUMN_INDEX = {name: at for at, name in enumerate(FIELD_COLUMNS)}
_GLOB_SPECIAL = re.compile(r"\*|\?|\[[^\]]*\]?")
_TOKEN = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Capabilities:
    """What the store can do: its schema version, and whether its search tables are FTS5."""

    search: bool  # schema 6 or later: indexes, read state, tags
    fts: bool  # message_fields and message_body are FTS5 tables (else ordinary ones)


def capabilities(conn: sqlite3.Connection, version: int, search_since: int) -> Capabilities:
    if version < search_since:
        return Capabilities(False, False)
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'message_fields'").fetchone()
    return Capabilities(True, bool(row and "VIRTUAL" in row[0].upper()))


def fts_string(text: str) -> str:
    """`text` as an FTS5 string: whatever it holds is text, never query syntax."""
    return '"' + text.replace('"', '""') + '"'


def glob_matches(name: str, pattern: str) -> bool:
    """attachment: — a file-name glob, without regard to case; without a wildcard, a part of
    the name."""
    import fnmatch  # (here: 6 ms of every CLI command's start-up otherwise)

    name, pattern = fold(name), fold(pattern)
    if not _GLOB_SPECIAL.search(pattern):
        return pattern in name
    return fnmatch.fnmatchcase(name, pattern)


def glob_tokens(pattern: str) -> list[str]:
    """Words every name matching `pattern` has the start of (for an FTS prefilter): those of
    its literal pieces that begin after a non-word character, or the pattern's first word
    when the pattern is anchored there (it has a wildcard and does not start with one)."""
    folded = fold(pattern)
    anchored = bool(_GLOB_SPECIAL.search(folded))
    tokens = []
    position = 0
    for piece in [*_GLOB_SPECIAL.finditer(folded), None]:
        end = piece.start() if piece else len(folded)
        literal = folded[position:end]
        for match in _TOKEN.finditer(literal):
            starts_piece = match.start() == 0
            if not starts_piece or (position == 0 and anchored):
                tokens.append(match.group())
        position = piece.end() if piece else end
    return tokens


def header_matches(headers: str, name: str, value: str | None) -> bool:
    """header:Name=value — a header line of that name whose value has `value` in it (in the
    `headers` column: the headers without a column of their own)."""
    start = f"\n{fold(name)}:"
    wanted = None if value is None else fold(value)
    at = headers.find(start)
    while at != -1:
        end = headers.find("\n", at + 1)
        line = headers[at + len(start) : end if end != -1 else len(headers)]
        if wanted is None or wanted in line:
            return True
        at = headers.find(start, at + 1)
    return False


# ---- messages the indexes do not hold yet


@dataclass
class _Document:
    fields: tuple[str, ...]
    raw: bytes
    _body: Body | None = field(default=None, repr=False)

    @property
    def body(self) -> Body:
        if self._body is None:
            self._body = body(self.raw)
        return self._body


def term_matches(term: Term, doc: _Document) -> bool:
    """Whether the message matches `term` (not negated), as the indexes would say."""
    if term.kind == TEXT:
        needle = fold(str(term.value))
        return any(needle in doc.fields[_COLUMN_INDEX[c]] for c in FIELDS_OF[term.prefix])
    if term.kind == WORDS:
        text = str(term.value)
        needle = fold(text)
        if any(needle in value for value in doc.fields):
            return True
        wanted, prefix = words(text), not term.phrase
        found = doc.body
        return has_words(found.text, wanted, prefix=prefix) or has_words(
            found.attachments, wanted, prefix=prefix
        )
    if term.kind == GLOB:
        names = doc.body.attachments.split("\n") if doc.body.attachments else []
        return any(glob_matches(name, str(term.value)) for name in names)
    if term.kind == HEADER:
        name, value = cast("tuple[str, str | None]", term.value)
        if (column := OWN_COLUMN.get(fold(name))) is not None:
            text = doc.fields[_COLUMN_INDEX[column]]
            return bool(text) if value is None else fold(value) in text
        return header_matches(doc.fields[_COLUMN_INDEX["headers"]], name, value)
    raise AssertionError(term.kind)


class PendingMatcher:
    """The SQL function ms_match(term number, id, envelope, raw) for the current statement's
    terms, over messages the indexes do not hold; what it parsed is kept for the next query
    (the TUI searches again at every key typed)."""

    KEPT = PENDING_WINDOW

    def __init__(self) -> None:
        self.terms: list[Term] = []
        self._documents: collections.OrderedDict[int, _Document] = collections.OrderedDict()

    def register(self, conn: sqlite3.Connection) -> None:
        conn.create_function("ms_match", 4, self._match, deterministic=True)

    def _document(self, message_id: int, envelope: str, raw: bytes | None) -> _Document:
        doc = self._documents.get(message_id)
        if doc is not None:
            self._documents.move_to_end(message_id)
            return doc
        data = bytes(raw or b"")
        envelope_ = Envelope.from_json(json.loads(envelope))
        doc = _Document(fields(parse_headers(data), envelope_, data), data)
        self._documents[message_id] = doc
        if len(self._documents) > self.KEPT:
            self._documents.popitem(last=False)
        return doc

    def _match(self, term_no: int, message_id: int, envelope: str, raw: bytes | None) -> int:
        return int(term_matches(self.terms[term_no], self._document(message_id, envelope, raw)))


def register_functions(conn: sqlite3.Connection) -> None:
    """The plain functions the compiled SQL uses."""
    conn.create_function("ms_fold", 1, lambda text: fold(text or ""), deterministic=True)
    conn.create_function(
        "ms_glob",
        2,
        lambda names, pattern: int(
            any(glob_matches(name, pattern) for name in (names or "").split("\n") if name)
        ),
        deterministic=True,
    )
    conn.create_function(
        "ms_header",
        3,
        lambda headers, name, value: int(header_matches(headers or "", name, value)),
        deterministic=True,
    )
    conn.create_function(
        "ms_words",
        3,
        lambda text, wanted, prefix: int(
            has_words(text or "", wanted.split(" ") if wanted else [], prefix=bool(prefix))
        ),
        deterministic=True,
    )


def needs_index(query: Query) -> bool:
    """Whether `query` has a term the search indexes answer (text, words, attachment names,
    headers): one that can miss a message beyond the window read while the index is behind
    (Reader.unsearched), so a face says so when that is not 0."""
    return any(
        term.kind in (WORDS, GLOB, HEADER) or (term.kind == TEXT and term.prefix in FIELDS_OF)
        for term in query.conditions
    )


# ---- the compiler


@dataclass
class Compiled:
    clauses: list[str]
    params: list[Any]
    pending: list[Term]  # ms_match's terms, by number


class _Compiler:
    def __init__(self, caps: Capabilities, cutoff: Callable[[], int]):
        self.caps = caps
        self._cutoff = cutoff  # the oldest id of the pending window (computed when needed)
        self._cut: int | None = None
        self.params: list[Any] = []
        self.pending: list[Term] = []

    def cutoff(self) -> int:
        if self._cut is None:
            self._cut = self._cutoff()
        return self._cut

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    # Sources of ids, UNIONed into `messages.id IN (...)`: a subquery SQLite drives the search by.

    def _pending(self, term: Term, *, fields_only: bool) -> str:
        """The ids of the pending window that match `term` in Python."""
        self.pending.append(term)
        number = len(self.pending) - 1
        if not self.caps.search:
            condition = "1"  # an old store: nothing is indexed
        else:
            condition = "p.indexed < 2" + (" AND p.indexed = 0" if fields_only else "")
        since = self.param(self.cutoff())
        return (
            f"SELECT p.id FROM messages AS p WHERE {condition} AND p.id >= {since}"
            f" AND ms_match({number}, p.id, p.envelope,"
            " (SELECT raw FROM message_raw WHERE message_raw.id = p.id))"
        )

    def _fields(self, columns: tuple[str, ...], needle: str) -> str:
        if self.caps.fts and len(needle) >= 3:
            target = columns[0] if len(columns) == 1 else "{" + " ".join(columns) + "}"
            filter_ = f"{target} : " if columns != FIELD_COLUMNS else ""
            match = self.param(filter_ + fts_string(needle))
            return f"SELECT rowid FROM message_fields WHERE message_fields MATCH {match}"
        tests = " OR ".join(f"instr({column}, {self.param(needle)}) > 0" for column in columns)
        return f"SELECT rowid FROM message_fields WHERE {tests}"

    def _body_words(self, text: str, phrase: bool) -> str | None:
        wanted = words(text)
        if not wanted:
            return None  # no word in it: only the fields can have it
        if self.caps.fts:
            match = fts_string(fold(text)) + ("" if phrase else "*")
            return f"SELECT rowid FROM message_body WHERE message_body MATCH {self.param(match)}"
        joined, prefix = " ".join(wanted), int(not phrase)
        return (
            f"SELECT rowid FROM message_body WHERE ms_words(body, {self.param(joined)}, {prefix})"
            f" OR ms_words(attachments, {self.param(joined)}, {prefix})"
        )

    def _glob(self, pattern: str) -> str:
        tokens = glob_tokens(pattern) if self.caps.fts else []
        if tokens:
            match = " AND ".join(f"attachments : {fts_string(t)}*" for t in tokens)
            source = f"message_body MATCH {self.param(match)} AND "
        else:
            # No word to look up: the messages with attachments, read one by one.
            source = "rowid IN (SELECT id FROM messages WHERE attachments = 1) AND "
        return (
            f"SELECT rowid FROM message_body WHERE {source}"
            f"ms_glob(attachments, {self.param(pattern)})"
        )

    def _header(self, name: str, value: str | None) -> str:
        if (column := OWN_COLUMN.get(fold(name))) is not None:
            if value is None:
                return f"SELECT rowid FROM message_fields WHERE {column} != ''"
            return self._fields((column,), fold(value))
        # (Parameters in the order they appear in the SQL.)
        start = f"\n{fold(name)}:"
        wanted = None if value is None else fold(value)
        if self.caps.fts:
            match = f"headers : {fts_string(start)}"
            if wanted is not None and len(wanted) >= 3:
                match += f" AND headers : {fts_string(wanted)}"
            source = f"message_fields MATCH {self.param(match)}"
        else:
            source = f"instr(headers, {self.param(start)}) > 0"
        check = f"ms_header(headers, {self.param(name)}, {self.param(value)})"
        return f"SELECT rowid FROM message_fields WHERE {source} AND {check}"

    @staticmethod
    def _among(sources: list[str]) -> str:
        return "messages.id IN (" + " UNION ALL ".join(sources) + ")"

    # One condition per term

    def condition(self, term: Term) -> str:
        kind, prefix, value = term.kind, term.prefix, term.value
        search = self.caps.search
        if kind == TEXT and prefix in FIELDS_OF:
            needle = fold(str(value))
            sources = [self._fields(FIELDS_OF[prefix], needle)] if search else []
            return self._among([*sources, self._pending(term, fields_only=True)])
        if kind == TEXT and prefix in SESSION_COLUMNS:
            column = SESSION_COLUMNS[prefix]
            needle = self.param(fold(str(value)))
            return (
                "messages.session_id IN (SELECT id FROM sessions"
                f" WHERE instr(ms_fold({column}), {needle}) > 0)"
            )
        if kind == WORDS:
            text = str(value)
            sources = []
            if search:
                sources.append(self._fields(FIELD_COLUMNS, fold(text)))
                if (words_source := self._body_words(text, term.phrase)) is not None:
                    sources.append(words_source)
            return self._among([*sources, self._pending(term, fields_only=False)])
        if kind == GLOB:
            sources = [self._glob(str(value))] if search else []
            return self._among([*sources, self._pending(term, fields_only=False)])
        if kind == HEADER:
            name, wanted = cast("tuple[str, str | None]", value)
            sources = [self._header(name, wanted)] if search else []
            return self._among([*sources, self._pending(term, fields_only=True)])
        if kind == EXACT:  # tag:
            if not search:
                return "0"
            tag = self.param(clean_tag(str(value)))
            return f"messages.id IN (SELECT message_id FROM message_tags WHERE tag = {tag})"
        if kind == FLAG:
            return self._flag(prefix, str(value))
        if kind == DATE:
            operator = ">=" if prefix == "after" else "<"
            return f"messages.received_at {operator} {self.param(value)}"
        if kind == SIZE:
            operator = ">" if prefix == "larger" else "<"
            return f"messages.size {operator} {self.param(value)}"
        if kind == NUMBER:
            return f"messages.session_id = {self.param(value)}"
        if kind == CHOICE and prefix == "finding":
            return finding_clause([str(value)], self.params)
        raise AssertionError(f"no SQL for {term}")

    def _flag(self, prefix: str, value: str) -> str:
        search = self.caps.search
        if value in ("read", "unread"):
            if not search:
                return "1" if value == "unread" else "0"  # no read state before schema 6
            return f"messages.seen = {1 if value == 'read' else 0}"
        if value == "tagged":
            return "messages.id IN (SELECT message_id FROM message_tags)" if search else "0"
        if value == "attachment":
            if search:
                return "messages.attachments = 1"
            return "coalesce(json_extract(messages.headers, '$.attachments'), 0) = 1"
        if value == "findings":
            return "messages.finding_count > 0"
        raise AssertionError(value)


def finding_clause(kinds: list[str], params: list[Any]) -> str:
    """Messages with a finding of one of these kinds."""
    kinds = sorted(set(kinds))
    # The kind as a JSON string somewhere in the text first (a kind is plain ASCII, which
    # JSON never escapes): most rows fail it without being parsed, which halves the
    # time of a kind no message has (140 -> 70 ms over 100 000 messages). Then the
    # parse, so that only a finding's `kind` counts, not a detail that quotes one.
    texts = " OR ".join(["instr(messages.findings, ?) > 0"] * len(kinds))
    params.extend(json.dumps(kind) for kind in kinds)
    marks = ",".join("?" * len(kinds))
    params.extend(kinds)
    return (
        f"(messages.finding_count > 0 AND ({texts}) AND EXISTS (SELECT 1 FROM"
        " json_each(messages.findings)"
        f" WHERE json_extract(json_each.value, '$.kind') IN ({marks})))"
    )


STATUS_SQL = {
    "accepted": "messages.status = 'accepted'",
    "rejected": "messages.status = 'rejected'",
    "any": "1",
    "none": "0",
}


def compile_query(
    query: Query, caps: Capabilities, cutoff: Callable[[], int], *, include_rejected: bool
) -> Compiled:
    """The WHERE clauses (ANDed) and parameters of `query`. `include_rejected` widens the
    default status (accepted) to any, as `list --all` does; `cutoff()` gives the oldest id of
    the pending window, asked only if a term needs it."""
    compiler = _Compiler(caps, cutoff)
    status = query.status
    if status == "accepted" and include_rejected:
        status = "any"
    clauses = [] if status == "any" else [STATUS_SQL[status]]
    for term in query.conditions:
        condition = compiler.condition(term)
        clauses.append(f"NOT ({condition})" if term.negated else f"({condition})")
        if term.kind == DATE and not term.negated and caps.search:
            clauses.append(_id_bound(term, compiler))
    return Compiled(clauses, compiler.params, compiler.pending)


def _id_bound(term: Term, compiler: _Compiler) -> str:
    """The ids a date term's messages have, from the received_at index: ANDed to the term
    (which it never changes: every such message is within it), it lets a newest-first list
    walk only that stretch of ids instead of all of them for a date few messages match. (By
    the index: SQLite would otherwise look for min(id) by walking the ids up from the oldest.)"""
    moment = compiler.param(term.value)
    if term.prefix == "after":
        bound, what, test = ">=", "coalesce(min(id), 9223372036854775807)", ">="
    else:
        bound, what, test = "<=", "coalesce(max(id), 0)", "<"
    return (
        f"messages.id {bound} (SELECT {what} FROM messages INDEXED BY messages_received"
        f" WHERE received_at {test} {moment})"
    )
