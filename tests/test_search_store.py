"""The search language against a store filled by the real server: every prefix (and its
negation) on messages built for it, the body and attachment index, messages the index does not
hold yet, deletion, an old store migrated, and the store without FTS5."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REFUSAL_RULES, downgrade

from mailsink.query import parse_query
from mailsink.store import Reader, run_here, schema, search
from mailsink.store import reader as reader_module
from mailsink.store.operations import clear, insert_index, prepare_index
from mailsink.store.search import PENDING_WINDOW, glob_tokens, needs_index
from mailsink.testing import RunningSink

ZOE = (
    "From: =?utf-8?q?Zo=C3=AB_M=C3=BCller?= <zoe@shop.test>\r\n"
    "To: Bob Builder <bob@x.test>\r\nCc: Team <team@x.test>\r\n"
    "Reply-To: Support Desk <support@shop.test>\r\nSubject: Order 1014 shipped\r\n"
    "Message-ID: <abc123@app.test>\r\nX-Mailer: PHPMailer 6.0\r\nX-Tags: signup\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "Please Track it here. Straße and café are closed.\r\n"
)
NEWS = (
    "From: News <hello@news.example>\r\nTo: ann@y.test\r\nSubject: Weekly\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    "<html><body><p>Hello <b>W\xf6rld</b>, read the <i>newsletter</i></p></body></html>\r\n"
)
PDF = base64.encodebytes(b"%PDF-1.7 " * 2500).decode().replace("\n", "\r\n")
INVOICE = (
    "From: Billing <invoices@billing.example>\r\nTo: Carl <carl@z.test>\r\n"
    "Bcc: Audit Header <hbcc@z.test>\r\nSubject: Your invoice\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    "--b1\r\nContent-Type: text/plain\r\n\r\nSee the attached file.\r\n"
    "--b1\r\nContent-Type: application/pdf\r\n"
    'Content-Disposition: attachment; filename="invoice-1014.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\n" + PDF + "--b1--\r\n"
)
REJECTED = "From: x@x.test\r\nTo: y@y.test\r\nSubject: reject me\r\n\r\nTrack it too.\r\n"
GONE = "From: gone@x.test\r\nTo: y@y.test\r\nSubject: Vanishing\r\nX-Tags: doomed\r\n\r\nzebra\r\n"


def send(sink: RunningSink, raw: str, mail_from: str, rcpt: list[str], **login: str) -> None:
    with smtplib.SMTP(sink.host, sink.port, local_hostname=login.pop("helo", None)) as client:
        if login:
            client.login(login["user"], "secret")
        with contextlib.suppress(smtplib.SMTPDataError):  # the one a fault rule rejects
            client.sendmail(mail_from, rcpt, raw.encode())


def fully_indexed(reader: Reader) -> bool:
    indexed, total = reader.index_progress()
    return indexed == total


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningSink, dict[str, int]]]:
    directory = tmp_path_factory.mktemp("search")
    config = directory / "mailsink.toml"
    config.write_text(REFUSAL_RULES)
    with RunningSink(directory / "mail.db", config=config) as sink:
        send(sink, ZOE, "bounce@shop.test", ["bob@x.test", "team@x.test", "audit@x.test"],
             helo="app-server", user="alice")  # fmt: skip
        send(sink, NEWS, "hello@news.example", ["ann@y.test"])
        send(sink, INVOICE, "invoices@billing.example", ["carl@z.test", "hbcc@z.test"])
        send(sink, REJECTED, "x@x.test", ["y@y.test"])
        with sink.reader() as reader:
            ids = {"zoe": 1, "news": 2, "invoice": 3, "rejected": 4}
            assert [m.id for m in reader.list_messages(include_rejected=True)] == [4, 3, 2, 1]
        assert sink.sink is not None
        sink._call(sink.sink.mark_read([ids["news"]]))
        sink.wait_for(fully_indexed)
        yield sink, ids


def found(store: tuple[RunningSink, dict[str, int]], text: str) -> set[str]:
    sink, ids = store
    names = {number: name for name, number in ids.items()}
    with sink.reader() as reader:
        return {names[m.id] for m in reader.list_messages(query=parse_query(text), limit=100)}


ACCEPTED = {"zoe", "news", "invoice"}

# (query, the accepted messages it finds); its negation must find exactly the others.
CASES = [
    ("from:zoe", {"zoe"}),
    ("from:MÜLLER", {"zoe"}),  # a name, decoded, any case
    ("from:zoë", {"zoe"}),
    ("to:bob", {"zoe"}),
    ("to:audit", set()),  # only in the envelope
    ("rcpt:audit@x.test", {"zoe"}),
    ("rcpt:hbcc", {"invoice"}),
    ("cc:team", {"zoe"}),
    ("bcc:audit", {"invoice"}),  # the Bcc header's name
    ("reply-to:support", {"zoe"}),
    ("addressed:x.test", {"zoe"}),
    ("addressed:z.", {"invoice"}),  # 2 characters: no trigram, a scan
    ("subject:1014", {"zoe"}),
    ('subject:"order 1014"', {"zoe"}),
    ("message-id:abc123@app", {"zoe"}),
    ("mailfrom:bounce@", {"zoe"}),
    ("helo:app-server", {"zoe"}),
    ("peer:127.0.0.1", ACCEPTED),
    ("auth:ALICE", {"zoe"}),
    ("tag:signup", {"zoe"}),
    ("tag:SIGNUP", {"zoe"}),
    ("is:tagged", {"zoe"}),
    ("is:read", {"news"}),
    ("is:unread", {"zoe", "invoice"}),
    ("has:attachment", {"invoice"}),
    ("has:findings", ACCEPTED),  # (no Date header in any of them)
    ("finding:bcc_header_present", {"invoice"}),
    ("finding:html_without_text", {"news"}),
    ("after:1h", ACCEPTED),
    ("before:1h", set()),
    ("larger:10K", {"invoice"}),
    ("smaller:10K", {"zoe", "news"}),
    ("session:1", {"zoe"}),
    ("attachment:invoice-*.pdf", {"invoice"}),
    ("attachment:voice-10", {"invoice"}),  # no wildcard: a part of the name
    ("attachment:*.PDF", {"invoice"}),
    ("attachment:*.png", set()),
    ("header:X-Mailer=phpmailer", {"zoe"}),
    ("header:x-mailer", {"zoe"}),
    ("header:X-Mailer=outlook", set()),
    ("header:subject=1014", {"zoe"}),  # a header with a column of its own
    ("header:Cc", {"zoe"}),
    ("track", {"zoe"}),  # a word of the body, as the start of a word
    ("tra", {"zoe"}),
    ('"track it"', {"zoe"}),
    ('"it track"', set()),
    ("strasse", {"zoe"}),  # folded as the query is: ß is ss
    ("cafe", {"zoe"}),  # diacritics folded
    ("world", {"news"}),  # an HTML-only body, as text
    ("newsletter", {"news"}),
    ("invoice-1014.pdf", {"invoice"}),  # an attachment's name, as words
    ("billing", {"invoice"}),  # a bare word in the fields
    ("zz", set()),  # 2 characters, found nowhere
    ("nothing-matches-this", set()),
    ('"quote""s"', set()),  # FTS syntax in the text is text
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_term_and_its_negation(store, text, expected):
    assert found(store, text) == expected
    assert found(store, f"-{text}") == ACCEPTED - expected
    assert found(store, f"!{text}") == ACCEPTED - expected


def test_terms_and_together(store):
    assert found(store, "from:zoe track") == {"zoe"}
    assert found(store, "from:zoe world") == set()
    assert found(store, "-from:zoe -world") == {"invoice"}


def test_status_decides_what_is_looked_at(store):
    assert found(store, "status:rejected") == {"rejected"}
    assert found(store, "status:rejected track") == {"rejected"}
    assert found(store, "status:any track") == {"zoe", "rejected"}
    assert found(store, "-status:rejected") == ACCEPTED
    assert found(store, "-status:any") == set()
    sink, _ = store
    with sink.reader() as reader:
        wide = reader.list_messages(query=parse_query("track"), include_rejected=True)
        assert [m.id for m in wide] == [4, 1]
        assert reader.count_messages(query=parse_query("track")) == 1
        assert list(reader.message_index(query=parse_query("status:any track"))) == [1, 4]
        assert reader.unread_count() == 2
        assert reader.unsearched() == 0


def test_a_deleted_message_leaves_the_indexes(store):
    sink, _ = store
    send(sink, GONE, "gone@x.test", ["y@y.test"])
    sink.wait_for(fully_indexed)
    with sink.reader() as reader:
        (gone,) = [m.id for m in reader.list_messages(query=parse_query("zebra"))]
        assert reader.list_messages(query=parse_query("tag:doomed"))[0].id == gone
    assert sink.sink is not None
    assert sink._call(sink.sink.delete_messages([gone])) == 1
    with sink.reader() as reader:
        assert reader.list_messages(query=parse_query("zebra")) == []
        for table, column in (
            ("message_fields", "rowid"),
            ("message_body", "rowid"),
            ("message_tags", "message_id"),
        ):
            sql = f"SELECT count(*) FROM {table} WHERE {column} = ?"
            assert reader.conn.execute(sql, (gone,)).fetchone() == (0,), table


def test_which_queries_the_index_answers():
    # (Only text and attachment names are read for just the newest messages the index lacks.)
    assert not needs_index(parse_query("from:zoe is:unread header:x-mailer"))
    assert needs_index(parse_query("track"))
    assert needs_index(parse_query("-attachment:x.pdf"))
    assert not needs_index(parse_query("is:unread has:attachment helo:app tag:x after:1d"))


def test_glob_tokens_only_the_words_a_name_must_start():
    assert glob_tokens("invoice-*.pdf") == ["invoice", "pdf"]
    assert glob_tokens("voice-10") == ["10"]  # no wildcard: "voice" may be inside a word
    assert glob_tokens("*voice*") == []


INDEX_ROWS = "SELECT (SELECT count(*) FROM message_fields) + (SELECT count(*) FROM message_body)"


WORLD = (
    "From: x@x.test\r\nSubject: =?utf-8?b?0JzQvtGB0LrQstCwzIE=?=\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "йогурт İstanbul كَتَبَ テキスト\r\n"
)
# Words the two tokenizers' folding decides (the store's and, before, the Python matcher's
# differed): the same answers whether or not the index holds the message.
FOLDED = ("иогурт", "йогурт", "istanbul", "İstanbul", "كتب", "كَتَبَ", "テキスト", "subject:москва")


def ids_of(reader: Reader, text: str) -> list[int]:
    return [m.id for m in reader.list_messages(query=parse_query(text))]


def test_an_old_store_is_searched_before_and_after_its_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    db = tmp_path / "old.db"
    with RunningSink(db) as sink:
        send(sink, ZOE, "bounce@shop.test", ["bob@x.test"])
        send(sink, NEWS, "hello@news.example", ["ann@y.test"])
        send(sink, WORLD, "x@x.test", ["y@y.test"])
    downgrade(db, 5)
    words = parse_query("newsletter")
    # Text is read for the newest messages only (here: 1); fields for all of them.
    monkeypatch.setattr(search, "PENDING_WINDOW", 1)
    monkeypatch.setattr(reader_module, "PENDING_WINDOW", 1)
    with Reader(str(db)) as reader:  # not migrated: read as it is
        assert ids_of(reader, "from:müller") == [1]
        assert ids_of(reader, "subject:weekly") == [2]
        assert ids_of(reader, "newsletter") == []  # (beyond the window) ...
        assert reader.unsearched(words) == 2  # ... and said so
        assert reader.unsearched(parse_query("from:müller subject:order")) == 0
        assert reader.index_progress() == (0, 3)
    monkeypatch.undo()
    with RunningSink(db) as sink:
        sink.wait_for(fully_indexed)
        with sink.reader() as reader:
            assert [m.id for m in reader.list_messages(query=words)] == [2]
            # X-Tags of a message stored before tags were: tagged by the indexer
            assert [m.tags for m in reader.list_messages()] == [[], [], ["signup"]]
            assert reader.conn.execute("SELECT count(*) FROM message_body").fetchone() == (3,)
            assert reader.conn.execute("SELECT count(*) FROM message_fields").fetchone() == (3,)
            indexed = {text: ids_of(reader, text) for text in FOLDED}
    assert indexed["йогурт"] == indexed["İstanbul"] == indexed["subject:москва"] == [3]
    # Rows the indexes lack (as after a burst, or a migration the indexer has not reached):
    # still found, field terms and body terms alike.
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "UPDATE messages SET indexed = 0; DELETE FROM message_fields; DELETE FROM message_body;"
        )
    with Reader(str(db)) as reader:
        assert reader.index_progress() == (0, 3)
        assert reader.unsearched() == 0  # within the window searches read
        assert {text: ids_of(reader, text) for text in FOLDED} == indexed
        assert [m.id for m in reader.list_messages(query=words)] == [2]
        assert [m.id for m in reader.list_messages(query=parse_query("-newsletter"))] == [3, 1]
        assert [m.id for m in reader.list_messages(query=parse_query("cc:TEAM"))] == [1]
        assert [m.id for m in reader.list_messages(query=parse_query('"track it"'))] == [1]
        assert reader.list_messages(query=parse_query("header:x-mailer=php"))[0].id == 1
    assert PENDING_WINDOW >= 1000
    with RunningSink(db) as sink:  # indexed again; then `mailsink clear` empties the indexes
        sink.wait_for(fully_indexed)
    assert run_here(str(db), clear) == 3
    with RunningSink(db) as sink:  # what clear left of the indexes goes when the writer is idle
        sink.wait_for(lambda reader: not reader.conn.execute(INDEX_ROWS).fetchone()[0])
    with sqlite3.connect(db) as conn:
        for table in ("message_fields", "message_body", "message_tags"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table


def test_without_fts5_the_same_queries_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(schema, "FTS5", False)
    with RunningSink(tmp_path / "plain.db") as sink:
        send(sink, ZOE, "bounce@shop.test", ["bob@x.test", "audit@x.test"])
        send(sink, INVOICE, "invoices@billing.example", ["carl@z.test"])
        sink.wait_for(fully_indexed)
        with sink.reader() as reader:
            (sql,) = reader.conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'message_body'"
            ).fetchone()
            assert "VIRTUAL" not in sql
            for text, ids in (
                ("from:müller", [1]),
                ("rcpt:audit", [1]),
                ('"track it"', [1]),
                ("strasse", [1]),
                ("attachment:invoice-*.pdf", [3 - 1]),
                ("header:X-Mailer=PHP", [1]),
                ("-track", [2]),
            ):
                found_ids = [m.id for m in reader.list_messages(query=parse_query(text))]
                assert found_ids == ids, text


# ---- the indexer beside the traffic (writer._Extractor makes the rows, the writer writes them)

SMALL = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: small\r\n\r\nhello\r\n"
HOSTILE = (  # 1.6 MB of markup: seconds of html_to_text if it were all converted
    b"From: a@x.test\r\nSubject: bomb\r\nContent-Type: text/html\r\n\r\n" + b"<p>a</p>" * 200_000
)
FAKE_HINT = b"From: a@x.test\r\nSubject: says filename=x.pdf\r\n\r\nfilename=nothing.txt\r\n"
NAMELESS = (  # an attachment without a file name or disposition: no hint at ingest
    b"From: a@x.test\r\nSubject: nameless\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee it\r\n"
    b"--b\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7\r\n--b--\r\n"
)


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    with RunningSink(tmp_path_factory.mktemp("busy") / "mail.db") as sink:
        yield sink


def test_steady_mail_is_indexed_as_it_comes(busy: RunningSink):
    # One message after another, never a pause: the index still keeps up (in the writer's
    # commits), it does not wait for the stream to stop.
    with smtplib.SMTP(busy.host, busy.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], SMALL)
        busy.wait_for(fully_indexed)  # (the indexing process has started)
        for _ in range(40):
            client.sendmail("a@x.test", ["b@x.test"], SMALL)
        client.sendmail("a@x.test", ["b@x.test"], FAKE_HINT)
        client.sendmail("a@x.test", ["b@x.test"], NAMELESS)
        with busy.reader() as reader:
            indexed, total = reader.index_progress()
    assert total == 43 and indexed >= 20
    busy.wait_for(fully_indexed)
    with busy.reader() as reader:  # the attachment hint made exact by the index
        hits = reader.list_messages(query=parse_query("has:attachment"))
        assert [m.headers["subject"] for m in hits] == ["nameless"]
        assert not reader.list_messages(query=parse_query("-has:attachment subject:nameless"))


def test_a_hostile_message_being_indexed_holds_no_reply(busy: RunningSink):
    with smtplib.SMTP(busy.host, busy.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], HOSTILE)
        time.sleep(0.1)  # the writer is idle: indexing takes the hostile message up
        waits = []
        for _ in range(10):
            started = time.perf_counter()
            client.sendmail("a@x.test", ["b@x.test"], SMALL)
            waits.append(time.perf_counter() - started)
    assert max(waits) < 0.5, waits  # (in the writer: 0.7 s and more)


def test_a_message_deleted_while_its_rows_are_made_gets_none(busy: RunningSink):
    with busy.reader() as reader:
        (message,) = reader.list_messages(limit=1)
        raw = reader.get_raw(message.id)
        envelope, headers = reader.conn.execute(
            "SELECT envelope, headers FROM messages WHERE id = ?", (message.id,)
        ).fetchone()
    assert raw is not None
    row = prepare_index(message.id, envelope, headers, schema.UNINDEXED, raw)
    assert busy.sink is not None
    assert busy._call(busy.sink.delete_messages([message.id])) == 1
    assert run_here(busy.db, insert_index, row) is False
    with busy.reader() as reader:
        for table in ("message_fields", "message_body"):
            sql = f"SELECT count(*) FROM {table} WHERE rowid = ?"
            assert reader.conn.execute(sql, (message.id,)).fetchone() == (0,), table


def test_a_backlog_past_what_searches_read_is_counted_never_silently_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Fields are read for the newest PENDING_FIELDS of the messages the index lacks, text for
    those of the window that fit in PENDING_BYTES: what is left out is counted by unsearched."""
    db = tmp_path / "behind.db"
    with RunningSink(db) as sink:
        send(sink, ZOE, "bounce@shop.test", ["bob@x.test"])
        send(sink, NEWS, "hello@news.example", ["ann@y.test"])
        send(sink, WORLD, "x@x.test", ["y@y.test"])
        sink.wait_for(fully_indexed)
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "UPDATE messages SET indexed = 0; DELETE FROM message_fields; DELETE FROM message_body;"
        )
    monkeypatch.setattr(search, "PENDING_FIELDS", 2)
    monkeypatch.setattr(reader_module, "PENDING_FIELDS", 2)
    with Reader(str(db)) as reader:
        assert ids_of(reader, "from:müller") == []  # message 1: the oldest, beyond the 2 read
        assert reader.unsearched(parse_query("from:müller")) == 1
        assert reader.unsearched(parse_query("is:unread")) == 0  # needs no index
    monkeypatch.setattr(search, "PENDING_BYTES", 1)  # no text fits: each is let go once read
    with Reader(str(db)) as reader:
        assert ids_of(reader, "newsletter") == []
        assert reader.unsearched(parse_query("newsletter")) == 3
        assert ids_of(reader, "newsletter") == []  # not read again meanwhile (nor found)


def test_the_indexer_keeps_mailpits_snippet_html_first_cut_on_a_character(busy: RunningSink):
    from mailsink.mail.snippet import make_snippet

    both = (
        "From: a@x.test\r\nTo: b@x.test\r\nSubject: both\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nThe Plain Text\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n<p>The   <b>HTML</b>\r\n text</p>\r\n--b--\r\n"
    )
    with smtplib.SMTP(busy.host, busy.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], both)
    busy.wait_for(fully_indexed)
    with busy.reader() as reader:
        newest = reader.list_messages(limit=1)[0].id
        # Mailpit's CreateSnippet: the HTML as text when there is one; spaces collapsed; not
        # case-folded as the search index's own copy of the text is.
        assert reader.snippets([newest, 10**9]) == {newest: "The HTML text"}
    # 200 bytes of UTF-8 at most, never half a character, "..." after a cut.
    cut = make_snippet("é" * 150, None)
    assert cut == "é" * 100 + "..." and make_snippet(" a \ufeff b ", None) == "a b"
    assert make_snippet("x" * 200, None) == "x" * 200 and make_snippet(None, "  ") == ""


# The HTML part after 300 KiB of text (as /tmp/rereview15-X/snip_burst.py sends it): Mailpit
# shows the HTML's snippet; a parse of the first 256 KiB alone saw only the text.
LATE_HTML = (
    "From: a@x.test\r\nTo: b@x.test\r\nSubject: alt\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
    + "plain text line\r\n" * 20000
    + "\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>THE HTML SNIPPET</p>\r\n--B--\r\n"
)


def test_a_store_indexed_before_snippets_gets_them_all_without_a_request(tmp_path: Path):
    from mailsink.http.mailpit_shapes import Snippets

    db = tmp_path / "six.db"
    with RunningSink(db) as sink:
        send(sink, ZOE, "bounce@shop.test", ["bob@x.test"])
        send(sink, NEWS, "hello@news.example", ["ann@y.test"])
        send(sink, LATE_HTML, "a@x.test", ["b@x.test"])
        sink.wait_for(fully_indexed)
    downgrade(db, 6)  # indexed, and no snippet column: what schema 7 migrates
    wanted = {
        1: "Please Track it here. Straße and café are closed.",
        2: "Hello Wörld, read the newsletter",
        3: "THE HTML SNIPPET",
    }
    kept = Snippets()
    with Reader(str(db)) as reader:  # none stored: made on the fly, as the indexer makes them
        assert reader.snippets([1, 2, 3]) == {}
        # (3 is too big to parse here: "" until the indexer's, never one of its own)
        assert kept.of(reader, [3, 2, 1]) == {1: wanted[1], 2: wanted[2]}
        assert set(kept.made) == {1, 2} and not kept.items
    unsnipped = "SELECT count(*) FROM messages WHERE snippet IS NULL"
    with RunningSink(db) as sink:  # migrated; the extractor fills them in by itself
        assert sink.wait_for(lambda reader: reader.conn.execute(unsnipped).fetchone() == (0,))
        with sink.reader() as reader:
            assert reader.snippets([1, 2, 3]) == wanted
            assert kept.of(reader, [1, 2, 3]) == wanted  # the stored ones replace those made
            assert set(kept.items) == {1, 2, 3} and not kept.made
            plan = reader.conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE snippet IS NULL AND indexed = 2"
                " ORDER BY id DESC LIMIT 16"
            ).fetchall()
    assert "messages_unsnipped" in str(plan)  # no scan of the store when none is left
