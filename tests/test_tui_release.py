"""The TUI's release (issue 18): key R and the palette's "Release this message…" on the message
screen, the dialog (the plan, the prefilled recipients, the upstream's answer), and the
Overview's releases; the app driven with Pilot against its own server, the upstream a second
real mailsink (tests/relay_upstream.py). Snapshots of the dialog and the Overview at 80x24 and
120x40 (update them with `--snapshot-update` and look at every changed SVG)."""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from pathlib import Path

import pytest
from conftest import message
from pytest_textual_snapshot import SVGImageExtension
from relay_upstream import Upstream
from textual.widgets import Button, Input
from tui_support import (
    run,
    screen_text,
    send,
    settings_for,
    squeezed,
    static_text,
    text_of,
    tui,
    wait_until,
)

from mailsink.clock import local_time
from mailsink.errors import RecipientsRefused, UpstreamError
from mailsink.relay import ReleaseRecord
from mailsink.store import Reader
from mailsink.store.operations import record_release
from mailsink.testing import RunningSink
from mailsink.tui.app import MailsinkApp
from mailsink.tui.screens.message import MessageScreen
from mailsink.tui.widgets.message_detail import MessageDetail
from mailsink.tui.widgets.release import ReleaseDialog, error_text, sent_text

SMALL = (80, 24)
RAW_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
RAW = message(
    sender="Shop <orders@shop.test>",
    to="ann@example.test",
    subject="Your order",
    body="Line one\r\n.a line that starts with a dot\r\n",
)
# ann in To, bob only in the envelope (a Bcc), eve outside the allow-list.
RCPT = ["ann@example.test", "bob@example.test", "eve@evil.test"]
ALLOWED = ["ann@example.test", "bob@example.test"]


@pytest.fixture
def upstream(tmp_path: Path):
    with Upstream(tmp_path / "upstream") as up:
        yield up


def _config(tmp_path: Path, relay: str = "") -> Path:
    path = tmp_path / "mailsink.toml"
    path.write_text(relay)
    return path


async def _open_message(app: MailsinkApp, pilot, rcpt: list[str] = RCPT) -> MessageScreen:
    """A message sent to the app's server, then opened full screen (enter)."""
    await send(app, "orders@shop.test", rcpt, RAW)
    await wait_until(pilot, lambda: app.main.message_list.count == 1)
    await wait_until(pilot, lambda: app.main.detail.loaded is not None)
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
    screen = app.screen
    assert isinstance(screen, MessageScreen)
    await wait_until(pilot, lambda: screen.query_one(MessageDetail).loaded is not None)
    return screen


async def _dialog(app: MailsinkApp, pilot) -> ReleaseDialog:
    await wait_until(pilot, lambda: isinstance(app.screen, ReleaseDialog))
    dialog = app.screen
    assert isinstance(dialog, ReleaseDialog)
    return dialog


async def _send_and_wait(pilot, dialog: ReleaseDialog, to: str | None = None):
    """Send (enter in the recipients' box), and the dialog's answer once it is there."""
    if to is not None:
        dialog.query_one("#release-to", Input).value = to
    dialog.result = None
    dialog.query_one("#release-to", Input).focus()
    await pilot.press("enter")
    await wait_until(pilot, lambda: dialog.result is not None and not dialog.sending, timeout=15)
    return dialog.result


def _result(app: MailsinkApp) -> str:
    return static_text(app, "#release-result")


def _overview(app: MailsinkApp) -> str:
    return static_text(app, "#overview-body")


def test_key_r_prefills_the_allowed_recipients_and_sends_the_stored_bytes(tmp_path, upstream):
    settings = settings_for(tmp_path / "mail.db", _config(tmp_path, upstream.relay_toml()))

    async def scenario() -> None:
        async with tui(settings) as (app, pilot):
            screen = await _open_message(app, pilot)
            assert "Releases" not in _overview(app)
            await pilot.press("R")
            dialog = await _dialog(app, pilot)

            # The envelope's recipients that the allow-list allows (bob: Bcc'd, included).
            assert dialog.query_one("#release-to", Input).value == ", ".join(ALLOWED)
            plan = static_text(app, "#release-plan")
            assert f"Upstream:  127.0.0.1:{upstream.port}" in plan
            assert "MAIL FROM: <orders@shop.test>" in plan
            assert "Allowed:   *@example.test" in plan
            assert "Left out (not allowed): eve@evil.test" in static_text(app, "#release-left-out")

            record = await _send_and_wait(pilot, dialog)
            assert isinstance(record, ReleaseRecord), record
            assert (record.outcome, record.trigger) == ("sent", "tui")
            shown = _result(app)
            assert f"Sent to {', '.join(ALLOWED)}" in shown
            assert f"127.0.0.1:{upstream.port} answered 250 2.0.0 Ok: queued as 1" in shown
            assert dialog.query_one("#send", Button).label.plain == "Send again"

            stored = await app.sink.read(Reader.get_raw, screen.message_id)
            assert await asyncio.to_thread(upstream.wait_for_messages, 1) == [stored]
            assert stored == RAW
            assert upstream.envelopes() == [("orders@shop.test", ALLOWED)]

            # The Overview behind lists it (MessageReleased), newest last.
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is screen)
            await wait_until(pilot, lambda: "Releases (1)" in _overview(app))
            line = next(line for line in _overview(app).splitlines() if " sent " in line)
            assert local_time(record.at) in line and " tui " in line
            assert f"to {', '.join(ALLOWED)} via 127.0.0.1:{upstream.port}" in squeezed_keep(line)
            assert "250 2.0.0 Ok: queued as 1" in flat(_overview(app))

    run(scenario)


def squeezed_keep(text: str) -> str:
    """Runs of spaces as one (a table cell pads)."""
    return re.sub(r" +", " ", text)


def flat(text: str) -> str:
    """Every run of white space as one space (wrapping moves the breaks)."""
    return " ".join(text.split())


def test_the_palette_opens_it_and_the_upstreams_refusals_are_quoted(tmp_path, upstream):
    settings = settings_for(tmp_path / "mail.db", _config(tmp_path, upstream.relay_toml()))

    async def scenario() -> None:
        async with tui(settings) as (app, pilot):
            app.animation_level = "none"
            screen = await _open_message(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.press(*"release this")
            await wait_until(pilot, lambda: "Release this message…" in screen_text(app))
            await pilot.press("enter")
            dialog = await _dialog(app, pilot)
            assert dialog.message_id == screen.message_id

            # A 550 at the end of DATA: a failure, quoting the upstream.
            upstream.add_fault(
                name="no content", stage="data", action="reply", reply="550 5.7.1 content refused"
            )
            error = await _send_and_wait(pilot, dialog, "ann@example.test")
            assert isinstance(error, UpstreamError), error
            assert squeezed(
                f"Failed: release of message {screen.message_id} failed at DATA: the upstream"
                f" (127.0.0.1:{upstream.port}) answered 550 5.7.1 content refused"
            ) in squeezed(_result(app))
            upstream.clear_faults()

            # The upstream refuses bob: partial, bob named with its reply, ann got it.
            upstream.add_fault(
                name="no bob",
                stage="rcpt",
                action="reply",
                reply="550 5.1.1 no such user",
                match={"recipient": "bob@*"},
            )
            record = await _send_and_wait(pilot, dialog, "ann@example.test, bob@example.test")
            assert isinstance(record, ReleaseRecord) and record.outcome == "partial", record
            shown = _result(app)
            assert f"Sent in part: 127.0.0.1:{upstream.port} refused" in shown
            assert "✗ bob@example.test  550 5.1.1 no such user" in shown
            # (The upstream kept the message it refused at DATA too: this one is its second.)
            assert "and took it for ann@example.test: 250 2.0.0 Ok: queued as 2" in shown
            assert (await asyncio.to_thread(upstream.wait_for_messages, 2))[-1] == RAW
            assert upstream.envelopes()[-1] == ("orders@shop.test", ["ann@example.test"])

            # Both recorded, oldest first, in the Overview.
            await pilot.press("escape")
            await wait_until(pilot, lambda: "Releases (2)" in _overview(app))
            overview = _overview(app)
            assert overview.index(" failed ") < overview.index(" partial ")
            assert "550 5.7.1 content refused" in overview
            assert "✗ bob@example.test  550 5.1.1 no such user" in overview

    run(scenario)


def test_recipients_outside_the_allow_list_are_named_and_can_be_edited(tmp_path, upstream):
    settings = settings_for(tmp_path / "mail.db", _config(tmp_path, upstream.relay_toml()))

    async def scenario() -> None:
        async with tui(settings, size=SMALL) as (app, pilot):
            await _open_message(app, pilot)
            await pilot.press("R")
            dialog = await _dialog(app, pilot)

            error = await _send_and_wait(pilot, dialog, "ann@example.test, eve@evil.test, x@y")
            assert isinstance(error, RecipientsRefused), error
            assert set(error.recipients) == {"eve@evil.test", "x@y"}
            shown = _result(app)
            assert "Refused: " in shown and "eve@evil.test" in shown and "x@y" in shown
            assert "nothing was sent" in flat(shown)
            assert dialog.query_one("#release-to", Input).has_focus  # to edit them
            assert upstream.sessions() == []  # no connection made
            assert await app.sink.releases(1) == []  # nor anything recorded

            record = await _send_and_wait(pilot, dialog, "ann@example.test")
            assert isinstance(record, ReleaseRecord) and record.outcome == "sent"
            assert await asyncio.to_thread(upstream.wait_for_messages, 1) == [RAW]
            # It all fits at 80x24: the answer and both buttons on screen.
            text = screen_text(app)
            assert "Sent to ann@example.test" in text
            assert "Send again" in text and "Close" in text

    run(scenario)


def test_closed_while_sending_the_release_ends_recorded_with_a_notice(tmp_path, upstream):
    settings = settings_for(tmp_path / "mail.db", _config(tmp_path, upstream.relay_toml()))

    async def scenario() -> None:
        async with tui(settings) as (app, pilot):
            screen = await _open_message(app, pilot)
            await pilot.press("R")
            dialog = await _dialog(app, pilot)
            # The upstream holds its reply to MAIL back: the dialog closes mid-conversation.
            upstream.add_fault(name="slow", stage="mail", action="delay", delay="0.5s")
            await pilot.press("enter")
            await wait_until(pilot, lambda: dialog.sending)
            assert "sending… (to 127.0.0.1:" in _result(app)
            assert dialog.query_one("#send", Button).disabled
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is screen)
            assert dialog.result is None

            def noticed() -> list[str]:
                return [str(n.message) for n in app._notifications if "release of" in n.message]

            await wait_until(pilot, noticed, timeout=10)
            assert noticed() == ["release of message 1: sent: 250 2.0.0 Ok: queued as 1"]
            (record,) = await app.sink.releases(1)
            assert (record.outcome, record.trigger) == ("sent", "tui")
            assert await asyncio.to_thread(upstream.wait_for_messages, 1) == [RAW]
            await wait_until(pilot, lambda: "Releases (1)" in _overview(app))

    run(scenario)


def test_not_configured_says_so_and_offers_only_close(tmp_path):
    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=SMALL) as (app, pilot):
            screen = await _open_message(app, pilot)
            await pilot.press("R")
            dialog = await _dialog(app, pilot)
            text = screen_text(app)
            assert "releasing is off: no [relay] host in the config" in text
            assert "add a [relay] table to the config (see README" in text
            assert [button.id for button in dialog.query(Button)] == ["close"]
            assert not dialog.query("#release-to")
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is screen)

    run(scenario)


def test_a_quoted_comma_in_a_prefilled_recipient_is_the_address_s_own(tmp_path, upstream):
    """`"a,b"@example.test` is one address (email-validator takes it, the glob allows it): the
    prefill is sent as it is, not split at its comma."""
    settings = settings_for(tmp_path / "mail.db", _config(tmp_path, upstream.relay_toml()))
    quoted = '"a,b"@example.test'

    async def scenario() -> None:
        async with tui(settings) as (app, pilot):
            await _open_message(app, pilot, [quoted, "c@example.test"])
            await pilot.press("R")
            dialog = await _dialog(app, pilot)
            assert dialog.query_one("#release-to", Input).value == f"{quoted}, c@example.test"
            record = await _send_and_wait(pilot, dialog)
            assert isinstance(record, ReleaseRecord), record
            assert record.recipients == (quoted, "c@example.test")
            assert upstream.envelopes() == [("orders@shop.test", [quoted, "c@example.test"])]

    run(scenario)


def test_untrusted_text_in_the_dialog_is_never_markup(tmp_path, upstream):
    hostile = "[bold red]x[/]\x1b[2J"
    settings = settings_for(tmp_path / "mail.db", _config(tmp_path, upstream.relay_toml()))

    async def scenario() -> None:
        async with tui(settings) as (app, pilot):
            await _open_message(app, pilot, ["ann@example.test", '"[b]eve"@evil.test'])
            await pilot.press("R")
            dialog = await _dialog(app, pilot)
            assert '"[b]eve"@evil.test' in static_text(app, "#release-left-out")
            upstream.add_fault(
                name="hostile", stage="rcpt", action="reply", reply=f"550 5.1.1 {hostile}"
            )
            error = await _send_and_wait(pilot, dialog, "ann@example.test")
            assert isinstance(error, UpstreamError), error
            # (A mailsink upstream writes the ESC as the text \x1b: see the next test.)
            assert "answered 550 5.1.1 [bold red]x[/]" in _result(app)
            assert "\x1b" not in screen_text(app)

    run(scenario)


def test_the_answers_shown_make_control_characters_visible():
    record = ReleaseRecord(
        id=1,
        message_id=7,
        at=BASE,
        trigger="tui",
        upstream="mx.test:25",
        mail_from="a@x.test",
        recipients=("ann@x.test", "bob@x.test"),
        outcome="partial",
        code=250,
        reply="250 ok [link=https://evil.test]\x1b[2J\x07",
        refused={"bob@x.test": "550 [bold]no\x1b]0;title\x07"},
    )
    shown = text_of(sent_text(record))
    assert "250 ok [link=https://evil.test]␛[2J␇" in shown
    assert "✗ bob@x.test  550 [bold]no␛]0;title␇" in shown
    refused = RecipientsRefused("not allowed: [b]\x1b@x.test", ("[b]\x1b@x.test",))
    assert "Refused: [b]␛@x.test" in text_of(error_text(refused))
    assert "␛" in text_of(error_text(UpstreamError("failed: 550 \x1b[31m")))
    assert not RAW_CONTROLS.search(text_of(sent_text(record)) + text_of(error_text(refused)))


def test_an_attached_tui_shows_the_servers_releases_and_releases_through_it(tmp_path, upstream):
    """The store's server releases the message (as `mailsink release` through it would): the
    attached TUI's Overview lists it from the store's change (StoreChanged). Then the attached
    TUI releases it: the plan and the release are the server's (the link)."""
    config = _config(tmp_path, upstream.relay_toml())
    with RunningSink(tmp_path / "mail.db", config=config) as served:
        with smtplib.SMTP(served.host, served.port, timeout=10) as client:
            client.sendmail("orders@shop.test", RCPT, RAW)

        async def scenario() -> None:
            settings = settings_for(served.db, config)
            async with tui(settings, attach=True, size=SMALL) as (app, pilot):
                await wait_until(pilot, lambda: app.main.message_list.count == 1)
                await pilot.press("enter")
                await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
                detail = app.screen.query_one(MessageDetail)
                await wait_until(pilot, lambda: detail.loaded is not None)
                assert "Releases" not in _overview(app)
                assert served.sink is not None
                record = await asyncio.to_thread(
                    served.run, served.sink.release(1, ["ann@example.test"], trigger="http")
                )
                await wait_until(pilot, lambda: "Releases (1)" in _overview(app))
                assert local_time(record.at) in _overview(app)
                assert " http " in _overview(app)

                # Released from the attached TUI: through the link, by the server.
                assert app.sink.link is not None and app.sink.link.live
                await pilot.press("R")
                dialog = await _dialog(app, pilot)
                assert dialog.query_one("#release-to", Input).value == ", ".join(ALLOWED)
                assert f"127.0.0.1:{upstream.port}" in static_text(app, "#release-plan")
                mine = await _send_and_wait(pilot, dialog)
                assert isinstance(mine, ReleaseRecord) and mine.outcome == "sent", mine
                assert f"Sent to {', '.join(ALLOWED)}" in _result(app)
                await pilot.press("escape")
                await wait_until(pilot, lambda: "Releases (2)" in _overview(app))
                with served.reader() as reader:
                    triggers = [release.trigger for release in reader.releases(1)]
                assert triggers == ["http", "tui"]
                raws = await asyncio.to_thread(upstream.wait_for_messages, 2)
                assert raws == [RAW, RAW]

        run(scenario)


# ---- snapshots ---------------------------------------------------------------------------------

BASE = 1_795_770_000_000  # 2026-11-26 21:00:00 UTC, in ms
UPSTREAM_PORT = "2525"  # the upstream's ephemeral port, as pictured


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


@pytest.fixture
def filled(tmp_path, monkeypatch, upstream):
    """The snapshot store of test_tui_snapshots (fixed times), [relay] to the upstream,
    allowing *@x.test: message 1's customer@x.test, not its audit@shop.test."""
    from test_tui_snapshots import fill

    monkeypatch.chdir(tmp_path)  # relative paths: nothing run-specific on screen
    Path("mailsink.toml").write_text(upstream.relay_toml(["*@x.test"]))
    fill(tmp_path / "mail.db")
    return settings_for("mail.db", Path("mailsink.toml"))


def _picture(app: MailsinkApp, upstream: Upstream, *times: int) -> str:
    """The screenshot with what differs between runs fixed: the ports, and the local time of
    each release in `times` (shown as 2026-11-26 21:30:00, the same width)."""
    from test_tui_snapshots import picture

    svg = picture(app).replace(f":{upstream.port}", f":{UPSTREAM_PORT}")
    for at in times:
        day, clock = local_time(at).split()
        svg = svg.replace(day, "2026-11-26").replace(clock, "21:30:00")
    return svg


def _shot(settings, upstream, size, scenario_keys, *, send: bool = False) -> str:
    async def scenario() -> str:
        async with tui(settings, size=size) as (app, pilot):
            await wait_until(pilot, lambda: app.main.detail.loaded is not None)
            await pilot.press(*scenario_keys)
            await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
            detail = app.screen.query_one(MessageDetail)
            await wait_until(pilot, lambda: detail.loaded is not None)
            await pilot.press("R")
            dialog = await _dialog(app, pilot)
            times = []
            if send:
                record = await _send_and_wait(pilot, dialog)
                assert isinstance(record, ReleaseRecord), record
                times.append(record.at)
            await pilot.pause(0.1)
            await pilot.wait_for_scheduled_animations()
            return _picture(app, upstream, *times)

    return run(scenario)


def test_release_dialog(filled, upstream, snapshot_svg):
    assert _shot(filled, upstream, (120, 40), ["end", "enter"]) == snapshot_svg


def test_release_dialog_80x24(filled, upstream, snapshot_svg):
    assert _shot(filled, upstream, SMALL, ["end", "enter"]) == snapshot_svg


def test_release_dialog_after_a_partial_release_80x24(filled, upstream, snapshot_svg):
    # customer@x.test refused by the upstream, erin@x.test taken: the longest answer.
    upstream.add_fault(
        name="no customer",
        stage="rcpt",
        action="reply",
        reply="550 5.1.1 <customer@x.test>: Recipient address rejected: User unknown",
        match={"recipient": "customer@*"},
    )
    settings = filled

    async def scenario() -> str:
        async with tui(settings, size=SMALL) as (app, pilot):
            await wait_until(pilot, lambda: app.main.detail.loaded is not None)
            await pilot.press("end", "enter")
            await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
            await pilot.press("R")
            dialog = await _dialog(app, pilot)
            record = await _send_and_wait(pilot, dialog, "customer@x.test, erin@x.test")
            assert isinstance(record, ReleaseRecord) and record.outcome == "partial", record
            # The Overview behind has it too (it shows below the dialog), and the dialog's
            # body is scrolled to the answer.
            detail = app.screen_stack[-2].query_one(MessageDetail)
            await wait_until(pilot, lambda: len(detail.loaded.releases) == 1)
            await pilot.pause(0.1)
            await pilot.wait_for_scheduled_animations()
            return _picture(app, upstream, record.at)

    assert run(scenario) == snapshot_svg


def _with_releases(path: Path) -> None:
    """Three releases of message 1 at fixed times: sent, partial, failed."""
    from test_tui_snapshots import _write

    common = {"message_id": 1, "upstream": "smtp.example.test:587", "mail_from": "orders@shop.test"}
    _write(
        path,
        [
            (
                record_release,
                {
                    **common,
                    "at": BASE + 3_600_000,
                    "trigger": "tui",
                    "recipients": ["customer@x.test"],
                    "outcome": "sent",
                    "code": 250,
                    "reply": "250 2.0.0 Ok: queued as 4F2A1",
                },
            ),
            (
                record_release,
                {
                    **common,
                    "at": BASE + 3_700_000,
                    "trigger": "cli",
                    "recipients": ["customer@x.test", "audit@x.test"],
                    "outcome": "partial",
                    "code": 250,
                    "reply": "250 2.0.0 Ok: queued as 4F2A2",
                    "refused": {"audit@x.test": "550 5.1.1 no such user"},
                },
            ),
            (
                record_release,
                {
                    **common,
                    "at": BASE + 3_800_000,
                    "trigger": "http",
                    "recipients": ["customer@x.test"],
                    "outcome": "failed",
                    "code": 421,
                    "reply": "421 4.3.2 Service not available [bold]x[/]",
                },
            ),
        ],
    )


def _overview_shot(settings, size) -> str:
    async def scenario() -> str:
        async with tui(settings, size=size) as (app, pilot):
            await wait_until(pilot, lambda: app.main.detail.loaded is not None)
            await pilot.press("end", "enter")
            await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
            detail = app.screen.query_one(MessageDetail)
            await wait_until(pilot, lambda: detail.loaded is not None)
            assert "Releases (3)" in _overview(app)
            # Scrolled to its end: the releases come after the findings.
            detail.query_one("#overview VerticalScroll").scroll_end(animate=False)
            await pilot.pause(0.1)
            await pilot.wait_for_scheduled_animations()
            from test_tui_snapshots import picture

            return picture(app)

    return run(scenario)


def test_overview_with_releases(filled, tmp_path, snapshot_svg):
    _with_releases(tmp_path / "mail.db")
    assert _overview_shot(filled, (120, 40)) == snapshot_svg


def test_overview_with_releases_80x24(filled, tmp_path, snapshot_svg):
    _with_releases(tmp_path / "mail.db")
    assert _overview_shot(filled, SMALL) == snapshot_svg
