"""The store's one writer, in a process of its own, with group commit.

The writer parses each message's headers, derives its findings and runs the SQL: most of the CPU
a message costs. In a thread it would share the server's GIL with the event loop; in a process
it runs on another core while the loop goes on with the SMTP sessions.

The server side (`WriterProcess`) pickles each operation (a module-level function, usually a
`functools.partial` of one, so that it pickles by name) and writes it to a socket from the
event loop, without blocking; the loop also reads the answers, so no thread of the server waits
for the GIL on the way. The process takes every operation that is waiting, runs them in one
transaction, commits once (WAL, synchronous=FULL), and only then answers. So a DATA reply of 250
is sent after its message is on disk, and a burst of messages costs one fsync, not one each.

If the process dies, the operations it had not answered fail with WriterLost and a new process
takes over. Such an operation may still have committed (the process died between its COMMIT and
its answer): a caller that must not answer 451 for a message that is stored looks it up
(`operations.committed_message`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import pickle
import select
import selectors
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from mailsink.errors import StoreError, WriterLost
from mailsink.mail.text_index import snippet
from mailsink.store.operations import (
    INSERT_BUDGET,
    INSERT_ROWS,
    PURGE_BUDGET,
    SNIPPET_BATCH,
    IndexRow,
    Operation,
    index_messages,
    insert_index,
    insert_snippet,
    kept_size,
    pending_index,
    prepare_index,
    purge_search,
    unsnipped,
)
from mailsink.store.schema import connect, user_facing
from mailsink.store.spawn import Spawner
from mailsink.store.wire import BrokenFrame, Frames, frame

log = logging.getLogger("mailsink.store")

START_TIMEOUT = 30.0  # seconds for a new writer process to open the store
STOP_TIMEOUT = 60.0  # seconds for it to finish what is queued when the store closes
# Writes nobody waits for (a session's start and end) wait this long for one that somebody
# does, so that they share its commit instead of paying an fsync of their own.
LAZY_COMMIT = 0.05
# The search indexes' rows are made by a process of the writer's (_extractor_main: the MIME
# parse, never inside a transaction) and written by the writer a few at a time, in each of its
# commits and when it is idle. Rows made and not written yet: about this many at most.
READY_ROWS = 64
INDEX_PROGRESS_EVERY = 10.0  # seconds between the log's lines about a big backlog
# An idle piece of indexing that failed (another program holds the write lock past the busy
# timeout, the disk is full, ...) keeps its work and is tried again this much later, or at
# the next commit, whichever comes first: not at once, over and over.
INDEX_RETRY_AFTER = 1.0

# What goes over the socket (framed by wire.py). To the process: (id, operation, urgent),
# ("max_messages", n, lowered), or None for "finish and stop". Back: ("ready",) or
# ("failed", why) once, then after each commit ("done", commits, [(id, result, error), ...],
# cut, (limits seen, cutting)), where cut is None or (max_messages, messages, sessions): a cut
# the user asked for began, of that many rows.
Result = tuple[int, Any, BaseException | None]
_READ_SIZE = 1024 * 1024
_IOV_MAX = 512  # buffers per sendmsg; Linux takes up to 1024

# The helper that forks writer processes (spawn.py) imports this module once, by name, the
# address checks that the first message would otherwise wait for, and the HTML-to-text of the
# extractor's first parse (4 ms of CPU in every store's extractor otherwise: issue 16).
_spawner = Spawner(f"{__name__}:writer_main", preload=("email_validator", "mailsink.mail.html"))


# ---- in the writer process ---------------------------------------------------------------------


def writer_main(path: str, max_messages: int, channel: socket.socket) -> None:
    """The writer process: open the store, then commit what arrives until told to stop."""
    # Ctrl-C in a terminal reaches the whole process group; the server decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked before this process opens the store: a fork's SQLite would share its locks.
    extractor = _start_extractor(path, channel)
    channel.setblocking(True)
    try:
        writer = Writer(connect(path), max_messages, channel, path, extractor)
    except (sqlite3.Error, StoreError) as error:
        channel.sendall(b"".join(frame(("failed", str(error)))))
        return
    channel.sendall(b"".join(frame(("ready",))))
    writer.run()


class Writer:
    """Runs operations in batches: those waiting together commit together."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        max_messages: int,
        channel: socket.socket,
        path: str = "",
        extractor: tuple[socket.socket, int] | None = None,
    ):
        self._conn = conn
        self.path = path  # for errors that name the store's file
        self._channel = channel
        self._frames = Frames()
        self._deaf = False  # the server went away: nothing more is answered
        self.max_messages = max_messages
        self.commits = 0
        # (message_search: only a store migrated from before schema 6 has rows in it. The
        # search indexes' rows are purged when the writer is idle: operations.LEFT_BEHIND.)
        children = [("message_raw", "id"), ("message_search", "id")]
        children += [("message_tags", "message_id")]
        self._messages = _Retention(conn, max_messages, "messages", children)
        self._sessions = _Retention(
            conn,
            max_messages,
            "sessions",
            [("transcript_chunks", "session_id")],
            "end_reason IS NOT NULL",
        )
        self._cut: tuple[int, int, int] | None = None  # for the next answer
        self._limits = 0  # max_messages changes read, told with each answer (see WriterProcess)
        self._indexer = _Indexer(conn, path, extractor)

    def run(self) -> None:
        batch: list[tuple[int, Operation, bool]] = []
        urgent = stopping = False
        deadline = 0.0  # when the oldest waiting operation that nobody awaits must commit
        indexer = self._indexer
        while not stopping:
            if batch:
                timeout: float | None = max(0.0, deadline - time.monotonic())
            else:
                timeout = indexer.due()
            watched = [self._channel, *indexer.watched]
            readable, _, _ = select.select(watched, [], [], timeout)
            if len(readable) > (self._channel in readable):
                indexer.receive()
            requests = self._waiting(0.0) if self._channel in readable else []
            if requests is None:  # the server is gone: nothing more can arrive
                break
            if not requests and not batch:
                indexer.step(self._arrived)
                continue
            refused: list[Result] = []
            for request in requests:
                if request is None:
                    stopping = True
                    break
                if isinstance(request, BrokenFrame):
                    why = f"the store's writer cannot load this operation: {request.reason}"
                    refused.append((request.tag, None, StoreError(why)))
                    continue
                if request[0] == "max_messages":
                    _, self.max_messages, lowered = request
                    self._limits += 1
                    if lowered:
                        self._messages.lower()
                        self._sessions.lower()
                    continue
                if not batch:
                    deadline = time.monotonic() + LAZY_COMMIT
                batch.append(request)
                urgent = urgent or request[2]
            if refused:
                self._answer(refused)
            if batch and (urgent or time.monotonic() >= deadline):
                self._answer(self._commit(batch))
                batch, urgent = [], False
                indexer.committed()
        # The extractor's end (the kernel freeing its memory, about a millisecond) goes on
        # beside the last commit; it is reaped before the store closes, so that this
        # connection is the last one and its close checkpoints the log into the file.
        indexer.stop()
        if batch:
            self._answer(self._commit(batch))
        indexer.close()
        self._conn.close()

    def _waiting(self, timeout: float | None) -> list[Any] | None:
        """Waits up to `timeout` (None: for ever) for a request, then takes all that have
        arrived; None at the end of the stream."""
        channel, requests = self._channel, []
        channel.settimeout(timeout)
        try:
            data = channel.recv(_READ_SIZE)
        except (TimeoutError, BlockingIOError):  # 0 s left: the socket does not block at all
            return []
        except ConnectionResetError:  # the server died with answers unread: still the end
            return None
        channel.settimeout(0)
        while data:
            requests += self._frames.feed(data)
            try:
                data = channel.recv(_READ_SIZE)
            except BlockingIOError:
                if requests:
                    return requests
                channel.settimeout(None)  # only part of a request is here: wait for the rest
                data = self._recv_or_end()
                channel.settimeout(0)
            except ConnectionResetError:
                data = b""
        return requests or None  # the end of the stream

    def _arrived(self) -> bool:
        """Whether a request is waiting (without reading it)."""
        readable, _, _ = select.select([self._channel], [], [], 0)
        return bool(readable)

    def _recv_or_end(self) -> bytes:
        try:
            return self._channel.recv(_READ_SIZE)
        except ConnectionResetError:
            return b""

    def _answer(self, results: list[Result]) -> None:
        if self._deaf:
            return  # the server is gone; what is still queued gets committed all the same
        cut, self._cut = self._cut, None
        cutting = self._messages.cutting or self._sessions.cutting
        cutting_state = (self._limits, cutting)
        answer = ("done", self.commits, results, cut, cutting_state)
        if _unpicklable(answer) is not None:  # what the server could not load would wedge it
            portable = [_portable_result(r) for r in results]
            answer = ("done", self.commits, portable, cut, cutting_state)
        self._channel.settimeout(None)
        try:
            self._channel.sendall(b"".join(frame(answer)))
        except (BrokenPipeError, ConnectionResetError):
            self._deaf = True

    def _commit(self, batch: list[tuple[int, Operation, bool]]) -> list[Result]:
        """One transaction for the batch. Operations run bare; only if one fails is the batch
        run again with a savepoint around each, so that the failure takes nothing else with it
        (two statements fewer per operation when nothing fails, which is nearly always)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            results: list[Result]
            try:
                results = [
                    (request_id, operation(conn), None) for request_id, operation, _ in batch
                ]
            except Exception:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                results = [self._isolated(conn, request) for request in batch]
            cut = (
                self._messages.prune(conn, self.max_messages),
                self._sessions.prune(conn, self.max_messages),
            )
            self._indexer.piggyback(conn)
            conn.execute("COMMIT")
            self.commits += 1
            if any(cut):
                self._cut = (self.max_messages, *cut)
        except Exception as error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._messages.rearm()  # a cut that began in the rolled-back transaction is
            self._sessions.rearm()  # told when it begins again
            failure = _portable(user_facing(error, self.path))
            results = [(request_id, None, failure) for request_id, _, _ in batch]
        return results

    def _isolated(self, conn: sqlite3.Connection, request: tuple[int, Operation, bool]) -> Result:
        request_id, operation, _ = request
        conn.execute("SAVEPOINT op")
        try:
            outcome = operation(conn)
        except Exception as error:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return request_id, None, _portable(user_facing(error, self.path))
        conn.execute("RELEASE op")
        return request_id, outcome, None


def _extractor_main(path: str, sock: socket.socket) -> None:
    """The extractor process: makes the index rows of the messages the indexes lack
    (operations.prepare_index), newest first, with a read-only connection of its own, and sends
    them to the writer, which writes them (_Indexer). The MIME parse (1-2 ms a message, up to a
    second for hostile input) thus runs on another core, never in the writer's transactions
    nor holding its GIL. Its socket's buffer bounds what is made ahead: a send waits while the
    writer has READY_ROWS unwritten. With none to make, it makes the snippets a store indexed
    before schema 7 lacks (_make_snippets), one batch at a time: the next only once the writer
    has written that one (its "snipped"), so they never hold up index rows nor pile up in the
    writer. Ends when the writer closes the socket or dies; a writer that stops ends it
    (_Indexer.stop)."""
    sock.setblocking(True)
    try:
        conn = connect(path)
        conn.execute("PRAGMA query_only = ON")
    except (sqlite3.Error, StoreError) as error:
        log.error("search index: %s", user_facing(error, path))
        return
    frames = Frames()
    handed: set[int] = set()  # sent, and maybe not committed yet
    poked = True
    snipping = False  # a batch of snippets is with the writer, not written yet
    while True:
        sock.settimeout(0 if poked else None)
        try:
            data = sock.recv(_READ_SIZE)
        except (BlockingIOError, TimeoutError):
            data = None
        except OSError:
            return
        if data == b"":
            return  # the writer is gone
        for item in frames.feed(data) if data else ():
            if item == ("poke",):
                poked = True
            elif item == ("snipped",):
                snipping, poked = False, True
            elif isinstance(item, tuple) and item[0] == "dropped":
                handed.difference_update(item[1])
        if not poked:
            continue
        try:
            made = _make_rows(conn, sock, handed)
            if not made and not snipping:
                made = _make_snippets(conn, sock)
                snipping = made > 0
        except sqlite3.Error as error:
            log.error("search index: %s", user_facing(error, path))
            made = 0
        except OSError:
            return
        if not made:
            sock.sendall(b"".join(frame(("caught_up",))))
            poked = False


_PAGE = 16  # messages the extractor looks up at a time


def _start_extractor(path: str, channel: socket.socket) -> tuple[socket.socket, int] | None:
    """Fork the extractor process (_extractor_main); None if it cannot be."""
    ours, theirs = socket.socketpair()
    try:
        pid = os.fork()
    except OSError as error:
        log.error("search index: no indexing process: %s", error)
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            ours.close()
            channel.close()  # the server sees the writer's end when the writer goes
            _extractor_main(path, theirs)
        finally:
            os._exit(0)
    theirs.close()
    ours.setblocking(False)
    return ours, pid


def _make_rows(conn: sqlite3.Connection, sock: socket.socket, handed: set[int]) -> int:
    if handed:  # those written (or deleted) since are done with
        marks = ",".join("?" * len(handed))
        handed &= {
            row[0]
            for row in conn.execute(
                f"SELECT id FROM messages WHERE id IN ({marks}) AND indexed < 2", list(handed)
            )
        }
    made = 0
    for message_id, envelope, headers, indexed in pending_index(conn, _PAGE, handed):
        found = conn.execute("SELECT raw FROM message_raw WHERE id = ?", (message_id,)).fetchone()
        if found is None:
            continue  # deleted since
        row = prepare_index(message_id, envelope, headers, indexed, bytes(found[0]))
        handed.add(message_id)
        sock.settimeout(None)
        sock.sendall(b"".join(frame(("row", row))))
        made += 1
    return made


def _make_snippets(conn: sqlite3.Connection, sock: socket.socket) -> int:
    """Sends ("snippets", [(id, snippet), ...]) for up to SNIPPET_BATCH of the newest indexed
    messages without one; stops early when the writer says something (a poke: new mail to
    index first). Returns how many it sent."""
    made: list[tuple[int, str]] = []
    for message_id in unsnipped(conn, SNIPPET_BATCH):
        if made and select.select([sock], [], [], 0)[0]:
            break
        found = conn.execute("SELECT raw FROM message_raw WHERE id = ?", (message_id,)).fetchone()
        # (No raw: "" as index_messages makes of it, so that it is not looked up for ever.)
        made.append((message_id, snippet(bytes(found[0]) if found else b"")))
    if made:
        sock.settimeout(None)
        sock.sendall(b"".join(frame(("snippets", made))))
    return len(made)


class _Indexer:
    """Writes the rows the extractor process makes (_extractor_main) into the search indexes:
    a few in each commit of the writer's (so the index keeps up under steady traffic) and more
    when it is idle, a bounded piece per transaction; says how far a big backlog has come every
    INDEX_PROGRESS_EVERY s. With nothing left to index, it purges the index rows of messages
    retention and `clear` removed (operations.purge_search), a few milliseconds at a time.
    The extractor's batch of snippets for old mail (_make_snippets) is written when idle too,
    after ready rows and before the purge; "snipped" tells it that the batch is in."""

    TOLD = 1000  # a backlog bigger than this is logged (a small burst is not news)

    def __init__(
        self, conn: sqlite3.Connection, path: str, extractor: tuple[socket.socket, int] | None
    ):
        self._conn = conn
        self.path = path
        self.ready: collections.deque[IndexRow] = collections.deque()
        self.snippets: list[tuple[int, str]] = []  # (id, snippet): one batch at most
        self.caught_up = False  # the extractor found nothing more to make (at its last look)
        self._idle = False  # ... and waits for a poke (it starts looking by itself)
        self._missed = False  # a commit came while it was not idle (it may not have seen it)
        self._frames = Frames()
        self._purge = True  # there may be index rows of deleted messages
        self._unindexed = True  # (without an extractor) messages may wait for the index
        self._total = 0  # the backlog when this run of indexing began (for the log)
        self._done = 0
        self._told = 0.0
        self._retry_at = 0.0  # (time.monotonic) an idle step that failed waits until then
        self.sock: socket.socket | None
        # (None: no extractor; then the writer parses in its idle time, as a last resort.)
        self.sock, self._pid = extractor if extractor is not None else (None, 0)

    @property
    def watched(self) -> list[socket.socket]:
        """The extractor's socket, while there is room for what it sends."""
        return [self.sock] if self.sock is not None and len(self.ready) < READY_ROWS else []

    def has_work(self) -> bool:
        if self.sock is None and self._unindexed:
            return True
        return bool(self.ready) or bool(self.snippets) or (self._purge and self.caught_up)

    def due(self) -> float | None:
        """Seconds until `step` has something to do (0: now); None: nothing until more comes."""
        if not self.has_work():
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def receive(self) -> None:
        """Takes what the extractor has sent (up to READY_ROWS rows waiting)."""
        while self.sock is not None and len(self.ready) < READY_ROWS:
            try:
                data = self.sock.recv(_READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                log.error("search index: the indexing process ended; new mail is not indexed")
                self._close_socket()
                return
            for item in self._frames.feed(data):
                if isinstance(item, tuple) and item[0] == "row":
                    self.ready.append(item[1])
                    self.caught_up = False
                elif isinstance(item, tuple) and item[0] == "snippets":
                    self.snippets.extend(item[1])
                elif item == ("caught_up",):
                    self.caught_up = self._idle = True
                    if self._missed:  # a commit since its last look: look again
                        self._poke()

    def _send(self, item: Any) -> None:
        if self.sock is None:
            return
        # Never waits: a full buffer holds pokes enough already.
        with contextlib.suppress(BlockingIOError, OSError):
            self.sock.send(b"".join(frame(item)))

    def committed(self) -> None:
        """After each commit of operations: new messages, or deletions, may be there."""
        self._purge = self._unindexed = True
        self.caught_up = False
        self._retry_at = 0.0  # the lock was to be had: a failed step need not wait any more
        # Only an idle extractor needs a poke (a busy one looks again by itself): one at a time,
        # so its socket never fills with them and a send is never cut short mid-frame.
        if self._idle:
            self._poke()
        else:
            self._missed = True

    def _poke(self) -> None:
        self._idle = self._missed = False
        self._send(("poke",))

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stop(self) -> None:
        """Ends the extractor: it only reads, so nothing is lost if a parse is cut short. At
        once, rather than after it has seen its socket close (5-10 ms of every store's close,
        in 5 ms naps: issue 16); `close` reaps it."""
        self._close_socket()
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)  # no zombie outlives the writer
            self._pid = 0

    def _insert(self, conn: sqlite3.Connection, stop: Callable[[], bool] | None) -> int:
        started, done, taken = time.monotonic(), 0, []
        try:
            for _ in range(INSERT_ROWS):
                if not self.ready or time.monotonic() - started >= INSERT_BUDGET:
                    break
                if done and stop is not None and stop():
                    break
                row = self.ready.popleft()
                taken.append(row.id)
                done += insert_index(conn, row)
        except BaseException:
            self._send(("dropped", taken))  # made again later
            raise
        return done

    def _snip(self, conn: sqlite3.Connection, stop: Callable[[], bool]) -> int:
        """Writes snippets from the front of the batch, within the same bounds as index rows;
        returns how many of it were taken (written, or skipped: their message is gone)."""
        started, taken = time.monotonic(), 0
        for message_id, text in self.snippets[:INSERT_ROWS]:
            if taken and (time.monotonic() - started >= INSERT_BUDGET or stop()):
                break
            insert_snippet(conn, message_id, text)
            taken += 1
        return taken

    def piggyback(self, conn: sqlite3.Connection) -> None:
        """A few ready rows in a commit of the writer's, in a savepoint of their own: a failure
        takes nothing else with it."""
        if not self.ready:
            return
        conn.execute("SAVEPOINT ix")
        try:
            self._done += self._insert(conn, None)
        except Exception as error:
            conn.execute("ROLLBACK TO ix")
            log.error("search index: %s", user_facing(error, self.path))
        conn.execute("RELEASE ix")

    def step(self, stop: Callable[[], bool]) -> None:
        """When the writer is idle: ready rows, else (all made) the purge, one transaction."""
        conn = self._conn
        alone = self.sock is None and self._unindexed  # no extractor: parse here, a few
        ready = bool(self.ready) or alone
        snipping = not ready and bool(self.snippets)
        snipped = 0
        if not ready and not snipping and not (self._purge and self.caught_up):
            return
        if time.monotonic() < self._retry_at:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if alone:
                    result = index_messages(conn, limit=8, stop=stop)
                    done, purged, self._unindexed = result.done, 0, result.more
                    self.caught_up = not result.more
                elif ready:
                    done, purged = self._insert(conn, stop), 0
                elif snipping:
                    done, purged = 0, 0
                    snipped = self._snip(conn, stop)
                else:
                    done, purged = 0, purge_search(conn, stop=stop, budget=PURGE_BUDGET)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except Exception as error:  # the store is locked, the disk is full, ...
            log.error("search index: %s", user_facing(error, self.path))
            self._retry_at = time.monotonic() + INDEX_RETRY_AFTER  # the work stays to do
            return
        if snipping:
            del self.snippets[:snipped]  # (only now: a failed step keeps them to write)
            if not self.snippets:
                self._send(("snipped",))
            return
        if not ready:
            self._purge = purged > 0
        self._done += done
        self._progress()

    def _progress(self) -> None:
        now = time.monotonic()
        finished = self.caught_up and not self.ready
        if self._total and now - self._told < INDEX_PROGRESS_EVERY and not finished:
            return
        (left,) = self._conn.execute("SELECT count(*) FROM messages WHERE indexed < 2").fetchone()
        if not self._total:
            if left:
                self._total, self._told = self._done + left, now
            return
        if left and self._total > self.TOLD:
            log.info("search index: %d of %d messages", self._done, self._total)
            self._told = now
        elif not left:
            if self._total > self.TOLD:
                log.info("search index: all %d messages indexed", self._done)
            self._total = self._done = 0


def _unpicklable(value: Any) -> Exception | None:
    """Why `value` would not survive the way to the server and back into an object, or None."""
    try:
        pickle.loads(pickle.dumps(value))
    except Exception as problem:
        return problem
    return None


def _portable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling, else a StoreError that says what it was."""
    if _unpicklable(error) is not None:
        return StoreError(f"{type(error).__name__}: {error}")
    return error


def _portable_result(result: Result) -> Result:
    request_id, outcome, _ = result
    if (problem := _unpicklable(outcome)) is not None:
        return request_id, None, StoreError(f"a store operation's result must pickle: {problem}")
    return result


class _Retention:
    """Prunes one table to a cap without counting it on every commit.

    Ids only grow, so the rows added since the last exact count are at most the id range since then;
    an exact count is taken only when that estimate passes the cap (plus 1% slack, so that a full
    store prunes in steps rather than on every commit).

    A table found over the cap when the store opens is not cut down: the cap is then the size
    it had (`floor`, recorded in store_state: operations.kept_size), so each new row replaces
    the oldest one, and a store someone else filled is never emptied by opening it with a smaller
    max_messages. The floor follows the table down when rows are deleted (`mailsink clear`),
    and goes when the user lowers max_messages while the server runs (a reload): that cut is
    theirs, and a big one is told (`lower`).
    """

    # Rows deleted per commit at most: a big cut (max_messages lowered by a reload) is spread
    # over several commits instead of holding up one batch of messages for a second.
    STEP = 1000
    # A cut the user asked for of more rows than this is logged (a notice in the TUI).
    TOLD = 100

    def __init__(
        self,
        conn: sqlite3.Connection,
        limit: int,
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
        self.floor, self._recorded = kept_size(conn, table, self.known_count, limit)
        self._telling = False  # the limit was lowered: tell the cut when it begins
        self.cutting = False  # a lowered limit's cut is under way (over the limit, no floor)
        self._told = False  # this commit's prune told one (rearm: it was rolled back)

    def lower(self) -> None:
        """max_messages was lowered while running: the table is cut down to it."""
        self.floor = 0
        self._telling = True
        self.cutting = True  # until the next prune has counted

    def rearm(self) -> None:
        """The commit was rolled back: what it recorded and told is to do again."""
        self._telling = self._telling or self._told
        self._told = False
        self._recorded = -1

    def prune(self, conn: sqlite3.Connection, limit: int) -> int:
        """Returns how many rows are over the limit when a cut the user asked for begins, if
        more than TOLD (the first STEP of them go now); else 0."""
        self._told = False
        told = self._prune(conn, limit)
        if self.floor != self._recorded:
            conn.execute(f"UPDATE store_state SET kept_{self.table} = ?", (self.floor,))
            self._recorded = self.floor
        return told

    def _prune(self, conn: sqlite3.Connection, configured: int) -> int:
        if self.floor <= configured:
            self.floor = 0  # raised to it or above: nothing is kept beyond the limit any more
        limit = max(configured, self.floor)
        max_id = conn.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}").fetchone()[0]
        if self.known_count + (max_id - self.known_max_id) <= limit + limit // 100:
            self._telling = self.cutting = False  # nothing to cut (or too little to count)
            return 0
        count = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
        if count < self.floor:  # rows were deleted: the store has shrunk below its old size
            self.floor = count if count > configured else 0
            limit = max(configured, self.floor)
        told = 0
        if self._telling:
            self._telling = False
            self._told = count - limit > self.TOLD
            told = count - limit if self._told else 0
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
        self.cutting = self.floor == 0 and count > limit
        return told


# ---- in the server -----------------------------------------------------------------------------


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class WriterProcess:
    """The server's side of the writer: submit operations, get their results on the loop.

    Submitting needs a running event loop: the socket is driven by that loop's reader and
    writer callbacks. `close` may come from any thread.
    """

    def __init__(self, path: str, max_messages: int):
        self.path = path
        self._max_messages = max_messages
        # By a reload: the store is cut down to it (see _Retention); told again to a writer
        # that replaces one which died before the cut was done.
        self._lowered = False
        self._limits_sent = 0  # max_messages changes sent to the current writer process
        self.commits = 0  # transactions committed: fewer than operations when batching works
        self._next_id = 0
        self._closing = False
        self._refusal = "the store is closed"  # why submit fails once closing
        self._ended = threading.Event()  # the process has gone and its answers are read
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start()

    @property
    def max_messages(self) -> int:
        return self._max_messages

    @max_messages.setter
    def max_messages(self, value: int) -> None:
        """A limit lowered while running is the user's choice: a store over it is cut down to
        it. One raised only ever keeps more."""
        if value == self._max_messages:
            return
        lowered = value < self._max_messages
        self._max_messages = value
        self._lowered = self._lowered or lowered
        self._limits_sent += 1
        self._send(frame(("max_messages", value, lowered)))

    @property
    def pid(self) -> int:
        return self._pid

    def submit(
        self,
        operation: Operation,
        future: asyncio.Future[Any] | None = None,
        urgent: bool | None = None,
    ) -> None:
        """`future` gets the outcome; `urgent` (by default: with a future) commits the batch at
        once, else the operation waits for the lazy commit (LAZY_COMMIT) like the others."""
        if self._closing:
            raise StoreError(self._refusal)
        self._next_id += 1
        urgent = future is not None if urgent is None else urgent
        try:
            data = frame((self._next_id, operation, urgent), tag=self._next_id)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise StoreError(f"a store operation must pickle: {error}") from None
        self._pending[self._next_id] = future
        self._send(data)

    def close(self) -> None:
        """Finish everything queued, then stop the process."""
        if self._closing:
            return
        self._closing = True
        loop = self._loop
        if loop is not None and loop.is_running() and _running_loop() is not loop:
            # The loop still reads the answers; this thread only waits for the end.
            loop.call_soon_threadsafe(self._send, frame(None))
            finished = self._ended.wait(STOP_TIMEOUT)
        else:
            finished = self._finish_here()
        if not finished:
            log.error("the store's writer did not stop in %.0f s; ending it", STOP_TIMEOUT)
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)

    # ---- the process and its socket

    def _start(self) -> None:
        here, there = socket.socketpair()
        try:
            # Absolute: the helper keeps the directory it started in, not this one.
            pid = _spawner.spawn((os.path.abspath(self.path), self._max_messages), there)
        except BaseException:
            here.close()
            raise
        finally:
            there.close()
        greeting = self._greeting(here)
        if greeting[0] != "ready":
            here.close()
            raise StoreError(f"the store's writer process could not start: {greeting[1]}")
        here.setblocking(False)
        self._pid, self._channel = pid, here
        self._frames: Frames | None = Frames()
        self._outgoing: collections.deque[memoryview] = collections.deque()
        self._pending: dict[int, asyncio.Future[Any] | None] = {}
        self._writing = False
        self._limits_sent = 0
        self._ended.clear()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.add_reader(here.fileno(), self._readable)
        if self._lowered:  # a new writer during a lowered limit's cut: it goes on cutting
            self._limits_sent += 1
            self._send(frame(("max_messages", self._max_messages, True)))

    @staticmethod
    def _greeting(channel: socket.socket) -> tuple[Any, ...]:
        channel.settimeout(START_TIMEOUT)
        frames = Frames()
        while True:
            try:
                data = channel.recv(4096)
            except OSError:  # the timeout included
                return ("failed", "no answer")
            if not data:
                return ("failed", "it ended at once")
            items = frames.feed(data)
            if items:
                return items[0]

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive the socket from this loop (a test may use several loops in turn)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._channel.fileno())
            self._loop.remove_writer(self._channel.fileno())
        self._loop, self._writing = loop, False
        loop.add_reader(self._channel.fileno(), self._readable)

    def _send(self, parts: list[bytes]) -> None:
        self._outgoing.extend(memoryview(part) for part in parts if len(part))
        loop = _running_loop()
        if loop is None:
            return  # sent once a loop submits something, or by close
        if loop is not self._loop:
            self._attach(loop)
        if not self._writing:
            self._writable()

    def _writable(self) -> None:
        try:
            self._send_some()
        except OSError:
            return  # the process is gone: the reader sees the end and fails what it owed
        assert self._loop is not None  # (set by _send before it first calls this)
        if self._outgoing and not self._writing:
            self._loop.add_writer(self._channel.fileno(), self._writable)
            self._writing = True
        elif not self._outgoing and self._writing:
            self._loop.remove_writer(self._channel.fileno())
            self._writing = False

    def _send_some(self) -> None:
        """Send what the socket takes now, several frames per system call."""
        outgoing = self._outgoing
        while outgoing:
            chunks = list(itertools.islice(outgoing, _IOV_MAX))
            try:
                sent = self._channel.sendmsg(chunks)
            except BlockingIOError:
                return
            while outgoing and len(outgoing[0]) <= sent:
                sent -= len(outgoing.popleft())
            if sent:
                outgoing[0] = outgoing[0][sent:]
                return  # the socket is full

    def _readable(self) -> None:
        try:
            data = self._channel.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
        elif self._frames is not None:  # None: an answer was unreadable, the process is ending
            self._read(data)

    def _read(self, data: bytes) -> None:
        assert self._frames is not None
        answers = self._frames.feed(data)
        broken = next((a for a in answers if isinstance(a, BrokenFrame)), None)
        if broken is not None:
            log.error("unreadable answer from the store's writer (%s); replacing it", broken.reason)
            self._frames = None
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)  # its end fails what it owed, then restarts
            return
        self._answers(answers)

    def _answers(self, answers: list[Any]) -> None:
        settled = []
        for _, self.commits, results, cut, (limits_seen, cutting) in answers:
            if limits_seen == self._limits_sent and not cutting:
                self._lowered = False  # the cut is done: a new writer keeps what it finds
            for request_id, outcome, error in results:
                future = self._pending.pop(request_id, None)
                if future is not None:
                    settled.append((future, outcome, error))
                elif error is not None:
                    log.error("store operation failed: %s", error)
            if cut is not None:
                log.warning("%s", _cut_text(*cut))
        _settle(settled)

    def _gone(self) -> None:
        """End of the stream: the process has stopped. Fail what it owed; unless the store is
        closing, start another."""
        loop, channel = self._loop, self._channel
        if loop is not None and not loop.is_closed():
            loop.remove_reader(channel.fileno())
            if self._writing:
                loop.remove_writer(channel.fileno())
        owed = [future for future in self._pending.values() if future is not None]
        self._pending.clear()
        failure = WriterLost("the store's writer process ended before it answered")
        _settle([(future, None, failure) for future in owed])
        try:
            if not self._closing:
                log.error("the store's writer process ended; starting a new one")
                try:
                    self._start()
                    return
                except Exception as error:  # a helper that hangs or fails in any way
                    log.error("%s", error)
                    self._closing = True  # every later write fails: the server answers 451
                    self._refusal = str(error)
            self._ended.set()
        finally:
            # Closed only once the new socket exists, so that it cannot get the same file
            # descriptor number: an event loop may still hold state for the old one (with uvloop,
            # the new socket's answers were then never read, and every session hung).
            channel.close()

    def _finish_here(self) -> bool:
        """Close from the loop's own thread, or with no loop running: waiting is fine here, the
        server is stopping. Sends and reads at once (the process may be blocked sending answers
        while this side still has requests to send). False if it did not finish in time."""
        loop, channel = self._loop, self._channel
        if channel.fileno() < 0:
            return True  # already gone
        if loop is not None and not loop.is_closed():
            loop.remove_reader(channel.fileno())
            loop.remove_writer(channel.fileno())
        self._loop = None  # _gone must not touch the loop's callbacks again
        self._outgoing.extend(memoryview(part) for part in frame(None))
        deadline = time.monotonic() + STOP_TIMEOUT
        finished = False
        with selectors.DefaultSelector() as selector:
            selector.register(channel, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while not finished and (left := deadline - time.monotonic()) > 0:
                for _, events in selector.select(left):
                    try:
                        if events & selectors.EVENT_WRITE:
                            self._send_some()
                            if not self._outgoing:
                                selector.modify(channel, selectors.EVENT_READ)
                        if events & selectors.EVENT_READ:
                            data = channel.recv(_READ_SIZE)
                            finished = not data
                            if data and self._frames is not None:
                                self._read(data)
                    except BlockingIOError:
                        pass
                    except OSError:
                        finished = True  # the process is gone
        self._gone()
        return finished


def _cut_text(limit: int, messages: int, sessions: int) -> str:
    what = " and ".join(
        f"{count:,} oldest {noun}{'' if count == 1 else 's'}"
        for count, noun in ((messages, "message"), (sessions, "session"))
        if count
    )
    step = _Retention.STEP
    steps = f", {step:,} at a time as mail arrives" if max(messages, sessions) > step else ""
    return f"max_messages is now {limit:,}: pruning the {what}{steps}"


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Resolve futures: directly on the running loop, through call_soon_threadsafe on others."""
    here = _running_loop()
    for future, outcome, error in items:
        loop = future.get_loop()
        if loop is here:
            _set(future, outcome, error)
        else:
            with contextlib.suppress(RuntimeError):  # that loop has already closed
                loop.call_soon_threadsafe(_set, future, outcome, error)


def _set(future: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome)
