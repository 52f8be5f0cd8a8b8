"""Ingest throughput: mailsink against a bare aiosmtpd server that accepts and discards.

    python bench/ingest.py [--messages N] [--sessions S] [--size BYTES] [--rounds R]
                           [--modes reused,new] [--auto-release] [--json [PATH]]

Each run starts a fresh server subprocess on loopback, drives it with S concurrent sessions until
N messages have been accepted, reads the server's peak RSS, and stops it. Runs alternate between
the reference server (bench/reference_server.py) and `mailsink serve`, so that drift on a shared
machine hits both alike. The reference is the ceiling aiosmtpd and Python set here; the ratio
mailsink/reference is the cost of mailsink's transcripts, parsing and committing before each 250.

Modes: `reused` keeps one connection per session for many transactions (MAIL, RCPT, DATA);
`new` opens a connection per message (greeting, EHLO, MAIL, RCPT, DATA, QUIT).

With `--auto-release` a third server runs in the same rotation: `mailsink serve` with a config
whose `[relay] auto` releases every message to a bare aiosmtpd upstream on loopback (the
reference server, started for the run), so the table shows what auto release costs ingest;
after each run the store's `releases` rows say how many were sent while the run lasted.

Throughput comes from Postfix's smtp-source when it is on PATH, else from the built-in asyncio
generator; latency (end of DATA to 250) always comes from the built-in generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REFERENCE_SCRIPT = BENCH_DIR / "reference_server.py"
SERVERS = ("reference", "mailsink")
AUTO = "auto-release"  # mailsink with [relay] auto on (--auto-release)
MODES = ("reused", "new")
MAIL_FROM = "sender@bench.example"
RCPT_TO = "rcpt@bench.example"
CLIENT_NAME = "bench-client.example"
END_OF_DATA = b"\r\n.\r\n"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on; printed as one line."""


# ---- options


@dataclass(frozen=True)
class Options:
    messages: int
    sessions: int
    size: int
    rounds: int
    modes: tuple[str, ...]
    json_path: str | None
    writer_cost: bool = False
    auto_release: bool = False

    @property
    def servers(self) -> tuple[str, ...]:
        return (*SERVERS, AUTO) if self.auto_release else SERVERS


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}")
    return modes


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """--json [PATH], shared by the bench scripts."""
    parser.add_argument(
        "--json",
        dest="json_path",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also write the results as JSON to PATH; without PATH, to stdout "
        "(the human-readable report then goes to stderr)",
    )


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Ingest throughput of mailsink against a bare aiosmtpd server."
    )
    parser.add_argument("--messages", type=positive, default=4000, help="messages per run")
    parser.add_argument("--sessions", type=positive, default=8, help="concurrent SMTP sessions")
    parser.add_argument("--size", type=positive, default=5120, help="message size in bytes")
    parser.add_argument("--rounds", type=positive, default=2, help="runs per server and mode")
    parser.add_argument("--modes", type=parse_modes, default=MODES, help="reused,new")
    parser.add_argument(
        "--writer-cost",
        action="store_true",
        help="instead: the writer's CPU per message (insert_message in transactions of 50, "
        "no server), the mailsink on PYTHONPATH",
    )
    parser.add_argument(
        "--auto-release",
        action="store_true",
        help="also run mailsink with [relay] auto releasing every message to a local upstream",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    return Options(
        messages=args.messages,
        sessions=args.sessions,
        size=args.size,
        rounds=args.rounds,
        modes=args.modes,
        json_path=args.json_path,
        writer_cost=args.writer_cost,
        auto_release=args.auto_release,
    )


# ---- the message

PROSE = (
    "The quarterly report is attached for your review before the meeting on Thursday, "
    "together with the figures from the regional offices and a short summary of the open "
    "questions. Please send any corrections by the end of the week so that the final "
    "version can go out to the whole team on Monday morning."
)


def body_text(size: int) -> bytes:
    """Plain prose wrapped at 72 columns; words never start with '.', so no line needs stuffing."""
    words = PROSE.split()
    lines: list[str] = []
    line = ""
    length = 0
    index = 0
    while length < size:
        word = words[index % len(words)]
        index += 1
        if line and len(line) + 1 + len(word) > 72:
            lines.append(line)
            length += len(line) + 2
            line = word
        else:
            line = f"{line} {word}" if line else word
    body = "\r\n".join(lines).encode("ascii")[:size].rstrip(b"\r\n ")
    assert not any(part.startswith(b".") for part in body.split(b"\r\n"))
    return body


class MessageFactory:
    """RFC 5322 messages of about `size` bytes; each has its own Message-ID and Subject."""

    def __init__(self, size: int):
        self.tag = uuid.uuid4().hex[:12]
        date = email.utils.formatdate(localtime=False)
        self.header_template = (
            f"From: Bench Sender <{MAIL_FROM}>\r\n"
            f"To: Bench Recipient <{RCPT_TO}>\r\n"
            "Subject: Benchmark message {index}\r\n"
            f"Date: {date}\r\n"
            "Message-ID: <{index}." + self.tag + "@bench.example>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            "\r\n"
        )
        headers = len(self.header_template) + 16  # room for the index
        self.body = body_text(max(size - headers, 100))

    def message(self, index: int) -> bytes:
        """The content without the final CRLF: END_OF_DATA supplies it."""
        return self.header_template.format(index=index).encode("ascii") + self.body


# ---- the built-in load generator


@dataclass
class LoadResult:
    messages: int
    elapsed: float
    latencies: list[float]
    client_cpu: float


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError("the server closed the connection")
        # A '-' after the code continues the reply; anything else (space, or a bare code) ends it.
        if line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader: asyncio.StreamReader, code: int, after: bytes) -> None:
    got, line = await read_reply(reader)
    if got != code:
        raise BenchError(f"after {after.decode()!r} expected {code}, got {line.decode().strip()!r}")


async def command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, code: int
) -> None:
    writer.write(line + b"\r\n")
    await expect(reader, code, line)


async def open_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    await expect(reader, 220, b"connect")
    await command(reader, writer, b"EHLO " + CLIENT_NAME.encode(), 250)
    return reader, writer


async def close_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await command(reader, writer, b"QUIT", 221)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def transaction(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    content: bytes,
    latencies: list[float],
) -> None:
    await command(reader, writer, f"MAIL FROM:<{MAIL_FROM}>".encode(), 250)
    await command(reader, writer, f"RCPT TO:<{RCPT_TO}>".encode(), 250)
    await command(reader, writer, b"DATA", 354)
    writer.write(content)
    await writer.drain()
    # The latency that matters to a sender: from the end of its data to the 250 (after the commit).
    start = time.perf_counter()
    writer.write(END_OF_DATA)
    await expect(reader, 250, b"<CRLF>.<CRLF>")
    latencies.append(time.perf_counter() - start)


async def reused_worker(
    port: int, tickets: Iterator[int], factory: MessageFactory, latencies: list[float]
) -> None:
    reader, writer = await open_session(port)
    try:
        for index in tickets:
            await transaction(reader, writer, factory.message(index), latencies)
        await close_session(reader, writer)
    finally:
        writer.close()


async def new_worker(
    port: int, tickets: Iterator[int], factory: MessageFactory, latencies: list[float]
) -> None:
    for index in tickets:
        reader, writer = await open_session(port)
        try:
            await transaction(reader, writer, factory.message(index), latencies)
            await close_session(reader, writer)
        finally:
            writer.close()


async def drive(port: int, mode: str, messages: int, sessions: int, size: int) -> LoadResult:
    factory = MessageFactory(size)
    # One iterator shared by every worker: whoever is free takes the next message, as with a queue.
    tickets = iter(range(1, messages + 1))
    latencies: list[float] = []
    worker = reused_worker if mode == "reused" else new_worker
    cpu_start, start = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(sessions, messages)):
            group.create_task(worker(port, tickets, factory, latencies))
    elapsed, client_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if len(latencies) != messages:
        raise BenchError(f"sent {len(latencies)} of {messages} messages")
    return LoadResult(messages, elapsed, latencies, client_cpu)


def run_builtin(port: int, mode: str, options: Options) -> LoadResult:
    try:
        return asyncio.run(drive(port, mode, options.messages, options.sessions, options.size))
    except* (BenchError, OSError) as group:
        raise BenchError(str(group.exceptions[0])) from None


# ---- Postfix smtp-source, when installed


def smtp_source_command(port: int, mode: str, options: Options) -> list[str]:
    command = ["smtp-source", "-s", str(options.sessions), "-m", str(options.messages)]
    command += ["-l", str(options.size), "-f", MAIL_FROM, "-t", RCPT_TO, "-M", CLIENT_NAME]
    if mode == "reused":
        command.append("-d")  # smtp-source disconnects after each message unless told otherwise
    return [*command, f"{HOST}:{port}"]


def run_smtp_source(port: int, mode: str, options: Options) -> float:
    command = smtp_source_command(port, mode, options)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"smtp-source exited with {done.returncode}: {done.stderr.strip()[:300]}")
    return elapsed


# ---- server processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_command(
    server: str, port: int | str, db: Path | str, config: Path | str | None = None
) -> list[str]:
    if server == "reference":
        return [sys.executable, str(REFERENCE_SCRIPT), "--port", str(port)]
    command = [sys.executable, "-m", "mailsink", "serve", "--port", str(port), "--db", str(db)]
    return [*command, "--config", str(config)] if config is not None else command


def auto_release_config(directory: Path, upstream_port: int) -> Path:
    """A config releasing every bench message to the upstream at `upstream_port`, in plain
    SMTP (no TLS, no AUTH: the cost measured is mailsink's, not a handshake's). HTTP is off, as
    in the other mailsink runs (no second port to find)."""
    config = directory / "auto-release.toml"
    config.write_text(
        "[http]\nenabled = false\n"
        f'[relay]\nhost = "{HOST}"\nport = {upstream_port}\ntls = "none"\n'
        f'allowed_recipients = ["*@bench.example"]\nauto = true\n'
        f'auto_recipients = ["*@bench.example"]\nhelo = "{CLIENT_NAME}"\n'
    )
    return config


def released_count(db: Path) -> int | None:
    """Releases the store recorded as sent (None: no store, or one without the table)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM releases WHERE outcome = 'sent'").fetchone()[
                0
            ]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with {process.returncode}: {log_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"server did not listen on port {port} within {START_TIMEOUT:.0f}s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # SIGTERM lets mailsink finish messages in flight and close the store cleanly.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(command: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as stderr:
        # mailsink logs a line per message: to a file, so that a terminal's speed does not count.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        stop_server(process)


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def process_tree(pid: int) -> list[int]:
    """The process and its descendants: mailsink's writer runs in a child of a fork server."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, index = [pid], 0
    while index < len(tree):
        tree += parents.get(tree[index], [])
        index += 1
    return tree


def tree_peak_rss_kib(pid: int) -> int | None:
    """Peak RSS summed over the process tree: an upper bound of the peak they had together."""
    peaks = [proc_status_kib(member, "VmHWM") for member in process_tree(pid)]
    known = [peak for peak in peaks if peak is not None]
    return sum(known) if known else None


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(member) for member in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    """User + system time of every thread of the process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def stored_latest_id(db: Path) -> int | None:
    command = [sys.executable, "-m", "mailsink", "list", "--db", str(db), "--json", "--limit", "1"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"mailsink list failed: {done.stderr.strip()[:300]}")
    records = json.loads(done.stdout)
    return records[0]["id"] if records else None


# ---- one run


@dataclass
class Run:
    server: str
    mode: str
    round: int
    messages: int
    elapsed: float
    rate: float
    p50_ms: float
    p99_ms: float
    peak_rss_kib: int | None
    server_cpu: float  # fraction of one core over the timed load
    client_cpu: float | None
    latency_ms: list[float] = field(repr=False)
    stored_latest_id: int | None = None
    released: int | None = None  # auto-release: releases sent by the end of the timed load

    @property
    def stored_ok(self) -> bool | None:
        if self.server == "reference":
            return None
        return self.stored_latest_id is not None and self.stored_latest_id >= self.messages


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def measure(
    process: subprocess.Popen[bytes], port: int, mode: str, options: Options, use_source: bool
) -> tuple[float, float, LoadResult, float]:
    """Elapsed for the throughput figure, server CPU seconds, the built-in load, its CPU share."""
    cpu_before = tree_cpu_seconds(process.pid)
    if use_source:
        elapsed = run_smtp_source(port, mode, options)
        cpu_after = tree_cpu_seconds(process.pid)
        # smtp-source gives no latencies: a second, built-in pass does.
        load = run_builtin(port, mode, options)
        return elapsed, cpu_after - cpu_before, load, elapsed
    load = run_builtin(port, mode, options)
    return load.elapsed, tree_cpu_seconds(process.pid) - cpu_before, load, load.elapsed


def one_run(server: str, mode: str, number: int, options: Options, use_source: bool) -> Run:
    with (
        tempfile.TemporaryDirectory(prefix="mailsink-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        db = Path(tmp) / "bench.db"
        port = free_port()
        config = None
        if server == AUTO:
            upstream = free_port()
            command = server_command("reference", upstream, "")
            stack.enter_context(running_server(command, upstream, Path(tmp) / "upstream.log"))
            config = auto_release_config(Path(tmp), upstream)
        command = server_command(server, port, db, config)
        with running_server(command, port, Path(tmp) / "server.log") as p:
            elapsed, server_cpu, load, cpu_wall = measure(p, port, mode, options, use_source)
            peak = tree_peak_rss_kib(p.pid)  # before stopping: /proc is gone after
            released = released_count(db) if server == AUTO else None
        # After a clean stop, so the count does not race the last commits.
        latest = stored_latest_id(db) if server != "reference" else None
    latency_ms = [s * 1000 for s in load.latencies]
    return Run(
        server=server,
        mode=mode,
        round=number,
        messages=options.messages,
        elapsed=elapsed,
        rate=options.messages / elapsed,
        p50_ms=percentile(latency_ms, 0.50),
        p99_ms=percentile(latency_ms, 0.99),
        peak_rss_kib=peak,
        server_cpu=server_cpu / cpu_wall,
        client_cpu=None if use_source else load.client_cpu / load.elapsed,
        latency_ms=latency_ms,
        stored_latest_id=latest,
        released=released,
    )


# ---- machine and report


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "aiosmtpd": importlib.metadata.version("aiosmtpd"),
        "mailsink": importlib.metadata.version("mailsink"),
        "kernel": platform.release(),
    }


@dataclass
class Summary:
    server: str
    mode: str
    best_rate: float
    median_rate: float
    rates: list[float]
    p50_ms: float  # over all the rounds' latencies together
    p99_ms: float
    peak_rss_mib: float | None
    server_cpu: float
    client_cpu: float | None


def summarize(runs: list[Run], server: str, mode: str) -> Summary:
    mine = [r for r in runs if r.server == server and r.mode == mode]
    latencies = [ms for r in mine for ms in r.latency_ms]
    peaks = [r.peak_rss_kib for r in mine if r.peak_rss_kib is not None]
    client = [r.client_cpu for r in mine if r.client_cpu is not None]
    return Summary(
        server=server,
        mode=mode,
        best_rate=max(r.rate for r in mine),
        median_rate=statistics.median(r.rate for r in mine),
        rates=[r.rate for r in mine],
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        peak_rss_mib=max(peaks) / 1024 if peaks else None,
        server_cpu=statistics.median(r.server_cpu for r in mine),
        client_cpu=statistics.median(client) if client else None,
    )


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def mode_table(mode: str, summaries: dict[str, Summary]) -> list[str]:
    title = {
        "reused": "one connection per session, many transactions each",
        "new": "a new connection per message",
    }[mode]
    lines = [
        f"mode {mode} ({title})",
        f"  {'server':<10} {'msg/s best':>10} {'median':>8}  {'per run':<18}"
        f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS':>10} {'srv CPU':>8} {'cli CPU':>8}",
    ]
    for server in summaries:
        s = summaries[server]
        runs = ", ".join(f"{rate:.0f}" for rate in s.rates)
        rss = "-" if s.peak_rss_mib is None else f"{s.peak_rss_mib:.1f} MiB"
        lines.append(
            f"  {server:<10} {s.best_rate:>10.0f} {s.median_rate:>8.0f}  {runs:<18}"
            f"{s.p50_ms:>7.2f} {s.p99_ms:>7.2f} {rss:>10} "
            f"{percent(s.server_cpu):>8} {percent(s.client_cpu):>8}"
        )
    ratio = summaries["mailsink"].best_rate / summaries["reference"].best_rate
    median_ratio = summaries["mailsink"].median_rate / summaries["reference"].median_rate
    lines.append(f"  mailsink/reference: {ratio:.2f} (best), {median_ratio:.2f} (median)")
    if AUTO in summaries:
        auto = summaries[AUTO]
        lines.append(
            f"  {AUTO}/mailsink: {auto.best_rate / summaries['mailsink'].best_rate:.2f} (best), "
            f"{auto.median_rate / summaries['mailsink'].median_rate:.2f} (median); "
            f"p50 {auto.p50_ms - summaries['mailsink'].p50_ms:+.2f} ms"
        )
    return lines


def header_lines(options: Options, info: dict[str, Any], generator: str) -> list[str]:
    reference = shlex.join(server_command("reference", "P", ""))
    mailsink = shlex.join(server_command("mailsink", "P", "<fresh temp dir>/bench.db"))
    return [
        "mailsink ingest benchmark",
        f"command:   {shlex.join(sys.orig_argv)}",
        f"servers:   {reference}",
        f"           {mailsink}",
        *(
            [f"           {mailsink} --config <[relay] auto to a reference server on loopback>"]
            if options.auto_release
            else []
        ),
        f"machine:   nproc {info['nproc']}, {info['cpu_model']}, Linux {info['kernel']}",
        f"software:  Python {info['python']}, aiosmtpd {info['aiosmtpd']}, "
        f"mailsink {info['mailsink']}",
        f"load:      {options.messages} messages of {options.size} bytes per run, "
        f"{options.sessions} sessions, {options.rounds} round(s), modes {','.join(options.modes)}",
        f"generator: {generator}",
    ]


def stored_lines(runs: list[Run]) -> list[str]:
    lines = ["stored check (mailsink list --json --limit 1, after each mailsink run):"]
    for r in runs:
        if r.server != "reference":
            verdict = "OK" if r.stored_ok else "MISSING MESSAGES"
            released = "" if r.released is None else f", {r.released} released by the load's end"
            lines.append(
                f"  {r.server:<12} {r.mode:<6} round {r.round}: latest id {r.stored_latest_id} "
                f">= {r.messages} sent: {verdict}{released}"
            )
    return lines


def json_report(
    options: Options, info: dict[str, Any], generator: str, runs: list[Run], total: float
) -> dict[str, Any]:
    return {
        "command": sys.orig_argv,
        "machine": info,
        "generator": generator,
        "options": {k: v for k, v in asdict(options).items() if k != "json_path"},
        "summary": {
            mode: {server: asdict(summarize(runs, server, mode)) for server in options.servers}
            for mode in options.modes
        },
        "runs": [
            {k: v for k, v in asdict(r).items() if k != "latency_ms"} | {"stored_ok": r.stored_ok}
            for r in runs
        ],
        "total_seconds": total,
    }


# ---- main


def progress(run: Run, index: int, total: int) -> None:
    print(
        f"[{index}/{total}] {run.server:<12} {run.mode:<6} round {run.round}: "
        f"{run.rate:7.0f} msg/s in {run.elapsed:5.2f}s, p50 {run.p50_ms:.2f} ms, "
        f"p99 {run.p99_ms:.2f} ms",
        file=sys.stderr,
        flush=True,
    )


def run_all(options: Options, use_source: bool) -> list[Run]:
    plan = [
        (server, mode, number)
        for mode in options.modes
        for number in range(1, options.rounds + 1)
        for server in options.servers
    ]
    runs = []
    for index, (server, mode, number) in enumerate(plan, 1):
        run = one_run(server, mode, number, options, use_source)
        progress(run, index, len(plan))
        runs.append(run)
    return runs


WRITER_COST_BATCH = 50  # messages per transaction, about what the writer commits under load
WRITER_COST_ROUNDS = 3


def writer_cost(options: Options) -> float:
    """Microseconds of insert_message per message (best of WRITER_COST_ROUNDS), committing
    like the writer (WAL, synchronous=FULL) every WRITER_COST_BATCH messages: what the writer
    process spends per message, apart from the server. Compare trees with PYTHONPATH."""
    from mailsink.mail.envelope import Envelope
    from mailsink.store.operations import IncomingMessage, insert_message, insert_session
    from mailsink.store.schema import open_for_writing

    factory = MessageFactory(options.size)
    raws = [factory.message(index) + b"\r\n" for index in range(options.messages)]
    envelope = Envelope(MAIL_FROM, [RCPT_TO])
    best = float("inf")
    for _ in range(WRITER_COST_ROUNDS):
        with tempfile.TemporaryDirectory(prefix="mailsink-writer-cost-") as tmp:
            conn = open_for_writing(str(Path(tmp) / "cost.db"))
            insert_session(conn, 1, 0, HOST)
            start = time.perf_counter()
            for first in range(0, len(raws), WRITER_COST_BATCH):
                conn.execute("BEGIN IMMEDIATE")
                for raw in raws[first : first + WRITER_COST_BATCH]:
                    insert_message(conn, IncomingMessage(1, envelope, raw, 0))
                conn.execute("COMMIT")
            best = min(best, (time.perf_counter() - start) / len(raws) * 1e6)
            conn.close()
    return best


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.writer_cost:
        import mailsink

        cost = writer_cost(options)
        print(f"writer cost ({mailsink.__file__}): {cost:.0f} us per {options.size}-byte message")
        return 0
    started = time.perf_counter()
    use_source = shutil.which("smtp-source") is not None
    generator = (
        "Postfix smtp-source for throughput; built-in asyncio generator for latency"
        if use_source
        else "built-in asyncio generator (smtp-source not found on PATH)"
    )
    info = machine()
    try:
        runs = run_all(options, use_source)
    except BenchError as error:
        print(f"ingest benchmark failed: {error}", file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    out = sys.stderr if options.json_path == "-" else sys.stdout
    lines = header_lines(options, info, generator)
    for mode in options.modes:
        summaries = {server: summarize(runs, server, mode) for server in options.servers}
        lines += ["", *mode_table(mode, summaries)]
    lines += ["", *stored_lines(runs), "", f"total time: {total:.1f}s"]
    print("\n".join(lines), file=out)
    if options.json_path:
        document = json.dumps(json_report(options, info, generator, runs, total), indent=2)
        if options.json_path == "-":
            print(document)
        else:
            Path(options.json_path).write_text(document + "\n")
    failed = [r for r in runs if r.stored_ok is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
