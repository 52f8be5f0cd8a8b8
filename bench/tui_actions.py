"""Two TUI actions that scale with the data: moving off a huge message, and `D` on a big store.

    python bench/tui_actions.py --switch [--size BYTES] [--rounds R]   # off a 20 MB message
    python bench/tui_actions.py --delete [--messages N]                # D on N messages

`--switch` sends small and huge messages over SMTP to the TUI's own server (headless, in this
process, on the loop `mailsink` uses), moves onto a huge one with a key, and 0.1 s, 0.3 s or 1 s
later (while it is parsed, while it fills the tabs, when it is shown) presses a key that moves to
a small neighbour: the time from that key to the neighbour's detail on screen, and the longest
stall of the event loop meanwhile (a probe that wakes every millisecond, until 50 ms after), for a
huge message of each kind (a base64 attachment, a plain-text body) and for small ones as the
baseline, with the Overview tab shown and with the Raw tab; then, with the Text tab shown, the
longest stall while a long text goes in a slice at a time (a text of lines, and one of one line).

`--delete` fills a store as bench/scale.py does (the writer's own operations, no SMTP), opens the
TUI on it and answers `D` with yes: the time until the list is empty, the longest loop stall,
and how long a key pressed in the middle of the deletion took to move the cursor.

Figures are printed beside their targets. This is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import smtplib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # bench/scale.py: the store filler and the big message
from textual.widgets import TextArea

from mailsink.config import Settings, SmtpSettings, StorageSettings
from mailsink.run import loop_factory
from mailsink.tui.app import MailsinkApp, create_app
from mailsink.tui.widgets.dialogs import Confirm, Help

SIZE = (120, 40)
SWITCH_TARGET_MS = 50.0
HUGE = 20_000_000
TIMEOUT_S = 60.0


class Probe:
    """The event loop's longest stall: a task that asks to wake every millisecond."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def start(self) -> None:
        self.longest = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        return self.longest * 1000


async def until(done: Callable[[], Any], what: str) -> None:
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > TIMEOUT_S:
            raise SystemExit(f"{what}: not within {TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.001)


def settings(db: Path, max_size: int) -> Settings:
    base = Settings()
    return replace(
        base,
        smtp=replace(base.smtp or SmtpSettings(), port=0, max_message_size=max_size),
        storage=replace(base.storage or StorageSettings(), path=str(db)),
    )


def plain(size: int) -> bytes:
    head = (
        b"From: Logs <logs@ops.example>\r\nTo: ada@example.com\r\nSubject: Full log\r\n"
        b"Date: Fri, 27 Nov 2026 23:10:00 +0000\r\nMessage-ID: <log@ops.example>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    rng = random.Random(1)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 9))) for _ in range(2000)]
    line = b" ".join(rng.choices(words, k=12))[:76] + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


def one_line(size: int) -> bytes:
    """A text body that decodes to one line (quoted-printable soft breaks), `size` bytes."""
    head = (
        b"From: a@x.test\r\nTo: b@x.test\r\nSubject: One line\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    line = b"abcdefghij" * 7 + b"abcde=\r\n"
    return head + line * ((size - len(head)) // len(line))


def small(subject: str) -> bytes:
    return (
        f"From: a@x.test\r\nTo: b@x.test\r\nSubject: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 23:10:00 +0000\r\n\r\nHello.\r\n"
    ).encode()


def send(port: int, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.sendmail("a@x.test", ["b@x.test"], content)


def shown(app: MailsinkApp, message_id: int | None) -> bool:
    loaded = app.main.detail.loaded
    return loaded is not None and loaded.record.id == message_id


async def move(app: MailsinkApp, key: str, probe: Probe) -> tuple[float, float]:
    """(ms from `key` to the new selection's detail on screen, the loop's longest stall)."""
    listing = app.main.message_list
    target = listing.id_at(listing.cursor + (1 if key == "down" else -1))
    probe.start()
    start = time.perf_counter()
    app.simulate_key(key)  # as a terminal's key arrives; Pilot.press adds waits of its own
    await until(lambda: shown(app, target), f"{key} to message {target}")
    took = (time.perf_counter() - start) * 1000
    await asyncio.sleep(0.05)  # what the move leaves behind (freeing, collecting) counts too
    return took, probe.stop()


async def switch(size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(settings(Path(tmp) / "mail.db", size + 1_000_000))
        async with app.run_test(size=SIZE):
            assert app.sink.server is not None
            port = app.sink.server.port
            listing = app.main.message_list
            # Newest first: row 0 small, 1 attachment, 2 small, 3 plain text, 4 and 5 small,
            # 6 a text of one line.
            for content in (
                one_line(min(size, 2_000_000)),
                small("s1"),
                small("s2"),
                plain(size),
                small("s3"),
                scale.big_mail(size),
                small("s4"),
            ):
                await asyncio.to_thread(send, port, content)
            await until(lambda: listing.count == 7, "seven messages listed")
            probe = Probe()
            tabs = app.main.detail.query_one("#tabs")
            print(
                f"moving off a message with a key, {rounds} rounds each (target: under"
                f" {SWITCH_TARGET_MS:.0f} ms); 'after' is how long it had been selected"
            )
            for tab, (label, row), after in itertools.product(
                ("overview", "raw"),
                (("small", 5), ("attachment", 1), ("plain text", 3)),
                (0.1, 0.3, 1.0),
            ):
                tabs.active = tab
                took, stalls = [], []
                for _ in range(rounds):
                    listing._move_to(row - 1)
                    await until(lambda: shown(app, listing.selected_id), "the detail")
                    await asyncio.sleep(0.3)
                    app.simulate_key("down")  # onto it
                    await asyncio.sleep(after)
                    ms, stall = await move(app, "down" if row < 5 else "up", probe)
                    took.append(ms)
                    stalls.append(stall)
                print(
                    f"  {tab:8} {label:10} after {after:.1f} s: key to next detail median"
                    f" {statistics.median(took):5.0f} ms, max {max(took):5.0f} ms;"
                    f" longest loop stall {max(stalls):5.0f} ms"
                )
            # The Text tab shown: the longest stall while a long text goes in, a slice at a time.
            tabs.active = "text"
            body = app.main.detail.query_one("#text-body", TextArea)
            for label, row in (("plain text", 3), ("one line", 6)):
                stalls = []
                for _ in range(rounds):
                    listing._move_to(row - 1)
                    await until(lambda: shown(app, listing.selected_id), "the detail")
                    await asyncio.sleep(0.3)
                    probe.start()
                    app.simulate_key("down")
                    await until(lambda row=row: shown(app, listing.id_at(row)), "onto it")
                    loaded = app.main.detail.loaded
                    assert loaded is not None
                    wanted = len(loaded.text) - 5
                    await until(lambda wanted=wanted: len(body.text) >= wanted, "the Text tab")
                    await asyncio.sleep(0.05)
                    stalls.append(probe.stop())
                print(
                    f"  text     {label:10} onto it, the Text tab filled: longest loop stall"
                    f" median {statistics.median(stalls):5.0f} ms, max {max(stalls):5.0f} ms"
                )


def filled(directory: Path, messages: int) -> Path:
    db = directory / "mail.db"
    print(f"filling {messages:,} messages ...", flush=True)
    scale.fill(db, scale.MailFactory(1), messages)
    return db


async def delete(db: Path, messages: int) -> None:
    app = create_app(replace(settings(db, 25 * 1024 * 1024), storage=StorageSettings(str(db))))
    async with app.run_test(size=SIZE):
        listing = app.main.message_list
        await until(lambda: listing.loaded and listing.count == messages, "the list")
        probe = Probe()
        app.simulate_key("D")
        await until(lambda: isinstance(app.screen, Confirm), "the question")
        probe.start()
        start = time.perf_counter()
        app.simulate_key("y")
        await asyncio.sleep(0.5)
        progress = getattr(app.main.status, "progress_text", None)  # (None: before issue 11)
        mark = time.perf_counter()
        app.simulate_key("question_mark")  # Help: does the UI answer in the middle of it?
        await until(lambda: isinstance(app.screen, Help), "the help")
        key_ms = (time.perf_counter() - mark) * 1000
        app.simulate_key("escape")
        await until(lambda: not isinstance(app.screen, Help), "the help closed")
        await until(
            lambda: listing.count == 0 and not getattr(app.main, "_deleting", False),
            "an empty list",
        )
        seconds = time.perf_counter() - start
        stall = probe.stop()
        print(
            f"D on {messages:,} messages: {seconds:.2f} s; longest loop stall {stall:.0f} ms;"
            f" a key 0.5 s in: {key_ms:.0f} ms; the status line then: {progress!r}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switch", action="store_true", help="moving off a huge message")
    parser.add_argument("--delete", action="store_true", help="D on a big store")
    parser.add_argument("--size", type=int, default=HUGE, help="bytes of the huge message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=77_000)
    options = parser.parse_args(argv)
    if not (options.switch or options.delete):
        parser.error("choose --switch and/or --delete")
    sys.setswitchinterval(0.001)  # as `mailsink tui` runs (mailsink.tui.app.run)
    factory = loop_factory()
    if options.switch:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(switch(options.size, options.rounds))
    if options.delete:
        with tempfile.TemporaryDirectory() as tmp:
            db = filled(Path(tmp), options.messages)
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(delete(db, options.messages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
