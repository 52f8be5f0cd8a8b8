"""The store on its own: group commit, schema versions, failures that must not acknowledge."""

from __future__ import annotations

import asyncio
import operator
import smtplib
import sqlite3
import time
from functools import partial

import pytest
from conftest import RawClient, message, run_cli

from mailsink.mail.envelope import Envelope
from mailsink.store.db import (
    SCHEMA_VERSION,
    IncomingMessage,
    Store,
    StoreError,
    StoreLocked,
    insert_message,
    insert_session,
    update_session,
)
from mailsink.store.reader import Reader


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
        assert reader.conn.execute("SELECT count(*) FROM message_search").fetchone() == (100,)
    store.close()


def test_a_failing_operation_takes_nothing_else_in_its_batch_with_it(tmp_path):
    path = str(tmp_path / "isolated.db")
    store = Store(path)
    blocker = sqlite3.connect(path, isolation_level=None)

    bad = partial(update_session, session_id=1, events=[], started_at=0, peer="p", color="red")

    async def burst():
        blocker.execute("BEGIN IMMEDIATE")  # everything below queues up and commits together
        futures = [asyncio.ensure_future(store.run(op)) for op in (write(0), bad, write(1))]
        await asyncio.sleep(0.2)
        blocker.execute("ROLLBACK")
        return await asyncio.gather(*futures, return_exceptions=True)

    before = store.commits
    first, failure, second = asyncio.run(burst())
    assert store.commits - before == 1
    assert isinstance(failure, ValueError) and "color" in str(failure)  # its own type, unpickled
    with Reader(path) as reader:
        assert [r.headers["subject"] for r in reader.list_messages()] == ["1", "0"]
        assert [first.id, second.id] == [1, 2]
    store.close()
    blocker.close()


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
