"""What the UI remembers between runs (the theme chosen with ctrl+p): `state.json` in the user
config directory (`~/.config/mailsink` on Linux), or in MAILSINK_STATE_DIR when that is set."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import platformdirs

log = logging.getLogger(__name__)

FILE_NAME = "state.json"
LIMIT = 64 * 1024  # a state file is a few dozen bytes; anything bigger is not ours


def default_state_dir() -> Path:
    override = os.environ.get("MAILSINK_STATE_DIR")
    return Path(override) if override else platformdirs.user_config_path("mailsink")


class UiState:
    """Values are read once at start-up and written whole after each change. A file that cannot
    be read or is not what mailsink writes is ignored with a warning (and replaced at the next
    change); one that cannot be written is a warning too: the UI works the same without it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._wanted: dict[str, Any] = {}
        self._writing = threading.Lock()

    def load(self) -> dict[str, Any]:
        try:
            # Non-blocking: a FIFO put there must not hang the start-up.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as error:
            log.warning("ignoring the UI state file %s: %s", self.path, error.strerror)
            return {}
        try:
            with os.fdopen(fd, "rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > LIMIT:
                    raise ValueError(f"not a regular file of at most {LIMIT // 1024} KiB")
                data = json.loads(file.read(LIMIT + 1).decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        # ValueError: UnicodeDecodeError and JSONDecodeError too; RecursionError: nesting deeper
        # than the parser goes (`[` * 60 000 is 60 KB).
        except (OSError, ValueError, RecursionError) as error:
            reason = "nested too deeply" if isinstance(error, RecursionError) else error
            log.warning("ignoring the UI state file %s: %s", self.path, reason)
            return {}
        return data

    def remember(self, **values: Any) -> None:
        """Noted at once (on the UI's loop); `write` (on a thread) puts them in the file."""
        self._wanted = {**self._wanted, **values}

    def write(self) -> None:
        """Merged into what the file holds, written under a temporary name and renamed over it,
        so that the file is always whole. Whichever call runs last writes the latest values."""
        with self._writing:
            data = {**self.load(), **self._wanted}
            directory = self.path.parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
                fd, temporary = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as file:
                        json.dump(data, file, indent=2, sort_keys=True)
                        file.write("\n")
                    os.replace(temporary, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary)
                    raise
            except OSError as error:
                log.warning("cannot save the UI state to %s: %s", self.path, error)
