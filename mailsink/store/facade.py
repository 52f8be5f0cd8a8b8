"""The Store: the server's side of a store, which hands every change to the writer process.

It holds the lock that makes one server per store, prepares the store (migration, WAL, the
sessions a dead server left open) and owns the writer (writer.WriterProcess).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import IO, Any

from mailsink.clock import now_ms
from mailsink.errors import StoreError, StoreLocked
from mailsink.store import operations
from mailsink.store.operations import Operation, end_lost_sessions, kept_size
from mailsink.store.schema import (
    MEMORY,
    default_path,
    lock_path,
    open_for_writing,
    remove_stale_copies,
    resolve_path,
    store_error,
)
from mailsink.store.writer import WriterProcess

log = logging.getLogger("mailsink.store")


class Store:
    """The write side of a store: open it (migrating), hand the writer process operations, close.

    Every change to the rows of a store that a server serves goes through here, to the one
    writer: messages and sessions (`submit`, `run` with operations.*), and the deletions
    (`delete_messages`, `clear`, ...). Submitting needs a running event loop."""

    def __init__(self, path: str | None, max_messages: int = 50_000):
        self.path = resolve_path(path)
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if self.path == MEMORY:
            # "Keep nothing": a file in a temporary directory, removed on close. An SQLite
            # in-memory database would lock readers out of the writer's tables (shared cache).
            self._temporary = tempfile.TemporaryDirectory(prefix="mailsink-")
            self.path = str(Path(self._temporary.name) / "mailsink.db")
        # The real path: two names for one file (a symlink) are one store.
        real_path = os.path.realpath(self.path)
        self._lock_file = _lock(real_path)  # (creating its directory first)
        prepared: sqlite3.Connection | None = None
        try:
            remove_stale_copies(real_path)  # (under the lock: see there)
            prepared, self._next_session_id, kept = _prepare(self.path, max_messages)
            if any(kept):
                log.warning("%s", _over_limit(self.path, *kept, max_messages))
            self._writer = WriterProcess(self.path, max_messages)
        except BaseException:
            if prepared is not None:
                prepared.close()
            self._lock_file.close()
            if self._temporary is not None:
                self._temporary.cleanup()
            raise
        # Closed only once the writer has the store open: the last connection to close
        # checkpoints the log into the file, syncs it and deletes the log (1.4 ms and two
        # fsyncs of every start, issue 16), which the writer would then make again.
        prepared.close()

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

    def begin(self, operation: Operation) -> asyncio.Future[Any]:
        """Queue a write to commit at once; the future gets what the operation returned once
        it has committed (what `run` waits for), also when its first waiter gave up."""
        future = asyncio.get_running_loop().create_future()
        self._writer.submit(operation, future)
        return future

    async def run(self, operation: Operation) -> Any:
        """Queue a write and wait until it has committed; returns what the operation returned."""
        return await self.begin(operation)

    async def delete_messages(self, message_ids: Iterable[int]) -> int:
        """Delete these messages in one transaction, counted as one deletion; returns how many
        were still there. (A long list is best sent a chunk at a time: each chunk a short
        transaction, so that the messages committing beside it do not wait long.)"""
        return await self.run(partial(operations.delete_messages, message_ids=list(message_ids)))

    async def delete_message(self, message_id: int) -> bool:
        """Delete one message; False when it was already gone."""
        return await self.delete_messages([message_id]) > 0

    async def delete_idle_sessions(self) -> int:
        """Delete the finished sessions that have no message left; returns how many went."""
        return await self.run(operations.delete_idle_sessions)

    async def clear(self) -> int:
        """Delete every message and every finished session (open ones stay: their connection
        goes on writing to them); returns how many messages went."""
        return await self.run(operations.clear)

    async def flush(self) -> None:
        """Return once every operation submitted before this call has committed (or failed),
        those that nobody awaits (`submit`) included. It submits an operation that changes
        nothing and waits for it: the writer runs operations in the order they were submitted
        and commits each batch whole, so this one's commit is theirs too. If the writer
        process died meanwhile, what it had not answered is lost or failed (operations with a
        future fail with WriterLost; those without one are gone) and this returns once the
        next writer has answered, or raises WriterLost if the death is noticed while it waits."""
        await self.run(operations.no_change)

    def close(self) -> None:
        self._writer.close()
        self._lock_file.close()
        if self._temporary is not None:
            self._temporary.cleanup()


def _over_limit(path: str, messages: int, sessions: int, limit: int) -> str:
    """What a store found over max_messages when it opens is told: nothing of it is pruned
    (the writer keeps the size it has, see writer._Retention)."""
    held = f"{messages:,} messages" if messages else f"{sessions:,} sessions"
    return (
        f"store {path} holds {held}, more than max_messages ({limit:,}): keeping them;"
        " from now on each new one replaces the oldest (`mailsink clear` empties the store,"
        " a higher [storage] max_messages keeps more)"
    )


def _prepare(path: str, max_messages: int) -> tuple[sqlite3.Connection, int, tuple[int, int]]:
    """Migrate the store, put it in WAL mode and end the sessions a server that died left
    open; returns the connection (the caller closes it), the next session id and how many
    messages and sessions it keeps beyond `max_messages` (see kept_size)."""
    conn = open_for_writing(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # This server holds the lock, so no other serves the store.
        lost = end_lost_sessions(conn, now_ms())
        conn.execute("COMMIT")
        if lost:
            log.info("%d session(s) left open by a server that stopped: ended as server_lost", lost)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sessions'").fetchone()
        kept = [
            kept_size(conn, table, count, max_messages)[0]
            for table in ("messages", "sessions")
            for (count,) in [conn.execute(f"SELECT count(*) FROM {table}").fetchone()]
        ]
        return conn, (row[0] if row else 0) + 1, (kept[0], kept[1])
    except sqlite3.Error as error:
        conn.close()
        raise store_error(error, path) from None
    except BaseException:
        conn.close()
        raise


def _lock(path: str) -> IO[str]:
    """One server per store: session ids are handed out in memory. `path` is the real path
    (see schema.lock_path)."""
    directory = Path(path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the directory {directory}: {error.strerror}") from None
    try:
        lock_file = open(lock_path(path), "w")  # noqa: SIM115 - held open for the store's lifetime
    except OSError as error:
        raise StoreError(
            f"cannot create {lock_path(path)} (a server keeps it beside its store):"
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
