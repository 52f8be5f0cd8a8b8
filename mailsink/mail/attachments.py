"""Saving a message part to disk under a name that cannot leave the chosen directory."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from mailsink.text import INVISIBLE

_UNSAFE = re.compile(f'[{INVISIBLE}<>:"|?*]')
_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)
# In UTF-8 bytes: file systems limit names to 255 bytes, and " (999)" may be added.
MAX_NAME = 200


def safe_filename(name: str | None, fallback: str) -> str:
    """A plain file name: no directories, no controls, no leading dots, not empty."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # a path's last component only
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if _RESERVED.match(name):
        name = f"_{name}"
    if len(name.encode()) > MAX_NAME:
        stem, dot, suffix = name.rpartition(".")
        if not (dot and stem and len(suffix.encode()) < 16):
            stem, dot, suffix = name, "", ""
        room = MAX_NAME - len(f"{dot}{suffix}".encode())
        stem = stem.encode()[:room].decode("utf-8", "ignore")  # whole characters only
        name = f"{stem}{dot}{suffix}"
    return name or fallback


FREE_NAME_TRIES = 1000  # MAX_NAME leaves room for " (999)"


def free_names(filename: str) -> Iterator[str]:
    """The names to try, in order, for a file that must not replace another: "report.pdf",
    then "report (1).pdf", "report (2).pdf", ..."""
    stem, dot, suffix = filename.rpartition(".")
    if not stem:
        stem, dot, suffix = filename, "", ""
    yield filename
    for attempt in range(1, FREE_NAME_TRIES):
        yield f"{stem} ({attempt}){dot}{suffix}"


def save_part(payload: bytes, name: str | None, directory: Path, fallback: str) -> Path:
    """Write `payload` into `directory` (created if needed) without replacing any file;
    "report.pdf" becomes "report (1).pdf" when taken. Returns the path written."""
    directory.mkdir(parents=True, exist_ok=True)
    filename = safe_filename(name, fallback)
    for candidate in free_names(filename):
        path = directory / candidate
        try:
            with open(path, "xb") as file:  # x: never follows or replaces an existing entry
                file.write(payload)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free name for {filename} in {directory}")
