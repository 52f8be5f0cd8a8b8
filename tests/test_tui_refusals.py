"""What the server refused, in the TUI: refused recipients and a rejection's reply and rule in the
Overview, the Sessions screen's refusal count, last refusal and "with refusals" filter (issue 13).
The real app with its own server on loopback."""

from __future__ import annotations

import asyncio
import re
import smtplib

import pytest
from conftest import HOSTILE, RawClient, message
from conftest import REFUSAL_RULES as RULES
from rich.console import Console
from tui_support import run, screen_text, send, settings_for, static_text, tui, wait_until

from mailsink.mail.envelope import Envelope, RefusedRecipient
from mailsink.store import IncomingMessage, Store, run_here
from mailsink.store.operations import insert_message, insert_session, update_session
from mailsink.tui.app import MailsinkApp
from mailsink.tui.render import REFUSED
from mailsink.tui.screens.message import MessageScreen
from mailsink.tui.screens.sessions import NO_REFUSALS, SessionsScreen
from mailsink.tui.widgets.message_detail import MessageDetail

HOSTILE_SHOWN = "[bold red]x␛[2J␇"
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _lines(app: MailsinkApp) -> list[str]:
    return screen_text(app).splitlines()


async def _open(app: MailsinkApp, pilot, message_id: int) -> str:
    """The message full screen; its Overview's text."""
    listing = app.main.message_list
    await wait_until(pilot, lambda: message_id in listing.ids)
    assert listing.select_id(message_id)
    await pilot.press("enter")
    assert isinstance(app.screen, MessageScreen)
    detail = app.screen.query_one(MessageDetail)
    await wait_until(pilot, lambda: detail.loaded and detail.loaded.record.id == message_id)
    await pilot.pause(0.05)
    return static_text(app, "#overview-body")


def test_refusals_end_to_end_overview_and_sessions_filter(tmp_path):
    config = tmp_path / "faults.toml"
    config.write_text(RULES)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db", config)) as (app, pilot):
            refused = await asyncio.to_thread(
                _send, app, ["a@x.test", "full@x.test"], message(to="a@x.test, full@x.test")
            )
            assert refused == {"full@x.test": (452, b"4.2.2 Mailbox full")}
            with pytest.raises(smtplib.SMTPDataError):
                await send(app, "app@shop.test", ["a@x.test"], message(subject="reject me"))
            with pytest.raises(smtplib.SMTPSenderRefused):
                await send(app, "ads@marketing.test", ["a@x.test"], message())

            overview = await _open(app, pilot, 1)
            assert "RCPT TO: <a@x.test>" in overview
            assert "RCPT TO: <full@x.test>  ✗ 452 4.2.2 Mailbox full" in overview
            assert "To: full@x.test  ← refused" in overview
            await pilot.press("escape")

            overview = await _open(app, pilot, 2)
            # The reply on the Status line; the rule, too long to go beside it at 120, below.
            lines = [line.strip() for line in overview.splitlines()]
            at = lines.index("Status: rejected  452 4.3.1 Insufficient system storage")
            assert lines[at + 1] == '(rule "storage full")'
            await pilot.press("escape")

            # Sessions: three, one of which was refused its MAIL FROM and delivered nothing.
            await pilot.press("s")
            sessions = app.screen
            assert isinstance(sessions, SessionsScreen)
            await wait_until(pilot, lambda: len(sessions.order) == 3)
            await wait_until(pilot, lambda: sessions.rows[3].refusals == 1)
            assert (sessions.rows[1].refusals, sessions.rows[2].refusals) == (1, 1)
            assert "r With refusals" in _lines(app)[-1]
            assert sessions.selected_id() == 3
            await wait_until(pilot, lambda: "✗ 1 refused, last: mail FROM:" in screen_text(app))
            refusal = next(line for line in _lines(app) if "✗ 1 refused" in line)
            assert refusal.startswith("✗ 1 refused, last: mail FROM:<ads@marketing.test>")
            assert refusal.rstrip().endswith(": 550 5.7.1 Sender not permitted")

            # A clean session, then the filter: it goes, the three refused ones stay.
            await send(app, "app@shop.test", ["a@x.test"], message())
            await wait_until(pilot, lambda: len(sessions.order) == 4)
            await pilot.press("r")
            await wait_until(pilot, lambda: sessions.order == [3, 2, 1])
            assert "Sessions with refusals" in _lines(app)[0]
            # The footer says what r does now.
            await wait_until(pilot, lambda: "r All sessions" in _lines(app)[-1])
            assert "With refusals" not in _lines(app)[-1]
            await pilot.press("r")
            await wait_until(pilot, lambda: sessions.order == [4, 3, 2, 1])
            await wait_until(pilot, lambda: "r With refusals" in _lines(app)[-1])
            assert "All sessions" not in _lines(app)[-1]
            sessions.query_one("#sessions").move_cursor(row=0)  # session 4 refused nothing
            await wait_until(pilot, lambda: sessions.shown_session == 4)
            # (Drawn at the next refresh: the screen read at once may still be the last one.)
            await wait_until(pilot, lambda: not any("refused, last" in x for x in _lines(app)))

    run(scenario)


def _send(app: MailsinkApp, recipients: list[str], content: bytes) -> dict:
    assert app.sink.server is not None
    with smtplib.SMTP("127.0.0.1", app.sink.server.port, timeout=10) as client:
        return client.sendmail("app@shop.test", recipients, content)


def test_a_live_session_with_a_refusal_is_listed_by_the_filter_and_the_palette(tmp_path):
    config = tmp_path / "faults.toml"
    config.write_text(RULES)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db", config), size=(80, 24)) as (app, pilot):
            assert app.sink.server is not None
            await send(app, "app@shop.test", ["a@x.test"], message())  # a session without
            await pilot.press("s")
            sessions = app.screen
            assert isinstance(sessions, SessionsScreen)
            await pilot.press("r")
            await wait_until(pilot, lambda: sessions.refusals_only and sessions.rows == {})
            # Filtered to nothing: a line says so, not a bare table.
            await wait_until(pilot, lambda: NO_REFUSALS in screen_text(app))
            client = await asyncio.to_thread(RawClient, "127.0.0.1", app.sink.server.port)
            try:
                await asyncio.to_thread(client.command, "EHLO live.test")
                reply = await asyncio.to_thread(client.command, "MAIL FROM:<x@marketing.test>")
                assert reply == ["550 5.7.1 Sender not permitted"]
                await wait_until(pilot, lambda: sessions.order == [2])
                row = sessions.rows[2]
                assert row.active and row.refusals == 1
                await wait_until(pilot, lambda: "✗ 1 refused, last:" in screen_text(app))
                assert NO_REFUSALS not in screen_text(app)
                line = next(line for line in _lines(app) if line.startswith(" ● 2 "))
                assert re.search(r" 1 +$", line), line  # the count, in the ✗ column
            finally:
                client.close()

            # The palette's command: from the main screen, the Sessions screen filtered at once.
            await pilot.press("r", "escape")
            assert app.screen is app.main
            titles = {c.title: c for c in app.get_system_commands(app.screen)}
            titles["Sessions with refusals"].callback()
            await wait_until(pilot, lambda: isinstance(app.screen, SessionsScreen))
            screen = app.screen
            assert isinstance(screen, SessionsScreen) and screen.refusals_only
            await wait_until(pilot, lambda: screen.order == [2])
            assert _lines(app)[0].startswith(" Sessions with refusals")
            await pilot.press("r")
            app.action_sessions_with_refusals()  # from the Sessions screen itself: filtered
            assert screen.refusals_only and app.screen is screen

    run(scenario)


def _hostile_store(path) -> None:
    """A message with hostile refused recipients, a rejected one with a hostile reply and rule,
    and a session whose last refusal is hostile: as a store of the writer's own operations."""
    Store(str(path)).close()
    base = 1_795_770_000_000
    run_here(str(path), insert_session, session_id=1, started_at=base, peer="127.0.0.1:1")
    refused = [
        RefusedRecipient(f"{HOSTILE}@x.test", [], f"452 4.2.2 {HOSTILE}", HOSTILE),
        RefusedRecipient("long@x.test", [], "452 4.2.2 " + "w " * 60, None, "other"),
    ]
    envelope = Envelope("app@shop.test", ["a@x.test"], helo="h", peer="p", rcpt_refused=refused)
    raw = message(to=f"a@x.test, {HOSTILE}@x.test")
    run_here(str(path), insert_message, message=IncomingMessage(1, envelope, raw, base))
    rejected = IncomingMessage(
        1,
        Envelope("app@shop.test", ["a@x.test"], helo="h", peer="p"),
        message(),
        base,
        status="rejected",
        reply=f"452 4.3.1 {HOSTILE}\n452 4.3.1 and a second line",
        reply_rule=HOSTILE,
    )
    run_here(str(path), insert_message, message=rejected)
    run_here(
        str(path),
        update_session,
        session_id=1,
        events=[],
        started_at=base,
        peer="127.0.0.1:1",
        end_reason="quit",
        refusals=2,
        last_refusal=f"RCPT TO:<{HOSTILE}@x.test>: 452 4.2.2 {HOSTILE}",
    )


def test_hostile_refusals_are_inert_styled_and_fit_80_columns(tmp_path):
    db = tmp_path / "mail.db"
    _hostile_store(db)

    async def scenario() -> None:
        async with tui(settings_for(db), size=(80, 24)) as (app, pilot):
            overview = await _open(app, pilot, 1)
            detail = app.screen.query_one(MessageDetail)
            assert detail.loaded is not None
            console = Console(width=120)
            segments = list(console.render(detail.loaded.overview, console.options))
            marks = [segment for segment in segments if segment.text.startswith("✗")]
            assert len(marks) == 2  # one per refused recipient, in the error style
            assert all(str(mark.style) == REFUSED for mark in marks), marks
            replies = [s for s in segments if s.text.startswith("452 4.2.2 ")]
            assert replies and all(str(reply.style) == REFUSED for reply in replies)
            shown = screen_text(app)
            assert not RAW_CONTROLS.search(shown), repr(RAW_CONTROLS.findall(shown))
            assert f"RCPT TO: <{HOSTILE_SHOWN}@x.test>" in overview
            assert f"✗ 452 4.2.2 {HOSTILE_SHOWN}" in overview
            # A reply too long for its column goes under its address, indented, and wraps
            # there, inside the column.
            lines = _lines(app)
            at = next(n for n, line in enumerate(lines) if "RCPT TO: <long@x.test>" in line)
            column = lines[at].index("RCPT TO")
            assert lines[at + 1][column:].startswith("    ✗ 452 4.2.2 w w")
            assert lines[at + 2][column:].startswith("    w w")
            assert lines[at + 1][: column + 4].strip() == lines[at + 2][: column + 4].strip() == ""
            await pilot.press("escape")

            overview = await _open(app, pilot, 2)
            assert not RAW_CONTROLS.search(screen_text(app))
            assert f"452 4.3.1 {HOSTILE_SHOWN}" in overview
            assert f'(rule "{HOSTILE_SHOWN}")' in overview
            assert "452 4.3.1 and a second line" in overview  # a line of its own
            await pilot.press("escape")

            await pilot.press("s")
            sessions = app.screen
            assert isinstance(sessions, SessionsScreen)
            await wait_until(pilot, lambda: sessions.shown_session == 1)
            await wait_until(pilot, lambda: "✗ 2 refused, last:" in screen_text(app))
            shown = screen_text(app)
            assert not RAW_CONTROLS.search(shown)
            assert HOSTILE_SHOWN[:10] in shown  # the last refusal, literally (and wrapped)

    run(scenario)


LONG_REPLY_RULES = """
[[fault]]
name = "mailbox full"
stage = "rcpt"
reply = "452 4.2.2 Mailbox full\\nsecond line of the reply"
match = { recipient = "full@*" }

[[fault]]
name = "long"
stage = "rcpt"
reply = "450 4.2.1 QQQ"
match = { recipient = "long@*" }

[[fault]]
name = "storage full"
stage = "data"
reply = "452 4.3.1 ZZZ\\nand its second line WWW"
match = { header = { Subject = "reject me" } }
"""
# Words far too long for a column: 150 Q, 150 Z, 80 W.
LONG_REPLY_RULES = (
    LONG_REPLY_RULES.replace("QQQ", "Q" * 150).replace("ZZZ", "Z" * 150).replace("WWW", "W" * 80)
)


def _envelope_column(overview: str) -> str:
    """The Overview's table (envelope beside headers), without the Findings under it."""
    return overview.split("\nFindings (")[0]


def test_refused_addresses_agree_with_findings_and_replies_fold_at_80_columns(tmp_path):
    config = tmp_path / "faults.toml"
    config.write_text(LONG_REPLY_RULES)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db", config), size=(80, 24)) as (app, pilot):
            assert app.sink.server is not None
            client = await asyncio.to_thread(RawClient, "127.0.0.1", app.sink.server.port)
            try:
                for line, reply in (
                    ("EHLO a.test", None),
                    ("MAIL FROM:<app@shop.test>", "250 2.1.0 Ok"),
                    ("RCPT TO:<a@x.test>", "250 2.1.5 Ok"),
                    ("RCPT TO:<<user3@x.test>", "501 5.1.3 Bad recipient address syntax"),
                    ("RCPT TO:<user2@x.test> NOTIFY=NEVR", "501 5.5.4 NOTIFY must be NEVER or"),
                    ("RCPT TO:<full@x.test>", "452-4.2.2 Mailbox full"),
                    ("RCPT TO:<long@x.test>", "450 4.2.1 QQQ"),
                ):
                    answer = await asyncio.to_thread(client.command, line)
                    assert reply is None or answer[0].startswith(reply), (line, answer)
                await asyncio.to_thread(client.command, "DATA")
                to = "a@x.test, user3@x.test, user2@x.test, full@x.test"
                await asyncio.to_thread(client.command, message(to=to) + b".")
                await asyncio.to_thread(client.command, "QUIT")
            finally:
                client.close()
            with pytest.raises(smtplib.SMTPDataError):
                await send(app, "app@shop.test", ["a@x.test"], message(subject="reject me"))

            overview = await _open(app, pilot, 1)
            detail = app.screen.query_one(MessageDetail)
            assert detail.loaded is not None
            kinds = {f["address"]: f["kind"] for f in detail.loaded.record.findings}
            assert kinds["<<user3@x.test>"] == kinds["user2@x.test"] == "refused_recipient"
            envelope = _envelope_column(overview)
            # Refused for its syntax: what the client gave, no brackets added; the header
            # address the Findings call refused is marked refused, as they say.
            assert "RCPT TO: <<user3@x.test>  " in envelope and "<<<" not in envelope
            assert "    ✗ 501 5.1.3 Bad recipient address syntax" in envelope
            assert "To: user3@x.test  ← refused" in envelope
            # Refused for its parameters: they follow the address.
            assert "RCPT TO: <user2@x.test> NOTIFY=NEVR" in envelope
            assert "To: user2@x.test  ← refused" in envelope
            assert "no RCPT TO" not in envelope
            # A reply of two lines: only its first on the RCPT line (the Findings have both).
            assert "RCPT TO: <full@x.test>  ✗ 452-4.2.2 Mailbox full" in envelope
            assert "second line of the reply" not in envelope
            assert "second line of the reply" in overview
            # A reply's long word folds in its column: all of it there, nothing cut.
            assert envelope.count("Q") == 150 and "…" not in envelope
            await pilot.press("escape")

            overview = await _open(app, pilot, 2)
            envelope = _envelope_column(overview)
            assert envelope.count("Z") == 150 and envelope.count("W") == 80
            assert "…" not in envelope
            # At 80 columns the reply starts on the Status line and wraps lined up after it.
            raw = screen_text(app).splitlines()
            lines = [line.strip() for line in raw]
            at = next(n for n, line in enumerate(lines) if line.startswith("Status: "))
            assert raw[at + 1].index("Z") == raw[at].index("rejected")
            assert re.match(r"Status: rejected  452-4\.3\.1( |$)", lines[at]), lines[at : at + 8]
            assert lines[at + 1].startswith("ZZZZ")
            # Below: the reply's second line, then the rule (in the Overview's whole text).
            lines = [line.strip() for line in envelope.splitlines()]
            at = next(n for n, line in enumerate(lines) if line.startswith("Status: "))
            rest = [line for line in lines[at + 1 :] if "Z" not in line and "W" not in line]
            assert rest[:2] == ["452 4.3.1 and its second line", '(rule "storage full")'], rest

    run(scenario)
