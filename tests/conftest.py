from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsink.cli import main
from mailsink.testing import RunningSink

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[RunningSink]:
    with RunningSink(tmp_path / "mail.db") as running:
        yield running


@pytest.fixture
def client(sink: RunningSink) -> Iterator[smtplib.SMTP]:
    connection = smtplib.SMTP(sink.host, sink.port, timeout=10)
    yield connection
    with contextlib.suppress(smtplib.SMTPException, OSError):
        connection.quit()


class RawClient:
    """A bare socket speaking SMTP line by line, for what smtplib will not send."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[str]:
        """One (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            text = line.decode("utf-8").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return lines

    def command(self, line: str | bytes) -> list[str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(sink: RunningSink) -> Iterator[RawClient]:
    connection = RawClient(sink.host, sink.port)
    yield connection
    connection.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run the real entry point in-process, as the console script would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(free_http(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        else:
            code = 0
    return CliResult(code, out.getvalue(), err.getvalue())


def free_http(args: tuple[str, ...] | list[str]) -> list[str]:
    """`serve` / `tui` with an HTTP port of their own: tests run many servers at once, and the
    default 8025 may be a developer's real Mailpit."""
    args = list(args)
    if args[:1] in (["serve"], ["tui"]) and not {"--http-port", "--no-http"} & set(args):
        args += ["--http-port", "0"]
    return args


def _signals_as_at_a_terminal() -> None:
    # A suite started in the background (`&` in a script, nohup) passes on SIGINT/SIGHUP
    # ignored, and an ignored signal is inherited across exec: reset them, as a shell at a
    # terminal does, so that a test's Ctrl-C reaches mailsink as a user's would.
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def mailsink_process(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kwargs.setdefault("preexec_fn", _signals_as_at_a_terminal)
    return subprocess.Popen(
        [sys.executable, "-m", "mailsink", *free_http(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def message(
    *,
    sender: str = "Shop <noreply@shop.test>",
    to: str = "a@x.test",
    subject: str = "Your order",
    body: str = "Thanks for your order.\r\n",
    extra: str = "",
    message_id: str = "<m1@shop.test>",
) -> bytes:
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Fri, 27 Nov 2026 23:10:00 +0000\r\nMessage-ID: {message_id}\r\n"
    )
    return (head + extra + "\r\n" + body).encode()


# The fault rules of the refusal tests (CLI and TUI): one refusal at each stage.
REFUSAL_RULES = """
[[fault]]
name = "mailbox full"
stage = "rcpt"
reply = "452 4.2.2 Mailbox full"
match = { recipient = "full@*" }

[[fault]]
name = "storage full"
stage = "data"
reply = "452 4.3.1 Insufficient system storage"
match = { header = { Subject = "reject me" } }

[[fault]]
name = "no marketing"
stage = "mail"
reply = "550 5.7.1 Sender not permitted"
match = { sender = "*@marketing.test" }
"""
HOSTILE = "[bold red]x\x1b[2J\x07"  # markup and terminal controls


# What each schema step added, taken away again: a store of an older schema, made from a new one
# (the tests of how an old store is read and migrated).
_UNDO = {
    8: "DROP TRIGGER messages_releases_out; DROP TABLE releases;",
    7: (
        "DROP TRIGGER messages_counted_in; DROP TRIGGER messages_counted_out;"
        " DROP TRIGGER messages_counted_change; DROP TABLE message_counts;"
        " DROP INDEX messages_unsnipped; ALTER TABLE messages DROP COLUMN snippet;"
    ),
    6: (
        "DROP TABLE message_fields; DROP TABLE message_body; DROP TABLE message_tags;"
        " DROP INDEX messages_unread; DROP INDEX messages_unindexed; DROP INDEX messages_received;"
        " ALTER TABLE messages DROP COLUMN seen; ALTER TABLE messages DROP COLUMN indexed;"
        " ALTER TABLE messages DROP COLUMN attachments;"
    ),
    5: (
        "ALTER TABLE messages DROP COLUMN reply_rule; ALTER TABLE sessions DROP COLUMN refusals;"
        " ALTER TABLE sessions DROP COLUMN last_refusal;"
    ),
    4: (
        "DROP TABLE server; ALTER TABLE sessions DROP COLUMN state;"
        " ALTER TABLE store_state DROP COLUMN kept_messages;"
        " ALTER TABLE store_state DROP COLUMN kept_sessions;"
    ),
    3: "DROP TABLE store_state;",
}


def downgrade(db: str | Path, version: int) -> None:
    """Make the store at `db` one of schema `version` (its rows kept, as far as they fit)."""
    import sqlite3

    from mailsink.store.schema import SCHEMA_VERSION

    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript(
            "".join(_UNDO[step] for step in range(SCHEMA_VERSION, version, -1))
            + f"PRAGMA user_version = {version};"
        )
        if version < 6:  # what insert_message wrote into message_search before schema 6
            rows = conn.execute("SELECT id, envelope, headers FROM messages").fetchall()
            conn.executemany(
                "INSERT OR REPLACE INTO message_search (id, text) VALUES (?, ?)",
                [(row[0], _old_search_text(row[1], row[2])) for row in rows],
            )
            conn.commit()


def _old_search_text(envelope_json: str, headers_json: str) -> str:
    """operations._search_text before schema 6 (git show d6219e6:mailsink/store/operations.py)."""
    import json

    envelope, headers = json.loads(envelope_json), json.loads(headers_json)
    parts = [envelope["mail_from"], *envelope["rcpt_to"]]
    for key in ("from", "to", "cc", "reply_to"):
        parts += headers[key]
    parts.append(headers["subject"] or "")
    return "\n".join(parts).lower()


class ServerLines:
    """`mailsink serve`'s stderr, read on a thread, so a wait for a line has a deadline."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        stream = process.stderr

        def read() -> None:
            for line in iter(stream.readline, b""):
                self._lines.put(line.decode(errors="replace"))

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def until(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"no {pattern!r} in the server's log: {''.join(self.seen)}")
