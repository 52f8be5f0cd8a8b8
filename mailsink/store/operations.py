"""Every change to a store's rows: what the writer process runs, one after another in its
transactions, and what `run_here` runs in one transaction of its own.

An operation is a module-level function whose first argument is the connection, usually bound
with functools.partial so that it pickles by name on its way to the writer process. It runs in
a transaction its caller opened and commits (the writer, in a batch; run_here, alone), so it
neither begins nor commits one itself.

A few reads live here beside the writes they are about: committed_message (did an
insert_message commit?) and the retention limits (over_limit, kept_size). Retention's pruning
itself is the writer's, in each of its commits (writer._Retention).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from mailsink.errors import StoreError
from mailsink.mail.envelope import Envelope
from mailsink.mail.findings import findings
from mailsink.mail.hygiene import hygiene_findings
from mailsink.mail.parse import parse_headers
from mailsink.mail.tags import MAX_TAGS, given_tags, header_tags, plus_tags, unique_tags
from mailsink.mail.text_index import FIELD_COLUMNS, body, fields, fields_of_summary, trimmed
from mailsink.store.schema import (
    BODY_INDEXED,
    DELETIONS_SINCE,
    FIELDS_INDEXED,
    MIGRATED,
    RELEASES_SINCE,
    SEARCH_SINCE,
    UNINDEXED,
    SessionEvent,
    connect,
    open_existing,
    resolve_path,
    user_facing,
)

P = ParamSpec("P")
R = TypeVar("R")

# What the writer runs: a callable taking the write connection that pickles (see above).
Operation = Callable[[sqlite3.Connection], Any]


@dataclass
class IncomingMessage:
    session_id: int
    envelope: Envelope
    raw: bytes
    received_at: int
    status: str = "accepted"
    reply: str | None = None
    check_addresses: bool = True  # [validation] addresses != "off"
    reply_rule: str | None = None  # the fault rule whose reply rejected it
    plus_tags: bool = False  # [tags] plus_addresses: user+signup@x tags it "signup"

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # On its way to the writer process the raw message travels beside the pickle (out of
        # band) rather than copied into it: one 25 MB copy fewer for the biggest message.
        raw = pickle.PickleBuffer(self.raw) if protocol >= 5 else self.raw
        fields = (self.session_id, self.envelope, raw, self.received_at, self.status)
        rest = (self.reply, self.check_addresses, self.reply_rule, self.plus_tags)
        return IncomingMessage, (*fields, *rest)


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


# Whether insert_message writes the message's fields into the search index in its own
# transaction (FIELDS_INDEXED at once) or leaves them with the text to the extractor process
# (writer._extractor_main). Measured (docs/PERFORMANCE.md, issue 14): at insert they cost the
# writer 150-175 µs a message (the fields and the parse of the header lines included) and the
# ingest ratio 1.02-1.08 -> 0.93-0.95; made by the extractor, the writer's part of a message is
# insert_index, 0.1-0.15 ms, in a later commit. Searches find a message either way: until the
# index has it, search.PendingIndex holds it.
FIELDS_AT_INSERT = False

_FIELDS_INSERT = (
    f"INSERT INTO message_fields (rowid, {', '.join(FIELD_COLUMNS)})"
    f" VALUES (?{', ?' * len(FIELD_COLUMNS)})"
)


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
    # What a production server would do with it; never raises (a failed check is a finding).
    hygiene = hygiene_findings(message.raw, message.envelope, summary, message.received_at)
    found += [f.as_json() for f in hygiene]
    cursor = conn.execute(
        "INSERT INTO messages (session_id, received_at, status, reply, reply_rule, size, envelope,"
        " headers, findings, finding_count, attachments, indexed)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.session_id,
            message.received_at,
            message.status,
            message.reply,
            message.reply_rule,
            len(message.raw),
            json.dumps(message.envelope.stored_json()),
            json.dumps(headers),
            json.dumps(found),
            len(found),
            int(headers["attachments"]),
            FIELDS_INDEXED if FIELDS_AT_INSERT else UNINDEXED,
        ),
    )
    message_id = cursor.lastrowid
    assert message_id is not None
    _insert_raw(conn, message_id, message.raw)
    if FIELDS_AT_INSERT:  # in the index from its commit on; its text follows when idle
        conn.execute(_FIELDS_INSERT, (message_id, *fields(summary, message.envelope, message.raw)))
    tags = header_tags(summary.x_tags)
    if message.plus_tags:
        addresses = [*summary.from_addrs, *summary.to_addrs, *summary.cc_addrs]
        tags = unique_tags(
            [*tags, *plus_tags([*addresses, *summary.bcc_addrs, *message.envelope.rcpt_to])]
        )
    if tags:
        conn.executemany(
            "INSERT OR IGNORE INTO message_tags (message_id, tag) VALUES (?, ?)",
            [(message_id, tag) for tag in tags],
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
    {
        "helo",
        "tls",
        "auth_user",
        "end_reason",
        "ended_at",
        "last_reply",
        "faults",
        "state",
        "refusals",
        "last_refusal",
    }
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


def end_lost_sessions(conn: sqlite3.Connection, now: int) -> int:
    """End every session still open as server_lost; returns how many. Only for a server that
    has just taken the store's lock: no other serves it, so an open session was left by one
    that died (kill -9, power loss) and would otherwise look live for ever."""
    return conn.execute(
        "UPDATE sessions SET end_reason = 'server_lost', ended_at = ?, state = NULL"
        " WHERE end_reason IS NULL",
        (now,),
    ).rowcount


def _count_deletion(conn: sqlite3.Connection) -> None:
    """Tell views of the store that messages vanished from the middle of their lists (a store
    of a schema older than DELETIONS_SINCE has no counter, until its server migrates it)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= DELETIONS_SINCE:
        conn.execute("UPDATE store_state SET deletions = deletions + 1")


def delete_messages(conn: sqlite3.Connection, message_ids: Iterable[int]) -> int:
    """Delete these messages, counted as one deletion; returns how many were still there."""
    rows = [(message_id,) for message_id in message_ids]
    gone = conn.executemany("DELETE FROM messages WHERE id = ?", rows).rowcount
    conn.executemany("DELETE FROM message_raw WHERE id = ?", rows)
    conn.executemany("DELETE FROM message_search WHERE id = ?", rows)
    if _searchable(conn):
        conn.executemany("DELETE FROM message_fields WHERE rowid = ?", rows)
        conn.executemany("DELETE FROM message_body WHERE rowid = ?", rows)
        conn.executemany("DELETE FROM message_tags WHERE message_id = ?", rows)
    _count_deletion(conn)
    return gone


def delete_idle_sessions(conn: sqlite3.Connection) -> int:
    """Delete the finished sessions that have no message left; returns how many went. (Open
    sessions stay: their server goes on writing to them.)"""
    idle = (
        "SELECT id FROM sessions WHERE end_reason IS NOT NULL"
        " AND id NOT IN (SELECT session_id FROM messages)"
    )
    conn.execute(f"DELETE FROM transcript_chunks WHERE session_id IN ({idle})")
    return conn.execute(f"DELETE FROM sessions WHERE id IN ({idle})").rowcount


def clear(conn: sqlite3.Connection) -> int:
    """Delete every message and every finished session; returns how many messages went."""
    count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.execute("DELETE FROM message_raw")
    conn.execute("DELETE FROM message_search")
    if _searchable(conn):
        # The search indexes' rows are left to purge_search (every id of theirs is now below
        # the next message's): deleting 100 000 of them here would take seconds.
        conn.execute("DELETE FROM message_tags")
    conn.execute("DELETE FROM messages")
    # Sessions still open stay: their server goes on writing to them.
    conn.execute(
        "DELETE FROM transcript_chunks WHERE session_id NOT IN"
        " (SELECT id FROM sessions WHERE end_reason IS NULL)"
    )
    conn.execute("DELETE FROM sessions WHERE end_reason IS NOT NULL")
    _count_deletion(conn)
    return count


def _searchable(conn: sqlite3.Connection) -> bool:
    """Whether the store has the search tables (a store no server has migrated may not)."""
    return conn.execute("PRAGMA user_version").fetchone()[0] >= SEARCH_SINCE


INDEX_BATCH = 50  # messages per call of index_messages (run_here and tests)
# What the writer inserts of the extractor's ready rows per transaction (writer._Indexer): at
# most this many, and no more once this long has gone (an FTS5 row costs 0.1-1 ms to write).
INSERT_ROWS = 32
INSERT_BUDGET = 0.002


@dataclass(frozen=True)
class IndexRow:
    """What the search indexes get of one message, made outside the writer's transactions
    (prepare_index: the MIME parse, 1-2 ms, up to seconds for hostile input)."""

    id: int
    fields: tuple[str, ...]
    body: str
    attachments: str  # file names, one a line
    has_attachments: bool
    exact: bool  # the whole MIME tree was parsed: has_attachments replaces the ingest hint
    tags: tuple[str, ...]  # X-Tags of a message stored before SEARCH_SINCE (schema.MIGRATED)
    snippet: str = ""  # Mailpit's (mail/snippet.py), kept in messages.snippet


@dataclass(frozen=True)
class Indexed:
    done: int  # messages indexed by this call
    more: bool  # there may be more to index
    left: int | None = None  # how many (when asked for: a count of the backlog)


def unindexed_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM messages WHERE indexed < 2").fetchone()[0]


def pending_index(
    conn: sqlite3.Connection, limit: int, skip: Iterable[int] = ()
) -> list[tuple[int, str, str, int]]:
    """(id, envelope, headers, indexed) of the newest `limit` messages the indexes lack, but
    those in `skip` (on their way already); newest first, so that recent mail is searchable
    soonest."""
    skipped = set(skip)
    rows = conn.execute(
        "SELECT id, envelope, headers, indexed FROM messages WHERE indexed < 2"
        " ORDER BY id DESC LIMIT ?",
        (limit + len(skipped),),
    ).fetchall()
    return [row for row in rows if row[0] not in skipped][:limit]


def prepare_index(
    message_id: int, envelope: str, headers: str, indexed: int, raw: bytes
) -> IndexRow:
    """The index rows of a message (pure computation: any process, no connection). Its
    fields come from the summary stored at ingest (`headers`), as search.PendingIndex makes
    them for a message not indexed yet."""
    found = fields_of_summary(json.loads(headers), Envelope.from_json(json.loads(envelope)), raw)
    text = body(raw)
    tags: tuple[str, ...] = ()
    if indexed == MIGRATED:
        tags = tuple(header_tags(parse_headers(trimmed(raw)).x_tags))
    return IndexRow(
        message_id,
        found,
        text.text,
        text.attachments,
        text.has_attachments,
        text.complete,
        tags,
        text.snippet,
    )


def insert_index(conn: sqlite3.Connection, row: IndexRow) -> bool:
    """Write a prepared row; False if its message is gone (deleted since it was read) or
    indexed already (so it never gets rows of a message that is not there)."""
    state = conn.execute("SELECT indexed FROM messages WHERE id = ?", (row.id,)).fetchone()
    if state is None or state[0] >= BODY_INDEXED:
        return False
    conn.execute("DELETE FROM message_fields WHERE rowid = ?", (row.id,))
    conn.execute(_FIELDS_INSERT, (row.id, *row.fields))
    conn.execute("DELETE FROM message_body WHERE rowid = ?", (row.id,))
    conn.execute(
        "INSERT INTO message_body (rowid, body, attachments) VALUES (?, ?, ?)",
        (row.id, row.body, row.attachments),
    )
    flag = int(row.has_attachments)
    attachments = "?" if row.exact else "max(attachments, ?)"
    conn.execute(
        f"UPDATE messages SET indexed = ?, attachments = {attachments}, snippet = ? WHERE id = ?",
        (BODY_INDEXED, flag, row.snippet, row.id),
    )
    if row.tags:
        conn.executemany(
            "INSERT OR IGNORE INTO message_tags (message_id, tag) VALUES (?, ?)",
            [(row.id, tag) for tag in row.tags],
        )
    return True


# Snippets (schema 7) of messages indexed before the store had them: made by the extractor
# when it has no index rows to make, SNIPPET_BATCH at a time, written by the idle writer.
SNIPPET_BATCH = 16


def unsnipped(conn: sqlite3.Connection, limit: int = SNIPPET_BATCH) -> list[int]:
    """The newest `limit` indexed messages without a snippet (messages_unsnipped holds them:
    no scan even when there are none)."""
    rows = conn.execute(
        f"SELECT id FROM messages WHERE snippet IS NULL AND indexed = {BODY_INDEXED}"
        " ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [row[0] for row in rows]


def insert_snippet(conn: sqlite3.Connection, message_id: int, snippet: str) -> bool:
    """False if the message is gone, or has one already (the indexer's own comes first)."""
    return (
        conn.execute(
            "UPDATE messages SET snippet = ? WHERE id = ? AND snippet IS NULL",
            (snippet, message_id),
        ).rowcount
        > 0
    )


def index_messages(
    conn: sqlite3.Connection,
    limit: int = INDEX_BATCH,
    stop: Callable[[], bool] | None = None,
    count_left: bool = False,
) -> Indexed:
    """Index the newest `limit` messages the search indexes lack, in the caller's transaction
    (the writer does the parse in a thread of its own instead: writer._Indexer). `stop()` is
    asked between messages: True ends the batch there."""
    rows = pending_index(conn, limit)
    done = 0
    for message_id, envelope, headers, indexed in rows:
        if done and stop is not None and stop():
            break
        found = conn.execute("SELECT raw FROM message_raw WHERE id = ?", (message_id,)).fetchone()
        raw = bytes(found[0]) if found else b""
        done += insert_index(conn, prepare_index(message_id, envelope, headers, indexed, raw))
    more = len(rows) == limit or done < len(rows)
    left = (unindexed_count(conn) if more else 0) if count_left else None
    return Indexed(done, more, left)


# Tables whose rows for the oldest messages outlive them (retention and `clear` leave them: an
# FTS5 row costs as much to delete as to write, 0.2-0.9 ms) until purge_search removes them,
# a few at a time. A search never sees them: it looks for messages whose ids the index gives.
LEFT_BEHIND = ("message_fields", "message_body")
PURGE_BATCH = 100
PURGE_PIECE = 8  # rows deleted between two looks at the clock and the channel
PURGE_BUDGET = 0.005  # seconds of purging per transaction at most (about)


def purge_search(
    conn: sqlite3.Connection,
    limit: int = PURGE_BATCH,
    stop: Callable[[], bool] | None = None,
    budget: float | None = None,
) -> int:
    """Delete up to `limit` rows of each LEFT_BEHIND table whose message is gone (ids only
    grow, so those are the ids below the oldest message's); returns how many went. Stops
    early, between pieces of PURGE_PIECE rows, once `budget` seconds have gone or `stop()`
    says a request waits."""
    (oldest,) = conn.execute("SELECT min(id) FROM messages").fetchone()
    below = 9223372036854775807 if oldest is None else oldest
    started = time.monotonic()
    gone = 0
    for table in LEFT_BEHIND:
        left = limit
        while left > 0:
            piece = min(left, PURGE_PIECE)
            count = conn.execute(
                f"DELETE FROM {table} WHERE rowid IN"
                f" (SELECT rowid FROM {table} WHERE rowid < ? ORDER BY rowid LIMIT ?)",
                (below, piece),
            ).rowcount
            gone += count
            left -= piece
            if count < piece:
                break
            if (budget is not None and time.monotonic() - started >= budget) or (
                stop is not None and stop()
            ):
                return gone
    return gone


def no_change(conn: sqlite3.Connection) -> None:
    """Changes nothing: Store.flush submits it and waits for its commit."""


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


def run_here(
    path: str | None,
    operation: Callable[Concatenate[sqlite3.Connection, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run `operation(conn, *args, **kwargs)` in one transaction on a connection of its own,
    for a store that no server in this process writes to (the CLI's `clear`, a TUI attached to
    another process's server). A server elsewhere may be writing meanwhile: SQLite's lock
    makes them take turns, the transaction taken at once (BEGIN IMMEDIATE) so that it never
    has to be upgraded halfway, waiting up to the busy timeout (10 s) for the lock. The store
    must exist; SQLite's errors about its file come out as StoreFileError in the user's words,
    and the transaction is rolled back if anything in it fails."""
    path = resolve_path(path)
    conn, _ = open_existing(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = operation(conn, *args, **kwargs)
        except BaseException:
            if conn.in_transaction:  # (SQLite rolls back by itself after some errors)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
    except sqlite3.DatabaseError as error:
        translated = user_facing(error, path)
        if translated is error:
            raise
        raise translated from error
    finally:
        conn.close()


# ---- read state and tags (schema SEARCH_SINCE): idempotent, so a write the writer died before
# answering can simply be sent again.


def _with_read_state(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < SEARCH_SINCE:  # only a server migrates; this process is none
        raise StoreError(
            f"this store was written before mailsink kept read state and tags (schema"
            f" {version}); a server of this version adds them when it opens the store"
        )


def mark_read(conn: sqlite3.Connection, ids: Iterable[int], read: bool = True) -> int:
    """Mark these messages read (or unread); returns how many changed (one already so, or
    gone, is not counted)."""
    _with_read_state(conn)
    rows = [(int(read), message_id, int(not read)) for message_id in dict.fromkeys(ids)]
    return conn.executemany("UPDATE messages SET seen = ? WHERE id = ? AND seen = ?", rows).rowcount


def mark_all_read(conn: sqlite3.Connection) -> int:
    """Mark every message read (rejected ones too); returns how many were unread."""
    _with_read_state(conn)
    return conn.execute("UPDATE messages SET seen = 1 WHERE seen = 0").rowcount


def change_tags_check(add: Iterable[str], remove: Iterable[str]) -> tuple[list[str], list[str]]:
    """The tags to add and to remove, each once (mail/tags.py given_tags). ValueError for one
    that is not a tag as given (a typo is told, not rewritten), more than MAX_TAGS, or one
    both added and removed."""
    adding = given_tags(add)
    removing = given_tags(remove)
    both = {tag.casefold() for tag in adding} & {tag.casefold() for tag in removing}
    if both:
        raise ValueError(f"{sorted(both)[0]!r} is both added and removed")
    return adding, removing


def change_tags(
    conn: sqlite3.Connection,
    ids: Iterable[int],
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> int:
    """Add and remove tags (compared without regard to case: adding `Invoice` to a message
    tagged `invoice` changes nothing) on these messages; returns how many messages changed.
    ValueError as change_tags_check says, and (nothing changed then, on any message) when a
    message would hold more than MAX_TAGS."""
    adding, removing = change_tags_check(add, remove)
    _with_read_state(conn)
    changed: set[int] = set()
    for message_id in dict.fromkeys(ids):
        for tag in removing:  # the column is COLLATE NOCASE: any case goes
            removed = conn.execute(
                "DELETE FROM message_tags WHERE message_id = ? AND tag = ?", (message_id, tag)
            )
            if removed.rowcount:
                changed.add(message_id)
        for tag in adding:  # never onto a message that is gone: nothing would delete the row
            added = conn.execute(
                "INSERT OR IGNORE INTO message_tags (message_id, tag)"
                " SELECT id, ? FROM messages WHERE id = ?",
                (tag, message_id),
            )
            if added.rowcount:
                changed.add(message_id)
        if adding and message_id in changed:
            (held,) = conn.execute(
                "SELECT count(*) FROM message_tags WHERE message_id = ?", (message_id,)
            ).fetchone()
            if held > MAX_TAGS:  # (the caller's transaction takes back what this wrote)
                raise ValueError(
                    f"message {message_id} would have {held} tags: a message holds at most"
                    f" {MAX_TAGS}; remove some first"
                )
    return len(changed)


# ---- releases to the [relay] server (schema RELEASES_SINCE; mailsink/relay.py)


def record_release(
    conn: sqlite3.Connection,
    message_id: int,
    at: int,
    trigger: str,
    upstream: str,
    mail_from: str,
    recipients: Sequence[str],
    outcome: str,
    code: int | None,
    reply: str,
    refused: dict[str, str] | None = None,
    attempt: int = 1,
) -> int | None:
    """One release tried: its `releases` row; returns the row's id. None, and no row, when the
    message is gone (deleted while it was being released: its rows would outlive it, the
    trigger that removes them having run already) or the store predates the table (an older
    server serves it; only a server migrates). Sent again after a writer died before
    answering, it finds the row it wrote (every column the same, to the millisecond) and
    returns it rather than writing a second."""
    if conn.execute("PRAGMA user_version").fetchone()[0] < RELEASES_SINCE:
        return None
    values = (
        message_id,
        at,
        trigger,
        upstream,
        mail_from,
        json.dumps(list(recipients)),
        outcome,
        code,
        reply,
        json.dumps(dict(refused or {})),
        attempt,
    )
    written = conn.execute(
        "SELECT id FROM releases WHERE message_id = ? AND at = ? AND trigger = ? AND upstream = ?"
        " AND mail_from = ? AND recipients = ? AND outcome = ? AND code IS ? AND reply = ?"
        " AND refused = ? AND attempt = ?",
        values,
    ).fetchone()
    if written is not None:
        return int(written[0])
    cursor = conn.execute(
        "INSERT INTO releases (message_id, at, trigger, upstream, mail_from, recipients,"
        " outcome, code, reply, refused, attempt)"
        " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
        " (SELECT 1 FROM messages WHERE id = ?)",
        (*values, message_id),
    )
    return cursor.lastrowid if cursor.rowcount else None
