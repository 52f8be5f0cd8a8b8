"""One home for each shared helper: times come from mailsink/clock.py and sizes and durations
from mailsink/units.py, so that a second copy (the CLI's, the TUI's) cannot drift from the first
(the CLI once printed "-" and the TUI "" for a missing time, each from a function of its own)."""

from __future__ import annotations

import ast
from pathlib import Path

import mailsink

PACKAGE = Path(mailsink.__file__).parent

HOMES = {
    "now_ms": "clock.py",
    "iso_ms": "clock.py",
    "local_time": "clock.py",
    "parse_size": "units.py",
    "parse_duration": "units.py",
    "format_bytes": "units.py",
    "short_size": "units.py",
}


def test_each_shared_helper_is_defined_once_in_its_home():
    places: dict[str, list[str]] = {name: [] for name in HOMES}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in HOMES:
                places[node.name].append(path.relative_to(PACKAGE).as_posix())
    strays = {name: found for name, found in places.items() if found != [HOMES[name]]}
    assert strays == {}, f"defined elsewhere too (or not in its home): {strays}"
