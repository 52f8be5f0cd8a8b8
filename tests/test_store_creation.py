"""A new store is the one the migrations make, whether they ran on it or it was written from the
bytes of the first new store of the process (what a test suite's second and later fixtures get,
issue 16); a file that is already there is never replaced."""

from __future__ import annotations

import contextlib
import os
import smtplib
import sqlite3
from pathlib import Path

import pytest

from mailsink.query import parse_query
from mailsink.store import Reader, Store, schema
from mailsink.testing import RunningSink


@pytest.fixture
def no_image(monkeypatch):
    """A process that has made no store yet: the next new one is migrated."""
    monkeypatch.setattr(schema, "_NEW_STORES", {})
    return schema._NEW_STORES


def _contents(path: Path) -> dict[str, object]:
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
    in_the_way = tmp_path / f"mail.db.{os.getpid()}.new"  # (as a crash would leave it)
    in_the_way.write_bytes(b"not mine")
    Store(str(path)).close()
    assert _contents(path) == _contents(tmp_path / "first.db")
    assert in_the_way.read_bytes() == b"not mine"
