"""The CLI's side of issue 14: `list --search` with the query language against a store the real
server filled, its errors, and read state and tags (`show` marks read, `mark`, `tag`)."""

from __future__ import annotations

import contextlib
import json
import os
import smtplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REFUSAL_RULES, downgrade, message, run_cli

import mailsink.store.reader
from mailsink.config import load
from mailsink.store import Reader
from mailsink.testing import RunningSink


def _indexed(reader: Reader) -> bool:
    """Body words are indexed when the writer is idle: waited for, not slept for."""
    indexed, total = reader.index_progress()
    return indexed == total


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """1 from zoe (body: parcel), 2 to bob tagged invoice, 3 rejected from zoe, 4 plain."""
    directory = tmp_path_factory.mktemp("search")
    (directory / "rules.toml").write_text(REFUSAL_RULES)
    settings = load(directory / "rules.toml")
    with RunningSink(directory / "mail.db", settings) as running:
        with smtplib.SMTP(running.host, running.port) as client:
            client.sendmail(
                "zoe@shop.test",
                ["a@x.test"],
                message(sender="Zoe <zoe@shop.test>", subject="Track it", body="Your parcel.\r\n"),
            )
            client.sendmail(
                "billing@shop.test",
                ["bob@y.test"],
                message(to="bob@y.test", subject="Invoice", extra="X-Tags: invoice\r\n"),
            )
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail(
                    "zoe@shop.test",
                    ["a@x.test"],
                    message(sender="zoe@shop.test", subject="reject me"),
                )
            client.sendmail("a@x.test", ["a@x.test"], message(subject="Plain"))
        running.wait_for(_indexed)
        yield running.db


def _ids(db: str, *args: str) -> list[int]:
    result = run_cli("list", "--db", db, "--json", *args)
    assert result.code == 0 and result.err == "", result
    return [summary["id"] for summary in json.loads(result.out)]


def test_list_search_speaks_the_query_language(store):
    assert _ids(store, "--search", "from:zoe") == [1]
    assert _ids(store, "--search", "from:zoe", "--all") == [3, 1]  # --all: rejected too
    assert _ids(store, "--search", "status:rejected") == [3]
    assert _ids(store, "--search", "rcpt:bob@y") == [2]
    assert _ids(store, "--search", "tag:INVOICE") == [2]
    assert _ids(store, "--search", '-from:zoe subject:"invoice"') == [2]
    assert _ids(store, "--search", "parcel") == [1]  # a word of the body
    assert _ids(store, "--search", "is:tagged") == [2]
    assert _ids(store, "--search", "") == [4, 2, 1]  # no query: every accepted message


def test_a_malformed_query_is_one_line_naming_the_term(store):
    for query in ("frm:zoe", "after:someday", "larger:9zz"):
        result = run_cli("list", "--db", store, "--search", query)
        assert (result.code, result.out) == (2, ""), result
        assert result.err.startswith(f"mailsink: search: '{query}'"), result
        assert result.err.count("\n") == 1 and "Traceback" not in result.err


def test_a_search_the_index_could_not_cover_says_so_for_field_terms_too(tmp_path, monkeypatch):
    with RunningSink(tmp_path / "mail.db") as running:
        with smtplib.SMTP(running.host, running.port) as client:
            for subject in ("one", "two", "three"):
                client.sendmail("a@x.test", ["a@x.test"], message(subject=subject))
        running.wait_for(_indexed)
        db = running.db
    with sqlite3.connect(db) as conn:  # as if the writer had not been idle since message 1
        conn.execute("UPDATE messages SET indexed = 0 WHERE id > 1")
        conn.execute("DELETE FROM message_fields WHERE rowid > 1")
        conn.execute("DELETE FROM message_body WHERE rowid > 1")
    # What the index has not reached is searched by reading it, the newest first: all of it.
    assert _ids(db, "--search", "order") == [3, 2, 1]
    assert _ids(db, "--search", "from:shop") == [3, 2, 1]
    # ... up to PENDING_WINDOW messages: one here, so that message 2 is beyond it.
    monkeypatch.setattr(mailsink.store.reader, "PENDING_WINDOW", 1)
    notice = (
        "mailsink: 1 message is not in the search index yet and was not fully searched"
        " (the index covers 1 of 3)\n"
    )
    words = run_cli("list", "--db", db, "--json", "--search", "order")
    assert words.code == 0 and words.err == notice, words
    # A field term is never silently incomplete either: all found, or the same notice.
    fields = run_cli("list", "--db", db, "--json", "--search", "from:shop")
    found = [summary["id"] for summary in json.loads(fields.out)]
    assert (found, fields.err) in (([3, 2, 1], ""), ([3, 1], notice)), fields
    assert run_cli("list", "--db", db, "--search", "after:1d is:unread").err == ""  # no index


def test_show_marks_read_and_the_list_marks_unread_and_tags(store):
    table = run_cli("list", "--db", store).out.splitlines()
    assert table[0].split()[:2] == ["ID", "RECEIVED"] and "TAGS" in table[0]
    row = {line.split()[0]: line for line in table[1:]}
    assert row["2"].split()[1] == "•" and "invoice" in row["2"]
    shown = run_cli("show", "2", "--db", store)
    assert shown.code == 0 and shown.err == "" and "Tags: invoice" in shown.out
    data = json.loads(run_cli("show", "2", "--db", store, "--json").out)
    assert (data["read"], data["tags"]) == (True, ["invoice"])
    row = {line.split()[0]: line for line in run_cli("list", "--db", store).out.splitlines()[1:]}
    assert "•" not in row["2"] and "•" in row["4"]
    run_cli("show", "4", "--db", store, "--session")  # the session: not the message read
    assert _ids(store, "--search", "is:read") == [2]
    marked = run_cli("mark", "2", "--unread", "--db", store)
    assert (marked.code, marked.out) == (0, "marked 1 message(s) unread\n")
    assert _ids(store, "--search", "is:read") == []
    assert run_cli("mark", "4", "777", "--db", store).err == "mailsink: no message 777\n"
    # 1, 2 and the rejected 3: every message
    assert run_cli("mark", "--all", "--db", store).out == "marked 3 message(s) read\n"
    assert _ids(store, "--search", "is:unread", "--all") == []
    assert run_cli("mark", "--unread", "--db", store).code == 2


def _unread_copy(db: str, to: Path) -> str:
    with sqlite3.connect(db) as source, sqlite3.connect(to) as copy:
        source.backup(copy)
        copy.execute("UPDATE messages SET seen = 0")
    return str(to)


def _seen(db: str, message_id: int) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT seen FROM messages WHERE id = ?", (message_id,)).fetchone()[0]


def test_show_on_a_store_that_cannot_record_it_shows_the_message_unread(store, tmp_path):
    archive = _unread_copy(store, tmp_path / "archive.db")
    os.chmod(archive, 0o444)  # for root too: its mode says read-only, whatever os.access says
    shown = run_cli("show", "1", "--db", archive, "--json")
    assert (shown.code, shown.err, json.loads(shown.out)["read"]) == (0, "", False), shown
    assert _seen(archive, 1) == 0
    refusing = _unread_copy(store, tmp_path / "refusing.db")
    with sqlite3.connect(refusing) as conn:  # another program's trigger: the write fails
        conn.execute(
            "CREATE TRIGGER no_writes BEFORE UPDATE ON messages BEGIN"
            " SELECT RAISE(ABORT, 'read-only by policy\x1b[2J'); END"
        )
    shown = run_cli("show", "1", "--db", refusing)
    assert shown.code == 0 and "Message 1" in shown.out, shown
    assert shown.err == "mailsink: message 1 stays unread: read-only by policy␛[2J\n"
    assert _seen(refusing, 1) == 0
    # (A lock held past the busy timeout gives the same line, 10 s later: not waited for here.)


def test_query_errors_quote_the_query_with_escapes_made_visible(store):
    for query in ("frm:\x1b[31mzoe", "after:\x1b]0;x\x07", "header:\x1b="):
        result = run_cli("list", "--db", store, "--search", query)
        assert result.code == 2 and result.err.startswith("mailsink: search: "), result
        assert "\x1b" not in result.err and "\x07" not in result.err
    assert "␛[31mzoe" in run_cli("list", "--db", store, "--search", "frm:\x1b[31mzoe").err


def test_tag_adds_and_removes_and_names_what_is_not_there(store):
    result = run_cli(
        "tag", "1", "2", "--add", "urgent", "-a", " q4  2026", "-r", "INVOICE", "--db", store
    )
    assert (result.code, result.err) == (0, ""), result
    assert result.out == "1: q4 2026, urgent\n2: q4 2026, urgent\n"
    again = run_cli("tag", "1", "999", "--add", "Urgent", "--db", store)
    assert again.code == 1 and again.out == "1: q4 2026, urgent  (unchanged)\n"
    assert again.err == "mailsink: no message 999\n"
    assert _ids(store, "--search", "tag:urgent") == [2, 1]
    assert json.loads(run_cli("list", "--db", store, "--json", "-n", "1").out)[0]["tags"] == []
    for bad in (["--add", "!!!"], ["--add", "x", "--remove", "X"], []):
        refused = run_cli("tag", "1", *bad, "--db", store)
        assert refused.code == 2 and refused.err.startswith("mailsink: tag: "), refused
        assert refused.err.count("\n") == 1
    assert _ids(store, "--search", "tag:x") == []


def test_a_tag_cleaning_would_change_or_one_too_many_is_refused(store):
    for given in ("Straße", "café", "q4/2026", "a\tb"):
        refused = run_cli("tag", "4", "--add", "ok", "--add", given, "--db", store)
        assert (refused.code, refused.out) == (2, ""), refused
        assert refused.err == (
            f"mailsink: tag: {given!r} is not a tag: tags hold ASCII letters, digits, spaces"
            " and - _ . @ (as Mailpit's) (see mailsink --help)\n"
        )
    many = [f"--add=t{number}" for number in range(51)]
    refused = run_cli("tag", "4", *many, "--db", store)
    assert (refused.code, refused.out) == (2, "")  # never silently cut to 50
    assert "51 tags given: a message holds at most 50" in refused.err
    full = run_cli("tag", "4", *many[:50], "--db", store)
    assert full.code == 0 and full.out.count(",") == 49, full
    over = run_cli("tag", "4", "--add", "one more", "-a", "t0", "--db", store)
    assert (over.code, over.out) == (1, "") and over.err == (
        "mailsink: tag: message 4 would have 51 tags: a message holds at most 50;"
        " remove some first\n"
    )
    swap = run_cli("tag", "4", "--add", "one more", "--remove", "t0", "--db", store)
    tags = swap.out.removeprefix("4: ").rstrip("\n").split(", ")
    assert swap.code == 0 and len(tags) == 50 and "one more" in tags and "t0" not in tags, swap


def test_an_old_store_is_shown_but_keeps_no_read_state_or_tags(tmp_path: Path, monkeypatch):
    with RunningSink(tmp_path / "mail.db") as running:
        with smtplib.SMTP(running.host, running.port) as client:
            client.sendmail("a@x.test", ["a@x.test"], message())
            client.sendmail("a@x.test", ["a@x.test"], message(subject="two"))
        db = running.db
    downgrade(db, 5)
    shown = run_cli("show", "1", "--db", db)
    assert (shown.code, shown.err) == (0, ""), shown
    tagged = run_cli("tag", "1", "--add", "x", "--db", db)
    assert tagged.code == 1 and tagged.err.startswith(
        "mailsink: this store was written before mailsink kept read state and tags (schema 5)"
    )
    monkeypatch.setattr(mailsink.store.reader, "PENDING_WINDOW", 1)  # message 1 beyond it
    assert run_cli("list", "--db", db, "--search", "order").err == (
        "mailsink: 1 message was not fully searched: this store has no search index yet"
        " (schema 5; a server of this version builds it)\n"
    )
