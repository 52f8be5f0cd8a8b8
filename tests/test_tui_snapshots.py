"""Snapshots of the TUI at 120x40 (pytest-textual-snapshot's SVG format), and the hostile-content
corpus: nothing from a message or a session may act as markup or as a terminal control.

The store is filled through the store's own write path with fixed times, so the pictures only
change when the UI does. Update them with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at every changed SVG before committing it.
"""

from __future__ import annotations

import asyncio
import re
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import RawClient, message
from pytest_textual_snapshot import SVGImageExtension
from tui_support import (
    list_rows,
    rows_loaded,
    run,
    screen_text,
    send,
    settings_for,
    static_text,
    tui,
    wait_until,
)

from mailsink.mail.envelope import Envelope, RefusedRecipient
from mailsink.store import IncomingMessage, Store
from mailsink.store.operations import insert_message, insert_session, update_session
from mailsink.tui.app import MailsinkApp
from mailsink.tui.screens.sessions import SessionsScreen
from mailsink.tui.widgets.message_detail import MessageDetail

BASE = 1_795_770_000_000  # 2026-11-26 21:00:00 UTC, in ms


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def snapshot_svg(snapshot):
    return snapshot.use_extension(SVGImageExtension)


def _session(
    number: int, peer: str, helo: str, lines: list[tuple[str, str]], end: str, **fields
) -> list:
    """`fields`: more session columns (refusals, last_refusal)."""
    started = BASE + number * 60_000
    events = [(seq, started + seq * 7, d, t) for seq, (d, t) in enumerate(lines, 1)]
    return [
        (insert_session, {"session_id": number, "started_at": started, "peer": peer}),
        (
            update_session,
            {
                "session_id": number,
                "events": events,
                "started_at": started,
                "peer": peer,
                "helo": helo,
                "end_reason": end,
                "ended_at": started + 900,
                "last_reply": lines[-1][1] if lines[-1][0] == "S" else None,
                **fields,
            },
        ),
    ]


def _message(
    number: int,
    session: int,
    mail_from: str,
    rcpt: list[str],
    raw: bytes,
    refused: tuple[RefusedRecipient, ...] = (),
    **kw,
) -> tuple:
    envelope = Envelope(
        mail_from, rcpt, helo="app.local", peer="127.0.0.1:50123", rcpt_refused=list(refused)
    )
    incoming = IncomingMessage(session, envelope, raw, BASE + number * 60_000 + 500, **kw)
    return (insert_message, {"message": incoming})


def _write(path: Path, operations: list) -> None:
    async def write() -> None:
        store = Store(str(path))
        try:
            for operation, arguments in operations:
                await store.run(partial(operation, **arguments))
        finally:
            store.close()

    asyncio.run(write())


def fill(path: Path) -> None:
    """Three sessions and five messages, one of them hostile, one rejected."""
    conversation = [
        ("S", "220 mailsink ESMTP mailsink"),
        ("C", "EHLO app.local"),
        ("S", "250-mailsink"),
        ("S", "250 HELP"),
        ("C", "MAIL FROM:<orders@shop.test>"),
        ("S", "250 2.1.0 Ok"),
        ("C", "RCPT TO:<customer@x.test>"),
        ("S", "250 2.1.5 Ok"),
        ("C", "RCPT TO:<audit@shop.test>"),
        ("S", "250 2.1.5 Ok"),
        ("C", "DATA"),
        ("S", "354 End data with <CR><LF>.<CR><LF>"),
        ("D", "[message data: 412 bytes]"),
        ("S", "250 2.0.0 Ok: queued as 1"),
        ("C", "QUIT"),
        ("S", "221 2.0.0 Bye"),
    ]
    refused = [
        ("S", "220 mailsink ESMTP mailsink"),
        ("C", "EHLO [bold red]x\x1b[2J"),
        ("S", "250 HELP"),
        ("C", "MAIL FROM:<spam@marketing.test>"),
        ("I", "fault 'no marketing' fired at mail: reply 550 5.7.1 Not permitted"),
        ("S", "550 5.7.1 Not permitted"),
        ("C", "QUIT"),
        ("S", "221 2.0.0 Bye"),
    ]
    operations = [
        *_session(1, "127.0.0.1:50123", "app.local", conversation, "quit"),
        *_session(2, "127.0.0.1:50124", "app.local", conversation[:-2], "client_closed"),
        *_session(3, "127.0.0.1:50125", "[bold red]x\x1b[2J", refused, "quit"),
    ]
    operations += [
        _message(
            1,
            1,
            "orders@shop.test",
            ["customer@x.test", "audit@shop.test"],
            message(
                sender="Shop <orders@shop.test>",
                to="customer@x.test",
                subject="Order #1042 confirmed",
            ),
        ),
        _message(
            2,
            1,
            "bounces@mailer.test",
            ["ann@x.test"],
            message(
                sender="News <news@shop.test>", to="ann@x.test, bob@x.test", subject="Weekly deals"
            ),
        ),
        _message(
            3,
            2,
            "reset@shop.test",
            ["carl@x.test"],
            message(
                sender="reset@shop.test",
                to="carl@x.test",
                subject="Password reset",
                extra='Content-Type: multipart/mixed; boundary="b"\r\n',
                body=(
                    "--b\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b\r\n"
                    'Content-Disposition: attachment; filename="a.pdf"\r\n\r\nx\r\n--b--\r\n'
                ),
            ),
        ),
        _message(
            4,
            2,
            "[@click=app.quit]x@evil.test",
            ["dora@x.test"],
            message(
                sender="[bold red]Boom[/] <evil@x.test>",
                to="dora@x.test",
                subject="[@click=app.quit]click me[/] \x1b[31mred\x07\x08 \u202egnp.exe",
            ),
        ),
        _message(
            5,
            2,
            "big@shop.test",
            ["erin@x.test"],
            message(sender="big@shop.test", to="erin@x.test", subject="Too big"),
            status="rejected",
            reply="552 5.3.4 Message size exceeds fixed maximum message size",
        ),
    ]

    _write(path, operations)


def picture(app: MailsinkApp) -> str:
    """The screenshot, with the only things that differ between runs (the ports) fixed."""
    assert app.sink.server is not None
    svg = app.export_screenshot()
    svg = svg.replace(f":{app.sink.server.port}", ":10025")  # ephemeral ports: 5 digits
    if app.sink.http is not None:
        svg = svg.replace(f":{app.sink.http.port}", ":18025")
    return re.sub(r"terminal-\d+", "terminal-mailsink", svg)


@pytest.fixture
def filled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: nothing run-specific on screen
    Path("mailsink.toml").write_text(
        '[[fault]]\nname = "no marketing"\nstage = "mail"\nreply = "550 5.7.1 Not permitted"\n'
        'match = { sender = "*@marketing.test" }\n\n'
        '[[fault]]\nname = "slow greeting"\nstage = "connect"\naction = "delay"\ndelay = "2s"\n'
        "enabled = false\n"
    )
    fill(tmp_path / "mail.db")
    return settings_for("mail.db", Path("mailsink.toml"))


def shot(settings, *keys: str, ready=lambda app: True, size=(120, 40)) -> str:
    """The screenshot after the store is on screen, `keys` are pressed and `ready(app)` holds."""

    async def scenario() -> str:
        async with tui(settings, size=size) as (app, pilot):
            await wait_until(pilot, lambda: rows_loaded(app) and app.main.detail.loaded)
            await pilot.press(*keys)
            await wait_until(pilot, lambda: ready(app))
            await pilot.pause(0.1)
            await pilot.wait_for_scheduled_animations()
            return picture(app)

    return run(scenario)


def test_main_screen(filled, snapshot_svg):
    assert shot(filled) == snapshot_svg


def test_overview_of_an_opened_message(filled, snapshot_svg):
    # The oldest message: a hidden recipient, the bounce address equal to From.
    opened = lambda app: app.screen.query_one(MessageDetail).loaded  # noqa: E731
    assert shot(filled, "end", "enter", ready=opened) == snapshot_svg


def test_sessions_screen(filled, snapshot_svg):
    def streamed(app: MailsinkApp) -> bool:
        screen = app.screen
        return isinstance(screen, SessionsScreen) and screen.last_seq == 8

    assert shot(filled, "s", ready=streamed) == snapshot_svg


def test_faults_screen(filled, snapshot_svg):
    assert shot(filled, "f", "2") == snapshot_svg  # the 550 5.7.1 preset switched on


def test_help_screen(filled, snapshot_svg):
    assert shot(filled, "question_mark") == snapshot_svg


# ---- hostile content -----------------------------------------------------------------------------

HOSTILE_SUBJECTS = [
    "[bold red]Boom[/]",
    "[@click=app.quit]x",
    "[link=https://evil.test]y[/link]",
    "esc\x1b[2J\x1b]0;title\x07",
    "bell\x07 back\x08space del\x7f",
    "c1\u009bcsi \u0085nel",
    "rtl\u202egnp.exe",
]
SHOWN_AS = [
    "[bold red]Boom[/]",
    "[@click=app.quit]x",
    "[link=https://evil.test]y[/link]",
    "esc␛[2J␛]0;title␇",
    "bell␇ back␈space del␡",
    "c1<U+009B>csi <U+0085>nel",
    "rtl<U+202E>gnp.exe",
]
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _hostile_message(subject: str) -> bytes:
    return (
        f"From: {subject} <a@x.test>\r\nTo: b@x.test\r\nSubject: {subject}\r\n"
        f"Date: Fri, 27 Nov 2026 23:10:00 +0000\r\n\r\n{subject}\r\n"
    ).encode()


def test_hostile_strings_show_literally_everywhere(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing = app.main.message_list
            for subject in HOSTILE_SUBJECTS:
                await send(app, "a@x.test", ["b@x.test"], _hostile_message(subject))
            assert app.sink.server is not None
            client = await asyncio.to_thread(RawClient, "127.0.0.1", app.sink.server.port)
            await asyncio.to_thread(client.command, "EHLO [bold]x\x1b[2J\x07")
            await asyncio.to_thread(client.command, "QUIT")
            client.close()
            await wait_until(pilot, lambda: listing.count == len(HOSTILE_SUBJECTS))
            await wait_until(pilot, lambda: rows_loaded(app))

            rows = list_rows(app)
            shown = screen_text(app)
            assert not RAW_CONTROLS.search(shown), repr(RAW_CONTROLS.findall(shown))
            for expected in SHOWN_AS:
                # The subject column is narrower than some: its start is enough here.
                assert any(expected[:12] in row for row in rows), expected

            detail = app.main.detail
            for row in range(len(HOSTILE_SUBJECTS)):
                listing.cursor = row
                await wait_until(
                    pilot,
                    lambda: (
                        detail.loaded is not None and detail.loaded.record.id == listing.selected_id
                    ),
                )
                expected = SHOWN_AS[-1 - row]
                assert f"Subject: {expected}" in static_text(app, "#overview-body")
                assert expected in detail.query_one("#text-body").text
                assert f"Subject: {expected}" in static_text(app, "#headers-body")
                for tab in ("overview", "text", "headers", "parts", "raw", "session"):
                    detail.query_one("TabbedContent").active = tab
                    await pilot.pause(0.02)
                    shown = screen_text(app)
                    assert not RAW_CONTROLS.search(shown), (tab, repr(RAW_CONTROLS.findall(shown)))

            # Clicking the row that says [@click=app.quit] selects it; the app keeps running.
            clickable = next(i for i, r in enumerate(rows) if "[@click=app.quit]x" in r)
            await pilot.click("#messages", offset=(60, clickable))
            await pilot.pause(0.1)
            assert app.is_running and listing.cursor == clickable

            await pilot.press("s")
            sessions = app.screen
            assert isinstance(sessions, SessionsScreen)
            await wait_until(pilot, lambda: len(sessions.order) == len(HOSTILE_SUBJECTS) + 1)
            sessions.query_one("#sessions").move_cursor(row=0)
            await wait_until(pilot, lambda: sessions.shown_session == sessions.order[0])
            await wait_until(pilot, lambda: "EHLO [bold]x␛[2J␇" in screen_text(app))
            assert not RAW_CONTROLS.search(screen_text(app))

    run(scenario)


# ---- 80x24 ---------------------------------------------------------------------------------------


def test_help_screen_80x24(filled, snapshot_svg):
    assert shot(filled, "question_mark", size=(80, 24)) == snapshot_svg


def test_sessions_screen_80x24(filled, snapshot_svg):
    def streamed(app: MailsinkApp) -> bool:
        screen = app.screen
        return isinstance(screen, SessionsScreen) and screen.last_seq == 8

    assert shot(filled, "s", ready=streamed, size=(80, 24)) == snapshot_svg


def test_main_screen_80x24(filled, snapshot_svg):
    assert shot(filled, size=(80, 24)) == snapshot_svg


# ---- what the server refused (issue 13) ------------------------------------------------------

MAILBOX_FULL = "452 4.2.2 Mailbox full"
NO_STORAGE = "452 4.3.1 Insufficient system storage"


def fill_refusals(path: Path) -> None:
    """Four sessions: one refused nothing, one had its MAIL FROM refused (no message), one a
    RCPT TO (its message went to the other recipient), one its end of DATA (kept, rejected)."""
    greeting = [("S", "220 mailsink ESMTP mailsink"), ("C", "EHLO app.local"), ("S", "250 HELP")]
    delivered = [
        ("C", "DATA"),
        ("S", "354 End data with <CR><LF>.<CR><LF>"),
        ("D", "[message data: 412 bytes]"),
    ]
    bye = [("C", "QUIT"), ("S", "221 2.0.0 Bye")]
    operations = [
        *_session(
            1,
            "127.0.0.1:50123",
            "app.local",
            [
                *greeting,
                ("C", "MAIL FROM:<orders@shop.test>"),
                ("S", "250 2.1.0 Ok"),
                ("C", "RCPT TO:<customer@x.test>"),
                ("S", "250 2.1.5 Ok"),
                *delivered,
                ("S", "250 2.0.0 Ok: queued as 1"),
                *bye,
            ],
            "quit",
        ),
        *_session(
            2,
            "127.0.0.1:50124",
            "app.local",
            [
                *greeting,
                ("C", "MAIL FROM:<spam@marketing.test>"),
                ("I", "fault 'no marketing' fired at mail: reply 550 5.7.1 Not permitted"),
                ("S", "550 5.7.1 Not permitted"),
                *bye,
            ],
            "quit",
            refusals=1,
            last_refusal="MAIL FROM:<spam@marketing.test>: 550 5.7.1 Not permitted",
        ),
        *_session(
            3,
            "127.0.0.1:50125",
            "app.local",
            [
                *greeting,
                ("C", "MAIL FROM:<orders@shop.test>"),
                ("S", "250 2.1.0 Ok"),
                ("C", "RCPT TO:<customer@x.test>"),
                ("S", "250 2.1.5 Ok"),
                ("C", "RCPT TO:<full@x.test>"),
                ("I", f"fault 'mailbox full' fired at rcpt: reply {MAILBOX_FULL}"),
                ("S", MAILBOX_FULL),
                *delivered,
                ("S", "250 2.0.0 Ok: queued as 2"),
                *bye,
            ],
            "quit",
            refusals=1,
            last_refusal=f"RCPT TO:<full@x.test>: {MAILBOX_FULL}",
        ),
        *_session(
            4,
            "127.0.0.1:50126",
            "app.local",
            [
                *greeting,
                ("C", "MAIL FROM:<orders@shop.test>"),
                ("S", "250 2.1.0 Ok"),
                ("C", "RCPT TO:<customer@x.test>"),
                ("S", "250 2.1.5 Ok"),
                *delivered,
                ("I", f"fault 'storage full' fired at data: reply {NO_STORAGE}"),
                ("S", NO_STORAGE),
                *bye,
            ],
            "quit",
            refusals=1,
            last_refusal=f"end of DATA: {NO_STORAGE}",
        ),
        _message(
            1,
            1,
            "orders@shop.test",
            ["customer@x.test"],
            message(sender="Shop <orders@shop.test>", to="customer@x.test", subject="Receipt"),
        ),
        _message(
            3,
            3,
            "orders@shop.test",
            ["customer@x.test"],
            message(
                sender="Shop <orders@shop.test>",
                to="customer@x.test, full@x.test",
                subject="Order #1043 shipped",
            ),
            refused=(RefusedRecipient("full@x.test", [], MAILBOX_FULL, "mailbox full"),),
        ),
        _message(
            4,
            4,
            "orders@shop.test",
            ["customer@x.test"],
            message(sender="Shop <orders@shop.test>", to="customer@x.test", subject="Invoice"),
            status="rejected",
            reply=NO_STORAGE,
            reply_rule="storage full",
        ),
    ]
    _write(path, operations)


@pytest.fixture
def refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fill_refusals(tmp_path / "mail.db")
    return settings_for("mail.db")


def _opened(message_id: int):
    def ready(app: MailsinkApp) -> bool:
        loaded = app.screen.query_one(MessageDetail).loaded
        return loaded is not None and loaded.record.id == message_id

    return ready


def _refused_sessions_shown(app: MailsinkApp) -> bool:
    """The "with refusals" filter on, session 3 selected and its transcript all there."""
    screen = app.screen
    return (
        isinstance(screen, SessionsScreen)
        and screen.refusals_only
        and screen.order == [4, 3, 2]
        and screen.shown_session == 3
        and screen.last_seq == 16
    )


def test_overview_of_a_message_with_a_refused_recipient(refusals, snapshot_svg):
    # The list opens on the newest (the rejected one); one down, then full screen.
    assert shot(refusals, "j", "enter", ready=_opened(2)) == snapshot_svg


def test_overview_of_a_message_with_a_refused_recipient_80x24(refusals, snapshot_svg):
    assert shot(refusals, "j", "enter", ready=_opened(2), size=(80, 24)) == snapshot_svg


def test_sessions_with_refusals(refusals, snapshot_svg):
    assert shot(refusals, "s", "r", "j", ready=_refused_sessions_shown) == snapshot_svg


def test_sessions_with_refusals_80x24(refusals, snapshot_svg):
    shown = shot(refusals, "s", "r", "j", ready=_refused_sessions_shown, size=(80, 24))
    assert shown == snapshot_svg
