"""Per-message cost of the hygiene findings (mailsink/mail/hygiene.py), which the writer works
out for every message it stores.

    python bench/hygiene_cost.py [--repeat N]

For each message: microseconds per hygiene_findings call; beside it, as yardsticks, the
writer's parse_headers (run for every message already) and its whole insert_message (into a
store in a temporary directory, no commit) with and without the hygiene findings. Typical
messages: bench/ingest.py's, a text+HTML alternative built by the stdlib's email as an
application would, alone and with a 20 KB PDF, a 1 MB text and a 1 MB attachment. Hostile
ones: a million lines, 25 MB of 8-bit text in bare-LF lines, a thousand parts. Each figure is
the best of five timings.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import MessageFactory

import mailsink.store.operations as operations
from mailsink.mail.envelope import Envelope
from mailsink.mail.hygiene import hygiene_findings
from mailsink.mail.parse import parse_headers
from mailsink.store.schema import open_for_writing

OPTIONS = ["BODY=8BITMIME"]


def alternative_with_attachment(attachment: int | None = 20 * 1024) -> bytes:
    """Text and HTML alternatives (2.6 KB), as an application builds them with the stdlib's
    email, and an attachment of `attachment` random octets (None: no attachment)."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = "App <app@example.test>"
    message["To"] = "user@example.test"
    message["Subject"] = "Your invoice"
    message["Date"] = email.utils.formatdate()
    message["Message-ID"] = email.utils.make_msgid(domain="example.test")
    message.set_content("Hello,\n\nyour invoice is attached.\n" * 20)
    message.add_alternative("<p>Hello,</p><p>your invoice is attached.</p>\n" * 20, "html")
    if attachment is not None:
        message.add_attachment(os.urandom(attachment), "application", "pdf", filename="invoice.pdf")
    return message.as_bytes()


def plain(size: int) -> bytes:
    return MessageFactory(size).message(1) + b"\r\n"


def million_lines() -> bytes:
    return plain(1000) + b"x\r\n" * 1_000_000


def eight_bit_bare_lf(size: int = 25 * 1024 * 1024) -> bytes:
    line = "Ünïcödé text, a line that ends in a bare LF\n".encode()
    return plain(1000).replace(b"\r\n", b"\n") + line * (size // len(line))


def thousand_parts() -> bytes:
    head = (
        b"From: a@x.test\r\nTo: b@x.test\r\nSubject: parts\r\nDate: "
        + email.utils.formatdate().encode()
        + b"\r\nMessage-ID: <p@x.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    )
    part = (
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b"QUJD" * 200 + b"\r\n"
    )
    return head + part * 1000 + b"--b--\r\n"


def best_of_five(function: Callable[[], object], repeat: int) -> float:
    """Microseconds per call."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            function()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best * 1e6


def insert_costs(conn: sqlite3.Connection, raw: bytes, repeat: int) -> tuple[float, float]:
    """insert_message's microseconds per message with the hygiene findings and without."""
    message = operations.IncomingMessage(
        1, Envelope("app@example.test", ["user@example.test"], OPTIONS), raw, now_ms()
    )
    insert = partial(operations.insert_message, conn, message)
    with_hygiene = best_of_five(insert, repeat)
    operations.hygiene_findings = lambda *_: []  # type: ignore[assignment]
    try:
        without = best_of_five(insert, repeat)
    finally:
        operations.hygiene_findings = hygiene_findings
    return with_hygiene, without


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2000, help="calls per timing (typical)")
    args = parser.parse_args(argv)
    cases = [
        ("ingest.py message (5 KB)", plain(5120), args.repeat),
        ("alternative (text + HTML)", alternative_with_attachment(None), args.repeat // 2),
        ("alternative + 20 KB attachment", alternative_with_attachment(), args.repeat // 4),
        ("plain text, 1 MB", plain(1024 * 1024), max(1, args.repeat // 100)),
        ("alternative + 1 MB attachment", alternative_with_attachment(750_000), 20),
        ("hostile: 10^6 lines", million_lines(), 3),
        ("hostile: 25 MB 8-bit, bare LF", eight_bit_bare_lf(), 2),
        ("hostile: 1000 parts", thousand_parts(), 10),
    ]
    with tempfile.TemporaryDirectory(prefix="mailsink-bench-") as tmp:
        conn = open_for_writing(os.path.join(tmp, "bench.db"))
        conn.execute("BEGIN")
        operations.insert_session(conn, 1, 0, "127.0.0.1:1")
        print(
            f"{'message':32} {'octets':>9} {'hygiene':>9} {'parse_headers':>14} "
            f"{'insert_message (without)':>25}  findings  (microseconds)"
        )
        for name, raw, repeat in cases:
            envelope = Envelope("app@example.test", ["user@example.test"], OPTIONS)
            headers = parse_headers(raw)
            check = partial(hygiene_findings, raw, envelope, headers, now_ms())
            hygiene = best_of_five(check, repeat)
            parsing = best_of_five(partial(parse_headers, raw), repeat)
            inserted, without = insert_costs(conn, raw, max(1, repeat // 4))
            kinds = ",".join(sorted({finding.kind for finding in check()})) or "-"
            print(
                f"{name:32} {len(raw):>9} {hygiene:>9.1f} {parsing:>14.1f} "
                f"{inserted:>14.1f} ({without:>8.1f})  {kinds}"
            )
        conn.rollback()
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
