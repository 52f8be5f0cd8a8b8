"""The search language (mailsink/query.py) in SQL, for the Reader.

Every term becomes one condition on a `messages` row that is never NULL, so that `NOT (...)`
is exactly the other messages. Text goes to the search indexes (schema 6):

- `message_fields` (FTS5, trigram): addresses and names, subject, Message-ID, the envelope,
  header lines, folded (query.fold). A needle of 3 characters or
  more is a trigram MATCH (a substring, any case); a shorter one is a scan with instr().
- `message_body` (FTS5, unicode61, diacritics folded): the text and attachment names. Both
  are written by the writer from rows its extractor process makes. A bare word matches a
  word's start (`"word"*`), a quoted phrase the words together.

A message the indexes do not hold yet (just arrived, or stored before schema 6) is put into
an index in memory of the same two tables, with the same tokenizers (`PendingIndex`), and the
same SQL runs there: a message is found the same way whether or not the store's index holds it.
Its fields from the summary ingest stored (about 0.1 ms a message): all such messages; its text
(the MIME parse, 1-2 ms): the newest PENDING_WINDOW of them, and `Reader.unsearched(query)` says
how many a query with words or attachment: could not look into. Without FTS5
(schema.fts5_available) the same tables are ordinary ones, scanned with the same functions.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from mailsink.mail.envelope import Envelope
from mailsink.mail.tags import clean_tag
from mailsink.mail.text_index import (
    FIELD_COLUMNS,
    MAX_HEADER_SCAN,
    OWN_COLUMN,
    body,
    fields_of_summary,
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
from mailsink.store.schema import fts5_available, search_tables

# Messages not indexed yet whose text a search still covers, newest first: their text costs
# 1.5 ms each (the whole MIME parse) the first time; PendingIndex keeps it (up to PENDING_BYTES),
# so the next search (the TUI's, a key later) costs little.
PENDING_WINDOW = 1000
# ... and their fields (about 0.15 ms each: a summary and the head of the message), newest first:
# a backlog of 20 000 (a migrated store) would otherwise cost 3 s and 300 MB at every search.
PENDING_FIELDS = 5000
PENDING_BYTES = 64 * 1024 * 1024  # of text kept in memory (about: characters)

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


class PendingIndex:
    """The search tables in memory (schema.search_tables: the same tokenizers) for the messages
    the store's indexes lack: their fields all, their text the newest PENDING_WINDOW. The
    compiler runs a term's SQL here too (`matching`), so both paths agree by construction.
    What it holds stays for the next query; a message indexed since (or deleted) leaves it."""

    def __init__(self) -> None:
        fts = fts5_available()
        self.caps = Capabilities(True, fts)
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.isolation_level = None
        for statement in search_tables(fts):
            self.conn.execute(statement)
        self.conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, attachments INTEGER)")
        register_functions(self.conn)
        self.waiting = 0  # messages the store's indexes lack (at the last sync)
        self._fields: set[int] = set()
        self._bodies: dict[int, int] = {}  # id -> characters kept, oldest kept first
        self._size = 0
        # Texts of the window let go to stay within PENDING_BYTES: not read again while they
        # wait for the index (each costs a parse), and counted as not searched.
        self._let_go: set[int] = set()
        self.skipped = 0  # messages of the window whose text was not searched (at the last sync)

    def close(self) -> None:
        self.conn.close()

    def sync(self, store: sqlite3.Connection, *, search: bool, with_text: bool) -> None:
        """Make it hold what the store's indexes lack now (`search`: the store has them)."""
        where = " WHERE indexed < 2" if search else ""
        ids = [row[0] for row in store.execute(f"SELECT id FROM messages{where} ORDER BY id DESC")]
        self.waiting = len(ids)
        current = set(ids)
        mem = self.conn
        mem.execute("BEGIN")
        try:
            gone = [i for i in self._fields if i not in current]
            gone += [i for i in self._bodies if i not in current and i not in self._fields]
            self._drop(gone)
            self._let_go &= current
            new = [i for i in ids[:PENDING_FIELDS] if i not in self._fields]
            for start in range(0, len(new), 500):
                self._add_fields(store, new[start : start + 500])
            if with_text:
                window = ids[:PENDING_WINDOW]
                for message_id in window:
                    if message_id not in self._bodies and message_id not in self._let_go:
                        self._add_body(store, message_id)
                self._bound(set(window))
                self.skipped = sum(1 for i in window if i not in self._bodies)
            mem.execute("COMMIT")
        except BaseException:
            mem.execute("ROLLBACK")
            self._fields.clear()
            self._bodies.clear()
            self._size = 0
            for table in ("message_fields", "message_body", "messages"):
                mem.execute(f"DELETE FROM {table}")
            raise

    def _drop(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for table in ("message_fields", "message_body"):
                self.conn.execute(f"DELETE FROM {table} WHERE rowid IN ({marks})", chunk)
            self.conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
        for message_id in ids:
            self._fields.discard(message_id)
            self._size -= self._bodies.pop(message_id, 0)

    def _add_fields(self, store: sqlite3.Connection, ids: list[int]) -> None:
        marks = ",".join("?" * len(ids))
        rows = store.execute(
            f"SELECT id, envelope, headers FROM messages WHERE id IN ({marks})", ids
        ).fetchall()
        columns = ", ".join(FIELD_COLUMNS)
        insert = (
            f"INSERT INTO message_fields (rowid, {columns}) VALUES (?{', ?' * len(FIELD_COLUMNS)})"
        )
        for message_id, envelope, headers in rows:
            head = _read_raw(store, message_id, MAX_HEADER_SCAN + 4)
            found = fields_of_summary(
                json.loads(headers), Envelope.from_json(json.loads(envelope)), head
            )
            self.conn.execute(insert, (message_id, *found))
            self._fields.add(message_id)

    def _add_body(self, store: sqlite3.Connection, message_id: int) -> None:
        raw = _read_raw(store, message_id, None)
        text = body(raw)
        self.conn.execute(
            "INSERT INTO message_body (rowid, body, attachments) VALUES (?, ?, ?)",
            (message_id, text.text, text.attachments),
        )
        self.conn.execute(
            "INSERT OR REPLACE INTO messages (id, attachments) VALUES (?, ?)",
            (message_id, int(text.has_attachments)),
        )
        size = len(text.text) + len(text.attachments)
        self._bodies[message_id] = size
        self._size += size

    def _bound(self, window: set[int]) -> None:
        """At most PENDING_BYTES of text: what is outside the window goes first."""
        if self._size <= PENDING_BYTES:
            return
        for message_id in [i for i in self._bodies if i not in window] + sorted(self._bodies):
            if self._size <= PENDING_BYTES:
                break
            if message_id in self._bodies:
                self._size -= self._bodies.pop(message_id)
                self.conn.execute("DELETE FROM message_body WHERE rowid = ?", (message_id,))
                if message_id in window:
                    self._let_go.add(message_id)

    def matching(self, term: Term) -> list[int]:
        """The ids of the messages held here that match `term` (not negated)."""
        compiler = _Compiler(self.caps)
        sources = compiler.sources(term)
        if not sources:
            return []
        sql = " UNION ".join(sources)
        return [row[0] for row in self.conn.execute(sql, compiler.params)]


def _read_raw(store: sqlite3.Connection, message_id: int, size: int | None) -> bytes:
    """The first `size` bytes of a message (None: all), without reading the rest."""
    try:
        with store.blobopen("message_raw", "raw", message_id, readonly=True) as blob:
            return blob.read(-1 if size is None else size)
    except sqlite3.OperationalError:  # (deleted since)
        return b""


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
    """Whether `query` has a term that looks into the text or attachment names: one that can
    miss a message beyond the PENDING_WINDOW read while the index is behind
    (Reader.unsearched), so a face says so when that is not 0."""
    return any(
        (term.kind == WORDS and words(str(term.value))) or term.kind == GLOB
        for term in query.conditions
    )


def needs_fields(query: Query) -> bool:
    """Whether `query` has a term that looks into the fields index (addresses, subject,
    envelope, headers, and the field half of a bare word): one that can miss a message beyond
    the PENDING_FIELDS read while the index is behind."""
    return any(
        term.kind == WORDS or term.prefix in FIELDS_OF or term.kind == HEADER
        for term in query.conditions
    )


# ---- the compiler


@dataclass
class Compiled:
    clauses: list[str]
    params: list[Any]


class _Compiler:
    def __init__(self, caps: Capabilities, pending: Callable[[Term], list[int]] | None = None):
        self.caps = caps
        self._pending_ids = pending  # the ids of messages the store's index lacks that match
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    # Sources of ids, UNIONed into `messages.id IN (...)`: a subquery SQLite drives the search by.

    def _pending(self, term: Term) -> str | None:
        """The messages the store's indexes lack that match `term` (PendingIndex)."""
        if self._pending_ids is None:
            return None
        ids = self._pending_ids(term)
        if not ids:
            return None
        return f"SELECT value FROM json_each({self.param(json.dumps(ids))})"

    def sources(self, term: Term) -> list[str]:
        """The searches of the indexes that give the messages matching a text term."""
        kind, prefix, value = term.kind, term.prefix, term.value
        if kind == TEXT:
            return [self._fields(FIELDS_OF[prefix], fold(str(value)))]
        if kind == WORDS:
            text = str(value)
            found = [self._fields(FIELD_COLUMNS, fold(text))]
            if (words_source := self._body_words(text, term.phrase)) is not None:
                found.append(words_source)
            return found
        if kind == GLOB:
            return [self._glob(str(value))]
        if kind == HEADER:
            name, wanted = cast("tuple[str, str | None]", value)
            return [self._header(name, wanted)]
        raise AssertionError(term.kind)

    def _text(self, term: Term) -> str:
        found = self.sources(term) if self.caps.search else []
        if (pending := self._pending(term)) is not None:
            found.append(pending)
        return self._among(found) if found else "0"

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
        if (kind == TEXT and prefix in FIELDS_OF) or kind in (WORDS, GLOB, HEADER):
            return self._text(term)
        if kind == TEXT and prefix in SESSION_COLUMNS:
            column = SESSION_COLUMNS[prefix]
            needle = self.param(fold(str(value)))
            return (
                "messages.session_id IN (SELECT id FROM sessions"
                f" WHERE instr(ms_fold({column}), {needle}) > 0)"
            )
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
    query: Query,
    caps: Capabilities,
    pending: Callable[[Term], list[int]] | None,
    *,
    include_rejected: bool,
) -> Compiled:
    """The WHERE clauses (ANDed) and parameters of `query`. `include_rejected` widens the
    default status (accepted) to any, as `list --all` does; `pending(term)` gives the ids of
    the messages the store's indexes lack that match a text term (PendingIndex.matching)."""
    compiler = _Compiler(caps, pending)
    status = query.status
    if status == "accepted" and include_rejected:
        status = "any"
    clauses = [] if status == "any" else [STATUS_SQL[status]]
    for term in query.conditions:
        condition = compiler.condition(term)
        clauses.append(f"NOT ({condition})" if term.negated else f"({condition})")
        if term.kind == DATE and not term.negated and caps.search:
            clauses.append(_id_bound(term, compiler))
    return Compiled(clauses, compiler.params)


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
