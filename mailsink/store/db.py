"""SQLite store: schema and migrations, and the single writer thread with group commit.

One thread owns the write connection. Callers on the event loop hand it operations; it runs every
operation that is waiting in one transaction, commits once (WAL, synchronous=FULL), and only then
resolves the callers' futures. So a DATA reply of 250 is sent after its message is on disk, and a
burst of messages costs one fsync, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from mailsink.mail.envelope import Envelope, findings
from mailsink.mail.parse import parse_headers

log = logging.getLogger("mailsink.store")

SCHEMA_VERSION = 3
MEMORY = ":memory:"

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at INTEGER NOT NULL,          -- ms since the epoch, UTC
        ended_at INTEGER,
        peer TEXT NOT NULL,
        helo TEXT,
        tls INTEGER NOT NULL DEFAULT 0,
        auth_user TEXT,
        end_reason TEXT,                      -- NULL while live
        message_count INTEGER NOT NULL DEFAULT 0,
        last_reply TEXT,
        faults INTEGER NOT NULL DEFAULT 0     -- fault rules that fired in the session
    );
    -- A session's transcript, written in chunks: the events gathered between two writes.
    -- One row per chunk rather than per line: a message's ~20 lines cost one insert.
    CREATE TABLE transcript_chunks (
        session_id INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,           -- sequence number of the chunk's first event
        events TEXT NOT NULL,                 -- JSON [[at ms, direction, text], ...]; direction:
                                              -- C client line, S server line, D data, I note
        PRIMARY KEY (session_id, first_seq)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        status TEXT NOT NULL,                 -- accepted | rejected
        reply TEXT,
        size INTEGER NOT NULL,
        envelope TEXT NOT NULL,               -- JSON, the Envelope
        headers TEXT NOT NULL,                -- JSON, decoded summary
        findings TEXT NOT NULL,               -- JSON list
        finding_count INTEGER NOT NULL
    );
    CREATE INDEX messages_session ON messages (session_id);
    -- Narrow on purpose: a substring search has to read every row, and reads only these.
    CREATE TABLE message_search (
        id INTEGER PRIMARY KEY,               -- the message's id
        text TEXT NOT NULL                    -- lower-cased addresses and subject
    );
    CREATE TABLE message_raw (
        id INTEGER PRIMARY KEY,
        raw BLOB NOT NULL
    );
    """,
    2: """
    -- The TUI's "findings only" list reads its ids from here, not from the wide messages rows.
    CREATE INDEX messages_findings ON messages (finding_count) WHERE finding_count > 0;
    """,
    3: """
    -- Counts deletions other than retention's (which only ever removes the oldest), so that a
    -- view of the store knows when messages vanished from the middle of its list.
    CREATE TABLE store_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        deletions INTEGER NOT NULL
    );
    INSERT INTO store_state (id, deletions) VALUES (1, 0);
    """,
}


class StoreError(Exception):
    """A store that cannot be opened or used, phrased for the user."""


def default_path() -> Path:
    return platformdirs.user_data_path("mailsink") / "mailsink.db"


def resolve_path(path: str | None) -> str:
    """'' or None -> the platform default; '~' expanded; ':memory:' stays as it is."""
    if not path:
        return str(default_path())
    return path if path == MEMORY else str(Path(path).expanduser())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def connect(path: str, *, must_exist: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every mailsink connection uses."""
    if must_exist and (path == MEMORY or not os.path.exists(path)):
        raise StoreError(f"no store at {path} (start `mailsink serve` or pass --db)")
    conn = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
    conn.isolation_level = None  # transactions are explicit
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.DatabaseError as error:
        conn.close()
        raise StoreError(f"{path} is not a mailsink store: {error}") from None
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION; refuse a store written by a newer mailsink."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {version}, newer than this mailsink "
            f"understands ({SCHEMA_VERSION}); upgrade mailsink"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        script = (
            f"BEGIN IMMEDIATE;\n{_MIGRATIONS[target]};\nPRAGMA user_version = {target};\nCOMMIT;"
        )
        try:
            conn.executescript(script)  # all of a step, or (rolled back below) none of it
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def check_version(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        raise StoreError("the store is empty or not a mailsink store")
    if version > SCHEMA_VERSION:
        raise StoreError(f"the store has schema version {version}; upgrade mailsink to read it")


# ---- operations run by the writer thread -------------------------------------------------------


# (sequence number, ms since the epoch, direction, text)
SessionEvent = tuple[int, int, str, str]


@dataclass
class IncomingMessage:
    session_id: int
    envelope: Envelope
    raw: bytes
    received_at: int
    status: str = "accepted"
    reply: str | None = None
    check_addresses: bool = True  # [validation] addresses != "off"


# The list's attachment badge, without parsing the MIME tree at ingest: a part header naming a
# file or an attachment. The first MiBs are enough: part headers come before their content.
# Two searches with literal prefixes on lowered bytes: an alternation (or IGNORECASE) makes re
# test every position, 100 us for 5 KB against 5 us.
_FILENAME = re.compile(rb"filename[*0-9]*=")  # RFC 2231: filename*0*=
_DISPOSITION = re.compile(rb"disposition:[ \t]*attachment")
ATTACHMENT_SCAN = 4 * 1024 * 1024


def has_attachment_hint(raw: bytes) -> bool:
    head = raw[:ATTACHMENT_SCAN].lower()
    return _FILENAME.search(head) is not None or _DISPOSITION.search(head) is not None


def _search_text(envelope: Envelope, headers: dict[str, Any]) -> str:
    parts = [envelope.mail_from, *envelope.rcpt_to]
    for key in ("from", "to", "cc", "reply_to"):
        parts += headers[key]
    parts.append(headers["subject"] or "")
    return "\n".join(parts).lower()


def _insert_events(conn: sqlite3.Connection, session_id: int, events: list[SessionEvent]) -> None:
    if events:
        conn.execute(
            "INSERT OR REPLACE INTO transcript_chunks (session_id, first_seq, events)"
            " VALUES (?, ?, ?)",
            (session_id, events[0][0], json.dumps([event[1:] for event in events])),
        )


@dataclass(frozen=True)
class Stored:
    id: int
    subject: str | None
    finding_kinds: list[str]


def insert_message(conn: sqlite3.Connection, message: IncomingMessage) -> Stored:
    """Parse the headers, derive findings and store the message."""
    summary = parse_headers(message.raw)
    headers = summary.as_json()
    # Stored beside the summary; the reader takes it out again (MessageRecord.has_attachments).
    headers["attachments"] = has_attachment_hint(message.raw)
    found = [f.as_json() for f in findings(message.envelope, summary, message.check_addresses)]
    cursor = conn.execute(
        "INSERT INTO messages (session_id, received_at, status, reply, size, envelope, headers,"
        " findings, finding_count)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.session_id,
            message.received_at,
            message.status,
            message.reply,
            len(message.raw),
            json.dumps(message.envelope.as_json()),
            json.dumps(headers),
            json.dumps(found),
            len(found),
        ),
    )
    message_id = cursor.lastrowid
    assert message_id is not None
    conn.execute("INSERT INTO message_raw (id, raw) VALUES (?, ?)", (message_id, message.raw))
    conn.execute(
        "INSERT INTO message_search (id, text) VALUES (?, ?)",
        (message_id, _search_text(message.envelope, headers)),
    )
    if message.status == "accepted":
        conn.execute(
            "UPDATE sessions SET message_count = message_count + 1 WHERE id = ?",
            (message.session_id,),
        )
    return Stored(message_id, headers["subject"], [f["kind"] for f in found])


def insert_session(conn: sqlite3.Connection, session_id: int, started_at: int, peer: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO sessions (id, started_at, peer) VALUES (?, ?, ?)",
        (session_id, started_at, peer),
    )


_SESSION_FIELDS = frozenset(
    {"helo", "tls", "auth_user", "end_reason", "ended_at", "last_reply", "faults"}
)


def update_session(
    conn: sqlite3.Connection,
    session_id: int,
    events: list[SessionEvent],
    started_at: int,
    peer: str,
    **fields: Any,
) -> None:
    """Append transcript events and set session columns (only those named in _SESSION_FIELDS).

    The row is created again if `mailsink clear` or pruning removed it while the session lived."""
    unknown = set(fields) - _SESSION_FIELDS
    if unknown:
        raise ValueError(f"not session fields: {sorted(unknown)}")
    _insert_events(conn, session_id, events)
    if not fields:
        insert_session(conn, session_id, started_at, peer)
        return
    assignments = ", ".join(f"{name} = ?" for name in fields)
    update = f"UPDATE sessions SET {assignments} WHERE id = ?"
    if conn.execute(update, (*fields.values(), session_id)).rowcount == 0:
        insert_session(conn, session_id, started_at, peer)
        conn.execute(update, (*fields.values(), session_id))


Operation = Callable[[sqlite3.Connection], Any]


class Writer:
    """The one thread that writes. Operations queued together commit together."""

    MAX_BATCH = 512

    def __init__(self, conn: sqlite3.Connection, max_messages: int):
        self._conn = conn
        self._queue: queue.SimpleQueue[tuple[Operation, asyncio.Future[Any] | None] | None] = (
            queue.SimpleQueue()
        )
        self.max_messages = max_messages
        self.commits = 0  # transactions committed: fewer than operations when batching works
        self._messages = _Retention(
            conn, "messages", [("message_raw", "id"), ("message_search", "id")]
        )
        self._sessions = _Retention(
            conn, "sessions", [("transcript_chunks", "session_id")], "end_reason IS NOT NULL"
        )
        self._thread = threading.Thread(target=self._run, name="mailsink-writer", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation, future: asyncio.Future[Any] | None = None) -> None:
        if not self._thread.is_alive():
            raise StoreError("the store is closed")
        self._queue.put((operation, future))

    def close(self) -> None:
        """Finish everything queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self.MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stopping = True
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any] | None]]) -> None:
        results: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]] = []
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for operation, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcome = operation(conn)
                    conn.execute("RELEASE op")
                    results.append((future, outcome, None))
                except Exception as error:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    log.exception("store operation failed")
                    results.append((future, None, error))
            self._prune(conn)
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as error:
            log.exception("store commit failed")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            results = [(future, None, error) for _, future in batch]
        _resolve(results)

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Keep the newest max_messages messages, and as many sessions."""
        self._messages.prune(conn, self.max_messages)
        self._sessions.prune(conn, self.max_messages)


class _Retention:
    """Prunes one table to a cap without counting it on every commit.

    Ids only grow, so the rows added since the last exact count are at most the id range since then;
    an exact count is taken only when that estimate passes the cap (plus 1% slack, so that a full
    store prunes in steps rather than on every commit).
    """

    # Rows deleted per commit at most: a big cut (max_messages lowered by a reload) is spread
    # over several commits instead of holding up one batch of messages for a second.
    STEP = 1000

    def __init__(
        self,
        conn: sqlite3.Connection,
        table: str,
        children: list[tuple[str, str]],
        removable: str = "1",
    ):
        self.table = table
        self.children = children  # (table, id column) deleted along with the row
        self.removable = removable  # SQL condition: rows that may go (live sessions may not)
        self.known_count, self.known_max_id = conn.execute(
            f"SELECT count(*), coalesce(max(id), 0) FROM {table}"
        ).fetchone()

    def prune(self, conn: sqlite3.Connection, limit: int) -> None:
        max_id = conn.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}").fetchone()[0]
        if self.known_count + (max_id - self.known_max_id) <= limit + limit // 100:
            return
        count = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
        excess = min(count - limit, self.STEP)
        row = None
        if excess > 0:
            row = conn.execute(
                f"SELECT id FROM {self.table} WHERE {self.removable} ORDER BY id LIMIT 1 OFFSET ?",
                (excess - 1,),
            ).fetchone()
        if row is not None:
            kept = f"SELECT id FROM {self.table} WHERE id <= ? AND NOT ({self.removable})"
            for child, column in self.children:
                conn.execute(
                    f"DELETE FROM {child} WHERE {column} <= ? AND {column} NOT IN ({kept})",
                    (row[0], row[0]),
                )
            deleted = conn.execute(
                f"DELETE FROM {self.table} WHERE id <= ? AND {self.removable}", (row[0],)
            ).rowcount
            count -= deleted
        self.known_count, self.known_max_id = count, max_id


def _resolve(results: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    for future, outcome, error in results:
        if future is not None:
            by_loop.setdefault(future.get_loop(), []).append((future, outcome, error))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, outcome, error in items:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)


class StoreLocked(StoreError):
    pass


class Store:
    """The write side of a store: open (migrating), hand the writer operations, close."""

    def __init__(self, path: str | None, max_messages: int = 50_000):
        self.path = resolve_path(path)
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if self.path == MEMORY:
            # "Keep nothing": a file in a temporary directory, removed on close. An SQLite
            # in-memory database would lock readers out of the writer's tables (shared cache).
            self._temporary = tempfile.TemporaryDirectory(prefix="mailsink-")
            self.path = str(Path(self._temporary.name) / "mailsink.db")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock(self.path)
        conn = None
        try:
            conn = connect(self.path)
            # Readers never block the writer, and a commit is one append to the log.
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn)
        except (sqlite3.DatabaseError, StoreError) as error:
            if conn is not None:
                conn.close()
            self._lock_file.close()
            if self._temporary is not None:
                self._temporary.cleanup()
            if isinstance(error, StoreError):
                raise
            raise StoreError(f"{self.path} is not a mailsink store: {error}") from None
        self._conn = conn
        row = self._conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'sessions'"
        ).fetchone()
        self._next_session_id = (row[0] if row else 0) + 1
        self._writer = Writer(self._conn, max_messages)

    @property
    def max_messages(self) -> int:
        return self._writer.max_messages

    @max_messages.setter
    def max_messages(self, value: int) -> None:
        self._writer.max_messages = value  # read by the writer at its next commit

    @property
    def commits(self) -> int:
        return self._writer.commits

    @property
    def directory(self) -> Path:
        """Where files that belong with the store go (the generated TLS certificate)."""
        if self._temporary is not None:
            return default_path().parent
        return Path(self.path).resolve().parent

    def new_session_id(self) -> int:
        session_id = self._next_session_id
        self._next_session_id += 1
        return session_id

    def submit(self, operation: Operation) -> None:
        """Queue a write without waiting for it."""
        self._writer.submit(operation)

    async def run(self, operation: Operation) -> Any:
        """Queue a write and wait until it has committed; returns what the operation returned."""
        future = asyncio.get_running_loop().create_future()
        self._writer.submit(operation, future)
        return await future

    def close(self) -> None:
        self._writer.close()
        self._conn.close()
        self._lock_file.close()
        if self._temporary is not None:
            self._temporary.cleanup()


def _lock(path: str):
    """One server per store: session ids are handed out in memory."""
    lock_file = open(f"{path}.lock", "w")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        raise StoreLocked(f"another mailsink server is using {path}") from None
    return lock_file
