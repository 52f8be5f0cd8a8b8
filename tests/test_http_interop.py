"""The unmodified npm clients of Mailpit (mailpit-api 2.x) and MailHog (mailhog 4.x) against a
live mailsink: tests/interop/interop.mjs sends mail over SMTP and checks what the clients read.

Skipped, with the reason printed, where node or npm is missing or `npm ci` cannot install the
clients; with MAILSINK_INTEROP=required (set by .ci/run where node and npm are present) a skip is
a failure instead, so that CI cannot pass without running it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailsink.testing import RunningSink

INTEROP = Path(__file__).resolve().parent / "interop"
REQUIRED = os.environ.get("MAILSINK_INTEROP") == "required"


def _skip(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"interop: {reason} (MAILSINK_INTEROP=required)")
    print(f"interop: skipped ({reason})")
    pytest.skip(f"interop: {reason}")


def _installed() -> None:
    """`npm ci` from the committed lock file, unless node_modules is already its install."""
    # Two xdist workers (this file and test_recipes.py) may both get here: `npm ci` deletes
    # node_modules first, so one at a time, and the second finds the first's install.
    with open(INTEROP / ".npm-ci.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        _install()


def _install() -> None:
    lock = INTEROP / "package-lock.json"
    installed = INTEROP / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    try:
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        _skip("npm ci took over 120 s (no registry?)")
        return
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        _skip(f"npm ci failed: {last}")


def test_mailpit_and_mailhog_npm_clients_run_unchanged(tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        _skip("no node")
    _installed()
    with RunningSink(tmp_path / "interop.db") as sink:
        result = subprocess.run(
            ["node", "interop.mjs", sink.url, sink.host, str(sink.port)],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert "all checks passed" in result.stdout
