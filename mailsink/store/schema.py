"""The bottom of the store: the schema and its migrations, connections, and what SQLite's
errors about the store's file mean to the user.

Nothing here changes rows (that is operations.py); migrate changes the schema, once per
version, when a server opens the store.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import platformdirs

from mailsink.errors import StoreError, StoreFileError

SCHEMA_VERSION = 8
MEMORY = ":memory:"
DELETIONS_SINCE = 3  # the schema version that counts deletions (store_state)
PROGRESS_SINCE = 4  # the schema version with a live session's state and the server row
REFUSALS_SINCE = 5  # the schema version with a session's refusals and a rejection's rule
SEARCH_SINCE = 6  # the schema version with read state, tags and the search indexes
SNIPPET_SINCE = 7  # the schema version that keeps each message's snippet (the HTTP API's)
RELEASES_SINCE = 8  # the schema version that records releases to the [relay] server
# messages.indexed: what the search indexes hold of a message (store/search.py)
# Stored before SEARCH_SINCE, nothing indexed yet: the indexer also adds its X-Tags tags (only
# to these rows, so that a tag a user removed from a newer message never comes back).
MIGRATED = -1
UNINDEXED = 0  # nothing yet (new: until the indexer reaches it)
FIELDS_INDEXED = 1  # its addresses, subject, envelope and headers (operations.FIELDS_AT_INSERT)
BODY_INDEXED = 2  # ... and its text and attachment names (writer._Indexer)

# Whether this SQLite has FTS5 (None: not asked yet). Without it the search tables are ordinary
# ones, searched by scans (store/search.py); a test sets False to build a store that way.
FTS5: bool | None = None

log = logging.getLogger("mailsink.store")

# A transcript event: (sequence number, ms since the epoch, direction, text).
SessionEvent = tuple[int, int, str, str]

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
    5: """
    -- The fault rule whose reply a rejected message got (NULL: none, or not a rule's).
    ALTER TABLE messages ADD COLUMN reply_rule TEXT;
    -- Replies that refused the client something (the greeting, HELO/EHLO, AUTH, MAIL, RCPT,
    -- DATA, STARTTLS: a 4xx or 5xx), and the last of them with what it answered, so that a
    -- session that delivered nothing still says what was refused.
    ALTER TABLE sessions ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN last_refusal TEXT;
    """,
    6: """
    -- Read state: 0 until the message is opened (TUI, `mailsink show`, the API's GET).
    ALTER TABLE messages ADD COLUMN seen INTEGER NOT NULL DEFAULT 0;
    -- (status: the unread count, accepted only, is read from the index alone)
    CREATE INDEX messages_unread ON messages (status) WHERE seen = 0;
    -- What the search indexes hold of it (schema.UNINDEXED, FIELDS_INDEXED, BODY_INDEXED).
    ALTER TABLE messages ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET indexed = -1;  -- schema.MIGRATED: its X-Tags are tagged when indexed
    CREATE INDEX messages_unindexed ON messages (id) WHERE indexed < 2;
    -- The attachment hint as a column (it was only in the headers JSON): has:attachment.
    ALTER TABLE messages ADD COLUMN attachments INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET attachments = 1 WHERE json_extract(headers, '$.attachments');
    CREATE INDEX messages_received ON messages (received_at);
    CREATE TABLE message_tags (
        message_id INTEGER NOT NULL,
        tag TEXT NOT NULL COLLATE NOCASE,     -- as first written; one per name whatever its case
        PRIMARY KEY (message_id, tag)
    ) WITHOUT ROWID;
    CREATE INDEX message_tags_tag ON message_tags (tag);
    -- Search (store/search.py). The fields, for substrings (trigram: any 3 characters find
    -- the rows that have them), written with the message; one row per message, rowid = id.
    CREATE VIRTUAL TABLE message_fields USING fts5(
        from_, to_, cc, bcc, reply_to, subject, message_id, mail_from, rcpt, headers,
        tokenize = 'trigram'
    );
    -- The text (text part, or the HTML part as text; capped) and attachment names, for words
    -- (unicode61, diacritics folded), written by the writer when it is idle.
    CREATE VIRTUAL TABLE message_body USING fts5(
        body, attachments, tokenize = 'unicode61 remove_diacritics 2'
    );
    """,
    7: """
    -- Mailpit's snippet of the message (mail/snippet.py), made when it is indexed; NULL until
    -- then (the HTTP API makes it itself meanwhile).
    ALTER TABLE messages ADD COLUMN snippet TEXT;
    -- Those without one (new mail waiting for the index, and mail indexed before schema 7,
    -- whose snippet the extractor makes when it has nothing else to do): found without a scan.
    CREATE INDEX messages_unsnipped ON messages (id) WHERE snippet IS NULL;
    -- How many accepted messages there are and how many of them are unread, kept by the
    -- triggers below whatever writes (the writer, `mailsink mark`, retention): the HTTP API's
    -- lists say both on every answer, and counting 100 000 rows each time cost 15 ms.
    CREATE TABLE message_counts (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        accepted INTEGER NOT NULL,
        unread INTEGER NOT NULL
    );
    INSERT INTO message_counts (id, accepted, unread) VALUES (
        1,
        (SELECT count(*) FROM messages WHERE status = 'accepted'),
        (SELECT count(*) FROM messages WHERE status = 'accepted' AND seen = 0)
    );
    CREATE TRIGGER messages_counted_in AFTER INSERT ON messages WHEN NEW.status = 'accepted'
    BEGIN
        UPDATE message_counts SET accepted = accepted + 1, unread = unread + (NEW.seen = 0);
    END;
    CREATE TRIGGER messages_counted_out AFTER DELETE ON messages WHEN OLD.status = 'accepted'
    BEGIN
        UPDATE message_counts SET accepted = accepted - 1, unread = unread - (OLD.seen = 0);
    END;
    CREATE TRIGGER messages_counted_change AFTER UPDATE OF seen, status ON messages
    WHEN OLD.status IS NOT NEW.status OR OLD.seen IS NOT NEW.seen
    BEGIN
        UPDATE message_counts SET
            accepted = accepted - (OLD.status = 'accepted') + (NEW.status = 'accepted'),
            unread = unread - (OLD.status = 'accepted' AND OLD.seen = 0)
                + (NEW.status = 'accepted' AND NEW.seen = 0);
    END;
    """,
    8: """
    -- Every release of a message to the [relay] server that was tried (mailsink/relay.py): by
    -- `mailsink release`, the TUI, the HTTP API or auto release; one row per try.
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id INTEGER NOT NULL,
        at INTEGER NOT NULL,                  -- ms since the epoch, UTC
        trigger TEXT NOT NULL,                -- cli | tui | http | auto
        upstream TEXT NOT NULL,               -- host:port
        mail_from TEXT NOT NULL,              -- the MAIL FROM sent ('' = <>)
        recipients TEXT NOT NULL,             -- JSON list: the RCPT TOs sent
        outcome TEXT NOT NULL,                -- sent | partial | failed | retrying
        code INTEGER,                         -- the upstream's last reply code (NULL: none)
        reply TEXT NOT NULL,                  -- its text, or what went wrong
        refused TEXT NOT NULL DEFAULT '{}',   -- JSON {recipient: "550 5.1.1 ..."}
        attempt INTEGER NOT NULL DEFAULT 1    -- an auto release's try
    );
    CREATE INDEX releases_message ON releases (message_id);
    -- A message's releases go with it, whoever deletes it (a face, `clear`, retention).
    CREATE TRIGGER messages_releases_out AFTER DELETE ON messages
    BEGIN
        DELETE FROM releases WHERE message_id = OLD.id;
    END;
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


def fts5_available() -> bool:
    """Whether this SQLite can make FTS5 tables (Python's own build nearly always can)."""
    global FTS5
    if FTS5 is None:
        probe = sqlite3.connect(MEMORY)
        try:
            probe.execute("CREATE VIRTUAL TABLE probe USING fts5(text)")
            FTS5 = True
        except sqlite3.Error:
            FTS5 = False
        finally:
            probe.close()
    return FTS5


_VIRTUAL = re.compile(r"CREATE VIRTUAL TABLE (\w+) USING fts5\(([^;]*?),\s*tokenize = '[^']*'\s*\)")


def _without_fts5(script: str) -> str:
    """The migration with ordinary tables of the same columns for its FTS5 ones (the rowid
    is the message's id in both)."""

    def table(match: re.Match[str]) -> str:
        columns = [column.strip() for column in match.group(2).split(",")]
        typed = ", ".join(f"{column} TEXT NOT NULL DEFAULT ''" for column in columns)
        return f"CREATE TABLE {match.group(1)} (id INTEGER PRIMARY KEY, {typed})"

    return _VIRTUAL.sub(table, script)


def search_tables(fts: bool) -> list[str]:
    """The CREATE statements of the search tables (message_fields, message_body) as schema
    SEARCH_SINCE makes them: FTS5 ones with their tokenizers, or (not `fts`) ordinary ones."""
    statements = [match.group() for match in _VIRTUAL.finditer(_MIGRATIONS[SEARCH_SINCE])]
    return statements if fts else [_without_fts5(statement) for statement in statements]


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION; refuse a store written by a newer mailsink."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {version}, newer than this mailsink "
            f"understands ({SCHEMA_VERSION}); upgrade mailsink"
        )
    if version == SCHEMA_VERSION:
        return
    steps = []
    for target in range(version + 1, SCHEMA_VERSION + 1):
        step = _MIGRATIONS[target]
        if "VIRTUAL TABLE" in step and not fts5_available():
            log.warning("this SQLite has no FTS5: searching text scans the store (slower)")
            step = _without_fts5(step)
        steps.append(f"{step};\nPRAGMA user_version = {target};")
    # Every step in one transaction: a new store (all of them) costs one commit and one fsync
    # instead of one per step, and a third less time (each test fixture makes one: issue 16).
    script = "BEGIN IMMEDIATE;\n" + "\n".join(steps) + "\nCOMMIT;"
    try:
        conn.executescript(script)  # all of the steps, or (rolled back below) none of them
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


def user_facing(error: BaseException, path: str) -> BaseException:
    """An SQLite error about the store's file as a StoreFileError that says what is wrong with
    it; anything else (a bug in mailsink's own SQL among them) as it is."""
    if isinstance(error, StoreFileError) or not isinstance(error, sqlite3.DatabaseError):
        return error
    return store_error(error, path) if about_the_file(error) else error


class _HasPath(Protocol):
    path: str


P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=_HasPath)


def store_errors(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """A damaged, foreign or read-only store is the user's to fix: say so, not "internal error".
    For methods of an object with the store's `path`."""

    @functools.wraps(method)
    def checked(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            translated = user_facing(error, self.path)
            if translated is error:
                raise
            raise translated from error

    return checked


def open_existing(path: str) -> tuple[sqlite3.Connection, int]:
    """A connection to the mailsink store at `path`, which must exist, and its schema version
    (an older one as it is: only a server migrates). Errors are the user's words for them."""
    conn = connect(path, must_exist=True)
    try:
        return conn, check_version(conn, path)
    except BaseException as error:
        conn.close()
        translated = user_facing(error, path)
        if translated is error:
            raise
        raise translated from error


def open_for_writing(path: str) -> sqlite3.Connection:
    """A connection to the store at `path`, created or migrated to SCHEMA_VERSION and in WAL
    mode: what a server opens before anything is written. The caller closes it."""
    # (Only where nothing of an earlier store is left, see _LEFTOVERS; else migrated as before.)
    bare = path != MEMORY and not any(os.path.lexists(path + end) for end in ("", *_LEFTOVERS))
    written = bare and _write_new_store(path)
    conn = connect(path)
    try:
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
        if bare and not written and version == 0 and hasattr(conn, "serialize"):
            # (Its pages as SQLite reads them, the log's included: the store as migrate made it.)
            _NEW_STORES.setdefault(fts5_available(), conn.serialize())
    except sqlite3.Error as error:
        conn.close()
        raise store_error(error, path) from None
    except BaseException:
        conn.close()
        raise
    return conn


# The first new store a process makes is migrated; its bytes, taken right after, are the next
# new stores' (keyed by whether the search tables are FTS5 ones, which a test may turn off).
# Migrating costs about 5 ms here (the CREATE statements; the switch to WAL mode through a
# rollback journal; half a dozen fsyncs); writing the bytes, under 1 ms and two fsyncs. A test
# suite makes a store per test (issue 16).
_NEW_STORES: dict[bool, bytes] = {}

# What a store that is gone may leave beside its name: its log and wal-index (its server was
# killed, then the store removed), a rollback journal (killed while it switched a new store to
# WAL mode; another program's database). When SQLite makes the file itself, it deletes the log
# and the journal at its first read (a file without pages has nothing for them to be replayed
# onto) and rebuilds the wal-index. Written bytes have pages: the log would be replayed onto
# them (mail the user removed is back, or the store is damaged), and a hot journal too. So a
# store with any of these beside it is made by SQLite, as every store was before issue 16.
_LEFTOVERS = ("-wal", "-journal", "-shm")


def _write_new_store(path: str) -> bool:
    """Write the store a migration makes at `path` (where nothing is) from the bytes of the
    first new store of this process; False when there are none yet or they cannot be written
    there (SQLite then makes it, and says what is wrong if it cannot either)."""
    image = _NEW_STORES.get(fts5_available())
    if image is None:
        return False
    # Whole or not at all: a crash leaves no half-written store, only this file beside it,
    # which the next server of the store removes (remove_stale_copies). Named after the real
    # path, as the lock is: the server that holds it finds the file whatever name it was given.
    temporary = f"{os.path.realpath(path)}.{os.getpid()}.new"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        try:
            with open(fd, "wb") as out:
                out.write(image)
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, path)  # never over a file that appeared in the meantime
        finally:
            os.unlink(temporary)
        directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(directory)  # the new name, as SQLite syncs a journal's
        finally:
            os.close(directory)
    except OSError:
        return False
    return True


def remove_stale_copies(real_path: str) -> None:
    """Remove what _write_new_store left beside the store at `real_path` in a process that
    died in it: a half-written file, or (a crash between the link and the unlink) a second
    name of the store itself, which would keep its disk space once the store is removed.
    The caller holds the store's lock, so no server of this store writes one now; a file of
    a process that still runs (another program, a pid used again) is left."""
    directory, name = os.path.split(real_path)
    pattern = re.compile(re.escape(name) + r"\.([0-9]{1,10})\.new")
    try:
        with os.scandir(directory or ".") as entries:
            found = [(e.path, int(m[1])) for e in entries if (m := pattern.fullmatch(e.name))]
        for path, pid in found:
            if _process_gone(pid) and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                log.info("removed %s, left by a mailsink that stopped while making it", path)
    except OSError as error:  # (not worth a server that does not start)
        log.debug("cannot remove what an earlier start left beside %s: %s", real_path, error)


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process, which holds the lock and is not writing one now
    if not 0 < pid < 2**31:
        return False  # no process's: not one of these files, whatever its name
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # someone else's process, running
        return False
    return False


def lock_path(path: str) -> str:
    """The lock file a server holds beside the store at `path` (the real path: two names for
    one file, a symlink, are one store)."""
    return f"{os.path.realpath(path)}.lock"


def server_running(path: str) -> bool | None:
    """Whether a server holds the lock beside the store at `path` (None: cannot tell).

    Asks for a shared lock without waiting and gives it back at once: a running server's
    exclusive lock refuses it, and a server starting in that instant tries again
    (facade._lock)."""
    try:
        lock_file = open(lock_path(path), "rb")  # noqa: SIM115
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
