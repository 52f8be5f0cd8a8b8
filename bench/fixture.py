"""What the `mailsink` pytest fixture costs a test (setup + teardown), beside smtpdfix's `smtpd`.

    pip install smtpdfix               # the bench's only: not a dependency of mailsink
    python bench/fixture.py [--tests 50] [--rounds 3]

Writes a test file of N tests, each sending one message with smtplib and checking that the
server holds it, once with the `mailsink` fixture and once with smtpdfix's `smtpd`, and runs
each with pytest in a subprocess, alternating, `--rounds` times. A conftest in the generated
directory reads every test's setup and teardown durations from pytest's own reports
(`pytest_runtest_logreport`); the first test of each run is left out (it imports the servers'
code, and starts mailsink's spawn helper or makes smtpdfix's certificate). Prints p50 / p95 /
max of setup + teardown per test for each fixture, and the ratio of the p50s. Then the
in-process figures of the RunningSink underneath (start and stop apart, no pytest); where
those go, part by part: bench/fixture_parts.py.

Each pytest run loads only the plugin it measures (`-p no:smtpd`, `-p no:mailsink`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TARGET_MS = 50.0  # issue 16: setup + teardown of the function-scoped fixture, p50

TEST_FILE = {
    "mailsink": """
        import smtplib

        import pytest


        @pytest.mark.parametrize("number", range({tests}))
        def test_one_message(mailsink, number):
            with smtplib.SMTP(mailsink.host, mailsink.port, timeout=10) as client:
                client.sendmail("app@x.test", ["ann@x.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
            assert len(mailsink.messages) == 1
        """,
    "smtpd": """
        import smtplib

        import pytest


        @pytest.mark.parametrize("number", range({tests}))
        def test_one_message(smtpd, number):
            with smtplib.SMTP(smtpd.hostname, smtpd.port, timeout=10) as client:
                client.sendmail("app@x.test", ["ann@x.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
            assert len(smtpd.messages) == 1
        """,
}

# Every test's phase durations, one JSON line each, to the file named by the environment.
CONFTEST = """
import json
import os


def pytest_runtest_logreport(report):
    with open(os.environ["FIXTURE_BENCH_OUT"], "a") as out:
        out.write(json.dumps([report.nodeid, report.when, report.duration, report.outcome]) + "\\n")
"""

# The other plugin is turned off in each run: each fixture is measured on its own.
OTHER_PLUGIN = {"mailsink": "smtpd", "smtpd": "mailsink"}
LABEL = {"mailsink": "mailsink", "smtpd": "smtpd (smtpdfix)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=50, help="tests per pytest run")
    parser.add_argument("--rounds", type=int, default=3, help="pytest runs of each fixture")
    options = parser.parse_args()
    if options.tests < 2 or options.rounds < 1:
        raise SystemExit("fixture.py: --tests must be at least 2 and --rounds at least 1")
    if importlib.util.find_spec("smtpdfix") is None:
        raise SystemExit(
            "fixture.py: smtpdfix is not installed; `pip install smtpdfix` into this"
            " environment (the bench's alone, not a mailsink dependency) and run it again"
        )
    if importlib.util.find_spec("mailsink.pytest_plugin") is None:
        raise SystemExit("fixture.py: mailsink is not installed here (`pip install -e .`)")

    load_before = os.getloadavg()[0]
    samples: dict[str, list[float]] = {"mailsink": [], "smtpd": []}
    calls: dict[str, list[float]] = {"mailsink": [], "smtpd": []}
    with tempfile.TemporaryDirectory(prefix="fixture-bench-") as scratch:
        for kind in samples:
            folder = Path(scratch) / kind
            folder.mkdir()
            (folder / "pytest.ini").write_text("[pytest]\n")  # none of this project's settings
            (folder / "conftest.py").write_text(CONFTEST)
            code = textwrap.dedent(TEST_FILE[kind]).replace("{tests}", str(options.tests))
            (folder / "test_fixture_bench.py").write_text(code)
        for round_number in range(options.rounds):
            for kind in samples:
                phases = run_pytest(Path(scratch) / kind, kind, round_number)
                samples[kind] += [setup + teardown for setup, _, teardown in phases[1:]]
                calls[kind] += [call for _, call, _ in phases[1:]]
    load_after = os.getloadavg()[0]

    import mailsink

    print(f"mailsink {mailsink.__version__} from {Path(mailsink.__file__).parent}")
    print(
        f"pytest fixture setup + teardown per test: {options.rounds} run(s) of {options.tests}"
        f" tests per fixture, alternating, the first test of each run left out"
        f" (load average {load_before:.2f} -> {load_after:.2f}, {os.cpu_count()} cores)"
    )
    print(f"{'fixture':18} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'n':>5}   test body p50 ms")
    for kind, values in samples.items():
        print(
            f"{LABEL[kind]:18} {p50(values):8.1f} {p95(values):8.1f} {max(values):8.1f}"
            f" {len(values):5}   {p50(calls[kind]):.1f}"
        )
    ratio = p50(samples["mailsink"]) / p50(samples["smtpd"])
    print(f"ratio mailsink / smtpd (p50): {ratio:.1f}x")
    verdict = "met" if p50(samples["mailsink"]) <= TARGET_MS else "MISSED"
    print(f"target: mailsink p50 <= {TARGET_MS:.0f} ms: {verdict}")
    print(direct(options.tests))


def run_pytest(folder: Path, kind: str, round_number: int) -> list[tuple[float, float, float]]:
    """(setup, call, teardown) in ms of each test of one pytest run, in order."""
    out = folder / f"phases-{round_number}.jsonl"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-p", f"no:{OTHER_PLUGIN[kind]}", "test_fixture_bench.py",
    ]  # fmt: skip
    finished = subprocess.run(
        command,
        cwd=folder,
        env={**os.environ, "FIXTURE_BENCH_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if finished.returncode != 0:
        tail = "\n".join((finished.stdout + finished.stderr).splitlines()[-20:])
        raise SystemExit(f"fixture.py: the {kind} run failed (exit {finished.returncode}):\n{tail}")
    phases: dict[str, dict[str, float]] = {}
    for line in out.read_text().splitlines():
        nodeid, when, duration, outcome = json.loads(line)
        if outcome != "passed":
            raise SystemExit(f"fixture.py: {nodeid} {when}: {outcome}")
        phases.setdefault(nodeid, {})[when] = duration * 1000
    return [(p["setup"], p["call"], p["teardown"]) for p in phases.values()]


def direct(cycles: int) -> str:
    """The RunningSink underneath the fixture, in this process: start and stop apart."""
    from mailsink.testing import RunningSink

    starts, stops = [], []
    with tempfile.TemporaryDirectory(prefix="fixture-bench-") as scratch:
        for number in range(cycles + 1):
            began = time.perf_counter()
            running = RunningSink(Path(scratch) / str(number) / "mailsink.db").start()
            started = time.perf_counter()
            with smtplib.SMTP(running.host, running.port, timeout=10) as client:
                client.sendmail("app@x.test", ["ann@x.test"], b"Subject: hi\r\n\r\nbody\r\n")
            stopping = time.perf_counter()
            running.stop()
            stopped = time.perf_counter()
            if number:  # the first starts the spawn helper
                starts.append((started - began) * 1000)
                stops.append((stopped - stopping) * 1000)
    return (
        f"RunningSink in-process, {cycles} cycles with one message each (ms):"
        f" start p50 {p50(starts):.1f} p95 {p95(starts):.1f},"
        f" stop p50 {p50(stops):.1f} p95 {p95(stops):.1f}"
    )


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


if __name__ == "__main__":
    main()
