"""The TUI never deletes, overwrites or claims what the user did not mean (issue 11: 5, 6, 7, 9,
11): keys right after `/`, undoable `d`, `D` on a filter, export names, the browser, progress."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port, message, wait_for_port
from textual import events
from textual.widgets import Input
from tui_support import run, send, send_numbered, settings_for, smtp_send, tui, wait_until

from mailsink.errors import StoreError
from mailsink.mail.envelope import Envelope
from mailsink.store import IncomingMessage, Store, run_here
from mailsink.store.operations import delete_messages, insert_message, insert_session
from mailsink.store.reader import Reader
from mailsink.store.schema import connect
from mailsink.tui.app import MailsinkApp, finish
from mailsink.tui.screens import main as main_screen
from mailsink.tui.screens.main import MainScreen
from mailsink.tui.screens.message import MessageScreen
from mailsink.tui.widgets.dialogs import Confirm, Help, PathPrompt
from mailsink.tui.widgets.message_detail import SLICE_CHARS, Document, _slice_end


def notices(app: MailsinkApp) -> list[str]:
    return [notification.message for notification in app._notifications]


def stored_ids(app: MailsinkApp) -> list[int]:
    with Reader(app.sink.path) as reader:
        return reader.message_ids()


def press_at_once(app: MailsinkApp, *keys: str) -> None:
    """Keys as a terminal delivers a paste or a burst over a slow link: all handed to the app
    before it handles the first (Pilot.press waits for the app to go idle after each one)."""
    driver = app._driver
    assert driver is not None
    for key in keys:
        character = {"slash": "/", "enter": "\r"}.get(key, key if len(key) == 1 else None)
        event = events.Key(key, character)
        event.set_sender(app)
        driver.send_message(event)


def recording_browser(tmp_path: Path) -> tuple[Path, Path]:
    """A BROWSER that notes the URL it was given: (the script, the file it writes)."""
    opened = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, opened


def use_browser(monkeypatch: pytest.MonkeyPatch, browser: str) -> None:
    """`browser` first; without DISPLAY, webbrowser registers no graphical one after it."""
    monkeypatch.setenv("BROWSER", browser)
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # webbrowser reads BROWSER once
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)


def test_keys_right_after_slash_go_into_the_filter_box(tmp_path, monkeypatch):
    script, opened = recording_browser(tmp_path)
    use_browser(monkeypatch, str(script))

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing = app.main.message_list
            box = app.main.query_one("#filter", Input)
            await send_numbered(app, pilot, 3)
            await wait_until(pilot, lambda: app.main.detail.loaded is not None)

            await pilot.press("slash", "d", "e", "v")
            assert box.value == "dev" and box.has_focus
            await pilot.press("slash", "x")  # in the box, `/` is typed like any character
            assert box.value == "dev/x" and box.has_focus
            await pilot.press(*["backspace"] * 5, "escape")  # empty: the box closes
            await wait_until(pilot, lambda: listing.count == 3 and not listing.filter.search)
            assert listing.has_focus

            # All in one read, as a paste arrives: `d` would delete, `e` export, `o` open the
            # browser, enter open the message.
            press_at_once(app, "slash", "z", "o", "slash", "e", "d", "enter")
            await wait_until(pilot, lambda: box.value == "zo/ed" and listing.filter.search)
            await pilot.pause(0.2)
            assert listing.count == 0 and listing.has_focus  # the filter applied, nothing else
            assert not listing.hidden and not app.main._undoable
            assert not isinstance(app.screen, (PathPrompt, MessageScreen))
            assert stored_ids(app) == [1, 2, 3]

    run(scenario)
    assert not opened.exists()


def test_delete_is_undoable_then_carried_out_after_the_window_or_on_quit(tmp_path, monkeypatch):
    monkeypatch.setattr(main_screen, "UNDO_SECONDS", 1.0, raising=False)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing = app.main.message_list
            await send_numbered(app, pilot, 4)
            reloads = listing._generation

            await pilot.press("home", "d")  # message 4: gone from the list at once...
            assert 4 not in listing.ids and listing.selected_id == 3
            assert "Deleted message 4 — u to undo" in notices(app)
            await pilot.press("d")  # ... then 3: each deletion its own undo
            assert listing.count == 2 and stored_ids(app) == [1, 2, 3, 4]  # ... not yet stored
            await pilot.press("u")  # the last one comes back, selected
            await wait_until(pilot, lambda: listing.selected_id == 3)
            assert list(listing.ids) == [1, 2, 3]

            await wait_until(pilot, lambda: stored_ids(app) == [1, 2, 3])  # after the window
            await send(app, "a@x.test", ["b@x.test"], message(subject="new"))
            await wait_until(pilot, lambda: list(listing.ids) == [1, 2, 3, 5])
            assert listing._generation == reloads + 1  # the undo's: the catch-up needed none

            await pilot.press("u")
            assert "Nothing to undo." in notices(app)
            await pilot.press("home", "d")  # message 5, and the app quits inside the window
            assert stored_ids(app) == [1, 2, 3, 5]

    run(scenario)
    with Reader(str(tmp_path / "mail.db")) as reader:
        assert reader.message_ids() == [1, 2, 3]


def test_filtered_clear_deletes_only_the_listed_messages(tmp_path, monkeypatch):
    monkeypatch.setattr(MainScreen, "DELETE_CHUNK", 2, raising=False)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing = app.main.message_list
            subjects = ["invoice 1", "news 1", "invoice 2", "news 2", "news 3"]
            for subject in subjects:
                await send(app, "a@x.test", ["b@x.test"], message(subject=subject))
            await wait_until(pilot, lambda: listing.count == 5)

            box = app.main.query_one("#filter", Input)
            await pilot.press("slash")
            box.value = "invoice"  # (typed: test_keys_right_after_slash_go_into_the_filter_box)
            await pilot.press("enter")
            await wait_until(pilot, lambda: listing.count == 2)
            titles = [command.title for command in app.get_system_commands(app.screen)]
            assert "Delete the 2 listed messages" in titles
            await pilot.press("D")
            assert isinstance(app.screen, Confirm)
            assert app.screen.question == "Delete the 2 listed messages?"
            # Arrives between the question and the answer: not one of the two asked about.
            await send(app, "a@x.test", ["b@x.test"], message(subject="invoice 3"))
            await wait_until(pilot, lambda: len(stored_ids(app)) == 6)
            await pilot.press("y")
            await wait_until(pilot, lambda: "Deleted 2 messages" in notices(app))
            assert stored_ids(app) == [2, 4, 5, 6]
            await wait_until(pilot, lambda: list(listing.ids) == [6])

            await pilot.press("slash")
            box.value = ""
            await pilot.press("enter")
            await wait_until(pilot, lambda: listing.count == 4 and not listing.filter.search)
            assert app.main.clear_label() == "Delete all 4 messages"
            await pilot.press("D")
            assert app.screen.question.startswith("Delete all 4 messages?")
            await send(app, "late@x.test", ["b@x.test"], message(subject="late"))
            await wait_until(pilot, lambda: len(stored_ids(app)) == 5)
            await pilot.press("y")
            await wait_until(pilot, lambda: "Deleted 4 messages" in notices(app))
            await wait_until(pilot, lambda: list(listing.ids) == [7])
            with Reader(app.sink.path) as reader:
                assert reader.message_ids() == [7]
                # Finished sessions go with their messages; the late one's stays with it.
                assert [s.message_ids for s in reader.list_sessions()] == [[7]]

    run(scenario)


def _fill(path: Path, count: int) -> None:
    """`count` small messages with the writer's own operations, in one transaction here (the
    writer process would commit them in many)."""
    Store(str(path)).close()  # a new store, migrated
    conn = connect(str(path))
    envelope = Envelope("a@x.test", ["b@x.test"], helo="h", peer="p")
    conn.execute("BEGIN")
    insert_session(conn, session_id=1, started_at=0, peer="p")
    raw = message(subject="bulk")
    for n in range(count):
        incoming = IncomingMessage(1, envelope, raw, 1_000 + n, check_addresses=False)
        insert_message(conn, incoming)
    conn.execute("COMMIT")
    conn.close()


def test_clear_of_many_shows_progress_and_the_ui_answers_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(MainScreen, "DELETE_CHUNK", 50, raising=False)
    _fill(tmp_path / "mail.db", 3000)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            main = app.main
            listing, status = main.message_list, main.status
            await wait_until(pilot, lambda: listing.count == 3000)
            await pilot.press("D")
            press_at_once(app, "y")  # (Pilot.press would wait for the busy app to go idle)
            seen: list[str] = []  # the progress texts, in order

            def progressed(done: int) -> bool:
                if not seen or seen[-1] != status.progress_text:
                    seen.append(status.progress_text)
                shown = re.match(r"deleting ([\d,]+) of 3,000…", status.progress_text)
                return shown is not None and int(shown[1].replace(",", "")) >= done

            await wait_until(pilot, lambda: progressed(500))
            app.simulate_key("question_mark")  # in the middle of it, the UI answers a key
            await wait_until(pilot, lambda: isinstance(app.screen, Help))
            assert main._deleting and 0 < len(stored_ids(app)) < 3000
            app.simulate_key("escape")
            await wait_until(
                pilot, lambda: not progressed(3000) and "Deleted 3,000 messages" in notices(app)
            )
            # From the start (a chunk of 50 can be done before the first look), upwards.
            counts = [
                int(shown[1].replace(",", ""))
                for text in seen[1:]
                if (shown := re.match(r"deleting ([\d,]+) of 3,000…", text))
            ]
            assert seen[0] == "" and counts[0] <= 100 and counts == sorted(counts), seen
            assert len(seen) > 5, seen
            assert listing.count == 0 and stored_ids(app) == []
            assert status.progress_text == ""

    run(scenario)


def test_export_never_replaces_a_file_and_says_which_it_wrote(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "1.eml").write_bytes(b"mine")

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            await send(app, "a@x.test", ["b@x.test"], message(subject="keep"))
            await wait_until(pilot, lambda: app.main.message_list.selected_id == 1)
            for name in ("1 (1).eml", "1 (2).eml"):
                await pilot.press("e")
                app.screen.query_one("#path", Input).value = str(out)
                await pilot.press("enter")
                await wait_until(pilot, lambda name=name: (out / name).exists())
                assert f"Exported {out / name}" in notices(app)
            assert (out / "1.eml").read_bytes() == b"mine"
            with Reader(app.sink.path) as reader:
                assert (out / "1 (2).eml").read_bytes() == reader.get_raw(1)
            assert sorted(p.name for p in out.iterdir()) == ["1 (1).eml", "1 (2).eml", "1.eml"]

    run(scenario)


def test_open_html_says_when_no_browser_started_and_files_go_on_exit(tmp_path, monkeypatch):
    html = (
        "From: a@x.test\r\nTo: b@x.test\r\nSubject: page\r\nContent-Type: text/html\r\n\r\n"
        "<h1>Report</h1>\r\n"
    )
    script, opened = recording_browser(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-browsers-here"))
    written: list[Path] = []

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            await send(app, "a@x.test", ["b@x.test"], html.encode())
            await wait_until(pilot, lambda: app.main.detail.loaded is not None)

            use_browser(monkeypatch, "/bin/false")  # a browser that fails, and no other
            await pilot.press("o")
            await wait_until(pilot, lambda: any("No browser" in n for n in notices(app)))
            (notice,) = [n for n in notices(app) if "No browser" in n]
            path = Path(notice.split("The HTML is in ", 1)[1].split(" (", 1)[0])
            assert f"({path.as_uri()})" in notice
            assert "<h1>Report</h1>" in path.read_text()
            written.append(path)

            use_browser(monkeypatch, str(script))
            await pilot.press("o")
            await wait_until(pilot, lambda: opened.exists())
            uri = opened.read_text().strip()
            assert uri.startswith("file://")
            written.append(Path(uri.removeprefix("file://")))
            assert f"Opened {written[-1]} in the browser" in notices(app)

            # Headless, with only a console browser: it would take this terminal from the UI.
            lynx = tmp_path / "bin" / "lynx"
            lynx.parent.mkdir()
            lynx.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "lynx.log"}\n')
            lynx.chmod(0o755)
            monkeypatch.setenv("PATH", str(lynx.parent))
            monkeypatch.setenv("TERM", "xterm-256color")  # webbrowser wants it for console ones
            monkeypatch.delenv("BROWSER")
            monkeypatch.setattr(webbrowser, "_tryorder", None)
            monkeypatch.setattr(webbrowser, "_browsers", {})
            await pilot.press("o")
            await wait_until(pilot, lambda: any("No graphical" in n for n in notices(app)))
            (notice,) = [n for n in notices(app) if "No graphical" in n]
            assert notice.startswith("No graphical browser (lynx would take over this terminal)")
            path = Path(notice.split(": open ", 1)[1].split(" (", 1)[0])
            assert f"({path.as_uri()})" in notice and "<h1>Report</h1>" in path.read_text()
            written.append(path)
            assert all(p.exists() for p in written)

    run(scenario)
    assert not (tmp_path / "lynx.log").exists()  # never started
    assert len(written) == 3 and not any(p.exists() for p in written)
    assert not any(p.parent.exists() for p in written)


def test_a_long_text_goes_into_its_tab_when_shown_and_moving_on_stops_it(tmp_path):
    log = "".join(f"line {n:07d} of a long log\r\n" for n in range(22_000))  # 600 KB
    big = message(subject="log", body=log)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing, detail = app.main.message_list, app.main.detail
            text = detail.query_one("#text-body", Document)
            await send(app, "a@x.test", ["b@x.test"], big)
            await send(app, "a@x.test", ["b@x.test"], message(subject="short", body="Hi.\r\n"))
            await wait_until(pilot, lambda: listing.count == 2)
            await pilot.press("home")
            await wait_until(pilot, lambda: detail.loaded and detail.loaded.record.id == 2)
            # Keys as a terminal sends them (Pilot.press would wait for the busy app to idle).
            press_at_once(app, "down")
            await wait_until(pilot, lambda: detail.loaded and detail.loaded.record.id == 1)
            assert text.text == ""  # on the Overview tab the long text waits for its own

            press_at_once(app, "2")  # the Text tab: it comes in, all of it
            await wait_until(pilot, lambda: text.text == detail.loaded.text)
            assert text.text.startswith("line 0000000 of a long log\nline 0000001")
            assert text.text.endswith(" K characters; `mailsink show 1` has it all]")

            press_at_once(app, "up")
            await wait_until(pilot, lambda: detail.loaded.record.id == 2)
            press_at_once(app, "down")  # back to it (from the cache: at once) ...
            # (Pilot.pause, in wait_until, would wait for the widgets' queues: for every slice.)
            while not (detail.loaded.record.id == 1 and text.text):
                await asyncio.sleep(0.001)
            assert len(text.text) < len(detail.loaded.text)
            press_at_once(app, "up")  # ... and off again while its slices go in
            await wait_until(pilot, lambda: detail.loaded and detail.loaded.record.id == 2)
            await pilot.pause(0.2)  # no slice of the long text arrives after the short one
            assert text.text == "Hi.\n"

    run(scenario)


def test_undo_into_a_filter_and_clear_counts_what_it_deleted(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing = app.main.message_list
            for subject in ("invoice 1", "news 1", "news 2", "news 3"):
                await send(app, "a@x.test", ["b@x.test"], message(subject=subject))
            await wait_until(pilot, lambda: listing.count == 4)
            await pilot.press("end", "d")  # invoice 1, then a filter it does not match
            await pilot.press("slash", *"news", "enter")
            await wait_until(pilot, lambda: listing.filter.search == "news" and listing.count == 3)
            await pilot.press("u")
            await wait_until(pilot, lambda: any("is back" in n for n in notices(app)))
            assert "Message 1 is back (not shown by the current filter)" in notices(app)
            assert 1 not in listing.ids and stored_ids(app) == [1, 2, 3, 4]

            await pilot.press("D")
            assert isinstance(app.screen, Confirm)
            # Another program, before the answer:
            assert run_here(app.sink.path, delete_messages, [3]) == 1
            await pilot.press("y")
            await wait_until(pilot, lambda: any(n.startswith("Deleted") for n in notices(app)))
            assert "Deleted 2 messages (1 of the 3 were already gone)" in notices(app)
            assert stored_ids(app) == [1]

    run(scenario)


def test_a_delete_the_locked_store_refuses_on_quit_is_said_after_the_ui(tmp_path, capsys):
    import sqlite3
    import threading

    db = tmp_path / "mail.db"
    # The holder waits for its lock: the writer's idle index work (the rows of the messages
    # just sent, the purge after each commit) takes it for a few ms at a time.
    holder = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
    quit_done = threading.Event()

    def release_when_done() -> None:
        quit_done.wait(10)
        holder.execute("ROLLBACK")

    async def scenario() -> MailsinkApp:
        async with tui(settings_for(db)) as (app, pilot):
            await send_numbered(app, pilot, 2)
            await pilot.press("home", "d")
            # Another program holds the write lock for longer than the store's writer waits
            # (10 s; here 0.2 s, so that the test does not wait as long). The PRAGMA's cursor
            # cannot travel back from the writer process: that is refused, the setting stays.
            with contextlib.suppress(StoreError):
                await app.sink.store.run(
                    operator.methodcaller("execute", "PRAGMA busy_timeout = 200")
                )
            holder.execute("BEGIN IMMEDIATE")
            threading.Thread(target=release_when_done, daemon=True).start()
        return app

    try:
        app = run(scenario)
    finally:
        quit_done.set()
    said = f"message 2 not deleted: {db} is locked by another program (database is locked)"
    assert app.exit_problems == [f"{said}; try again"]
    with pytest.raises(SystemExit) as exited:
        finish(app)
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"mailsink: {said}; try again\n"
    with Reader(str(db)) as reader:
        assert reader.message_ids() == [1, 2]


def test_idle_index_work_that_meets_another_program_s_lock_is_tried_again_later(tmp_path):
    """The index rows `clear` leaves are purged by the idle writer. If another program holds
    the write lock past the writer's busy timeout, the purge fails; it stays to do and is tried
    again a little later by itself (an idle server may make no commit to set it going again)."""
    import sqlite3

    db = tmp_path / "mail.db"
    _fill(db, 20)
    store = Store(str(db))
    holder = sqlite3.connect(db, timeout=10, isolation_level=None)

    def indexed() -> bool:
        with Reader(str(db)) as reader:
            return reader.index_progress() == (20, 20)

    def left_behind() -> int:
        with Reader(str(db)) as reader:
            return reader.conn.execute("SELECT count(*) FROM message_fields").fetchone()[0]

    async def until(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not done():
            assert time.monotonic() < deadline, f"not within 10 s: {what}"
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        await until(indexed, "the 20 messages indexed")
        writer = store.writer_pid
        (extractor,) = map(int, Path(f"/proc/{writer}/task/{writer}/children").read_text().split())
        with contextlib.suppress(StoreError):  # (as above: the setting stays)
            await store.run(operator.methodcaller("execute", "PRAGMA busy_timeout = 200"))
        os.kill(extractor, signal.SIGSTOP)  # the purge waits for it to say it has caught up
        try:
            await store.clear()
            holder.execute("BEGIN IMMEDIATE")
        finally:
            os.kill(extractor, signal.SIGCONT)
        await asyncio.sleep(1.0)  # the writer's purge waits 0.2 s for the lock, and fails
        assert left_behind() == 20
        holder.execute("ROLLBACK")
        # With no commit since: the purge goes on by itself.
        await until(lambda: left_behind() == 0, f"{left_behind()} index rows of cleared mail left")

    try:
        asyncio.run(scenario())
    finally:
        holder.close()
        store.close()


def test_quitting_in_the_middle_of_clear_says_how_many_were_not_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(MainScreen, "DELETE_CHUNK", 50, raising=False)
    db = tmp_path / "mail.db"
    _fill(db, 3000)

    async def scenario() -> MailsinkApp:
        async with tui(settings_for(db)) as (app, pilot):
            await wait_until(pilot, lambda: app.main.message_list.count == 3000)
            await pilot.press("D")
            press_at_once(app, "y")
            await wait_until(pilot, lambda: app.main._deleting and len(stored_ids(app)) < 2900)
            press_at_once(app, "q")
        return app

    app = run(scenario)
    with Reader(str(db)) as reader:
        left = len(reader.message_ids())
    assert 0 < left < 2900
    assert app.exit_problems == [f"quit during D: {left:,} of 3,000 messages were not deleted"]
    with pytest.raises(SystemExit) as exited:
        finish(app)
    assert exited.value.code == 1


def test_a_long_text_of_one_line_goes_into_its_tab_a_slice_at_a_time(tmp_path):
    # Quoted-printable soft breaks: 300 K characters that decode to one line.
    body = "=\r\n".join(["abcdefghij" * 7 + "abcde"] * 4000)
    one_line = message(
        subject="one line", body=body, extra="Content-Transfer-Encoding: quoted-printable\r\n"
    )

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            detail = app.main.detail
            text = detail.query_one("#text-body", Document)
            await send(app, "a@x.test", ["b@x.test"], one_line)
            await wait_until(pilot, lambda: detail.loaded is not None)
            assert "\n" not in detail.loaded.text.strip() and len(detail.loaded.text) >= 300_000
            press_at_once(app, "2")
            whole = detail.loaded.text
            lengths = [len(text.text)]
            while text.text.replace("\n", "") != whole.replace("\n", ""):
                await asyncio.sleep(0.001)  # (Pilot.pause would wait for all the slices)
                if len(text.text) != lengths[-1]:
                    lengths.append(len(text.text))
            steps = [after - before for before, after in itertools.pairwise(lengths)]
            # (The last slice runs on to the newline at the end.)
            assert len(steps) > 10 and max(steps) <= 2 * SLICE_CHARS, lengths
            # Shown broken after each slice: TextArea wraps the whole line an edit touches.
            lines = text.text.split("\n")
            assert len(lines) > 10 and {len(line) for line in lines[:-2]} == {SLICE_CHARS}

    run(scenario)


def test_a_slice_of_one_long_line_never_splits_a_character():
    at = SLICE_CHARS
    plain = "x" * (3 * at)
    assert _slice_end(plain, at) == at  # no newline near: cut where the slice is long enough
    assert _slice_end(plain[: at + 10] + "\n" + plain, at) == at + 11  # else after the newline
    assert _slice_end(plain[:at], at) == at
    words = plain[: at - 150] + " " + plain
    assert _slice_end(words, at) == at - 149  # after a space near the cut, if there is one
    for joined in (
        "e\u0301",  # e and its combining acute accent
        "\U0001f468\u200d\U0001f469",  # emoji joined by a ZWJ
        "\u2764\ufe0f",  # a variation selector
        "\ud83d\ude00",  # a surrogate pair (as surrogateescape leaves them)
    ):
        text = plain[: at - 1] + joined + plain  # `at` falls inside `joined`
        assert _slice_end(text, at) == at - 1, ascii(joined)
    marks = plain[:at] + "\u0301" * 100 + plain  # no character to keep whole: cut anyway
    assert _slice_end(marks, at + 50) == at + 50


def _about(pid: int) -> str:
    """What a child that did not end is doing: its threads and their kernel waits, its signal
    masks (SigIgn: an inherited ignored SIGHUP), its kernel stack; and the parent's SIGCHLD.
    (`ps -ww`: under pytest, ps cuts its lines to 80 columns and the arguments with them.)"""
    said = [
        subprocess.run(
            ["ps", "-ww", *fields, "-p", str(pid)], capture_output=True, text=True
        ).stdout
        for fields in (["-o", "pid,ppid,stat,args"], ["-L", "-o", "lwp,stat,wchan:24,pcpu,comm"])
    ]
    for name in ("status", "stack"):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError as error:
            text = f"/proc/{pid}/{name}: {error}"
        if name == "status":
            text = "\n".join(
                line
                for line in text.splitlines()
                if line.startswith(("State", "PPid", "Threads", "Sig", "Shd"))
            )
        said.append(text)
    said.append(f"the test's SIGCHLD: {signal.getsignal(signal.SIGCHLD)!r}")
    return "\n".join(said)


@pytest.mark.parametrize(
    ("signum", "nohup"), [(signal.SIGHUP, False), (signal.SIGTERM, False), (signal.SIGHUP, True)]
)
def test_the_terminal_closing_or_sigterm_quits_as_q_does(tmp_path, signum, nohup):
    """A real `mailsink tui` on a pseudo-terminal: the pending `d` is carried out and the HTML
    `o` wrote is removed, as on `q`. SIGHUP as when the terminal window is closed: its master
    side goes away. Under `nohup` (SIGHUP ignored) no signal comes: mailsink sees the terminal
    hang up, and quits the same way (it read the dead terminal at a core's worth of CPU)."""
    html = (
        "From: a@x.test\r\nTo: b@x.test\r\nSubject: page\r\nContent-Type: text/html\r\n\r\n"
        "<h1>Report</h1>\r\n"
    )
    script, opened = recording_browser(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    db = tmp_path / "mail.db"
    pid, fd = pty.fork()
    if pid == 0:  # the child: mailsink on the pty
        # As a shell at a terminal starts it. A test run started under `nohup` (or by a tool
        # that ignores SIGHUP) hands its children SIGHUP ignored, across exec; mailsink then
        # rightly leaves it ignored, and closing the terminal does not end it.
        for default in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(default, signal.SIG_DFL)
        if nohup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGHUP, signal.SIGTERM])
        os.environ.update(
            TERM="xterm-256color", BROWSER=str(script), TMPDIR=str(temp),
            MAILSINK_STATE_DIR=str(tmp_path),
        )  # fmt: skip
        argv = [sys.executable, "-m", "mailsink", "tui", "--port", str(port), "--db", str(db)]
        argv += ["--http-port", "0"]
        os.execv(sys.executable, argv)
    seen = b""

    def read_until(wanted: Callable[[], bool]) -> None:
        nonlocal seen
        deadline = time.monotonic() + 15
        while not wanted() and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(fd, 65536)
        assert wanted(), seen[-2000:]

    try:
        read_until(lambda: b"messages" in seen)
        wait_for_port(port)
        smtp_send(port, "a@x.test", ["b@x.test"], message(subject="first"))
        smtp_send(port, "a@x.test", ["b@x.test"], html)
        read_until(lambda: b"page" in seen)
        os.write(fd, b"\x1b[H")  # Home: the newest, the HTML one
        time.sleep(0.2)
        os.write(fd, b"o")
        read_until(opened.exists)
        os.write(fd, b"d")
        read_until(lambda: b"u to undo" in seen)
        assert list(temp.glob("mailsink-html-*/*.html"))
        if signum == signal.SIGHUP:
            os.close(fd)  # the terminal goes away: the kernel sends SIGHUP
            fd = -1
        else:
            os.kill(pid, signum)
        # (30 s: a loaded CI machine, every module imported from source by the child.)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if fd >= 0 and select.select([fd], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    os.read(fd, 65536)
            time.sleep(0.01)
        else:
            raise AssertionError(f"mailsink did not stop on signal {signum}:\n{_about(pid)}")
        assert os.waitstatus_to_exitcode(status) == 128 + signum
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
        if fd >= 0:
            os.close(fd)
    with Reader(str(db)) as reader:
        assert reader.message_ids() == [1]
    assert list(temp.iterdir()) == []
