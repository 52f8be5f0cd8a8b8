"""A new store is the one the migrations make, whether they ran on it or it was written from the
bytes of the first new store of the process (what a test suite's second and later fixtures get,
issue 16); a file that is already there is never replaced, and what a store that is gone left
beside its name (a log, a journal) is dealt with as SQLite deals with it when it makes a store."""

from __future__ import annotations

import contextlib
import os
import smtplib
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mailsink.query import parse_query
from mailsink.store import Reader, Store, schema
from mailsink.testing import RunningSink


@pytest.fixture
def no_image(monkeypatch):
    """A process that has made no store yet: the next new one is migrated."""
    monkeypatch.setattr(schema, "_NEW_STORES", {})
    return schema._NEW_STORES


def _contents(path: Path) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        tables = [row[1] for row in conn.execute("SELECT * FROM sqlite_master WHERE type='table'")]
        return {
            "schema": master.fetchall(),
            "rows": {t: conn.execute(f'SELECT * FROM "{t}"').fetchall() for t in sorted(tables)},
            "pragmas": [
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("user_version", "journal_mode", "page_size", "auto_vacuum", "encoding")
            ],
            "integrity": conn.execute("PRAGMA integrity_check").fetchall(),
        }


def test_the_second_new_store_is_written_as_the_first_was_migrated(tmp_path, no_image, monkeypatch):
    found_at: list[int] = []  # the schema version each store had when it was opened
    migrate = schema.migrate

    def noting(conn: sqlite3.Connection) -> None:
        found_at.append(conn.execute("PRAGMA user_version").fetchone()[0])
        migrate(conn)

    monkeypatch.setattr(schema, "migrate", noting)
    migrated, written = tmp_path / "one" / "mail.db", tmp_path / "two" / "mail.db"
    Store(str(migrated)).close()
    assert list(no_image) == [schema.fts5_available()]  # its bytes, for the next new store
    Store(str(written)).close()
    assert found_at == [0, schema.SCHEMA_VERSION]  # the second had nothing left to migrate

    assert _contents(written) == _contents(migrated)
    assert _contents(written)["pragmas"][:2] == [schema.SCHEMA_VERSION, "wal"]
    assert _contents(written)["integrity"] == [("ok",)]
    # Whole, under its name, and nothing else left beside it.
    assert sorted(os.listdir(written.parent)) == ["mail.db", "mail.db.lock"]


def test_a_written_store_takes_mail_and_finds_it(tmp_path, no_image):
    Store(str(tmp_path / "first.db")).close()
    with (
        RunningSink(tmp_path / "second.db") as running,
        smtplib.SMTP(running.host, running.port, timeout=10) as client,
    ):
        client.sendmail("app@x.test", ["ann@x.test"], b"Subject: kiwi\r\n\r\nbody\r\n")
    with Reader(str(tmp_path / "second.db")) as reader:
        found = reader.list_messages(query=parse_query("subject:kiwi"))
    assert [m.headers["subject"] for m in found] == ["kiwi"]


def test_a_store_without_fts5_is_migrated_not_written_from_an_fts5_one(
    tmp_path, no_image, monkeypatch
):
    Store(str(tmp_path / "fts.db")).close()
    monkeypatch.setattr(schema, "FTS5", False)
    Store(str(tmp_path / "plain.db")).close()
    Store(str(tmp_path / "plain-again.db")).close()  # from the image of its own kind

    for name in ("plain.db", "plain-again.db"):
        sql = dict((row[1], row[3]) for row in _contents(tmp_path / name)["schema"])
        assert "VIRTUAL" not in sql["message_fields"] and "VIRTUAL" not in sql["message_body"]
    assert _contents(tmp_path / "plain-again.db") == _contents(tmp_path / "plain.db")
    assert sorted(no_image) == [False, True]


def test_a_file_already_there_is_migrated_in_place_never_replaced(tmp_path, no_image):
    Store(str(tmp_path / "first.db")).close()
    empty = tmp_path / "empty.db"
    empty.touch()
    inode = empty.stat().st_ino
    Store(str(empty)).close()
    assert empty.stat().st_ino == inode
    assert _contents(empty)["schema"] == _contents(tmp_path / "first.db")["schema"]


def test_where_the_bytes_cannot_be_written_the_store_is_migrated(tmp_path, no_image):
    Store(str(tmp_path / "first.db")).close()
    path = tmp_path / "mail.db"
    in_the_way = tmp_path / f"mail.db.{os.getpid()}.new"  # (not a file: nobody's to remove)
    in_the_way.mkdir()
    Store(str(path)).close()
    assert _contents(path) == _contents(tmp_path / "first.db")
    assert in_the_way.is_dir()


# ---- what a store that is gone left beside its name


@pytest.fixture(scope="module")
def leftovers(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The files beside a store as a crash leaves them: those of a running server's store
    (what kill -9 leaves: on disk, nothing more is written), after mail ("killed"), and after
    that mail was checkpointed into the store and one more came ("grown": a few pages of a
    store far bigger than a new one); and the rollback journal of a database whose writer
    died in a transaction (a hot one)."""
    folder = tmp_path_factory.mktemp("leftovers")
    found: dict[str, dict[str, bytes]] = {}

    def taken(path: Path) -> dict[str, bytes]:
        return {end: Path(f"{path}{end}").read_bytes() for end in ("-wal", "-shm")}

    with (
        RunningSink(folder / "mail.db", http=False) as running,
        smtplib.SMTP(running.host, running.port, timeout=10) as client,
    ):
        for number in range(3):
            body = f"Subject: old {number}\r\n\r\n{'removed ' * 12_000}\r\n".encode()
            client.sendmail("app@x.test", ["ann@x.test"], body)
        found["killed"] = taken(folder / "mail.db")
        with contextlib.closing(sqlite3.connect(folder / "mail.db")) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        client.sendmail("app@x.test", ["ann@x.test"], b"Subject: late\r\n\r\nx\r\n")
        found["grown"] = taken(folder / "mail.db")

    other = folder / "other.db"
    with contextlib.closing(sqlite3.connect(other, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [("a" * 3000,)] * 300)
        conn.execute("PRAGMA cache_size = 1")  # (the change spills into the file, so that
        conn.execute("BEGIN")  # only the journal has what it was: a hot journal)
        conn.execute("UPDATE t SET x = 'b'")
        found["journal"] = {"-journal": Path(f"{other}-journal").read_bytes()}
        conn.execute("ROLLBACK")
    return found


@pytest.mark.parametrize(
    ("source", "left"),
    [
        ("killed", ("-wal", "-shm")),  # a server killed, then `rm mail.db`
        ("killed", ("-wal",)),
        ("grown", ("-wal", "-shm")),  # (its log's pages on the written bytes: a damaged store)
        ("journal", ("-journal",)),  # another program's database, killed, then removed
        ("killed", ("-shm",)),
    ],
    ids=["killed-wal-shm", "killed-wal", "grown-wal-shm", "journal", "killed-shm"],
)
def test_what_a_removed_store_left_is_dealt_with_as_migration_does(
    tmp_path, no_image, monkeypatch, leftovers, source, left
):
    Store(str(tmp_path / "first" / "mail.db")).close()  # (the process's first: its bytes kept)
    assert no_image
    made = {}
    for how in ("migrated", "second"):
        path = tmp_path / how / "mail.db"
        path.parent.mkdir()
        for end in left:
            Path(f"{path}{end}").write_bytes(leftovers[source][end])
        with monkeypatch.context() as patched:
            if how == "migrated":  # as a process's first new store, by SQLite and migrate
                patched.setattr(schema, "_NEW_STORES", {})
            Store(str(path)).close()
        listing = sorted(os.listdir(path.parent))
        made[how] = (listing, _contents(path))

    clean = _contents(tmp_path / "first" / "mail.db")
    assert made["second"] == made["migrated"] == (["mail.db", "mail.db.lock"], clean)
    assert clean["rows"]["messages"] == clean["rows"]["sessions"] == []


def test_a_new_store_beside_leftovers_takes_mail_and_keeps_none_of_the_old(
    tmp_path, no_image, leftovers
):
    Store(str(tmp_path / "first.db")).close()
    path = tmp_path / "build" / "mail.db"
    path.parent.mkdir()
    for end, data in leftovers["killed"].items():
        Path(f"{path}{end}").write_bytes(data)
    with (
        RunningSink(path, http=False) as running,
        smtplib.SMTP(running.host, running.port, timeout=10) as client,
    ):
        client.sendmail("app@x.test", ["ann@x.test"], b"Subject: new\r\n\r\nbody\r\n")
    with Reader(str(path)) as reader:
        assert [m.headers["subject"] for m in reader.list_messages()] == ["new"]


# ---- what a crash while the bytes are written leaves


def test_a_copy_a_crash_left_beside_the_store_goes_at_its_next_start(tmp_path, no_image):
    Store(str(tmp_path / "first.db")).close()
    path = tmp_path / "mail.db"
    Store(str(path)).close()  # written from the bytes
    ended = subprocess.Popen(["true"])
    ended.wait()  # (its pid: a process that is gone)
    # A crash between the link and the unlink: a second name of the live store.
    second_name = tmp_path / f"mail.db.{ended.pid}.new"
    os.link(path, second_name)
    # A crash while writing, in an earlier process that had this one's pid (a container's).
    half_written = tmp_path / f"mail.db.{os.getpid()}.new"
    half_written.write_bytes(b"SQLite format 3\x00")
    # Neither this store's nor a dead process's: left.
    running_process = tmp_path / f"mail.db.{os.getppid()}.new"
    other_store = tmp_path / f"first.db.{ended.pid}.new"
    not_a_copy = tmp_path / f"mail.db.{ended.pid}.new.bak"
    for kept in (running_process, other_store, not_a_copy):
        kept.write_bytes(b"kept")
    inode = path.stat().st_ino

    Store(str(path)).close()

    assert not second_name.exists() and not half_written.exists()
    assert path.stat().st_ino == inode and path.stat().st_nlink == 1
    assert all(kept.read_bytes() == b"kept" for kept in (running_process, other_store, not_a_copy))
    assert _contents(path)["integrity"] == [("ok",)]


def test_a_store_named_through_a_symlink_writes_its_copy_under_the_real_name(
    tmp_path, no_image, monkeypatch
):
    Store(str(tmp_path / "first.db")).close()
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    names: list[str] = []
    link = os.link

    def noting(source, target, **options):
        names.append(os.fspath(source))
        return link(source, target, **options)

    with monkeypatch.context() as patched:
        patched.setattr(os, "link", noting)
        Store(str(tmp_path / "link" / "mail.db")).close()
    # (The server of this store finds it there, whatever name it is given: see the crash above.)
    assert names == [str(real / f"mail.db.{os.getpid()}.new")]
    assert sorted(os.listdir(real)) == ["mail.db", "mail.db.lock"]
