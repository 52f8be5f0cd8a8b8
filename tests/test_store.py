"""The store on its own: group commit, schema versions, failures that must not acknowledge."""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3

import pytest
from conftest import RawClient, message, run_cli

from mailsink.store.db import SCHEMA_VERSION, Store, StoreError, StoreLocked


def test_operations_waiting_together_commit_together(tmp_path):
    path = str(tmp_path / "batch.db")
    store = Store(path)
    blocker = sqlite3.connect(path, isolation_level=None)

    def write(n):
        return lambda conn: (
            conn.execute(
                "INSERT INTO sessions (started_at, peer) VALUES (?, ?)", (n, "p")
            ).lastrowid
        )

    async def burst():
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits on this lock ...
        first = asyncio.ensure_future(store.run(write(0)))
        await asyncio.sleep(0.2)
        rest = [asyncio.ensure_future(store.run(write(n))) for n in range(1, 50)]
        await asyncio.sleep(0.1)
        blocker.execute("ROLLBACK")  # ... while 49 more operations queue up behind it
        return await asyncio.gather(first, *rest)

    before = store.commits
    ids = asyncio.run(burst())
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
    from mailsink.mail.envelope import Envelope
    from mailsink.store.db import IncomingMessage, insert_message
    from mailsink.store.queries import Reader

    store = Store(str(tmp_path / "cap.db"), max_messages=5000)

    def fill(conn):
        for n in range(2200):
            raw = f"Subject: m{n}\r\n\r\nbody\r\n".encode()
            insert_message(conn, IncomingMessage(1, Envelope("a@x.test", ["b@x.test"]), raw, n))

    def noop(conn):
        return None

    async def run():
        await store.run(fill)
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
