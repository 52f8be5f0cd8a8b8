"""The store on its own: group commit, schema versions, failures that must not acknowledge."""

from __future__ import annotations

import asyncio
import operator
import os
import smtplib
import sqlite3
import time
from functools import partial

import pytest
from conftest import RawClient, message, run_cli

from mailsink.mail.envelope import Envelope
from mailsink.store import (
    SCHEMA_VERSION,
    IncomingMessage,
    Reader,
    Store,
    StoreError,
    StoreLocked,
    operations,
    run_here,
)
from mailsink.store.operations import insert_message, insert_session, update_session


def write(n):
    """An operation storing message `n` (subject and receive time both n)."""
    raw = f"Subject: {n}\r\n\r\n".encode()
    return partial(insert_message, message=IncomingMessage(1, Envelope("a@x.test", []), raw, n))


def test_operations_waiting_together_commit_together(tmp_path):
    path = str(tmp_path / "batch.db")
    store = Store(path)
    blocker = sqlite3.connect(path, isolation_level=None)

    async def burst():
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits on this lock ...
        first = asyncio.ensure_future(store.run(write(0)))
        await asyncio.sleep(0.2)
        rest = [asyncio.ensure_future(store.run(write(n))) for n in range(1, 50)]
        await asyncio.sleep(0.1)
        blocker.execute("ROLLBACK")  # ... while 49 more operations queue up behind it
        return await asyncio.gather(first, *rest)

    before = store.commits
    ids = [stored.id for stored in asyncio.run(burst())]
    assert len(set(ids)) == 50
    assert store.commits - before <= 2  # the first alone, then the other 49 in one transaction
    store.close()
    blocker.close()


def test_schema_version_is_recorded_and_a_newer_store_is_refused(tmp_path):
    path = str(tmp_path / "v.db")
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    Store(path).close()  # reopening an up-to-date store migrates nothing and works
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade mailsink"):
        Store(path)
    result = run_cli("list", "--db", path)
    assert result.code == 1 and "upgrade mailsink" in result.err and result.err.count("\n") == 1


def test_one_server_per_store(tmp_path):
    path = str(tmp_path / "locked.db")
    first = Store(path)
    with pytest.raises(StoreLocked, match="another mailsink server"):
        Store(path)
    first.close()
    Store(path).close()


def test_a_failed_commit_is_answered_451_and_the_session_goes_on(sink):
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], message(subject="before"))
    # Break the store under the running server: the next insert fails inside the writer.
    saboteur = sqlite3.connect(sink.db, isolation_level=None)
    saboteur.execute("DROP TABLE message_raw")
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    raw.command("DATA")
    assert raw.command(message(subject="lost") + b".")[0].startswith("451 4.3.0")
    assert raw.command("NOOP")[0] == "250 2.0.0 OK"
    assert raw.command("RCPT TO:<c@x.test>")[0].startswith("503")  # the envelope was reset
    raw.close()
    with sink.reader() as reader:
        assert [r.headers["subject"] for r in reader.list_messages()] == ["before"]
    saboteur.close()


def test_a_lowered_cap_is_reached_in_steps_not_one_long_commit(tmp_path):
    store = Store(str(tmp_path / "cap.db"), max_messages=5000)

    def fill(n):
        raw = f"Subject: m{n}\r\n\r\nbody\r\n".encode()
        message = IncomingMessage(1, Envelope("a@x.test", ["b@x.test"]), raw, n)
        return partial(insert_message, message=message)

    # A write that changes nothing: session 1 exists once the messages are in.
    noop = partial(insert_session, session_id=1, started_at=0, peer="p")

    async def run():
        await asyncio.gather(*(store.run(fill(n)) for n in range(2200)))
        store.max_messages = 100  # as a config reload would
        counts = []
        for _ in range(4):
            await store.run(noop)
            with Reader(store.path) as reader:
                counts.append(reader.count_messages())
        return counts

    assert asyncio.run(run()) == [1200, 200, 100, 100]
    with Reader(store.path) as reader:
        assert [r.headers["subject"] for r in reader.list_messages(limit=1)] == ["m2199"]
    # The search index's rows of the pruned messages go when the writer is idle.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with Reader(store.path) as reader:
            left = reader.conn.execute("SELECT count(*) FROM message_fields").fetchone()[0]
        if left == 100:
            break
        time.sleep(0.05)
    assert left == 100
    store.close()


def test_a_failing_operation_takes_nothing_else_in_its_batch_with_it(tmp_path):
    bad = partial(update_session, session_id=1, events=[], started_at=0, peer="p", color="red")
    shared = []
    # Three tries, each on a store of its own: on a loaded machine the writer process may be
    # scheduled between the three sends and begin a batch with the first alone. Every try must
    # isolate the failure; at least one must have put all three in one commit.
    for attempt in range(3):
        path = str(tmp_path / f"isolated{attempt}.db")
        store = Store(path)
        blocker = sqlite3.connect(path, isolation_level=None)

        async def burst(store=store, blocker=blocker):
            blocker.execute("BEGIN IMMEDIATE")  # everything below queues up and commits together
            futures = [asyncio.ensure_future(store.run(op)) for op in (write(0), bad, write(1))]
            await asyncio.sleep(0.2)
            blocker.execute("ROLLBACK")
            return await asyncio.gather(*futures, return_exceptions=True)

        before = store.commits
        first, failure, second = asyncio.run(burst())
        shared.append(store.commits - before == 1)
        assert isinstance(failure, ValueError) and "color" in str(failure)  # its own type
        with Reader(path) as reader:
            assert [r.headers["subject"] for r in reader.list_messages()] == ["1", "0"]
            assert [first.id, second.id] == [1, 2]
        store.close()
        blocker.close()
        if shared[-1]:
            break
    assert any(shared), "the three operations never shared a commit"


def test_an_operation_the_writer_process_cannot_receive_is_refused_at_once(tmp_path):
    store = Store(str(tmp_path / "closure.db"))

    async def run():
        with pytest.raises(StoreError, match="must pickle"):
            await store.run(lambda conn: conn.execute("DELETE FROM messages"))
        return await store.run(partial(insert_session, session_id=7, started_at=0, peer="p"))

    assert asyncio.run(run()) is None  # and the store goes on working
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.submit(partial(insert_session, session_id=8, started_at=0, peer="p"))


def test_closing_with_a_long_queue_from_the_loop_neither_deadlocks_nor_loses_writes(tmp_path):
    # Both socket buffers fill up: answers the server has not read, requests it has not sent.
    path = str(tmp_path / "queue.db")
    store = Store(path)
    count = 200_000

    async def queue_then_close():
        for n in range(1, count + 1):
            store.submit(partial(insert_session, session_id=n, started_at=n, peer="p" * 100))
            if n % 1000 == 0:
                await asyncio.sleep(0)
        started = time.monotonic()
        store.close()  # on the loop's own thread
        return time.monotonic() - started

    assert asyncio.run(queue_then_close()) < 20
    with Reader(path) as reader:
        assert reader.conn.execute("SELECT count(*) FROM sessions").fetchone() == (count,)


def writer_cannot_import_this(conn):  # the writer process has no tests/ on its path
    return "never"


def test_an_operation_the_writer_cannot_load_fails_alone(tmp_path):
    store = Store(str(tmp_path / "import.db"))
    writer = store.writer_pid

    async def run():
        results = await asyncio.gather(
            store.run(writer_cannot_import_this),
            store.run(operator.methodcaller("execute", "SELECT 1")),  # a Cursor: no way back
            store.run(partial(insert_session, session_id=3, started_at=0, peer="p")),
            return_exceptions=True,
        )
        return results

    cannot_load, cannot_return, fine = asyncio.run(run())
    assert isinstance(cannot_load, StoreError) and "cannot load" in str(cannot_load)
    assert isinstance(cannot_return, StoreError) and "must pickle" in str(cannot_return)
    assert fine is None
    assert store.writer_pid == writer  # nothing had to be restarted
    store.close()


# ---- one write path: the writer process, or run_here where no server writes


def ended(session_id):
    """An operation writing session `session_id`, ended."""
    fields = {"end_reason": "quit", "ended_at": 1}
    return partial(
        update_session, session_id=session_id, events=[], started_at=0, peer="p", **fields
    )


def test_a_reader_refuses_writes(tmp_path):
    path = str(tmp_path / "read.db")
    store = Store(path)
    asyncio.run(store.run(write(1)))
    store.close()
    with Reader(path) as reader:
        for statement in ("DELETE FROM messages", "UPDATE store_state SET deletions = 7"):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.conn.execute(statement)
        assert reader.count_messages() == 1 and reader.deletions() == 0
    assert not any(hasattr(Reader, name) for name in ("clear", "delete_message", "delete_messages"))


def test_deletions_and_clear_are_writer_operations(tmp_path):
    path = str(tmp_path / "delete.db")
    store = Store(path)

    async def scenario():
        await asyncio.gather(*(store.run(write(n)) for n in range(1, 11)))  # messages 1..10
        await store.run(partial(insert_session, session_id=1, started_at=0, peer="p"))
        for session_id in (2, 3):
            await store.run(ended(session_id))  # finished, without a message
        await store.run(partial(insert_session, session_id=4, started_at=0, peer="p"))  # open
        commits = store.commits
        # A long list in one call: ids that were never there count for nothing.
        deleted = await store.delete_messages(range(1, 3000, 2))
        assert (deleted, store.commits) == (5, commits + 1)  # committed by the writer
        assert await store.delete_message(2) is True
        assert await store.delete_message(2) is False
        assert await store.delete_idle_sessions() == 2  # 2 and 3; 1 has messages, 4 is open
        with Reader(path) as reader:
            assert reader.message_ids() == [4, 6, 8, 10]
            assert [s.id for s in reader.list_sessions()] == [4, 1]
            assert reader.deletions() == 3  # each call counted once, for the views
        await store.run(ended(1))
        assert await store.clear() == 4
        with Reader(path) as reader:
            assert reader.message_ids() == [] and reader.deletions() == 4
            assert [s.id for s in reader.list_sessions()] == [4]  # the open session stays

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_flush_returns_once_lazy_writes_have_committed(tmp_path):
    path = str(tmp_path / "flush.db")
    store = Store(path)
    other = sqlite3.connect(path, isolation_level=None)

    def sessions():
        return other.execute("SELECT count(*) FROM sessions").fetchone()[0]

    async def scenario():
        other.execute("BEGIN IMMEDIATE")  # the writer cannot commit until this ends
        for session_id in range(1, 101):  # nobody waits for these
            store.submit(partial(insert_session, session_id=session_id, started_at=0, peer="p"))
        flushed = asyncio.ensure_future(store.flush())
        await asyncio.sleep(0.2)
        assert not flushed.done()
        other.execute("ROLLBACK")
        await flushed
        return sessions()

    try:
        assert asyncio.run(scenario()) == 100
    finally:
        store.close()
        other.close()


def test_run_here_changes_a_store_no_server_uses_in_one_transaction(tmp_path):
    path = str(tmp_path / "here.db")
    store = Store(path)
    asyncio.run(store.run(partial(insert_session, session_id=1, started_at=0, peer="p")))
    store.close()
    for n in range(1, 6):
        raw = f"Subject: {n}\r\n\r\n".encode()
        message = IncomingMessage(1, Envelope("a@x.test", ["b@x.test"]), raw, n)
        assert run_here(path, operations.insert_message, message).id == n
    assert run_here(path, operations.delete_messages, [1, 2, 9]) == 2

    def delete_then_fail(conn):
        operations.clear(conn)
        raise ValueError("halfway")

    with pytest.raises(ValueError, match="halfway"):
        run_here(path, delete_then_fail)
    with Reader(path) as reader:
        assert reader.message_ids() == [3, 4, 5]  # the failed transaction took nothing away
        assert reader.deletions() == 1
    assert run_here(path, operations.clear) == 3
    missing = str(tmp_path / "missing.db")
    with pytest.raises(StoreError, match="no store at"):
        run_here(missing, operations.clear)
    assert not os.path.exists(missing)


def test_run_here_beside_a_running_writer_loses_no_row(tmp_path):
    path = str(tmp_path / "both.db")
    store = Store(path)

    def elsewhere(n):  # as `mailsink clear` or an attached TUI would, in another thread
        raw = f"Subject: here{n}\r\n\r\n".encode()
        message = IncomingMessage(1, Envelope("a@x.test", []), raw, 1000 + n)
        return run_here(path, operations.insert_message, message).id

    async def scenario():
        writes = [store.run(write(n)) for n in range(200)]
        others = [asyncio.to_thread(elsewhere, n) for n in range(20)]
        results = await asyncio.gather(*writes, *others)
        await store.flush()
        return [r.id for r in results[:200]], results[200:]

    try:
        written, here = asyncio.run(scenario())
    finally:
        store.close()
    assert len(set(written) | set(here)) == 220  # every row its own id, none lost
    with Reader(path) as reader:
        subjects = {r.headers["subject"] for r in reader.list_messages(limit=1000)}
    assert subjects == {str(n) for n in range(200)} | {f"here{n}" for n in range(20)}
