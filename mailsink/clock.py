"""Time as mailsink stores and shows it: milliseconds since the epoch, ISO 8601 in UTC for
machines (JSON), local time for people (the CLI's tables, the TUI)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Now, in milliseconds since the epoch: every timestamp in the store."""
    return time.time_ns() // 1_000_000


def iso_ms(ms: int | None) -> str | None:
    """2026-12-01T14:15:16.123Z, or None."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def local_time(ms: int | None, *, with_ms: bool = False, missing: str = "") -> str:
    """2026-12-01 15:15:16 (.123 with `with_ms`) in the machine's time zone; `missing` for None."""
    if ms is None:
        return missing
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
    return f"{stamp}.{ms % 1000:03d}" if with_ms else stamp
