"""The TUI in a browser tab on a 100 000-message store: first paint, key-to-paint, memory per tab.

    python bench/web_ui.py [--messages N] [--store PATH] [--runs R] [--presses P] [--tabs T]
                           [--json [PATH]]

Fills a store as bench/scale.py does (or takes `--store`, a store scale.py's fill made: kept as it
is, so a second run skips the four-minute fill), serves it with `mailsink serve` (max_messages
above N, so nothing is pruned) and measures:

1. page open to the first painted list: headless Chromium (tests/cdp_browser.py) loads `/`; the
   page's own clock (ms since navigation start) of the first WebSocket frame after which the
   terminal, replayed into pyte, shows a full screen of list rows. And over the raw WebSocket
   protocol (aiohttp): connect to the first screen with rows. Reference in the same run: a bare
   textual-serve of the same command (`mailsink tui --attach --db STORE`) over its own protocol,
   and the same TUI in-process under Textual's headless driver (no process start: a floor).
2. key-to-paint over the WebSocket: ["stdin","j"] (cursor down) to the next terminal frame,
   `--presses` times, each once the last one's output has gone quiet; over the raw protocol
   (mailsink and the textual-serve reference) and in the browser (the page's clock: its sent
   stdin frame to the next frame it received).
3. memory per open tab: PSS and RSS (/proc/PID/smaps_rollup) of the UI process once the list is
   painted; then `--tabs` browser tabs open at once, each UI process and the server's own RSS.

A report, not a test: the exit status is 1 only when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import queue
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import ingest  # bench/ingest.py: percentile, machine info, /proc helpers
import scale  # bench/scale.py: the 100 000-message store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cdp_browser import Browser, Frame, Page, TerminalScreen, find_browser

from mailsink.store import Reader

SIZE = (142, 37)  # what textual.js fits in Chromium's 1280x800 window at 16 px; raw runs match
ROWS_PAINTED = 10  # list rows with their columns, none a placeholder: "a painted list"
PAINT_TIMEOUT_S = 60.0
QUIET_S = 0.05  # after a key's first frame: no frame for this long ends its output
POLL_S = 0.01
# In the browser the frames' times are the page's own, so reading them less often loses no
# precision, and leaves the renderer's main thread to the page.
BROWSER_POLL_S = 0.1
KEY_SETTLE_S = 0.15
ROW = re.compile(r"^\S.*\S {2,}\S.*\S {2,}\S")  # a time or date, then two more columns
PLACEHOLDER = "… message "


class BenchError(Exception):
    """The benchmark cannot go on; printed as one line."""


@dataclass(frozen=True)
class Options:
    messages: int
    store: str | None
    runs: int
    presses: int
    tabs: int
    json_path: str | None


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="The TUI in a browser tab, at scale.")
    parser.add_argument("--messages", type=ingest.positive, default=100_000, help="N")
    parser.add_argument("--store", help="a store bench/scale.py filled (kept; not filled again)")
    parser.add_argument("--runs", type=ingest.positive, default=5, help="page opens timed")
    parser.add_argument("--presses", type=ingest.positive, default=100, help="keys timed")
    parser.add_argument("--tabs", type=ingest.positive, default=4, help="tabs open at once")
    ingest.add_json_option(parser)
    args = parser.parse_args(argv)
    return Options(args.messages, args.store, args.runs, args.presses, args.tabs, args.json_path)


# ---- what the screen shows


def list_painted(screen: TerminalScreen) -> bool:
    """The message list's header, then ROWS_PAINTED rows of columns, none a placeholder."""
    lines = screen.lines
    for top, line in enumerate(lines):
        if "From" in line and "Subject" in line:
            rows = lines[top + 1 : top + 1 + ROWS_PAINTED]
            return all(ROW.search(row) and PLACEHOLDER not in row for row in rows)
    return False


# ---- processes


class Lines:
    """A process's stderr on a thread, so a wait for a line has a deadline."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in iter(stream.readline, b""):
                self._lines.put(line.decode(errors="replace"))

        threading.Thread(target=read, daemon=True).start()

    def until(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found
        raise BenchError(f"no {pattern!r} in: {''.join(self.seen)[-2000:]}")


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    http_port: int
    ws_path: str  # the UI's WebSocket
    lines: Lines

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ui_processes(self) -> list[int]:
        """The serving process's children running the TUI."""
        found = []
        for pid in ingest.process_tree(self.process.pid)[1:]:
            with contextlib.suppress(OSError):
                if b"tui" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    found.append(pid)
        return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listening on port {port}")


@contextlib.contextmanager
def mailsink_serve(db: Path, config: Path) -> Iterator[Served]:
    command = [sys.executable, "-m", "mailsink", "serve", "--port", "0", "--http-port", "0"]
    command += ["--db", str(db), "--config", str(config)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        lines = Lines(process.stderr)
        port = int(lines.until(r"HTTP API on http://127\.0\.0\.1:(\d+)").group(1))
        yield Served(process, port, "/ui/ws", lines)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def textual_serve(db: Path, config: Path) -> Iterator[Served]:
    """The reference: textual-serve's own server running the same command."""
    port = free_port()
    tui = shlex.join([sys.executable, "-m", "mailsink", "tui", "--attach", "--db", str(db)])
    tui += f" --config {shlex.quote(str(config))}"
    code = (
        "from textual_serve.server import Server; "
        f"Server({tui!r}, host='127.0.0.1', port={port}).serve()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        lines = Lines(process.stderr)
        wait_for_port(port)
        yield Served(process, port, "/ws", lines)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory(pid: int) -> dict[str, int]:
    """Pss and Rss in bytes (smaps_rollup)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                values[key.lower()] = int(rest.split()[0]) * 1024
    return values


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(POLL_S)


async def ended(served: Served, earlier: set[int]) -> None:
    """Until no UI process but those in `earlier` runs (a closed tab's has ended)."""
    await until(lambda: not set(served.ui_processes()) - earlier, "the UI processes to end")


# ---- the raw WebSocket protocol


@dataclass
class RawTab:
    socket: aiohttp.ClientWebSocketResponse
    screen: TerminalScreen
    connect_ms: float
    first_output_ms: float
    painted_ms: float


async def raw_open(http: aiohttp.ClientSession, served: Served) -> RawTab:
    url = f"ws://127.0.0.1:{served.http_port}{served.ws_path}?width={SIZE[0]}&height={SIZE[1]}"
    screen = TerminalScreen(*SIZE)
    start = time.perf_counter()
    ws = await http.ws_connect(url, headers={"Origin": served.origin}, max_msg_size=0)
    connected = time.perf_counter()
    first = None
    deadline = start + PAINT_TIMEOUT_S
    while not list_painted(screen):
        left = deadline - time.perf_counter()
        if left <= 0:
            raise BenchError(f"{url}: no painted list within {PAINT_TIMEOUT_S:.0f} s")
        message = await ws.receive(timeout=left)
        if message.type == aiohttp.WSMsgType.BINARY:
            first = first or time.perf_counter()
            screen.feed([Frame(0.0, "in", message.data)])
        elif message.type != aiohttp.WSMsgType.TEXT:
            raise BenchError(f"{url}: the socket ended ({message.type.name}) before the list")
    painted = time.perf_counter()
    assert first is not None
    return RawTab(
        ws, screen, (connected - start) * 1000, (first - start) * 1000, (painted - start) * 1000
    )


async def quiet(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Until the app has sent nothing for QUIET_S."""
    while True:
        try:
            message = await ws.receive(timeout=QUIET_S)
        except TimeoutError:
            return
        if message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            raise BenchError(f"the socket ended ({message.type.name})")


async def raw_keys(tab: RawTab, presses: int) -> list[float]:
    await quiet(tab.socket)
    latencies = []
    for _ in range(presses):
        start = time.perf_counter()
        await tab.socket.send_str(json.dumps(["stdin", "j"]))
        while True:
            message = await tab.socket.receive(timeout=10)
            if message.type == aiohttp.WSMsgType.BINARY:
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BenchError(f"the socket ended ({message.type.name}) during the keys")
        latencies.append((time.perf_counter() - start) * 1000)
        await quiet(tab.socket)
    return latencies


@dataclass
class RawResult:
    server: str
    connect_ms: list[float]
    first_output_ms: list[float]
    painted_ms: list[float]
    keys_ms: list[float]
    child_memory: dict[str, int]


async def raw_run(
    http: aiohttp.ClientSession, served: Served, result: RawResult, last: bool, presses: int
) -> None:
    """One page open over the raw protocol (and, the last time, the keys and the memory)."""
    before = set(served.ui_processes())
    tab = await raw_open(http, served)
    result.connect_ms.append(tab.connect_ms)
    result.first_output_ms.append(tab.first_output_ms)
    result.painted_ms.append(tab.painted_ms)
    if last:
        children = set(served.ui_processes()) - before
        if len(children) == 1:
            result.child_memory = memory(children.pop())
        result.keys_ms = await raw_keys(tab, presses)
    await tab.socket.close()
    # The next run's process starts on a quiet machine: this one has ended.
    await ended(served, before)


async def raw_phases(
    ours: Served, reference: Served, options: Options
) -> tuple[RawResult, RawResult]:
    """mailsink's opens and the reference's taken in turn, so that a burst of load elsewhere
    on the machine falls on both sides rather than on one."""
    mine, theirs = (
        RawResult("mailsink", [], [], [], [], {}),
        RawResult("textual-serve", [], [], [], [], {}),
    )
    async with aiohttp.ClientSession() as http:
        for run in range(options.runs):
            last = run == options.runs - 1
            first, second = ((ours, mine), (reference, theirs))[:: 1 if run % 2 == 0 else -1]
            for served, result in (first, second):
                await raw_run(http, served, result, last, options.presses)
    return mine, theirs


# ---- the browser


@dataclass
class BrowserResult:
    socket_open_ms: list[float] = field(default_factory=list)  # page clock: the WS created
    first_output_ms: list[float] = field(default_factory=list)
    painted_ms: list[float] = field(default_factory=list)
    wall_painted_ms: list[float] = field(default_factory=list)  # Page.navigate to seen here
    keys_ms: list[float] = field(default_factory=list)
    child_memory: dict[str, int] = field(default_factory=dict)
    tabs: list[dict[str, int]] = field(default_factory=list)
    server_rss_before: int = 0
    server_rss_tabs: int = 0
    renderer_heap_bytes: int = 0


async def browser_open(page: Page, served: Served, result: BrowserResult) -> TerminalScreen:
    start = time.perf_counter()
    await page.navigate(f"{served.origin}/")
    screen = TerminalScreen(*SIZE)
    frames: list[Frame] = []
    deadline = start + PAINT_TIMEOUT_S
    while not list_painted(screen):
        if time.perf_counter() > deadline:
            raise BenchError(
                f"the browser showed no list within {PAINT_TIMEOUT_S:.0f} s:\n{screen.text}"
            )
        fresh = await page.frames(len(frames))
        frames += fresh
        screen.feed(fresh)
        await asyncio.sleep(BROWSER_POLL_S)
    wall = (time.perf_counter() - start) * 1000
    # Which frame did it, on the page's clock.
    replay = TerminalScreen(*SIZE)
    painted = None
    for frame in frames:
        replay.feed([frame])
        if frame.terminal_output and list_painted(replay):
            painted = frame
            break
    assert painted is not None
    result.socket_open_ms.append(next(f.at_ms for f in frames if f.direction == "open"))
    result.first_output_ms.append(next(f.at_ms for f in frames if f.terminal_output))
    result.painted_ms.append(painted.at_ms)
    result.wall_painted_ms.append(wall)
    return screen


async def browser_keys(page: Page, presses: int) -> list[float]:
    """The page's clock: its ["stdin","j"] frame sent to the next frame it received."""
    await page.focus_terminal()
    latencies = []
    seen = len(await page.frames())
    for _ in range(presses):
        await page.press("j")
        # Read once the answer is surely in: a Runtime.evaluate every few ms runs on the
        # renderer's main thread and would delay the very message events being timed.
        await asyncio.sleep(KEY_SETTLE_S)
        frames: list[Frame] = []
        deadline = time.monotonic() + 10
        while True:
            frames += await page.frames(seen + len(frames))
            sent = next(
                (
                    i
                    for i, f in enumerate(frames)
                    if f.direction == "out" and f.data == '["stdin","j"]'
                ),
                None,
            )
            drawn = sent is not None and next((f for f in frames[sent:] if f.terminal_output), None)
            if drawn:
                break
            if time.monotonic() > deadline:
                raise BenchError("a key in the browser: no frame within 10 s")
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(QUIET_S)
        frames += await page.frames(seen + len(frames))
        seen += len(frames)
        assert sent is not None and drawn
        latencies.append(drawn.at_ms - frames[sent].at_ms)
    return latencies


async def browser_phase(browser: Browser, served: Served, options: Options) -> BrowserResult:
    result = BrowserResult()
    for run in range(options.runs):
        before = set(served.ui_processes())
        page = await browser.new_page()
        await browser_open(page, served, result)
        if run == options.runs - 1:
            children = set(served.ui_processes()) - before
            if len(children) == 1:
                result.child_memory = memory(children.pop())
            result.keys_ms = await browser_keys(page, options.presses)
            heap = await page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
            result.renderer_heap_bytes = int(heap or 0)
        await page.close()
        await ended(served, before)
    # Several tabs at once.
    result.server_rss_before = memory(served.process.pid).get("rss", 0)
    before = set(served.ui_processes())
    pages = []
    for _ in range(options.tabs):
        page = await browser.new_page()
        pages.append(page)
        await browser_open(page, served, BrowserResult())
    await asyncio.sleep(0.5)  # the last tab's detail pane and row reads settle
    result.tabs = [memory(pid) for pid in sorted(set(served.ui_processes()) - before)]
    result.server_rss_tabs = memory(served.process.pid).get("rss", 0)
    for page in pages:
        await page.close()
    await ended(served, before)
    return result


# ---- the in-process floor


def headless_child(db: str) -> tuple[float, float]:
    """scale.py's first paint: create_app to every row on screen loaded, headless, in-process."""
    from mailsink.run import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(scale.cold_first_paint(Path(db)))  # warm: nothing is evicted here


def headless_first_paint(db: Path, runs: int) -> list[float]:
    context = multiprocessing.get_context("spawn")
    times = []
    for _ in range(runs):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            times.append(pool.submit(headless_child, str(db)).result()[1] * 1000)
    return times


# ---- report


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f})"


def keys(values: list[float]) -> str:
    return (
        f"p50 {ingest.percentile(values, 0.5):.1f} ms, p95 {ingest.percentile(values, 0.95):.1f}"
        f" ms, max {max(values):.1f} ms ({len(values)} presses)"
    )


def mib(value: float) -> str:
    return f"{value / scale.MIB:.1f} MiB"


def report_lines(
    options: Options,
    messages: int,
    browser: BrowserResult | None,
    ours: RawResult,
    reference: RawResult,
    headless: list[float],
) -> list[str]:
    info = ingest.machine()
    lines = [
        "mailsink web UI benchmark",
        f"command:  {shlex.join(sys.orig_argv)}",
        f"machine:  nproc {info['nproc']}, {info['cpu_model']}, Linux {info['kernel']}",
        f"software: Python {info['python']}, mailsink {info['mailsink']}",
        f"store: {messages} messages; terminal {SIZE[0]}x{SIZE[1]}; {options.runs} runs each",
        "",
        "1. page open to the first painted list (ms):",
    ]
    if browser is not None:
        lines += [
            f"  Chromium, page clock: WebSocket opened {spread(browser.socket_open_ms)}, first "
            f"output {spread(browser.first_output_ms)}, list painted {spread(browser.painted_ms)}",
            f"  Chromium, seen by the driver (navigate to the screen read): "
            f"{spread(browser.wall_painted_ms)}",
        ]
    else:
        lines.append("  Chromium: not run (no browser found)")
    ratio = statistics.median(ours.painted_ms) / statistics.median(reference.painted_ms)
    lines += [
        f"  raw WebSocket, mailsink /ui/ws: connect {spread(ours.connect_ms)}, first output "
        f"{spread(ours.first_output_ms)}, list painted {spread(ours.painted_ms)}",
        f"  raw WebSocket, textual-serve /ws (reference): first output "
        f"{spread(reference.first_output_ms)}, list painted {spread(reference.painted_ms)}",
        f"  mailsink / textual-serve, list painted (medians): {ratio:.2f}",
        f"  in-process headless TUI (no process start; floor): {spread(headless)}",
        "",
        "2. key-to-paint, 'j' to the next terminal frame:",
        f"  raw WebSocket, mailsink:      {keys(ours.keys_ms)}",
        f"  raw WebSocket, textual-serve: {keys(reference.keys_ms)}",
    ]
    if browser is not None:
        lines.append(f"  Chromium (page clock):        {keys(browser.keys_ms)}")
    lines += ["", "3. memory of a tab's UI process once its list is painted:"]

    def shown(values: dict[str, int]) -> str:
        return f"PSS {mib(values.get('pss', 0))}, RSS {mib(values.get('rss', 0))}"

    lines.append(f"  mailsink (raw WebSocket tab): {shown(ours.child_memory)}")
    lines.append(f"  textual-serve reference:      {shown(reference.child_memory)}")
    if browser is not None:
        lines.append(f"  mailsink (Chromium tab):      {shown(browser.child_memory)}")
        total = sum(tab.get("pss", 0) for tab in browser.tabs)
        lines.append(
            f"  {len(browser.tabs)} Chromium tabs at once: PSS "
            + ", ".join(mib(tab.get("pss", 0)) for tab in browser.tabs)
            + f" (total {mib(total)}); server RSS {mib(browser.server_rss_before)} -> "
            f"{mib(browser.server_rss_tabs)}"
        )
        lines.append(f"  the page's JS heap in Chromium: {mib(browser.renderer_heap_bytes)}")
    return lines


def stored_messages(db: Path) -> int:
    with Reader(str(db)) as reader:
        return int(reader.conn.execute("SELECT count(*) FROM messages").fetchone()[0])


async def measure(
    db: Path, config: Path, options: Options
) -> tuple[BrowserResult | None, RawResult, RawResult]:
    browser_result = None
    with mailsink_serve(db, config) as served:
        executable = find_browser()
        if executable is not None:
            scale.progress("Chromium...")
            browser = await Browser.launch(executable)
            try:
                browser_result = await browser_phase(browser, served, options)
            finally:
                await browser.close()
        # The reference attaches to the same serving process (its server file), as ours does.
        with textual_serve(db, config) as reference_server:
            scale.progress("raw WebSocket, mailsink and textual-serve in turn...")
            ours, reference = await raw_phases(served, reference_server, options)
    return browser_result, ours, reference


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="mailsink-web-") as tmp:
            if options.store:
                db = Path(options.store)
                if not db.exists():
                    raise BenchError(f"{db}: no such store")
            else:
                db = Path(tmp) / "web.db"
                scale.progress(f"filling {db} with {options.messages} messages...")
                scale.fill(db, scale.MailFactory(1), options.messages)
            messages = stored_messages(db)
            config = Path(tmp) / "serve.toml"
            config.write_text(f"[storage]\nmax_messages = {max(messages, 1) * 2}\n")
            browser, ours, reference = asyncio.run(measure(db, config, options))
            scale.progress("in-process headless reference...")
            headless = headless_first_paint(db, options.runs)
    except BenchError as error:
        print(f"web_ui: {error}", file=sys.stderr)
        return 1
    lines = report_lines(options, messages, browser, ours, reference, headless)
    out = sys.stderr if options.json_path == "-" else sys.stdout
    print("\n".join(lines), file=out)
    if options.json_path:
        document = json.dumps(
            {
                "command": sys.orig_argv,
                "options": asdict(options),
                "messages": messages,
                "browser": asdict(browser) if browser else None,
                "mailsink": asdict(ours),
                "textual_serve": asdict(reference),
                "headless_ms": headless,
            },
            indent=2,
        )
        if options.json_path == "-":
            print(document)
        else:
            Path(options.json_path).write_text(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
