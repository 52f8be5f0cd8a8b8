"""The read side of the store: paged lists, search, single records.

Each reader has its own connection, which only reads (`PRAGMA query_only`): every change to
the rows goes through operations.py, in the writer process or run_here.
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailsink.clock import iso_ms
from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import ParsedMessage, parse_message
from mailsink.query import Query
from mailsink.store.schema import (
    BODY_INDEXED,
    DELETIONS_SINCE,
    PROGRESS_SINCE,
    REFUSALS_SINCE,
    RELEASES_SINCE,
    SCHEMA_VERSION,
    SEARCH_SINCE,
    SNIPPET_SINCE,
    SessionEvent,
    check_version,
    open_existing,
    resolve_path,
    server_running,
    store_errors,
    user_facing,
)
from mailsink.store.search import (
    PENDING_FIELDS,
    PENDING_WINDOW,
    Capabilities,
    PendingIndex,
    capabilities,
    compile_query,
    finding_clause,
    needs_fields,
    needs_index,
    register_functions,
)

if TYPE_CHECKING:
    from mailsink.relay import ReleaseRecord


@dataclass
class MessageRecord:
    id: int
    session_id: int
    received_at: int
    status: str
    reply: str | None
    size: int
    envelope: Envelope
    headers: dict[str, Any]
    findings: list[dict[str, Any]]
    has_attachments: bool = False  # a hint found at ingest, for the list's badge
    reply_rule: str | None = None  # the fault rule whose reply rejected the message
    seen: bool = False  # read: opened in the TUI, by `mailsink show` or the API
    tags: list[str] = field(default_factory=list)  # sorted, case-insensitively

    def summary_json(self) -> dict[str, Any]:
        """`mailsink list --json`: the contract in README's JSON section (`show --json` has
        each refused recipient's reply and rule)."""
        return {
            "id": self.id,
            "received_at": iso_ms(self.received_at),
            "status": self.status,
            "reply": self.reply,
            "reply_rule": self.reply_rule,
            "mail_from": self.envelope.mail_from,
            "rcpt_to": self.envelope.rcpt_to,
            "rcpt_refused": [refused.address for refused in self.envelope.rcpt_refused],
            "from": self.headers["from"],
            "to": self.headers["to"],
            "subject": self.headers["subject"],
            "size": self.size,
            "findings": [f["kind"] for f in self.findings],
            "read": self.seen,
            "tags": self.tags,
        }


@dataclass
class SessionRecord:
    id: int
    started_at: int
    ended_at: int | None
    peer: str
    helo: str | None
    tls: bool
    auth_user: str | None
    end_reason: str | None
    message_count: int
    last_reply: str | None
    faults: int
    message_ids: list[int]
    events: list[tuple[int, str, str]]  # (at ms, direction, text)
    state: str | None = None  # a live session's last command, as its server last wrote it
    refusals: int = 0  # 4xx/5xx replies refusing the client something (see schema version 5)
    last_refusal: str | None = None  # the last of them: what it answered, then the reply

    def as_json(self, *, with_events: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "started_at": iso_ms(self.started_at),
            "ended_at": iso_ms(self.ended_at),
            "peer": self.peer,
            "helo": self.helo,
            "tls": self.tls,
            "auth_user": self.auth_user,
            "end_reason": self.end_reason,
            "message_count": self.message_count,
            "last_reply": self.last_reply,
            "faults": self.faults,
            "refusals": self.refusals,
            "last_refusal": self.last_refusal,
            "messages": self.message_ids,
        }
        if with_events:
            data["transcript"] = [
                {"at": iso_ms(at), "direction": direction, "text": text}
                for at, direction, text in self.events
            ]
        return data


_MESSAGE_COLUMNS = (
    "messages.id, messages.session_id, messages.received_at, messages.status, messages.reply,"
    " messages.size, messages.envelope, messages.headers, messages.findings"
)
# ... and in a store of schema REFUSALS_SINCE or later:
_MESSAGE_COLUMNS_5 = f"{_MESSAGE_COLUMNS}, messages.reply_rule"
# ... and SEARCH_SINCE or later: read state and tags (joined by U+001F, which no tag has).
_MESSAGE_COLUMNS_6 = (
    f"{_MESSAGE_COLUMNS_5}, messages.seen, (SELECT group_concat(tag, char(31))"
    " FROM message_tags WHERE message_id = messages.id)"
)


def _message(row: tuple[Any, ...]) -> MessageRecord:
    envelope = json.loads(row[6])
    headers = json.loads(row[7])
    has_attachments = bool(headers.pop("attachments", False))
    return MessageRecord(
        id=row[0],
        session_id=row[1],
        received_at=row[2],
        status=row[3],
        reply=row[4],
        size=row[5],
        envelope=Envelope.from_json(envelope),
        headers=headers,
        findings=json.loads(row[8]),
        has_attachments=has_attachments,
        reply_rule=row[9] if len(row) > 9 else None,
        seen=bool(row[10]) if len(row) > 10 else False,
        tags=sorted(row[11].split("\x1f"), key=str.casefold) if len(row) > 11 and row[11] else [],
    )


@dataclass(frozen=True)
class Serving:
    """The server of a store, as seen from another process."""

    running: bool | None  # None: cannot tell (the lock file is out of reach)
    addresses: list[tuple[str, str, int]]  # (label, host, port) as the last server wrote them
    max_messages: int | None
    # (ms) when the server that wrote the row started: a server that has just taken the lock
    # and not written its own row yet is seen running with the previous one's row.
    started_at: int | None = None


class Reader:
    """Queries against a store written by a (possibly running) mailsink server; SELECT only.

    SQLite's errors about the file come out as StoreFileError, phrased for the user."""

    def __init__(self, path: str | None):
        self.path = resolve_path(path)
        self.conn, self.version = open_existing(self.path)
        # A write through a reader fails (readonly): every change goes through operations.py.
        self.conn.execute("PRAGMA query_only = ON")
        # The search language's SQL calls back into Python (store/search.py).
        register_functions(self.conn)
        self._pending: PendingIndex | None = None  # made at the first text search
        self._caps: Capabilities | None = None

    def close(self) -> None:
        self.conn.close()
        if self._pending is not None:
            self._pending.close()

    @property
    def _columns(self) -> str:
        """The message columns this store's schema has."""
        if self.version >= SEARCH_SINCE:
            return _MESSAGE_COLUMNS_6
        return _MESSAGE_COLUMNS_5 if self.version >= REFUSALS_SINCE else _MESSAGE_COLUMNS

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, _kind: object, error: BaseException | None, _traceback: object) -> None:
        self.close()
        # What the body did with `conn` directly, in the same words as the methods' errors.
        if error is not None and (translated := user_facing(error, self.path)) is not error:
            raise translated from error

    # ---- messages

    @property
    def caps(self) -> Capabilities:
        """What the store's schema can search (looked at again after a server migrated it)."""
        if self._caps is None or (not self._caps.search and self.version >= SEARCH_SINCE):
            self._caps = capabilities(self.conn, self.version, SEARCH_SINCE)
        return self._caps

    def _pending_matcher(self, query: Query) -> Any:
        """PendingIndex.matching, brought up to date once for this statement."""
        synced = False

        def matching(term: Any) -> list[int]:
            nonlocal synced
            if self._pending is None:
                self._pending = PendingIndex()
            if not synced:
                self._pending.sync(self.conn, search=self.caps.search, with_text=needs_index(query))
                synced = True
            return self._pending.matching(term)

        return matching

    def _filtered(
        self,
        query: Query | None,
        findings_only: bool,
        include_rejected: bool,
        finding_kinds: Sequence[str] = (),
    ) -> tuple[str, list[Any]]:
        """FROM and WHERE of a filtered list. With a query, its status decides which statuses
        are listed (`include_rejected` widens the default, accepted, to any). `finding_kinds`:
        only messages with a finding of one of these kinds (implies findings_only)."""
        clauses: list[str] = []
        params: list[Any] = []
        if query:
            compiled = compile_query(
                query, self.caps, self._pending_matcher(query), include_rejected=include_rejected
            )
            clauses += compiled.clauses
            params += compiled.params
        elif not include_rejected:
            clauses.append("messages.status = 'accepted'")
        if findings_only or finding_kinds:
            # A message without findings is passed over without its JSON being read.
            clauses.append("messages.finding_count > 0")
        if finding_kinds:
            clauses.append(finding_clause(list(finding_kinds), params))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return f" FROM messages{where}", params

    @store_errors
    def list_messages(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        query: Query | None = None,
        findings_only: bool = False,
        include_rejected: bool = False,
        finding_kinds: Sequence[str] = (),
        below: int = 0,
    ) -> list[MessageRecord]:
        """Newest first; `below`: only ids below it (a page after the one that ended there)."""
        sql, params = self._filtered(query, findings_only, include_rejected, finding_kinds)
        if below:
            sql += (" AND " if " WHERE " in sql else " WHERE ") + "messages.id < ?"
            params.append(below)
        rows = self.conn.execute(
            f"SELECT {self._columns}{sql} ORDER BY messages.id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [_message(row) for row in rows]

    @store_errors
    def page_keys(
        self, *, limit: int = 50, offset: int = 0, query: Query | None = None
    ) -> list[tuple[int, bool, str]]:
        """The page `list_messages` would give, as (id, read, tags joined by U+001F) only: what
        of a message may change, for a face that keeps the rest (schema SEARCH_SINCE on)."""
        sql, params = self._filtered(query, False, False, ())
        rows = self.conn.execute(
            "SELECT messages.id, messages.seen, (SELECT group_concat(tag, char(31))"
            f" FROM message_tags WHERE message_id = messages.id){sql}"
            " ORDER BY messages.id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [(row[0], bool(row[1]), row[2] or "") for row in rows]

    @store_errors
    def count_messages(
        self,
        *,
        query: Query | None = None,
        findings_only: bool = False,
        include_rejected: bool = False,
        finding_kinds: Sequence[str] = (),
    ) -> int:
        plain = not (findings_only or include_rejected or finding_kinds)
        if plain and (query is None or (query.status == "accepted" and not query.conditions)):
            return self.message_counts()[0]  # every accepted message: kept, not counted
        sql, params = self._filtered(query, findings_only, include_rejected, finding_kinds)
        return self.conn.execute(f"SELECT count(*){sql}", params).fetchone()[0]

    @store_errors
    def newest_above(self, *, query: Query | None, above: int, limit: int) -> list[MessageRecord]:
        """The newest `limit` messages matching `query` (filtered as `list_messages`) with an
        id above `above`, newest first: the HTTP wait's one read each time the store changes.
        No count: LIMIT stops the scan as soon as enough are found."""
        sql, params = self._filtered(query, False, False)
        sql += (" AND " if " WHERE " in sql else " WHERE ") + "messages.id > ?"
        rows = self.conn.execute(
            f"SELECT {self._columns}{sql} ORDER BY messages.id DESC LIMIT ?",
            (*params, above, limit),
        ).fetchall()
        return [_message(row) for row in rows]

    @store_errors
    def message_index(
        self,
        *,
        query: Query | None = None,
        findings_only: bool = False,
        include_rejected: bool = True,
        above: int = 0,
    ) -> array[int]:
        """Ids of the filtered list in ascending order (8 bytes each), those above `above` only.

        A view pages through a list of any length with it; only the rows on screen are loaded."""
        sql, params = self._filtered(query, findings_only, include_rejected)
        if above:  # (a catch-up: the rowid is the way to the few new rows)
            sql += (" AND " if " WHERE " in sql else " WHERE ") + "messages.id > ?"
            params.append(above)
        # One row, not one per id: Python's sqlite3 gives the GIL up between rows, which lets a
        # busy UI thread stretch 100 000 rows to seconds. No ORDER BY either, so that SQLite
        # can read the ids from a narrow index instead of walking the wide table.
        (joined,) = self.conn.execute(
            f"SELECT group_concat(id) FROM (SELECT messages.id AS id{sql})", params
        ).fetchone()
        return array("q", sorted(map(int, joined.split(","))) if joined else ())

    @store_errors
    def unread_count(self) -> int:
        """Accepted messages not read yet (0 in a store older than SEARCH_SINCE)."""
        return self.message_counts()[1]

    @store_errors
    def message_counts(self) -> tuple[int, int]:
        """(accepted messages, those of them unread): kept by the store's triggers from
        schema SNIPPET_SINCE on (one row read), counted in older stores."""
        if self.version >= SNIPPET_SINCE:
            row = self.conn.execute("SELECT accepted, unread FROM message_counts").fetchone()
            return row[0], row[1]
        accepted = self.conn.execute(
            "SELECT count(*) FROM messages WHERE status = 'accepted'"
        ).fetchone()[0]
        if self.version < SEARCH_SINCE:
            return accepted, 0
        unread = self.conn.execute(
            "SELECT count(*) FROM messages WHERE seen = 0 AND status = 'accepted'"
        ).fetchone()[0]
        return accepted, unread

    @store_errors
    def index_progress(self) -> tuple[int, int]:
        """(messages whose text the search index holds, all messages). Until they are equal,
        searches cover the newest PENDING_WINDOW of the others by reading them (`unsearched`
        says how many are beyond that)."""
        (total,) = self.conn.execute("SELECT count(*) FROM messages").fetchone()
        if not self.caps.search:
            return 0, total
        (waiting,) = self.conn.execute(
            f"SELECT count(*) FROM messages WHERE indexed < {BODY_INDEXED}"
        ).fetchone()
        return total - waiting, total

    @store_errors
    def unsearched(self, query: Query | None = None) -> int:
        """Messages `query` (None: any text search) could not fully look into: not indexed yet
        and older than the newest PENDING_WINDOW of those, when it has words or attachment:
        (fields are read for every message the index lacks). 0 nearly always; a face says so
        when it is not."""
        indexed, total = self.index_progress()
        waiting = total - indexed
        beyond_fields = max(0, waiting - PENDING_FIELDS)
        if query is not None and not needs_index(query):
            return beyond_fields if needs_fields(query) else 0
        skipped = self._pending.skipped if self._pending is not None else 0
        return max(beyond_fields, max(0, waiting - PENDING_WINDOW) + skipped)

    @store_errors
    def messages_by_id(self, ids: Iterable[int]) -> dict[int, MessageRecord]:
        wanted = list(ids)
        found: dict[int, MessageRecord] = {}
        for start in range(0, len(wanted), 500):  # SQLite's parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {self._columns} FROM messages WHERE id IN ({marks})", chunk
            ):
                found[row[0]] = _message(row)
        return found

    @store_errors
    def snippets(self, ids: Iterable[int]) -> dict[int, str]:
        """Mailpit's snippet of each message that has one made (schema SNIPPET_SINCE: when it
        was indexed); the others are missing from the answer."""
        wanted = list(ids)
        if not wanted or self.version < SNIPPET_SINCE:
            return {}
        found: dict[int, str] = {}
        for start in range(0, len(wanted), 500):  # SQLite's parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self.conn.execute(
                    f"SELECT id, snippet FROM messages WHERE id IN ({marks})"
                    " AND snippet IS NOT NULL",
                    chunk,
                ).fetchall()
            )
        return found

    @store_errors
    def tag_counts(self) -> dict[str, int]:
        """Every tag with how many messages hold it, by name (one spelling per tag)."""
        if self.version < SEARCH_SINCE:
            return {}
        rows = self.conn.execute(
            "SELECT min(tag), count(*) FROM message_tags GROUP BY tag ORDER BY min(tag)"
        )
        return {tag: count for tag, count in rows}

    @store_errors
    def first_id(self) -> int | None:
        return self.conn.execute("SELECT min(id) FROM messages").fetchone()[0]

    @store_errors
    def deletions(self) -> int:
        """How many times messages were deleted (not counting retention's pruning); 0 in a store
        of an older schema, which does not count them (until its server migrates it)."""
        if self.version < DELETIONS_SINCE:
            return 0
        return self.conn.execute("SELECT deletions FROM store_state").fetchone()[0]

    @store_errors
    def serving(self) -> Serving:
        """Who serves the store (its row, written at start) and whether a server runs now
        (it holds the lock beside the store; tested without waiting for it)."""
        running = server_running(self.path)
        if self.version < SCHEMA_VERSION:
            # A server may have migrated the store since this reader opened it (a viewer
            # attached to an old store, then a new server): one PRAGMA per poll, until it has.
            self.version = check_version(self.conn, self.path)
        if self.version < PROGRESS_SINCE:
            return Serving(running, [], None)
        row = self.conn.execute("SELECT addresses, max_messages, started_at FROM server").fetchone()
        if row is None:
            return Serving(running, [], None)
        addresses = [(str(label), str(host), int(port)) for label, host, port in json.loads(row[0])]
        return Serving(running, addresses, row[1], row[2])

    @store_errors
    def data_version(self) -> int:
        """Changes whenever another connection (a server, a CLI) commits to the store."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    @store_errors
    def latest_id(self) -> int | None:
        row = self.conn.execute("SELECT max(id) FROM messages").fetchone()
        return row[0]

    @store_errors
    def get_message(self, message_id: int) -> MessageRecord | None:
        row = self.conn.execute(
            f"SELECT {self._columns} FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        return _message(row) if row else None

    @store_errors
    def get_raw(self, message_id: int) -> bytes | None:
        row = self.conn.execute(
            "SELECT raw FROM message_raw WHERE id = ?", (message_id,)
        ).fetchone()
        return bytes(row[0]) if row else None

    @store_errors
    def raw_piece(self, message_id: int, start: int, size: int) -> tuple[int, bytes] | None:
        """The raw message's length and `size` bytes of it from `start`, read from the blob
        without the rest (a download of a large message holds a piece, not the whole); None
        when there is no such message (deleted since)."""
        try:
            with self.conn.blobopen("message_raw", "raw", message_id, readonly=True) as blob:
                length = len(blob)
                blob.seek(min(start, length))
                return length, blob.read(size)
        except sqlite3.OperationalError:  # no such row
            return None

    @store_errors
    def get_parsed(self, message_id: int) -> ParsedMessage | None:
        raw = self.get_raw(message_id)
        return None if raw is None else parse_message(raw)

    @store_errors
    def message_ids(self) -> list[int]:
        return [row[0] for row in self.conn.execute("SELECT id FROM messages ORDER BY id")]

    @store_errors
    def releases(self, message_id: int) -> list[ReleaseRecord]:
        """The releases tried of a message (to the [relay] server), oldest first; none in a
        store older than RELEASES_SINCE (until a server of this version migrates it)."""
        if self.version < RELEASES_SINCE:
            # A server may have migrated the store since this reader opened it.
            self.version = check_version(self.conn, self.path)
            if self.version < RELEASES_SINCE:
                return []
        from mailsink.relay import ReleaseRecord  # (the CLI's reads need no relay otherwise)

        rows = self.conn.execute(
            "SELECT id, message_id, at, trigger, upstream, mail_from, recipients, outcome, code,"
            " reply, refused, attempt FROM releases WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
        return [
            ReleaseRecord(
                id=row[0],
                message_id=row[1],
                at=row[2],
                trigger=row[3],
                upstream=row[4],
                mail_from=row[5],
                recipients=tuple(json.loads(row[6])),
                outcome=row[7],
                code=row[8],
                reply=row[9],
                refused=dict(json.loads(row[10])),
                attempt=row[11],
            )
            for row in rows
        ]

    # ---- sessions

    @store_errors
    def list_sessions(
        self, *, limit: int = 50, offset: int = 0, with_refusals: bool = False
    ) -> list[SessionRecord]:
        """Newest first; `with_refusals`: only those in which the server refused something
        (none in a store older than REFUSALS_SINCE, which did not count them)."""
        if with_refusals and self.version < REFUSALS_SINCE:
            return []
        where = " WHERE refusals > 0" if with_refusals else ""
        rows = self.conn.execute(
            f"SELECT id FROM sessions{where} ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [s for (sid,) in rows if (s := self.get_session(sid, with_events=False))]

    @store_errors
    def get_session(self, session_id: int, *, with_events: bool = True) -> SessionRecord | None:
        state = "state" if self.version >= PROGRESS_SINCE else "NULL"
        refusals = "refusals, last_refusal" if self.version >= REFUSALS_SINCE else "0, NULL"
        row = self.conn.execute(
            "SELECT id, started_at, ended_at, peer, helo, tls, auth_user, end_reason,"
            f" message_count, last_reply, faults, {state}, {refusals} FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        message_ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
            )
        ]
        events: list[tuple[int, str, str]] = []
        if with_events:
            for (chunk,) in self.conn.execute(
                "SELECT events FROM transcript_chunks WHERE session_id = ? ORDER BY first_seq",
                (session_id,),
            ):
                events.extend(tuple(event) for event in json.loads(chunk))
        return SessionRecord(
            id=row[0],
            started_at=row[1],
            ended_at=row[2],
            peer=row[3],
            helo=row[4],
            tls=bool(row[5]),
            auth_user=row[6],
            end_reason=row[7],
            message_count=row[8],
            last_reply=row[9],
            faults=row[10],
            message_ids=message_ids,
            events=events,
            state=row[11],
            refusals=row[12],
            last_refusal=row[13],
        )

    @store_errors
    def session_events(self, session_id: int, after_seq: int = 0) -> list[SessionEvent]:
        """The session's transcript events numbered above `after_seq`: (seq, at ms, direction,
        text). Only the chunks that hold them are read."""
        rows = self.conn.execute(
            "SELECT first_seq, events FROM transcript_chunks WHERE session_id = ? AND first_seq >="
            " (SELECT coalesce(max(first_seq), 0) FROM transcript_chunks"
            "  WHERE session_id = ? AND first_seq <= ?) ORDER BY first_seq",
            (session_id, session_id, after_seq + 1),
        )
        events: list[SessionEvent] = []
        for first_seq, chunk in rows:
            for seq, (at, direction, text) in enumerate(json.loads(chunk), first_seq):
                if seq > after_seq:
                    events.append((seq, at, direction, text))
        return events
