"""`mailsink tui --attach` as a full client of the store's server: a real `mailsink serve` in a
subprocess, the attached app driven with Pilot at 80x24. Faults switched (space, presets) and
seen refusing over real SMTP, a live session's HELO and transcript before anything commits,
the status line as the server stops and starts again."""

from __future__ import annotations

import asyncio
import smtplib
import time

import pytest
from conftest import RawClient
from test_server_link import CONFIG, PRESET_2, Server, sendmail, server_rules
from textual.widgets import DataTable
from tui_support import (
    log_text,
    run,
    screen_text,
    settings_for,
    squeezed,
    static_text,
    tui,
    wait_until,
)

from mailsink.server_link import find_server
from mailsink.tui.screens import sessions
from mailsink.tui.screens.faults import ATTACHED, FaultsScreen
from mailsink.tui.screens.sessions import SessionsScreen

SMALL = (80, 24)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    server = Server(tmp_path_factory.mktemp("attached"), CONFIG)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.assert_no_token_logged()


def status(app) -> str:
    return static_text(app, "#status") if app.screen is app.main else ""


def hits(app) -> int:
    return next(rule.hits for rule in app.sink.fault_rules() if rule.name == PRESET_2)


def rule_on(app, name: str) -> bool:
    return next(rule.enabled for rule in app.sink.fault_rules() if rule.name == name)


def test_faults_switched_from_an_attached_tui_refuse_over_smtp(served):
    async def scenario() -> None:
        async with tui(settings_for(served.db), attach=True, size=SMALL) as (app, pilot):
            await wait_until(pilot, lambda: app.sink.can_switch_faults)
            # The server's rules in force, counted where a serving TUI counts its own (at 80
            # columns they leave no room for the link: the count says it is there).
            await wait_until(pilot, lambda: "faults: 1 on" in status(app))
            await pilot.press("f")
            screen = app.screen
            assert isinstance(screen, FaultsScreen)
            await wait_until(pilot, lambda: "no marketing" in screen.names)
            text = screen_text(app)
            assert "The rules of the server at http://127.0.0.1:" in text
            assert ATTACHED not in text
            # A preset, by its key.
            await pilot.press("2")
            await wait_until(pilot, lambda: rule_on(app, PRESET_2))
            await wait_until(pilot, lambda: "● on" in screen_text(app))
            try:
                with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                    await asyncio.to_thread(sendmail, served.port, "a@x.test")
                assert [code for code, _ in refused.value.recipients.values()] == [550]
                # The firing, back through the server's events: its hits on the screen.
                row = screen.names.index(PRESET_2)
                table: DataTable = screen.query_one("#rules", DataTable)
                await wait_until(pilot, lambda: hits(app) == 1)
                await wait_until(pilot, lambda: table.get_row_at(row)[5].plain.strip() == "1")
            finally:
                await pilot.press("2")
                await wait_until(pilot, lambda: not rule_on(app, PRESET_2))
            # The config file's rule, with the cursor and space.
            table = screen.query_one("#rules", DataTable)
            table.move_cursor(row=screen.names.index("no marketing"))
            await pilot.press("space")
            await wait_until(pilot, lambda: not rule_on(app, "no marketing"))
            try:
                assert await asyncio.to_thread(sendmail, served.port, "x@marketing.test") == {}
            finally:
                await pilot.press("space")
                await wait_until(pilot, lambda: rule_on(app, "no marketing"))
            with pytest.raises(smtplib.SMTPSenderRefused):
                await asyncio.to_thread(sendmail, served.port, "x@marketing.test")

    run(scenario)


def test_a_live_sessions_helo_shows_before_anything_commits(served):
    async def scenario() -> None:
        async with tui(settings_for(served.db), attach=True, size=SMALL) as (app, pilot):
            await wait_until(pilot, lambda: app.sink.link is not None and app.sink.link.live)
            await pilot.press("s")
            screen = app.screen
            assert isinstance(screen, SessionsScreen)
            raw = await asyncio.to_thread(RawClient, "127.0.0.1", served.port)
            try:
                await asyncio.to_thread(raw.command, "EHLO tui.test")

                def shown() -> int | None:
                    return next(
                        (i for i, row in screen.rows.items() if row.helo == "tui.test"), None
                    )

                await wait_until(pilot, shown)
                session_id = shown()
                assert session_id is not None
                # From the server's event stream: its connection's snapshot, no message.
                live = app.sink.live_session(session_id)
                assert live is not None and live.live and live.message_ids == ()
                row = screen.rows[session_id]
                assert row.active and row.state == "EHLO" and row.messages == 0
                assert "tui.test" in screen_text(app)
                # Its transcript, line by line as it is spoken.
                screen.query_one("#sessions", DataTable).move_cursor(
                    row=screen.order.index(session_id)
                )
                await wait_until(pilot, lambda: "EHLOtui.test" in log_text(app, "#transcript"))
                await asyncio.to_thread(raw.command, "NOOP")
                await wait_until(pilot, lambda: "NOOP" in log_text(app, "#transcript"))
                await asyncio.to_thread(raw.command, "QUIT")
            finally:
                raw.close()
            await wait_until(pilot, lambda: not screen.rows[session_id].active)

    run(scenario)


def test_the_status_line_as_the_server_stops_and_starts_again(tmp_path):
    server = Server(tmp_path)
    server.start()
    try:

        async def scenario() -> None:
            async with tui(settings_for(server.db), attach=True) as (app, pilot):
                link = app.sink.link
                assert link is not None
                await wait_until(pilot, lambda: f"live via {link.url}" in status(app))
                await asyncio.to_thread(server.stop)
                await wait_until(pilot, lambda: "no HTTP link (faults read-only)" in status(app))
                await pilot.press("f")
                await wait_until(pilot, lambda: squeezed(ATTACHED) in squeezed(screen_text(app)))
                await pilot.press("2")  # read-only: said, nothing switched
                await wait_until(
                    pilot,
                    lambda: any("faults are read-only" in n.message for n in app._notifications),
                )
                await pilot.press("escape")
                await asyncio.to_thread(server.start)
                await wait_until(pilot, lambda: f"live via {link.url}" in status(app), 8)

        run(scenario)
    finally:
        server.stop()


def test_80_columns_keep_the_link_in_sight(tmp_path):
    server = Server(tmp_path)
    server.start()
    try:

        async def scenario() -> None:
            async with tui(settings_for(server.db), attach=True, size=SMALL) as (app, pilot):
                await wait_until(pilot, lambda: app.sink.can_switch_faults)
                # The server's row, with where it listens, commits a moment after its lock.
                await wait_until(pilot, lambda: server.port_text() in status(app))
                await wait_until(pilot, lambda: "live" in status(app))
                line = status(app).rstrip("\n")
                # Where the store is, who serves it and the link: all in 80 columns.
                assert len(line) <= 80 and "served.db" in line
                assert f" · {server.port_text()}" in line and " · live :" in line
                assert "0 messages" in line
                await asyncio.to_thread(server.stop)
                # The server's stop is said where it was (the link's loss goes without saying,
                # and gives way first).
                await wait_until(pilot, lambda: app.sink.link.state == "unreachable")
                await wait_until(pilot, lambda: "server stopped" in status(app))
                line = status(app).rstrip("\n")
                assert len(line) <= 80 and "served.db" in line and "live" not in line

        run(scenario)
    finally:
        server.stop()


def test_two_quick_switches_of_a_rule_are_a_switch_and_back(served):
    found = find_server(str(served.db))
    assert found is not None

    async def scenario() -> None:
        async with tui(settings_for(served.db), attach=True, size=SMALL) as (app, pilot):
            await wait_until(pilot, lambda: app.sink.can_switch_faults)
            await pilot.press("f")
            screen = app.screen
            assert isinstance(screen, FaultsScreen)
            await wait_until(pilot, lambda: "no marketing" in screen.names)
            screen.query_one("#rules", DataTable).move_cursor(
                row=screen.names.index("no marketing")
            )
            _, before = await asyncio.to_thread(server_rules, found)
            assert before["no marketing"]
            screen.action_switch()  # twice before the first is answered
            screen.action_switch()

            def told() -> list[str]:
                return [n.message for n in app._notifications if "no marketing:" in n.message]

            await wait_until(pilot, lambda: len(told()) == 2)
            assert told() == ["no marketing: off", "no marketing: on"]
            _, after = await asyncio.to_thread(server_rules, found)
            assert after == before

    run(scenario)


def test_the_sessions_screen_follows_the_links_events_not_its_poll(served, monkeypatch):
    monkeypatch.setattr(sessions, "ATTACHED_REFRESH_SECONDS", 10.0)

    async def scenario() -> None:
        async with tui(settings_for(served.db), attach=True, size=SMALL) as (app, pilot):
            await wait_until(pilot, lambda: app.sink.link is not None and app.sink.link.live)
            await pilot.press("s")
            screen = app.screen
            assert isinstance(screen, SessionsScreen)
            await pilot.pause(0.3)  # its first reading of the store is done
            raw = await asyncio.to_thread(RawClient, "127.0.0.1", served.port)
            try:
                start = time.monotonic()
                await asyncio.to_thread(raw.command, "EHLO quick.test")
                await wait_until(
                    pilot, lambda: any(row.helo == "quick.test" for row in screen.rows.values())
                )
                # Well before the next poll (10 s from now): the events made it redraw.
                assert time.monotonic() - start < 1.0
                await asyncio.to_thread(raw.command, "QUIT")
            finally:
                raw.close()

    run(scenario)
