"""The Sessions, Faults and Help screens at 80x24, the footer, tab keys, one notice per config
error, and the theme remembered between runs: the real app with its own server on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import smtplib
import time

import platformdirs
import pytest
from conftest import RawClient, message
from tui_support import run, screen_text, send, settings_for, tui, wait_until

from mailsink.tui.app import RecentLog
from mailsink.tui.screens.faults import FaultsScreen
from mailsink.tui.screens.message import MessageScreen
from mailsink.tui.screens.sessions import SessionsScreen
from mailsink.tui.state import UiState, default_state_dir
from mailsink.tui.widgets.message_detail import TABS, MessageDetail

SMALL = (80, 24)
HOSTILE_HELO = "h" * 300


def _lines(app) -> list[str]:
    return screen_text(app).splitlines()


def _footer(app) -> str:
    return _lines(app)[-1]


def _notices(app, text: str) -> int:
    """Notices on screen that say `text` (run_test draws no toasts: the app's own list)."""
    return sum(text in notice.message for notice in app._notifications)


def test_sessions_fit_80_columns_and_move_like_the_list(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=SMALL) as (app, pilot):
            assert app.sink.server is not None
            port = app.sink.server.port
            await send(app, "a@x.test", ["b@x.test"], message())
            hostile = await asyncio.to_thread(RawClient, "127.0.0.1", port)
            slow = await asyncio.to_thread(RawClient, "127.0.0.1", port)
            try:
                await asyncio.to_thread(hostile.command, f"EHLO {HOSTILE_HELO}")
                await asyncio.to_thread(slow.command, "EHLO slow.client.example.test")
                await pilot.press("s")
                sessions = app.screen
                assert isinstance(sessions, SessionsScreen)
                await wait_until(pilot, lambda: len(sessions.order) == 3)
                await wait_until(pilot, lambda: "slow.client" in screen_text(app))

                lines = _lines(app)
                heading = lines[1]
                for label in ("Id", "Started", "Peer", "HELO", "State", "Msgs", "Last reply"):
                    assert label in heading, heading
                assert heading.rstrip().endswith(" ✗ Faults"), heading  # ✗: refusals
                hostile_row = next(line for line in lines if "hhhh" in line)
                # The 300-character HELO is cut short with "…", and what follows it is on screen.
                assert "h…" in hostile_row and "EHLO" in hostile_row, hostile_row
                assert "250 HELP" in hostile_row, hostile_row
                assert hostile_row.count("h") < 30, hostile_row
                # (The table's rows come before the transcript's lines.)
                slow_row = next(line for line in lines if "slow.cl" in line)
                assert re.search(r" slow\.clie\S*… ", slow_row), slow_row
                assert "quit" in next(line for line in lines if " 1 " in line[:6])

                # A cell updated in place widens its column: the new last reply is not cut.
                await asyncio.to_thread(slow.command, "MAIL FROM:<a@b.test>")
                await wait_until(pilot, lambda: "250 2.1.0 Ok" in screen_text(app))

                # Wider: the HELO column grows to its cap, every other column keeps its place.
                await pilot.resize_terminal(120, 30)
                await wait_until(pilot, lambda: "slow.client.example.test" in screen_text(app))
                hostile_row = next(line for line in _lines(app) if "hhhh" in line)
                assert "h" * 23 + "…" in hostile_row and "h" * 25 not in hostile_row, hostile_row
                await pilot.resize_terminal(*SMALL)
                await wait_until(pilot, lambda: re.search(r"slow\.clie\S*…", screen_text(app)))

                footer = _footer(app)
                for key in ("esc Back", "f Faults", "? Help", "q Quit"):
                    assert key in footer, footer

                # j k Home End g G move as on the message list (newest first: row 0).
                table = sessions.query_one("#sessions")
                assert table.cursor_row == 0
                for key, row in (("j", 1), ("end", 2), ("k", 1), ("home", 0), ("G", 2), ("g", 0)):
                    await pilot.press(key)
                    assert table.cursor_row == row, key
            finally:
                hostile.close()
                slow.close()

    run(scenario)


LONG_RULE = "a custom rule whose name goes on and on and on and on for ever"


def test_faults_fit_80_columns_and_a_bad_config_edit_is_one_notice(tmp_path):
    config = tmp_path / "mailsink.toml"
    config.write_text(
        '[[fault]]\nname = "no marketing"\nstage = "mail"\n'
        'reply = "550 5.7.1 Marketing mail is not permitted from this sender"\n'
        'match = { sender = "*@marketing.test" }\n'
        f'[[fault]]\nname = "{LONG_RULE}"\nstage = "rcpt"\nreply = "450 4.2.0 later"\n'
        'match = { sender = "*@nowhere.test" }\n'
    )
    handler = RecentLog()  # as `mailsink` runs it: the server's warnings become notices
    logger = logging.getLogger("mailsink")
    logger.addHandler(handler)

    async def scenario() -> None:
        settings = settings_for(tmp_path / "mail.db", config)
        async with tui(settings, size=SMALL, log_handler=handler) as (app, pilot):
            await wait_until(pilot, lambda: "q Quit" in _footer(app))
            footer = _footer(app)
            for key in ("/ Filter", "s Sessions", "f Faults", "? Help", "q Quit"):
                assert key in footer, footer

            await pilot.press("f")
            assert isinstance(app.screen, FaultsScreen)
            with pytest.raises(smtplib.SMTPSenderRefused):
                await send(app, "x@marketing.test", ["a@x.test"], message())
            await wait_until(pilot, lambda: ":" in _row(app, "no marketing")[-10:])
            lines = _lines(app)
            heading = next(line for line in lines if "Rule" in line)
            assert heading.rstrip().endswith("Hits Last fired"), heading
            assert re.search(r" 530 5\.7\.0 Auth\S*… ", _row(app, "530 auth")), lines
            # The hit and its time, at the right edge of an 80-column terminal.
            assert _row(app, "no marketing").rstrip()[-10:].split() == ["1", _time(app)]
            assert re.search(r" 550 5\.7\.1 Marketing\S* \S*…", _row(app, "no marketing"))
            assert "changes apply from the next SMTP command" in screen_text(app).replace(
                "\n", " "
            ).replace("  ", " ")
            footer = _footer(app)
            for key in ("esc Back", "s Sessions", "? Help", "q Quit"):
                assert key in footer, footer
            # Wider: what a rule does gets its whole width before a long name takes the rest.
            await pilot.resize_terminal(120, 30)
            await wait_until(pilot, lambda: "Authentication required " in _row(app, "530 auth"))
            assert "Insufficient system storage " in _row(app, "452 4.3.1 no")
            assert f"{LONG_RULE[:30]}" in _row(app, "450 4.2.0 later")
            assert f"{LONG_RULE} " not in _row(app, "450 4.2.0 later")
            await pilot.resize_terminal(*SMALL)

            await pilot.press("escape")
            config.write_text("[smtp]\nport = 'x'\n")
            await wait_until(pilot, lambda: _notices(app, "smtp.port") >= 1, timeout=10)
            await pilot.pause(0.5)  # the app turns logged warnings into notices every 0.1 s
            assert _notices(app, "smtp.port") == 1

    try:
        run(scenario)
    finally:
        logger.removeHandler(handler)


def _row(app, text: str) -> str:
    return next(line for line in _lines(app) if text in line)


def _time(app) -> str:
    server = app.sink.faults
    last = server.policy.stats["no marketing"].last_fired
    return time.strftime("%H:%M:%S", time.localtime(last))


def test_help_fits_80x24_and_scrolls_from_the_keyboard(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=SMALL) as (app, pilot):
            app.animation_level = "none"  # scrolling jumps instead of sliding
            await pilot.press("question_mark")
            shown = screen_text(app)
            assert "mailsink keys" in shown and "escape closes" in shown
            assert "Screens" not in shown
            # Nothing cut at the right: the border's corners are on screen.
            top = next(line for line in shown.splitlines() if "▀▀▀" in line)
            assert "█▀" in top and "▀█" in top, shown
            await pilot.press("pagedown", "pagedown")
            assert "Screens" in screen_text(app)
            await pilot.press("home")
            assert "Screens" not in screen_text(app)
            await pilot.press("end")
            shown = screen_text(app)
            assert "Screens" in shown and "quit (the listener closes" in shown
            assert "escape closes" in shown
            await pilot.press("up", "up", "down")

            await pilot.resize_terminal(100, 30)
            await pilot.press("end")
            shown = screen_text(app)
            assert "flight finish)" in shown and "escape closes" in shown
            await pilot.press("escape")
            assert app.screen is app.main

    run(scenario)


def test_tab_keys_from_the_list_and_the_message_screen(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=SMALL) as (app, pilot):
            app.animation_level = "none"  # the tab underline's slide costs 0.3 s a key here
            await send(app, "a@x.test", ["b@x.test"], message(subject="tabbed"))
            detail = app.main.detail
            await wait_until(pilot, lambda: detail.loaded is not None)
            tabs = detail.query_one("TabbedContent")
            for key, tab in zip("1234567", TABS, strict=True):
                await pilot.press(key)
                assert tabs.active == tab, key
            await pilot.press("right_square_bracket")
            assert tabs.active == "overview"  # round from the last tab
            await pilot.press("left_square_bracket", "left_square_bracket")
            assert tabs.active == "raw"
            assert app.screen.focused is app.main.message_list  # the list kept the focus

            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
            full = app.screen.query_one(MessageDetail)
            await wait_until(pilot, lambda: full.loaded is not None)
            full_tabs = full.query_one("TabbedContent")
            await pilot.press("4")
            assert full_tabs.active == "headers"
            await pilot.press("right_square_bracket")
            assert full_tabs.active == "parts"
            footer = _footer(app)
            for key in ("esc Back", "s Sessions", "f Faults", "? Help", "q Quit"):
                assert key in footer, footer

    run(scenario)


def test_theme_is_remembered_across_runs(tmp_path):
    state = tmp_path / "state"

    async def choose() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), state_dir=state) as (app, pilot):
            assert app.theme == "textual-dark"
            app.animation_level = "none"
            await pilot.press("ctrl+p")
            await pilot.press(*"theme")
            await wait_until(pilot, lambda: "Change the current theme" in screen_text(app))
            await pilot.press("enter")
            await wait_until(pilot, lambda: "Search for themes" in screen_text(app))
            await pilot.press(*"nord")
            await wait_until(pilot, lambda: "nord" in screen_text(app))
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.theme == "nord")
            await wait_until(pilot, lambda: (state / "state.json").exists())

    async def again() -> str:
        async with tui(settings_for(tmp_path / "mail.db"), state_dir=state) as (app, _):
            return app.theme

    run(choose)
    assert json.loads((state / "state.json").read_text()) == {"theme": "nord"}
    assert list(state.iterdir()) == [state / "state.json"]  # no temporary file left
    assert run(again) == "nord"


def test_a_broken_state_file_or_an_unknown_theme_is_ignored(tmp_path, caplog):
    state = UiState(tmp_path)
    path = tmp_path / "state.json"
    nested = b"[" * 60_000  # 60 KB, deeper than the JSON parser goes
    for content in (b"\xff\xfe not utf-8", b"{not json", b"[1, 2]", b"{}" + b" " * 70_000, nested):
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "mailsink"):
            assert state.load() == {}
        assert "ignoring the UI state file" in caplog.text, content
    state.remember(theme="nord")
    state.write()  # reads the file first: the nested one is replaced, not raised
    assert json.loads(path.read_text()) == {"theme": "nord"}
    state = UiState(tmp_path)
    path.unlink()
    os.mkfifo(path)  # would block a plain open() for ever
    assert state.load() == {}
    path.unlink()
    path.mkdir()
    state.remember(theme="nord")
    with caplog.at_level(logging.WARNING, "mailsink"):
        state.write()  # a directory in the way: said, not raised
    assert "cannot save the UI state" in caplog.text
    path.rmdir()

    path.write_text('{"theme": "no-such-theme", "other": 1}')

    async def start() -> str:
        async with tui(settings_for(tmp_path / "mail.db"), state_dir=tmp_path) as (app, _):
            return app.theme

    caplog.clear()
    with caplog.at_level(logging.WARNING, "mailsink"):
        assert run(start) == "textual-dark"
    assert "no such theme" in caplog.text
    # A broken file is replaced at the next change, and values it does not know are kept.
    path.write_text('{"other": 1}')
    state.remember(theme="nord")
    state.write()
    assert json.loads(path.read_text()) == {"other": 1, "theme": "nord"}


def test_state_dir_is_the_user_config_dir_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv("MAILSINK_STATE_DIR", raising=False)
    assert default_state_dir() == platformdirs.user_config_path("mailsink")
    monkeypatch.setenv("MAILSINK_STATE_DIR", str(tmp_path / "elsewhere"))
    assert default_state_dir() == tmp_path / "elsewhere"


def test_a_rejected_config_edit_is_one_notice_while_the_list_is_busy(tmp_path, monkeypatch):
    """The logged error and the ConfigRejected event say the same thing: one notice, even when
    the list is in the middle of a slow catch-up (a filtered list of a big store)."""
    from mailsink.store import Reader

    config = tmp_path / "mailsink.toml"
    config.write_text("[smtp]\nhostname = 'a.test'\n")
    handler = RecentLog()
    logger = logging.getLogger("mailsink")
    logger.addHandler(handler)
    index = Reader.message_index

    def slow_index(reader, *args, **kwargs):
        time.sleep(0.4)
        return index(reader, *args, **kwargs)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db", config), log_handler=handler) as (
            app,
            pilot,
        ):
            await pilot.pause(0.3)  # the config watch has begun
            monkeypatch.setattr(Reader, "message_index", slow_index)
            await send(app, "a@x.test", ["b@x.test"], message())  # a catch-up starts
            config.write_text("[smtp]\nport = 'x'\n")  # and the edit is rejected meanwhile

            def notices() -> list[str]:
                return [n.message for n in app._notifications if "smtp.port" in n.message]

            await wait_until(pilot, lambda: notices(), 10)
            await pilot.pause(1.0)
            assert len(notices()) == 1, notices()

    try:
        run(scenario)
    finally:
        logger.removeHandler(handler)
