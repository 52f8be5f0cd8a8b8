"""SQLite store: schema and migrations, the operations the writer runs, and the Store that
hands them to it (the writer itself, a process with group commit, is in writer.py)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import pickle
import re
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from mailsink.clock import now_ms
from mailsink.errors import StoreError, StoreFileError, StoreLocked, WriterLost  # noqa: F401
from mailsink.mail.envelope import Envelope
from mailsink.mail.findings import findings
from mailsink.mail.parse import parse_headers

log = logging.getLogger("mailsink.store")

SCHEMA_VERSION = 4
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
    4: """
    -- How many messages and sessions the store keeps although max_messages is lower: the size
    -- it had when a server opened it over its limit (0: none). See writer._Retention.
    ALTER TABLE store_state ADD COLUMN kept_messages INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE store_state ADD COLUMN kept_sessions INTEGER NOT NULL DEFAULT 0;
    -- A live session's last command (DATA while a message arrives), written with its progress
    -- so that a view of the store from another process can show what the session is doing.
    ALTER TABLE sessions ADD COLUMN state TEXT;
    -- The server writing to the store (one at a time, see _lock): where it listens, for a view
    -- from another process. Whether it still runs is for the lock to tell, not this row.
    CREATE TABLE server (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        addresses TEXT NOT NULL,              -- JSON [[label, host, port], ...]
        max_messages INTEGER NOT NULL
    );
    """,
}


def _directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _no_room_for_shm(path: str) -> str | None:
    """Why SQLite cannot open the store in WAL mode, if its directory is the reason."""
    if not os.access(_directory(path), os.W_OK) and not os.path.exists(f"{path}-shm"):
        # In WAL mode even a reader needs the -shm file beside the store.
        name = os.path.basename(path)
        return f"its directory is read-only and SQLite needs to create {name}-shm there"
    return None


def _why_not_opened(path: str, error: sqlite3.Error) -> str:
    if os.path.isdir(path):
        return "it is a directory"
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return "permission denied"
    return _no_room_for_shm(path) or str(error)


def _why_read_only(path: str, error: sqlite3.Error) -> str:
    if shm := _no_room_for_shm(path):
        return f"cannot use {path}: {shm}"
    if not os.access(path, os.W_OK):
        return f"cannot change {path}: the file is read-only"
    if not os.access(_directory(path), os.W_OK):
        return f"cannot change {path}: its directory is read-only"
    return f"cannot change {path}: {error}"


# SQLite's primary result codes that are about the store's file rather than the SQL run on it.
_FILE_CODES = frozenset(
    {
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
    }
)


def about_the_file(error: sqlite3.Error) -> bool:
    """Whether `error` says something about the store's file (damaged, read-only, another
    program's, missing tables), not about mailsink's own SQL (a bug, to be shown as one)."""
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    return code in _FILE_CODES or str(error).startswith(("no such table", "no such column"))


def store_error(error: sqlite3.Error, path: str) -> StoreFileError:
    """The user's words for an SQLite error on the store at `path`."""
    if isinstance(error, StoreFileError):
        return error  # already in them
    text = str(error)
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_CORRUPT:
        why = (
            f"{path} is damaged ({text}); move it away to start a new store"
            f" (`sqlite3 {path} .recover | sqlite3 saved.db` may save what is in it)"
        )
    elif code == sqlite3.SQLITE_NOTADB:
        why = f"{path} is not a mailsink store: {text}"
    elif text.startswith(("no such table", "no such column")):
        why = f"{path} is not a mailsink store, or is damaged: {text}"
    elif code == sqlite3.SQLITE_READONLY:
        why = _why_read_only(path, error)
    elif code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        why = f"cannot open {path}: {_why_not_opened(path, error)}"
    elif code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        why = f"{path} is locked by another program ({text}); try again"
    elif code == sqlite3.SQLITE_FULL:
        why = f"cannot write to {path}: the disk is full"
    elif code == sqlite3.SQLITE_IOERR:
        why = f"cannot read or write {path}: {text}"
    else:
        why = f"{path}: {text}"
    return StoreFileError(why)


def default_path() -> Path:
    return platformdirs.user_data_path("mailsink") / "mailsink.db"


def resolve_path(path: str | None) -> str:
    """'' or None -> the platform default; '~' expanded; ':memory:' stays as it is."""
    if not path:
        return str(default_path())
    return path if path == MEMORY else str(Path(path).expanduser())


def connect(path: str, *, must_exist: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every mailsink connection uses."""
    if must_exist and (path == MEMORY or not os.path.exists(path)):
        raise StoreError(f"no store at {path} (start `mailsink serve` or pass --db)")
    try:
        mode = stat.S_IFREG if path == MEMORY else os.stat(path).st_mode
    except OSError:  # not there yet (a new store), or out of reach: SQLite's error says which
        mode = stat.S_IFREG
    # A named pipe would block SQLite's first read for ever; a device is no store either.
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (a directory: SQLite's error says so)
        raise StoreError(f"{path} is not a store: not a regular file")
    try:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as error:
        raise store_error(error, path) from None
    conn.isolation_level = None  # transactions are explicit
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.Error as error:
        conn.close()
        raise store_error(error, path) from None
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


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _expected_tables(version: int) -> set[str]:
    """The tables a store of schema `version` has (the migrations say which)."""
    return {
        name
        for step in range(1, min(version, SCHEMA_VERSION) + 1)
        for name in re.findall(r"CREATE TABLE (\w+)", _MIGRATIONS[step])
    }


def _missing_tables(conn: sqlite3.Connection, version: int) -> list[str]:
    return sorted(_expected_tables(version) - _tables(conn))


def _not_mailsink(path: str, version: int, missing: list[str]) -> StoreError:
    if set(missing) == _expected_tables(version):
        lacking = "none of mailsink's tables"
    else:
        lacking = f"no {', '.join(missing)} table{'s' if len(missing) > 1 else ''}"
    return StoreError(
        f"{path} is not a mailsink store: an SQLite database with schema version {version}"
        f" but {lacking}"
    )


def _probe(conn: sqlite3.Connection, version: int) -> None:
    """Read a few pages of each table: a damaged table root is refused on opening the store,
    not in the middle of a command (or at a server's first message)."""
    for table in sorted(_expected_tables(version) & _tables(conn)):
        conn.execute(f"SELECT 1 FROM {table} NOT INDEXED LIMIT 1").fetchall()


def check_version(conn: sqlite3.Connection, path: str = "the store") -> int:
    """Refuse what this mailsink cannot read: another program's database, a newer schema.
    Returns the schema version (an older one is read as it is: only a server migrates)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        if _tables(conn):
            raise StoreError(f"{path} is not a mailsink store: another program's SQLite database")
        raise StoreError(f"{path} is empty: no mailsink server has written to it yet")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}; upgrade mailsink to read it")
    missing = _missing_tables(conn, version)
    # Only some missing: a damaged store, whose other tables may still be worth reading.
    if missing and set(missing) == _expected_tables(version):
        raise _not_mailsink(path, version, missing)
    _probe(conn, version)
    return version


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

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # On its way to the writer process the raw message travels beside the pickle (out of
        # band) rather than copied into it: one 25 MB copy fewer for the biggest message.
        raw = pickle.PickleBuffer(self.raw) if protocol >= 5 else self.raw
        fields = (self.session_id, self.envelope, raw, self.received_at, self.status)
        return IncomingMessage, (*fields, self.reply, self.check_addresses)


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
    _insert_raw(conn, message_id, message.raw)
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


def committed_message(path: str, message: IncomingMessage, after_id: int) -> Stored | None:
    """`message` if it was committed, as the message of its session after message `after_id`.

    A session has at most one message on its way to the store, and ids only grow, so after the
    writer died with that message unanswered this finds it exactly when it did commit (its time
    of arrival and size must match too). Reads with a connection of its own: it works whether or
    not a new writer could be started."""
    conn = connect(path)
    try:
        row = conn.execute(
            "SELECT id, headers, findings FROM messages WHERE session_id = ? AND id > ?"
            " AND received_at = ? AND size = ? ORDER BY id LIMIT 1",
            (message.session_id, after_id, message.received_at, len(message.raw)),
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return Stored(row[0], json.loads(row[1])["subject"], [f["kind"] for f in json.loads(row[2])])


def store_message(
    conn: sqlite3.Connection,
    session_id: int,
    events: list[SessionEvent],
    started_at: int,
    peer: str,
    message: IncomingMessage,
) -> Stored:
    """A message with its session's transcript so far: what the server commits before 250."""
    envelope = message.envelope
    update_session(
        conn,
        session_id,
        events,
        started_at,
        peer,
        helo=envelope.helo,
        tls=envelope.tls,
        auth_user=envelope.auth_user,
    )
    return insert_message(conn, message)


# Above this, the raw message is written into its row in pieces: bound as a parameter, SQLite
# would first take a copy of all of it (one more 25 MB in memory for the biggest message).
RAW_IN_PIECES = 1024 * 1024


def _insert_raw(conn: sqlite3.Connection, message_id: int, raw: bytes) -> None:
    if len(raw) <= RAW_IN_PIECES:
        conn.execute("INSERT INTO message_raw (id, raw) VALUES (?, ?)", (message_id, raw))
        return
    conn.execute(
        "INSERT INTO message_raw (id, raw) VALUES (?, zeroblob(?))", (message_id, len(raw))
    )
    view = memoryview(raw)
    with conn.blobopen("message_raw", "raw", message_id) as blob:
        for start in range(0, len(raw), RAW_IN_PIECES):
            blob.write(view[start : start + RAW_IN_PIECES])


def insert_session(conn: sqlite3.Connection, session_id: int, started_at: int, peer: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO sessions (id, started_at, peer) VALUES (?, ?, ?)",
        (session_id, started_at, peer),
    )


_SESSION_FIELDS = frozenset(
    {"helo", "tls", "auth_user", "end_reason", "ended_at", "last_reply", "faults", "state"}
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
    ending = "end_reason" in fields
    if ending:
        fields = {"state": None, **fields}  # an ended session is in no state
    assignments = ", ".join(f"{name} = ?" for name in fields)
    # A write sent again after a writer died can come after the session's end: it must not
    # put older values over what the end wrote.
    where = "id = ?" if ending else "id = ? AND end_reason IS NULL"
    update = f"UPDATE sessions SET {assignments} WHERE {where}"
    if conn.execute(update, (*fields.values(), session_id)).rowcount == 0:
        if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
            return  # ended already
        insert_session(conn, session_id, started_at, peer)
        conn.execute(update, (*fields.values(), session_id))


def record_server(
    conn: sqlite3.Connection,
    pid: int,
    started_at: int,
    addresses: list[tuple[str, str, int]],
    max_messages: int,
) -> None:
    """Who serves the store: (label, host, port) of each listener, and its max_messages."""
    conn.execute(
        "INSERT OR REPLACE INTO server (id, pid, started_at, addresses, max_messages)"
        " VALUES (1, ?, ?, ?, ?)",
        (pid, started_at, json.dumps(addresses), max_messages),
    )


def server_running(path: str) -> bool | None:
    """Whether a server holds the lock beside the store at `path` (None: cannot tell).

    Asks for a shared lock without waiting and gives it back at once: a running server's
    exclusive lock refuses it, and a server starting in that instant tries again (_lock)."""
    try:
        lock_file = open(f"{os.path.realpath(path)}.lock", "rb")  # noqa: SIM115
    except FileNotFoundError:
        return False  # no server ever used this store
    except OSError:
        return None
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        return False


# What the writer runs: a module-level function taking the write connection, usually a
# functools.partial of one, so that it pickles on its way to the writer process.
Operation = Callable[[sqlite3.Connection], Any]


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
        # The real path: two names for one file (a symlink) are one store.
        self._lock_file = _lock(os.path.realpath(self.path))  # (creating its directory first)
        try:
            self._next_session_id, kept = _prepare(self.path, max_messages)
            if any(kept):
                log.warning("%s", _over_limit(self.path, *kept, max_messages))
            # Imported here: the writer module imports this one.
            from mailsink.store.writer import WriterProcess

            self._writer = WriterProcess(self.path, max_messages)
        except BaseException:
            self._lock_file.close()
            if self._temporary is not None:
                self._temporary.cleanup()
            raise

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
    def writer_pid(self) -> int:
        """The writer process's id (it changes if the process had to be replaced)."""
        return self._writer.pid

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

    def submit(self, operation: Operation, future: asyncio.Future[Any] | None = None) -> None:
        """Queue a write without waiting for it: it shares the next lazy commit. `future`, if
        given, learns the outcome (WriterLost if the writer died before answering)."""
        self._writer.submit(operation, future, urgent=False)

    async def run(self, operation: Operation) -> Any:
        """Queue a write and wait until it has committed; returns what the operation returned."""
        future = asyncio.get_running_loop().create_future()
        self._writer.submit(operation, future)
        return await future

    def close(self) -> None:
        self._writer.close()
        self._lock_file.close()
        if self._temporary is not None:
            self._temporary.cleanup()


def over_limit(count: int, limit: int) -> bool:
    """More rows than max_messages allows, beyond the 1 % that retention lets in before it
    counts again (writer._Retention): what a full store holds between two prunes is not."""
    return count > limit + limit // 100


def kept_size(conn: sqlite3.Connection, table: str, count: int, limit: int) -> tuple[int, int]:
    """How many rows of `table` ("messages" or "sessions", holding `count`) a server opening
    the store keeps although max_messages is `limit`: the size it had when first opened over
    its limit (recorded, so that it does not creep up by the 1 % between prunes at each
    restart), never more than it holds now; 0 when it is not over. Also returns what is
    recorded."""
    (recorded,) = conn.execute(f"SELECT kept_{table} FROM store_state").fetchone()
    kept = min(recorded, count) if recorded else count if over_limit(count, limit) else 0
    return (kept if kept > limit else 0), recorded


def _over_limit(path: str, messages: int, sessions: int, limit: int) -> str:
    """What a store found over max_messages when it opens is told: nothing of it is pruned
    (the writer keeps the size it has, see writer._Retention)."""
    held = f"{messages:,} messages" if messages else f"{sessions:,} sessions"
    return (
        f"store {path} holds {held}, more than max_messages ({limit:,}): keeping them;"
        " from now on each new one replaces the oldest (`mailsink clear` empties the store,"
        " a higher [storage] max_messages keeps more)"
    )


def _prepare(path: str, max_messages: int) -> tuple[int, tuple[int, int]]:
    """Migrate the store and put it in WAL mode; returns the next session id and how many
    messages and sessions it keeps beyond `max_messages` (see kept_size)."""
    conn = None
    try:
        conn = connect(path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and _tables(conn):  # migrating would add mailsink's tables to it
            raise StoreError(
                f"{path} is not a mailsink store: another program's SQLite database (left as it is)"
            )
        if not os.access(path, os.W_OK):  # else every message would fail, one by one
            raise StoreError(f"cannot write to {path}: the file is read-only")
        # Readers never block the writer, and a commit is one append to the log.
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        missing = _missing_tables(conn, SCHEMA_VERSION)
        if missing:
            raise _not_mailsink(path, version, missing)
        _probe(conn, SCHEMA_VERSION)
        # This server holds the lock, so no other serves the store: a session still open was
        # left by a server that died (kill -9, power loss) and would otherwise look live forever.
        lost = conn.execute(
            "UPDATE sessions SET end_reason = 'server_lost', ended_at = ?, state = NULL"
            " WHERE end_reason IS NULL",
            (now_ms(),),
        ).rowcount
        if lost:
            log.info("%d session(s) left open by a server that stopped: ended as server_lost", lost)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sessions'").fetchone()
        kept = [
            kept_size(conn, table, count, max_messages)[0]
            for table in ("messages", "sessions")
            for (count,) in [conn.execute(f"SELECT count(*) FROM {table}").fetchone()]
        ]
        return (row[0] if row else 0) + 1, (kept[0], kept[1])
    except sqlite3.Error as error:
        raise store_error(error, path) from None
    finally:
        if conn is not None:
            conn.close()


def _lock(path: str):
    """One server per store: session ids are handed out in memory."""
    directory = Path(path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the directory {directory}: {error.strerror}") from None
    try:
        lock_file = open(f"{path}.lock", "w")  # noqa: SIM115 - held open for the store's lifetime
    except OSError as error:
        raise StoreError(
            f"cannot create {path}.lock (a server keeps it beside its store):"
            f" {error.strerror or error}"
        ) from None
    # A view of the store tests the lock now and then (server_running), holding it for an
    # instant: a few tries tell that apart from a server that holds it.
    for attempt in range(_LOCK_TRIES):
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file
        except BlockingIOError:
            if attempt < _LOCK_TRIES - 1:
                time.sleep(0.005)
        except OSError:
            break
    lock_file.close()
    raise StoreLocked(f"another mailsink server is using {path}") from None


_LOCK_TRIES = 10
