"""The TUI's side of issue 14: the search language in `/`, read state, tags, the help's prefixes.

Two app start-ups (80x24 and 120x40), each with many checks, against the real server."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from conftest import downgrade, message
from textual import events
from textual.widgets import Input, Static
from tui_support import (
    list_rows,
    rows_loaded,
    run,
    screen_text,
    send,
    settings_for,
    smtp_send,
    text_of,
    tui,
    wait_until,
)

from mailsink.events import StoreChanged
from mailsink.query import PREFIXES, parse_query
from mailsink.store.operations import change_tags, mark_read, run_here
from mailsink.store.reader import Reader
from mailsink.testing import RunningSink
from mailsink.tui.app import MailsinkApp
from mailsink.tui.screens.main import NO_READ_STATE
from mailsink.tui.widgets.dialogs import Help, TextPrompt
from mailsink.tui.widgets.message_list import Cancel, ListFilter

ORDER = message(
    sender="Zoe Quinn <zoe@shop.test>",
    to="ann@x.test",
    subject="Order 1014",
    extra="X-Tags: invoice\r\n",
)
WEEKLY = message(sender="news@list.test", to="ann@x.test", subject="Weekly")
HELLO = message(sender="carl@x.test", to="ann@x.test", subject="Hello")


async def _fill(app: MailsinkApp, pilot) -> None:
    await send(app, "zoe@shop.test", ["ann@x.test"], ORDER)
    # audit@ is an envelope recipient only (a Bcc): rcpt: finds it, to: does not.
    await send(app, "news@list.test", ["ann@x.test", "audit@x.test"], WEEKLY)
    await send(app, "carl@x.test", ["ann@x.test"], HELLO)
    await wait_until(pilot, lambda: app.main.message_list.count == 3 and rows_loaded(app))


def _status(app: MailsinkApp) -> str:
    return text_of(app.main.status.content)  # type: ignore[arg-type]


def _stored(app: MailsinkApp) -> dict[int, tuple[bool, list[str]]]:
    with Reader(app.sink.path) as reader:
        return {r.id: (r.seen, r.tags) for r in reader.list_messages(limit=10, offset=0)}


def _rows(app: MailsinkApp) -> str:
    return "\n".join(list_rows(app))


def _keys(text: str) -> list[str]:
    return [{":": "colon", " ": "space", '"': "quotation_mark"}.get(c, c) for c in text]


# Hundreds of millions of steps: only an interrupted read ends it within the test.
_ENDLESS = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)"
    " SELECT count(*) FROM c"
)


def test_search_errors_read_state_and_tags_at_80x24(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=(80, 24)) as (app, pilot):
            listing = app.main.message_list
            box = app.main.query_one("#filter", Input)
            error = app.main.query_one("#filter-error", Static)
            app.main.counts_every = 0.05  # 1 s in use (checked below): a faster test
            await _fill(app, pilot)
            rows = list_rows(app)
            assert all("•" in row for row in rows), rows  # new mail is unread
            assert all(len(row) <= 79 for row in rows)
            assert "[invoice]" in rows[2] and "Order 1014" in rows[2]  # X-Tags, after the subject
            await wait_until(pilot, lambda: "3 unread" in _status(app))

            # Prefixes, typed key by key: one read when the typing pauses (not one per key),
            # and the list is the last query's; the status says query and hits.
            await pilot.press("slash")
            loads = listing._generation
            await pilot.press(*_keys("from:zoe"), "backspace", "backspace", "backspace")
            await pilot.press(*_keys("carl"))
            await wait_until(pilot, lambda: listing.count == 1 and "Hello" in _rows(app))
            assert listing.filter.search == "from:carl" and listing._generation == loads + 1
            box.value = "from:zoe"
            await wait_until(pilot, lambda: listing.count == 1 and "Order 1014" in _rows(app))
            assert "1 message matching 'from:zoe'" in screen_text(app)
            # A lone `"` is no query (not `matching '"'`); a pasted NUL is refused in place.
            box.value = '"'
            # (The status line follows the list's Changed message, a moment after the count.)
            await wait_until(pilot, lambda: listing.count == 3 and "3 messages" in _status(app))
            assert not listing.filter.search and "matching" not in _status(app)
            # Pasted control characters never reach the box (it would draw them raw).
            box.value = ""
            box.post_message(events.Paste("subject:hel\x00lo\x1b[2J"))
            await wait_until(pilot, lambda: box.value == "subject:hello[2J")
            assert app.is_running and "\x00" not in screen_text(app)
            box.value = ""
            await wait_until(pilot, lambda: listing.count == 3 and not listing.filter.search)

            # An overtaken read is stopped on the reader thread (only it), and a stopped or
            # failed reload leaves the list and its filter as they were.
            cancel = Cancel()

            def endless(reader: Reader) -> object:
                cancel.cancelled = True  # as the loop does when a newer filter comes
                return reader.conn.execute(_ENDLESS).fetchone()

            with pytest.raises(sqlite3.OperationalError, match="interrupted"):
                await app.sink.read(cancel.run, endless)
            shown = listing.filter
            with pytest.raises(sqlite3.OperationalError, match="interrupted"):
                await listing.reload(ListFilter("x", query=parse_query("x")), cancel=cancel)
            assert listing.filter is shown and listing.count == 3
            assert await app.sink.read(lambda r: r.conn.execute("SELECT 1").fetchone()) == (1,)

            # Another process's commits (StoreChanged, many a second while an index is built):
            # the counts once a second at most, the rows not read again when nothing changed.
            app.main.counts_every = 1.0
            counted, row = app.main.counts_read, listing.row(listing.ids[-1])
            for _ in range(10):
                app.sink.events.publish(StoreChanged())
                await pilot.pause(0.02)
            await pilot.pause(0.05)
            assert app.main.counts_read - counted <= 2 and listing.row(listing.ids[-1]) is row
            app.main.counts_every = 0.05
            box.value = "from:zoe"
            await wait_until(pilot, lambda: listing.count == 1 and not error.has_class("shown"))
            box.value = "rcpt:audit"
            await wait_until(pilot, lambda: listing.count == 1 and "Weekly" in _rows(app))
            box.value = "to:audit"
            await wait_until(pilot, lambda: listing.count == 0 and listing.filter.search)

            # A malformed query: said in place, safely; the list keeps the last good filter.
            box.value = "to:audit nope:[b]x[/b]\x1b"
            await wait_until(pilot, lambda: error.has_class("shown"))
            said = text_of(error.content)  # type: ignore[arg-type]
            assert "unknown prefix nope:" in said and "[b]x[/b]" in said, said
            assert "\x1b" not in said and listing.filter.search == "to:audit"
            assert "nope:" in screen_text(app)  # on screen, under the box, at 80x24
            box.value = "subject:order"
            await wait_until(pilot, lambda: listing.count == 1 and not error.has_class("shown"))
            await pilot.press("enter")  # back to the list, the filter kept

            # m toggles the selected message's read state; the row and the count follow.
            await pilot.press("m")
            await wait_until(pilot, lambda: "•" not in _rows(app) and "2 unread" in _status(app))
            assert [seen for seen, _ in _stored(app).values()].count(True) == 1
            await pilot.press("m")
            await wait_until(pilot, lambda: "•" in _rows(app) and "3 unread" in _status(app))

            # Tags: t opens the dialog; add one and remove the X-Tags one.
            await pilot.press("t")
            await wait_until(pilot, lambda: isinstance(app.screen, TextPrompt))
            app.screen.query_one(Input).value = "urgent, -invoice"
            await pilot.press("enter")
            await wait_until(pilot, lambda: "[urgent]" in _rows(app))
            assert "[invoice]" not in _rows(app)
            assert sorted(tags for _, tags in _stored(app).values()) == [[], [], ["urgent"]]

            # is:unread through the box, U (unread only), then M (all read).
            await pilot.press("slash")
            box.value = ""
            await pilot.press("enter")
            await wait_until(pilot, lambda: listing.count == 3 and not listing.filter.search)
            first = listing.ids[0]  # read by another process: the store tells the TUI
            await app.sink.read(lambda r: run_here(r.path, mark_read, [first]))
            await wait_until(pilot, lambda: _rows(app).count("•") == 2)
            await pilot.press("U")
            await wait_until(pilot, lambda: listing.count == 2 and "2 messages" in _status(app))
            assert "unread only" in _status(app)
            await pilot.press("U", "M")
            await wait_until(pilot, lambda: listing.count == 3 and "0 unread" in _status(app))
            assert "•" not in _rows(app)
            box.value = "is:unread"
            await pilot.press("slash", "enter")
            await wait_until(pilot, lambda: listing.count == 0 and listing.filter.search)

    run(scenario)


def test_opening_reads_overview_tags_palette_and_help_at_120x40(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing, detail = app.main.message_list, app.main.detail
            app.main.counts_every = 0.05  # 1 s in use: a faster test
            await _fill(app, pilot)
            # (A counts read set for 1 s before counts_every changed may still be pending.)
            await wait_until(pilot, lambda: "3 unread" in _status(app))
            oldest = listing.ids[0]
            await app.sink.read(lambda r: run_here(r.path, change_tags, [oldest], add=["signup"]))
            await wait_until(pilot, lambda: "[invoice] [signup]" in list_rows(app)[2])

            # The Overview shows the tags; enter (full screen) reads the message at once.
            await pilot.press("end")
            await wait_until(pilot, lambda: detail.loaded and detail.loaded.record.id == oldest)
            assert "Tags: invoice, signup" in screen_text(app)
            assert not _stored(app)[oldest][0]  # shown in the pane: not read yet (3 s)
            await pilot.press("enter")
            await wait_until(pilot, lambda: _stored(app)[oldest][0])
            await pilot.press("escape")
            await wait_until(pilot, lambda: "•" not in list_rows(app)[2])
            assert "2 unread" in _status(app)
            # Shown in the pane long enough (here 0.05 s, 3 s by default): read too. The row
            # passed over on the way is not.
            detail.read_after = 0.05
            await pilot.press("home")
            await wait_until(pilot, lambda: _stored(app)[listing.ids[-1]][0])
            assert not _stored(app)[listing.ids[1]][0]
            await wait_until(
                pilot, lambda: "0 unread" not in _status(app) and "1 unread" in _status(app)
            )

            # The palette's filters: a finding kind, then a tag (they add to the query).
            app.main.filter_by("finding:hidden_recipient")
            await wait_until(pilot, lambda: listing.count == 1 and "Weekly" in _rows(app))
            app.main.query_one("#filter", Input).value = ""
            app.main.filter_by("tag:SIGNUP")  # tags compare without regard to case
            await wait_until(pilot, lambda: listing.count == 1 and "Order" in _rows(app))
            commands = [c.title for c in app.get_system_commands(app.screen)]
            assert {"Unread only", "Filter by tag…", "Mark all read"} <= set(commands)
            assert "Filter by finding: hidden_recipient" in commands

            # ? lists every prefix with its example (made from mailsink.query.PREFIXES).
            await pilot.press("question_mark", "slash")  # / in the help: the search page
            await wait_until(pilot, lambda: isinstance(app.screen, Help) and app.screen.search)
            shown = text_of(
                app.screen.query_one("VerticalScroll > Static", Static).content, width=200
            )  # type: ignore[arg-type]
            for prefix in PREFIXES.values():
                assert prefix.example in shown, prefix

    run(scenario)


def test_attached_to_a_schema_5_store_no_read_state_and_store_failures_in_place(tmp_path):
    """Attached, no server: a store older than read state shows no unread marks or count,
    marks nothing read, and m / M / t say why; a store that fails a search keeps the list."""
    db = tmp_path / "old.db"
    with RunningSink(db) as sink:
        for subject in ("old0", "old1"):
            smtp_send(sink.port, "a@x.test", ["b@x.test"], message(subject=subject))
    downgrade(db, 5)

    async def scenario() -> None:
        async with tui(settings_for(db), attach=True, size=(80, 24)) as (app, pilot):
            listing, detail = app.main.message_list, app.main.detail
            detail.read_after = 0.01
            await wait_until(pilot, lambda: listing.count == 2 and rows_loaded(app))
            await wait_until(pilot, lambda: detail.loaded is not None)
            await pilot.pause(0.1)
            assert not listing.read_state and "•" not in _rows(app)
            assert "unread" not in _status(app), _status(app)
            for key in ("m", "M", "t"):
                await pilot.press(key)
            await pilot.pause(0.1)
            notes = [str(n.message) for n in app._notifications]
            assert notes.count(NO_READ_STATE) == 3 and not any("Not marked" in n for n in notes)
            assert not isinstance(app.screen, TextPrompt)

            # The store fails (its table gone, as a foreign program could do): said under the
            # box, the app and the list stay; back, the next search clears it.
            with closing(sqlite3.connect(db)) as conn:
                conn.execute("ALTER TABLE messages RENAME TO gone")
            box = app.main.query_one("#filter", Input)
            error = app.main.query_one("#filter-error", Static)
            await pilot.press("slash")
            box.value = "old1"
            await wait_until(pilot, lambda: error.has_class("shown"))
            assert "The store failed to list the messages" in text_of(error.content)  # type: ignore[arg-type]
            assert app.is_running and listing.count == 2 and not listing.filter.search
            with closing(sqlite3.connect(db)) as conn:
                conn.execute("ALTER TABLE gone RENAME TO messages")
            box.value = "old0"
            await wait_until(pilot, lambda: listing.count == 1 and not error.has_class("shown"))

    run(scenario)


def test_going_back_to_the_filter_being_read_shows_it(monkeypatch):
    """A, then B while A is read (A is stopped, B waits), then A again before A has stopped:
    the list ends on A, never on the filter from before A."""
    import time

    from mailsink.tui.widgets import message_list as ml

    plain = ml.Cancel.run

    def slow(self, reader, read):  # a big store's read: long enough to be stopped in the middle
        def first_a_long_statement(r):
            time.sleep(0.3)
            r.conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)"
                " SELECT count(*) FROM c"
            ).fetchone()
            return read(r)

        return plain(self, reader, first_a_long_statement)

    async def scenario(tmp: str) -> None:
        async with tui(settings_for(f"{tmp}/aba.db")) as (app, pilot):
            for who in ("zoe", "carl", "ann"):
                await send(app, f"{who}@x.test", ["b@x.test"], message(sender=f"{who}@x.test"))
            listing = app.main.message_list
            await wait_until(pilot, lambda: listing.count == 3 and rows_loaded(app))
            monkeypatch.setattr(ml.Cancel, "run", slow)
            box = app.main.query_one("#filter", Input)
            for text, pause in (("from:zoe", 0.1), ("from:zoex", 0.05), ("from:zoe", 0)):
                box.value = text
                app.main._apply_filter()
                await pilot.pause(pause)
            await wait_until(pilot, lambda: app.main._loading is None, timeout=5)
            await pilot.pause(0.1)
            assert (listing.filter.search, listing.count) == ("from:zoe", 1)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run(lambda: scenario(tmp))
