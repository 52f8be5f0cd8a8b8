"""The message list's columns from 60 to 200 terminal columns, the full-screen title, zero-width
characters in one-line fields, and following the newest message (issue 11: items 1, 4, 13, 18).

Each scenario starts the real app once and changes the terminal's size with Pilot."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from pathlib import Path

from conftest import message, run_cli
from rich.cells import get_character_cell_size
from textual.pilot import Pilot
from tui_support import (
    list_rows,
    rows_loaded,
    run,
    screen_text,
    send,
    settings_for,
    tui,
    wait_until,
)

from mailsink.mail.envelope import Envelope
from mailsink.store import IncomingMessage, Store, run_here
from mailsink.store.operations import delete_messages, insert_message
from mailsink.store.reader import Reader
from mailsink.text import visible, visible_block
from mailsink.tui.app import MailsinkApp
from mailsink.tui.rows import address_of, fit_addresses
from mailsink.tui.screens.message import MessageScreen
from mailsink.tui.widgets.dialogs import KEYS
from mailsink.tui.widgets.message_list import layout_for

FROM = "Shop Notifications <notifications@shop.test>"  # 44 cells
TO = "Shop Customer Care <customer.care@shop.test>"  # 44 cells
SUBJECT = "Invoice 2026-0042 for your recent order at the shop"
BADGES = re.compile(r"!\d@")  # findings (a hidden recipient), then the attachment
KNOWN = message(
    sender=FROM,
    to=TO,
    subject=SUBJECT,
    extra='Content-Type: multipart/mixed; boundary="b"\r\n',
    body=(
        "--b\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b\r\n"
        'Content-Disposition: attachment; filename="a.pdf"\r\n\r\nx\r\n--b--\r\n'
    ),
)


def _fill(path: Path, count: int) -> None:
    """`count` older messages through the store's own write path (faster than SMTP): their
    envelope sender is their From address, and they go to three recipients."""

    def incoming(n: int) -> IncomingMessage:
        raw = message(sender=f"older{n}@x.test", to="a@x.test, b@x.test, c@x.test", subject=f"m{n}")
        envelope = Envelope(f"older{n}@x.test", ["a@x.test"], helo="h", peer="127.0.0.1:1")
        return IncomingMessage(1, envelope, raw, 1_795_770_000_000 + n * 1000)

    async def write() -> None:
        store = Store(str(path))
        try:  # queued together: the writer commits them in a few transactions
            await asyncio.gather(
                *(store.run(partial(insert_message, message=incoming(n))) for n in range(count))
            )
        finally:
            store.close()

    asyncio.run(write())


def _line(app: MailsinkApp, text: str, lines: list[str] | None = None) -> str:
    """The screen line that shows `text` (of `lines`, or of the screen now)."""
    lines = screen_text(app).splitlines() if lines is None else lines
    found = [line for line in lines if text in line]
    assert found, f"{text!r} is not on screen:\n" + "\n".join(lines)
    return found[0]


async def _resized(app: MailsinkApp, pilot: Pilot[None], width: int, height: int) -> None:
    await pilot.resize_terminal(width, height)
    listing = app.main.message_list
    await wait_until(pilot, lambda: listing.scrollable_content_region.width in (width, width - 1))
    await wait_until(pilot, lambda: rows_loaded(app))
    await pilot.pause()


def _aligned(heading: str, row: str, title: str, value: str, *, right: bool = False) -> bool:
    if right:
        return heading.index(title) + len(title) == row.index(value) + len(value)
    return heading.index(title) == row.index(value)


def test_subject_and_badges_stay_on_screen_from_200_down_to_60_columns(tmp_path):
    _fill(tmp_path / "mail.db", 30)  # more than the list shows at 200x60

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=(80, 24)) as (app, pilot):
            listing = app.main.message_list
            await send(
                app, "bounces@mailer.test", ["customer.care@shop.test", "audit@x.test"], KNOWN
            )
            await wait_until(pilot, lambda: listing.count == 31 and rows_loaded(app))
            await pilot.pause()
            assert listing.show_vertical_scrollbar  # the scrollbar takes a column from the rows

            for width, height in ((80, 24), (100, 30), (200, 60), (60, 20)):
                await _resized(app, pilot, width, height)
                lines = screen_text(app).splitlines()
                row, heading = _line(app, "Invoice 2026", lines), _line(app, "Subject", lines)
                older = _line(app, " m29 ", lines)
                assert BADGES.search(row), (width, row)
                assert len(heading.rstrip()) <= width - 5  # no title over the badges
                assert _aligned(heading, row, "Subject", "Invoice 2026"), (width, heading, row)
                # The whole From if it fits, else its address, else its name, else the address cut.
                shown_from = {60: "notificatio…", 80: "notifications@…"}.get(width, FROM[:18])
                assert _aligned(heading, row, "From", shown_from), (width, heading, row)
                size = re.search(r"(\d[\d.]* ?(?:B|KiB|K)) •!\d@", row)  # • unread
                if width >= 63:  # right-aligned under its right-aligned heading (item 4)
                    assert size and heading.index("Size") + 4 == size.end(1), (width, row)
                else:  # the first to go
                    assert size is None and "Size" not in heading
                if width < 200:  # the envelope sender differs from From: a ≠ before From
                    assert f"≠ {shown_from}" in row and "bounces@mailer.test" not in row
                    assert "≠" not in older  # the same as From: nothing
                if width in (80, 100):  # the first recipient, and how many more
                    assert "a@x.test +2" in older, older
                if width in (80, 100):  # cut cells end in …
                    shown = "Invoice" + row.split("Invoice")[1].split("…")[0]
                    assert SUBJECT.startswith(shown) and len(shown) >= width // 3, (width, row)
                if width == 60:
                    assert "Invoice 2026-0042 for" in row  # readable
                if width == 200:  # From and To grow; the envelope sender has its own column
                    assert FROM in row and TO in row and SUBJECT in row, row
                    assert "bounces@mailer.test" in row and "Envelope sender" in heading
                    assert "a@x.test, b@x.test, c@x.test" in older

            # Full screen at 80 columns: the subject gives way to `from <sender>` (item 4).
            await _resized(app, pilot, 80, 24)
            listing.cursor = 0
            await pilot.press("enter")
            screen = app.screen
            assert isinstance(screen, MessageScreen)
            await wait_until(pilot, lambda: "Invoice" in screen_text(app).splitlines()[0])
            title = _line(app, "Message ")
            assert title.rstrip().endswith("from bounces@mailer.test"), title
            assert "Invoice 2026-0042 for your" in title and "…" in title

    run(scenario)


def test_layout_is_one_per_width_and_every_line_as_wide_as_the_list():
    for width in range(6, 260):
        layout = layout_for(width)
        assert layout is layout_for(width)  # computed once per width
        assert layout.exact and len(layout.heading()) == width
        keys = [key for key, _ in layout.columns]
        assert "subject" in keys
        if width >= 60:
            assert keys[:1] == ["time"] and {"from", "to"} <= set(keys)


# ---- item 13: zero-width characters in one-line fields

ZW_FROM = "service@pay\u200bpal.test"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji, joined by two ZWJs
ZW_SUBJECT = f"pay\u200cpal \u200dnow {FAMILY}"
SMILES = "smile " + "\u263a\u200d\u263a" * 14 + " end"
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # needs its ZWNJ


def test_zero_width_characters_show_as_placeholders_in_one_line_fields(tmp_path):
    shown_from = "service@pay<U+200B>pal.test"
    shown_subject = f"pay<U+200C>pal <U+200D>now {FAMILY}"
    assert visible(ZW_FROM) == shown_from and visible(ZW_SUBJECT) == shown_subject
    assert visible(f"{FAMILY}\u200d") == f"{FAMILY}<U+200D>"  # a ZWJ with nothing to join
    assert visible(f"a\u200d{FAMILY}\u200d\u200d{FAMILY}\x00") == (
        f"a<U+200D>{FAMILY}<U+200D><U+200D>{FAMILY}␀"
    )
    assert visible_block(ZW_SUBJECT) == ZW_SUBJECT  # bodies keep the joiners
    raw = (
        f"From: {ZW_FROM}\r\nTo: b@x.test\r\nSubject: {ZW_SUBJECT}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{PERSIAN} {FAMILY}\r\n"
    ).encode()

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=(200, 40)) as (app, pilot):
            await send(app, "a@x.test", ["b@x.test"], raw)
            await wait_until(pilot, lambda: app.main.message_list.count == 1 and rows_loaded(app))
            row = list_rows(app)[0]
            assert shown_from in row and shown_subject in row, row
            detail = app.main.detail
            await wait_until(pilot, lambda: detail.loaded is not None)
            assert shown_from in screen_text(app)
            assert f"{PERSIAN} {FAMILY}" in detail.query_one("#text-body").text

            # Text-width pictographs joined by ZWJ: one cell each pair to rich, two on a screen
            # that draws each code point; shown, the row stays as wide as the list.
            joined = message(sender="x@\U0001f468\u200d\U0001f468.test", subject=SMILES)
            await send(app, "b@x.test", ["b@x.test"], joined)
            await wait_until(pilot, lambda: app.main.message_list.count == 2 and rows_loaded(app))
            await _resized(app, pilot, 80, 24)
            width = app.main.message_list.scrollable_content_region.width
            row = _line(app, "smile ")
            assert "x@\U0001f468<U+200D>" in row and "\u263a<U+200D>\u263a" in row, row
            drawn = row[:width]
            assert sum(get_character_cell_size(c) for c in drawn) == width, row
            assert re.search(r"!\d +$", drawn), row  # the badges at the right edge

    run(scenario)
    listed = run_cli("list", "--db", str(tmp_path / "mail.db"))
    shown = run_cli("show", "1", "--db", str(tmp_path / "mail.db"))
    assert listed.code == shown.code == 0
    assert shown_from in listed.out and "pay<U+200C>pal" in listed.out
    assert shown_from in shown.out and shown_subject in shown.out
    assert f"{PERSIAN} {FAMILY}" in shown.out  # the body keeps its joiners
    for out in (listed.out, shown.out):
        assert "\u200b" not in out and "pay\u200c" not in out


def test_a_name_that_looks_like_an_address_is_never_shown_alone():
    evil = "evil-long-address@attacker.example"
    for name in (
        "service@paypal.test",
        "service\uff20paypal.test",
        "service\ufe6bpaypal.test",
        '"service@paypal.test"',
        "paypal.test",
    ):
        for width in (14, 20, 24, 30):
            shown = fit_addresses((address_of(f"{name} <{evil}>"),), width)
            assert shown.startswith("evil-long-add"), (name, width, shown)
    assert fit_addresses((address_of(f"Pay Pal <{evil}>"),), 14).startswith("Pay Pal")


# ---- item 18: follow the newest message


def test_follow_newest_selects_each_new_message_until_switched_off(tmp_path):
    assert any(key == "F" for key, _ in KEYS)

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db")) as (app, pilot):
            listing = app.main.message_list
            titles = {command.title for command in app.get_system_commands(app.main)}
            assert "Follow newest" in titles
            for n in range(2):
                await send(app, "a@x.test", ["b@x.test"], message(subject=f"m{n}"))
            await wait_until(pilot, lambda: listing.count == 2 and rows_loaded(app))
            # No scrollbar: the heading is as wide as the rows again (Size right-aligned).
            await pilot.pause()
            lines = screen_text(app).splitlines()
            heading, row = _line(app, "Subject", lines), _line(app, " m1 ", lines)
            size = re.search(r"(\d+ B) •!", row)  # • unread
            assert not listing.show_vertical_scrollbar and size, row
            assert heading.index("Size") + 4 == size.end(1), (heading, row)
            await pilot.press("j")
            assert listing.cursor == 1

            await pilot.press("F")  # on: the newest now, then each new one
            assert listing.follow and listing.cursor == 0
            assert any("Following new mail" in n.message for n in app._notifications)
            await pilot.press("j")
            await send(app, "a@x.test", ["b@x.test"], message(subject="m2"))
            await wait_until(pilot, lambda: listing.count == 3)
            assert listing.cursor == 0 and listing.selected_id == listing.ids[-1]
            detail = app.main.detail
            await wait_until(
                pilot, lambda: detail.loaded and detail.loaded.record.id == listing.ids[-1]
            )

            await pilot.press("F", "j")  # off: the selection stays where it is
            assert not listing.follow
            chosen = listing.selected_id
            await send(app, "a@x.test", ["b@x.test"], message(subject="m3"))
            await wait_until(pilot, lambda: listing.count == 4)
            assert listing.selected_id == chosen and listing.cursor == 2

            # A deletion elsewhere and a new message seen in the same poll: the list is read
            # again whole, and the new message is still selected.
            await pilot.press("F", "j")
            assert listing.follow and listing.cursor == 1
            app._polling = True  # hold the poll until both are in the store
            try:
                first = listing.ids[0]
                assert await app.sink.read(lambda r: run_here(r.path, delete_messages, [first]))
                await send(app, "a@x.test", ["b@x.test"], message(subject="m4"))
            finally:
                app._polling = False
            newest = await app.sink.read(Reader.latest_id)
            await wait_until(pilot, lambda: listing.count == 4 and listing.ids[-1] == newest)
            assert listing.cursor == 0 and listing.selected_id == newest

    run(scenario)


def test_the_full_screen_title_shows_joiners_in_the_sender(tmp_path):
    """The envelope sender in the title is an address: no emoji sequence is kept there."""
    sender = "\U0001f468\u200d\U0001f4bb@x.test"

    async def scenario() -> None:
        async with tui(settings_for(tmp_path / "mail.db"), size=(80, 24)) as (app, pilot):
            assert app.sink.server is not None
            port = app.sink.server.port
            content = message(subject="zwj")

            def deliver() -> None:
                import smtplib

                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    client.sendmail(sender, ["b@x.test"], content, mail_options=["SMTPUTF8"])

            await asyncio.to_thread(deliver)
            await wait_until(pilot, lambda: app.main.message_list.count == 1)
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen))
            await wait_until(pilot, lambda: "zwj" in screen_text(app).splitlines()[0])
            title = screen_text(app).splitlines()[0]
            assert "<U+200D>" in title and "\u200d" not in title

    run(scenario)
