"""How soon GET /api/mailsink/wait answers after the 250 that ends the message it waits for.

    python bench/api_wait.py [--messages N] [--db PATH]

Starts `mailsink serve` (a subprocess, a fresh store) on loopback; for each message a thread
asks `/api/mailsink/wait?since=<newest id>`, the bench lets it settle (20 ms) and then sends one
message with smtplib. The figure is (the wait's answer received) - (the DATA's 250 received),
both taken with time.perf_counter on the client's side: negative when the answer comes first
(the sink tells its events as the message commits, before the 250 is sent).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--db", help="store path (default: a temporary file)")
    options = parser.parse_args()
    smtp_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as scratch:
        db = options.db or str(Path(scratch) / "mail.db")
        server = subprocess.Popen(
            [sys.executable, "-m", "mailsink", "serve", "--port", str(smtp_port), "--db", db,
             "--http-port", str(http_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            wait_for_port(smtp_port)
            wait_for_port(http_port)
            print(run(smtp_port, http_port, options.messages))
        finally:
            server.terminate()
            server.wait(15)


def run(smtp_port: int, http_port: int, count: int) -> str:
    deltas: list[float] = []
    newest = 0
    smtp = smtplib.SMTP("127.0.0.1", smtp_port)
    body = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: wait bench\r\n\r\nhello\r\n"
    try:
        for _ in range(count):
            answered: list[float] = []
            found: list[dict] = []

            def ask(since: int = newest, answered: list = answered, found: list = found) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
                connection.request("GET", f"/api/mailsink/wait?since={since}&timeout=5s")
                response = connection.getresponse()
                data = response.read()
                answered.append(time.perf_counter())
                assert response.status == 200, data
                found.extend(json.loads(data))
                connection.close()

            thread = threading.Thread(target=ask)
            thread.start()
            time.sleep(0.02)  # the request is waiting by then
            smtp.sendmail("a@x.test", ["b@x.test"], body)
            ok_at = time.perf_counter()
            thread.join()
            deltas.append((answered[0] - ok_at) * 1000)
            newest = found[0]["id"]
    finally:
        smtp.quit()
    deltas.sort()
    p99 = deltas[min(len(deltas) - 1, int(len(deltas) * 0.99))]
    return (
        f"{count} waits: answer - 250 (ms): p50 {statistics.median(deltas):.2f}, "
        f"p99 {p99:.2f}, max {deltas[-1]:.2f}, min {deltas[0]:.2f}"
    )


if __name__ == "__main__":
    main()
