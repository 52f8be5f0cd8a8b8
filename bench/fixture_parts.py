"""Where a RunningSink's start and stop go: the parts of what the `mailsink` fixture costs.

    python bench/fixture_parts.py [--cycles 30]

Starts a RunningSink (what the `mailsink` pytest fixture starts), sends it one message with
smtplib, stops it, `--cycles` times after a first one (which starts the spawn helper and
imports the HTTP modules: left out), in this process, without pytest. Each part is timed by
wrapping the function that does it; a part's time is its own, its callers' include it; the
"rest" rows are the whole less the parts listed under it. Prints the p50 (and p95) per cycle of
each part, with the load average before and after.

A part that the code measured does not have (an older mailsink: PYTHONPATH pointing at a copy
of it) shows "-". Run it against two versions in turn, alternating, to compare them.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import inspect
import os
import smtplib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (label, indent, module, attribute path): each timed by wrapping it. Nesting is by indent.
PARTS: list[tuple[str, int, str, str]] = [
    ("Store() on a worker thread: the lock, preparing, the writer", 1,
     "mailsink.store.facade", "Store.__init__"),
    ("preparing (facade._prepare): open, WAL mode, the schema", 2,
     "mailsink.store.facade", "_prepare"),
    ("the schema's migration (schema.migrate)", 3, "mailsink.store.schema", "migrate"),
    ("a new store written from bytes (schema._write_new_store)", 3,
     "mailsink.store.schema", "_write_new_store"),
    ("the writer process ready (WriterProcess._start)", 2,
     "mailsink.store.writer", "WriterProcess._start"),
    ("of which the spawn helper's fork of it (Spawner.spawn)", 3,
     "mailsink.store.spawn", "Spawner.spawn"),
    ("HttpService() (the aiohttp app and its routes)", 1, "mailsink.sink", "_http_service"),
    ("SMTP listeners (SmtpServer.start)", 1, "mailsink.smtp.server", "SmtpServer.start"),
    ("HTTP site (HttpService.start)", 1, "mailsink.http.web_service", "HttpService.start"),
]  # fmt: skip
STOP_PARTS: list[tuple[str, int, str, str]] = [
    ("SMTP listeners, with the grace (SmtpServer.stop)", 1,
     "mailsink.smtp.server", "SmtpServer.stop"),
    ("HTTP runner (HttpService.stop)", 1, "mailsink.http.web_service", "HttpService.stop"),
    ("the sink's reader closed (Sink._close_reader)", 1, "mailsink.sink", "Sink._close_reader"),
    ("the writer's end (Store.close): last commit, extractor, checkpoint", 1,
     "mailsink.store.facade", "Store.close"),
]  # fmt: skip

spent: collections.defaultdict[str, float] = collections.defaultdict(float)


def wrap(module_name: str, attribute: str) -> bool:
    """Time `module.attribute` (a function, or Class.method) into `spent`; False if absent."""
    owner: Any = importlib.import_module(module_name)
    *outer, name = attribute.split(".")
    for part in outer:
        owner = getattr(owner, part)
    original = inspect.getattr_static(owner, name, None)
    if original is None:
        return False
    key = f"{module_name}:{attribute}"
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(original):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - began

        wrapper = timed_async
    else:

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - began

        wrapper = timed
    setattr(owner, name, functools.wraps(original)(wrapper))
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30, help="cycles measured (after a first)")
    options = parser.parse_args()
    if options.cycles < 2:
        raise SystemExit("fixture_parts.py: --cycles must be at least 2")
    try:
        from mailsink.testing import RunningSink
    except ImportError as error:
        raise SystemExit(f"fixture_parts.py: mailsink is not importable here: {error}") from None
    import mailsink

    present = {
        f"{module}:{attribute}": wrap(module, attribute)
        for _, _, module, attribute in PARTS + STOP_PARTS
    }
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="fixture-parts-") as scratch:
        for number in range(options.cycles + 1):
            spent.clear()
            began = time.perf_counter()
            running = RunningSink(Path(scratch) / str(number) / "mailsink.db").start()
            started = time.perf_counter()
            start_parts = dict(spent)
            with smtplib.SMTP(running.host, running.port, timeout=10) as client:
                client.sendmail("app@x.test", ["ann@x.test"], b"Subject: hi\r\n\r\nbody\r\n")
            spent.clear()
            stopping = time.perf_counter()
            running.stop()
            stopped = time.perf_counter()
            if not number:
                continue  # the spawn helper, the HTTP modules' import
            samples["start"].append(started - began)
            samples["stop"].append(stopped - stopping)
            for key in present:
                samples[key].append(start_parts.get(key, 0.0) + spent.get(key, 0.0))
    load_after = os.getloadavg()

    print(f"mailsink {mailsink.__version__} from {Path(mailsink.__file__).parent}")
    print(
        f"RunningSink start, one message, stop: {options.cycles} cycles after a first, in"
        f" this process (Python {sys.version.split()[0]}, {os.cpu_count()} cores;"
        f" load average {load_before[0]:.2f} -> {load_after[0]:.2f})"
    )
    print(f"{'part':72} {'p50 ms':>7} {'p95 ms':>7}")
    for whole, parts in (("start", PARTS), ("stop", STOP_PARTS)):
        method = "RunningSink.start" if whole == "start" else "RunningSink.stop"
        print(row(f"{whole.upper()} ({method})", 0, samples[whole]))
        direct = []
        for label, indent, module, attribute in parts:
            key = f"{module}:{attribute}"
            print(row(label, indent, samples[key] if present[key] else None))
            if indent == 1 and present[key]:
                direct.append(samples[key])
        rest = [total - sum(values) for total, *values in zip(samples[whole], *direct, strict=True)]
        what = "the loop, its thread, the sink's other parts" if whole == "start" else (
            "the loop and its thread, the sink's tasks"
        )  # fmt: skip
        print(row(f"rest: {what}", 1, rest))


def row(label: str, indent: int, values: list[float] | None) -> str:
    name = ("  " * indent + ("... " if indent > 1 else "") + label)[:72]
    if values is None:
        return f"{name:72} {'-':>7} {'-':>7}"
    p50 = statistics.median(values) * 1000
    p95 = statistics.quantiles(values, n=20)[-1] * 1000
    return f"{name:72} {p50:7.2f} {p95:7.2f}"


if __name__ == "__main__":
    main()
