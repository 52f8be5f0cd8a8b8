"""The HTTP API on a 100 000-message store, measured with a real HTTP client over loopback.

    python bench/api.py [--messages N] [--requests R] [--ingest-messages M] [--rounds K]
                        [--mailhog PATH] [--seed S] [--json [PATH]]

Fills a fresh store as bench/scale.py does (its MailFactory, in-process, then waits for the search
index), starts `mailsink serve` on it, and times, on one keep-alive `http.client` connection:
GET /api/v1/messages?limit=50, GET /api/v1/message/{ID} of a 5 KB message, /api/v1/search with
bench/scale.py's `subject:"TOPIC"` queries, and GET /api/v2/messages?limit=50; then the same while
bench/ingest.py's SMTP load (reused connections, 8 sessions, 5 KB) runs; then that load's rate
with the API polled 10 times a second against without, alternating in the same run; then how long
/api/mailsink/wait takes to answer after the 250 of the message it waits for.

Where a MailHog binary is found (--mailhog, or `MailHog` on PATH) it gets the same number of
messages over SMTP and GET /api/v2/messages?limit=50 is timed on both, alternating; elsewhere a
note says why not. Figures are printed beside their targets; the exit status is 1 only when the
benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import ingest  # bench/ingest.py: SMTP load, server processes, machine info
import scale  # bench/scale.py: the realistic store

HOST = ingest.HOST
LIST = "/api/v1/messages?limit=50"
V2_LIST = "/api/v2/messages?limit=50"
TARGETS_MS = {  # kind -> (p50, p99); None: no target
    "v1 list limit=50": (10.0, 30.0),
    "v1 message 5 KB": (10.0, None),
    "v1 search subject:": (50.0, None),
    "v2 list limit=50": (None, None),
}
WAIT_P99_MS = 10.0
POLL_EVERY_S = 0.1
POLLED_RATIO = 0.95


class ApiBenchError(Exception):
    """The benchmark cannot go on; printed as one line."""


@dataclass(frozen=True)
class Options:
    messages: int
    requests: int
    ingest_messages: int
    rounds: int
    wakes: int
    mailhog: str | None
    seed: int
    json_path: str | None


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="HTTP API latency on an N-message store.")
    parser.add_argument("--messages", type=ingest.positive, default=100_000, help="N")
    parser.add_argument("--requests", type=ingest.positive, default=200, help="per kind")
    parser.add_argument(
        "--ingest-messages", type=ingest.positive, default=4000, help="SMTP messages a load run"
    )
    parser.add_argument("--rounds", type=ingest.positive, default=3, help="polled/unpolled pairs")
    parser.add_argument("--wakes", type=ingest.positive, default=100, help="waits timed")
    parser.add_argument("--mailhog", help="a MailHog binary [default: MailHog on PATH]")
    parser.add_argument("--seed", type=int, default=1, help="seed of the message generator")
    ingest.add_json_option(parser)
    args = parser.parse_args(argv)
    return Options(
        messages=args.messages,
        requests=args.requests,
        ingest_messages=args.ingest_messages,
        rounds=args.rounds,
        wakes=args.wakes,
        mailhog=args.mailhog or shutil.which("MailHog"),
        seed=args.seed,
        json_path=args.json_path,
    )


# ---- an HTTP client as a test suite's would be: one keep-alive connection


class Client:
    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def get(self, path: str) -> tuple[float, bytes]:
        """(seconds from sending the request to the last byte of the answer, the body)."""
        start = time.perf_counter()
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise ApiBenchError(f"GET {path}: {response.status} {body[:200]!r}")
        return elapsed, body

    def close(self) -> None:
        self.connection.close()


def wait_for_http(port: int, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + ingest.START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ApiBenchError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException, ApiBenchError):
            client = Client(port, timeout=2)
            client.get(path)
            client.close()
            return
        time.sleep(0.05)
    raise ApiBenchError(f"nothing answered HTTP on port {port}")


def ms(values: list[float], fraction: float) -> float:
    return ingest.percentile(values, fraction) * 1000


@dataclass
class Timing:
    kind: str
    requests: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, kind: str, seconds: list[float]) -> Timing:
        return cls(kind, len(seconds), ms(seconds, 0.5), ms(seconds, 0.99))


def request_kinds(message_id: int) -> dict[str, Callable[[int], str]]:
    subjects = [quote(q) for q in scale.search_kinds("2026-11-01")["subject:"][1]]
    return {
        "v1 list limit=50": lambda _: LIST,
        "v1 message 5 KB": lambda _: f"/api/v1/message/{message_id}",
        "v1 search subject:": lambda n: (
            f"/api/v1/search?limit=50&query={subjects[n % len(subjects)]}"
        ),
        "v2 list limit=50": lambda _: V2_LIST,
    }


def time_kinds(
    port: int, kinds: dict[str, Callable[[int], str]], runs: int, until: threading.Event | None
) -> dict[str, list[float]]:
    """Each kind `runs` times, round robin (with `until`: until it is set, at least once each)."""
    client = Client(port)
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for path in kinds.values():  # warm-up: the first answer of each pays for imports
        client.get(path(0))
    n = 0
    while (n < runs) if until is None else (not until.is_set() or n == 0):
        for kind, path in kinds.items():
            seconds[kind].append(client.get(path(n))[0])
        n += 1
    client.close()
    return seconds


# ---- SMTP load


def run_load(port: int, messages: int) -> ingest.LoadResult:
    try:
        return asyncio.run(ingest.drive(port, "reused", messages, 8, 5000))
    except* (ingest.BenchError, OSError) as group:
        raise ApiBenchError(str(group.exceptions[0])) from None


class Poller(threading.Thread):
    """GET /api/v1/messages?limit=50 every 100 ms, as a test suite waiting for mail does."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.polls = 0

    def run(self) -> None:
        client = Client(self.port)
        next_at = time.perf_counter()
        while not self.stop.is_set():
            client.get(LIST)
            self.polls += 1
            next_at += POLL_EVERY_S
            self.stop.wait(max(0.0, next_at - time.perf_counter()))
        client.close()


@dataclass
class PollPair:
    unpolled_rate: float
    polled_rate: float
    polls: int
    polled_p99_ms: float


def polled_pairs(smtp_port: int, http_port: int, options: Options) -> list[PollPair]:
    pairs = []
    for round_ in range(options.rounds):
        rates: dict[bool, ingest.LoadResult] = {}
        polls = 0
        # Alternate which goes first, so that drift on a shared machine hits both alike.
        for polled in (False, True) if round_ % 2 == 0 else (True, False):
            poller = Poller(http_port) if polled else None
            if poller:
                poller.start()
            rates[polled] = run_load(smtp_port, options.ingest_messages)
            if poller:
                poller.stop.set()
                poller.join()
                polls = poller.polls
        pair = PollPair(
            rates[False].messages / rates[False].elapsed,
            rates[True].messages / rates[True].elapsed,
            polls,
            ms(rates[True].latencies, 0.99),
        )
        pairs.append(pair)
        progress(
            f"  round {round_ + 1}: {pair.unpolled_rate:.0f} msg/s unpolled, "
            f"{pair.polled_rate:.0f} polled ({polls} polls)"
        )
    return pairs


# ---- the server-side wait


def wake_latencies(smtp_port: int, http_port: int, wakes: int) -> list[float]:
    """Seconds from the 250 of a message to the answer of the wait that wanted it."""
    latencies = []
    with smtplib.SMTP(HOST, smtp_port, timeout=30) as smtp:
        for n in range(wakes):
            subject = f"wake-{n}-{time.time_ns()}"
            path = f"/api/mailsink/wait?count=1&timeout=10s&query={quote(f'subject:{subject}')}"
            answered: list[float] = []
            client = Client(http_port)

            def wait(
                client: Client = client, path: str = path, answered: list[float] = answered
            ) -> None:
                client.get(path)
                answered.append(time.perf_counter())

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.03)  # the wait is registered before the mail comes
            smtp.sendmail(
                "app@bench.example",
                ["wake@bench.example"],
                f"From: app@bench.example\r\nSubject: {subject}\r\n\r\nwake\r\n".encode(),
            )
            sent = time.perf_counter()
            waiter.join(15)
            client.close()
            if not answered:
                raise ApiBenchError("a wait did not answer within 15 s")
            latencies.append(max(0.0, answered[0] - sent))
    return latencies


# ---- MailHog


@contextlib.contextmanager
def mailhog_server(binary: str, tmp: Path) -> Iterator[tuple[int, int]]:
    smtp_port, http_port = ingest.free_port(), ingest.free_port()
    command = [
        binary,
        "-smtp-bind-addr", f"{HOST}:{smtp_port}",
        "-api-bind-addr", f"{HOST}:{http_port}",
        "-ui-bind-addr", f"{HOST}:{http_port}",
        "-storage", "memory",
    ]  # fmt: skip
    with ingest.running_server(command, smtp_port, tmp / "mailhog.log") as process:
        wait_for_http(http_port, process, "/api/v2/messages?limit=1")
        yield smtp_port, http_port


@dataclass
class MailhogResult:
    ingest_rate: float
    mailhog: Timing
    mailsink: Timing
    total: int


def compare_mailhog(binary: str, tmp: Path, http_port: int, options: Options) -> MailhogResult:
    """MailHog gets as many messages as mailsink then holds, bench/ingest.py's 5 KB ones (as
    the newest 50 of mailsink's are, after the load runs): MailHog reads DATA in a way that
    slows to about 70 msg/s on bench/scale.py's mix (2 % of it 100-500 KB)."""
    total = json.loads(Client(http_port).get("/api/v2/messages?limit=1")[1])["total"]
    with mailhog_server(binary, tmp) as (smtp_port, mailhog_http):
        progress(f"MailHog: {total} messages over SMTP...")
        rate = total / run_load(smtp_port, total).elapsed
        held = json.loads(Client(mailhog_http).get("/api/v2/messages?limit=1")[1])["total"]
        if held != total:
            raise ApiBenchError(f"MailHog holds {held} messages, mailsink {total}")
        seconds: dict[str, list[float]] = {"MailHog": [], "mailsink": []}
        clients = {"MailHog": Client(mailhog_http), "mailsink": Client(http_port)}
        for client in clients.values():
            client.get(V2_LIST)
        for _ in range(options.requests):
            for name, client in clients.items():  # alternating
                seconds[name].append(client.get(V2_LIST)[0])
        for client in clients.values():
            client.close()
    return MailhogResult(
        rate,
        Timing.of("MailHog v2 list", seconds["MailHog"]),
        Timing.of("mailsink v2 list", seconds["mailsink"]),
        total,
    )


# ---- the run


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def verdict(value: float, target: float | None, *, at_least: bool = False) -> str:
    if target is None:
        return ""
    ok = value >= target if at_least else value <= target
    return f" (target {'>=' if at_least else '<='} {target:g}: {'pass' if ok else 'MISS'})"


def timing_lines(title: str, timings: list[Timing]) -> list[str]:
    lines = [title]
    for timing in timings:
        p50, p99 = TARGETS_MS.get(timing.kind, (None, None))
        lines.append(
            f"  {timing.kind:<20} p50 {timing.p50_ms:6.2f} ms{verdict(timing.p50_ms, p50)}"
            f"   p99 {timing.p99_ms:6.2f} ms{verdict(timing.p99_ms, p99)}   n={timing.requests}"
        )
    return lines


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def measure(options: Options, tmp: Path, report: dict[str, Any], lines: list[str]) -> None:
    db = tmp / "api.db"
    progress(f"filling a store with {options.messages} messages...")
    filled = scale.fill(db, scale.MailFactory(options.seed), options.messages)
    lines.append(
        f"store: {filled.messages} messages, filled at {filled.rate:.0f} msg/s, "
        f"indexed in {filled.index_seconds:.0f} s"
    )
    smtp_port, http_port = ingest.free_port(), ingest.free_port()
    command = [*ingest.server_command("mailsink", smtp_port, db), "--http-port", str(http_port)]
    with ingest.running_server(command, smtp_port, tmp / "server.log") as process:
        wait_for_http(http_port, process, "/api/v1/info")
        body = ingest.body_text(5000 - 200)  # the headers make up the rest of the 5 KB
        with smtplib.SMTP(HOST, smtp_port) as smtp:
            smtp.sendmail(
                "app@bench.example",
                ["five@bench.example"],
                b"From: App <app@bench.example>\r\nTo: five@bench.example\r\n"
                b"Subject: five kilobytes\r\nMessage-ID: <five@bench.example>\r\n\r\n" + body,
            )
        latest = json.loads(Client(http_port).get("/api/v1/messages?limit=1")[1])
        five = latest["messages"][0]
        lines.append(f"5 KB message: id {five['ID']}, {five['Size']} bytes")
        kinds = request_kinds(int(five["ID"]))

        progress("idle: timing the requests...")
        idle = [
            Timing.of(k, v) for k, v in time_kinds(http_port, kinds, options.requests, None).items()
        ]
        lines += timing_lines(f"idle (load average {load_average()}):", idle)

        progress("under SMTP load: timing the requests...")
        done = threading.Event()
        loaded_result: list[ingest.LoadResult] = []

        def load() -> None:
            try:
                loaded_result.append(run_load(smtp_port, options.ingest_messages))
            finally:
                done.set()

        loader = threading.Thread(target=load)
        loader.start()
        loaded_seconds = time_kinds(http_port, kinds, 0, done)
        loader.join()
        if not loaded_result:
            raise ApiBenchError("the SMTP load failed")
        rate = loaded_result[0].messages / loaded_result[0].elapsed
        loaded = [Timing.of(k, v) for k, v in loaded_seconds.items()]
        lines += timing_lines(
            f"under SMTP load ({options.ingest_messages} messages, 8 sessions, 5 KB: "
            f"{rate:.0f} msg/s while the requests ran back to back):",
            loaded,
        )

        progress("ingest with and without the API polled 10x/s...")
        pairs = polled_pairs(smtp_port, http_port, options)
        ratios = [pair.polled_rate / pair.unpolled_rate for pair in pairs]
        ratio = statistics.median(ratios)
        lines.append(
            "ingest polled/unpolled: "
            + ", ".join(f"{r:.3f}" for r in ratios)
            + f"; median {ratio:.3f}{verdict(ratio, POLLED_RATIO, at_least=True)}"
        )
        lines.append(
            "  msg/s unpolled "
            + ", ".join(f"{p.unpolled_rate:.0f}" for p in pairs)
            + "; polled "
            + ", ".join(f"{p.polled_rate:.0f}" for p in pairs)
        )

        progress("the wait's wake-up after the 250...")
        wakes = wake_latencies(smtp_port, http_port, options.wakes)
        wake_p50, wake_p99 = ms(wakes, 0.5), ms(wakes, 0.99)
        lines.append(
            f"/api/mailsink/wait wakes after the 250: p50 {wake_p50:.2f} ms, p99 {wake_p99:.2f} ms"
            f"{verdict(wake_p99, WAIT_P99_MS)} n={len(wakes)}"
        )

        mailhog: MailhogResult | None = None
        if options.mailhog:
            mailhog = compare_mailhog(options.mailhog, tmp, http_port, options)
            lines.append(
                f"MailHog ({options.mailhog}): {mailhog.total} messages, SMTP fill at "
                f"{mailhog.ingest_rate:.0f} msg/s"
            )
            lines.append(
                f"  GET {V2_LIST}, alternating: MailHog p50 {mailhog.mailhog.p50_ms:.2f} ms "
                f"p99 {mailhog.mailhog.p99_ms:.2f}; mailsink p50 {mailhog.mailsink.p50_ms:.2f} ms "
                f"p99 {mailhog.mailsink.p99_ms:.2f} "
                f"(mailsink/MailHog p50 {mailhog.mailsink.p50_ms / mailhog.mailhog.p50_ms:.2f})"
            )
        else:
            lines.append(
                "MailHog: skipped (no binary: pass --mailhog PATH or put MailHog on PATH; "
                "docs/PERFORMANCE.md says how it was built here)"
            )
    report.update(
        fill={"messages": filled.messages, "rate": filled.rate, "index_s": filled.index_seconds},
        idle=[t.__dict__ for t in idle],
        loaded=[t.__dict__ for t in loaded],
        loaded_rate=rate,
        polled=[p.__dict__ for p in pairs],
        polled_ratio=ratio,
        wait_ms={"p50": wake_p50, "p99": wake_p99},
        mailhog=None
        if mailhog is None
        else {
            "ingest_rate": mailhog.ingest_rate,
            "mailhog": mailhog.mailhog.__dict__,
            "mailsink": mailhog.mailsink.__dict__,
        },
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    info = ingest.machine()
    lines = [
        f"bench/api.py: {options.messages} messages, {options.requests} requests a kind",
        f"machine: {info['cpu_model']}, {info['nproc']} CPUs, Python "
        f"{info.get('python', '?')}; load average at start {load_average()}",
    ]
    report: dict[str, Any] = {"options": options.__dict__, "machine": info}
    try:
        with tempfile.TemporaryDirectory(prefix="mailsink-api-bench-") as tmp:
            measure(options, Path(tmp), report, lines)
    except (ApiBenchError, ingest.BenchError, scale.ScaleError, OSError) as error:
        print("\n".join(lines), flush=True)
        print(f"bench/api.py: {error}", file=sys.stderr)
        return 1
    lines.append(f"load average at the end {load_average()}")
    print("\n".join(lines), flush=True)
    if options.json_path is not None:
        text = json.dumps(report, indent=2, default=str)
        if options.json_path == "-":
            print(text)
        else:
            Path(options.json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
