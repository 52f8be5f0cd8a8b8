"""Sizes and durations: parsed from what people write in config files and rules, and written
back the way people read them."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: int | str) -> int:
    """'25MiB' -> 26214400; plain integers are bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 25MiB or 1000000")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(
            f"{value!r} is not a size; use a number with B, KB, KiB, MB, MiB, GB or GiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: int | float | str) -> float:
    """'5m' -> 300.0; '250ms' -> 0.25; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use a number with ms, s, m or h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def short_size(size: int) -> str:
    for unit, scale in (("B", 1), ("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        value = size / scale
        if value < 9.95 and unit != "B":
            return f"{value:.1f}{unit}"
        if value < 1023.5 or unit == "G":
            return f"{value:.0f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover
