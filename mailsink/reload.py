"""Live config reload: watch the file, validate each edit, swap the settings and rules in.

The watch is on the file's directory, so editors that write a new file and rename it over the old
one are seen. An invalid edit keeps the previous config and is reported with file, line and key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsink.config import ConfigError, Settings, load

if TYPE_CHECKING:
    from mailsink.smtp.server import SinkServer

log = logging.getLogger("mailsink")

# Settings a running server cannot change: they are kept until a restart.
RESTART_KEYS = frozenset({"smtp.host", "smtp.port", "storage.path"})
RESTART_SECTIONS = ("tls.",)
_SECTIONS = ("smtp", "storage", "auth", "tls", "validation", "faults")


def _shown(key: str, value: Any) -> str:
    if key == "auth.users":
        return f"{len(value)} user(s)"
    return repr(value)


def differences(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """What changed: (applied now, needing a restart), each as 'key: old -> new'."""
    applied: list[str] = []
    restart: list[str] = []
    for section in _SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for field in dataclasses.fields(before):
            key = f"{section}.{field.name}"
            a, b = getattr(before, field.name), getattr(after, field.name)
            if a != b:
                text = f"{key}: {_shown(key, a)} -> {_shown(key, b)}"
                needs_restart = key in RESTART_KEYS or key.startswith(RESTART_SECTIONS)
                (restart if needs_restart else applied).append(text)
    old_rules = {rule.name: rule for rule in old.rules}
    new_rules = {rule.name: rule for rule in new.rules}
    for name in new_rules.keys() - old_rules.keys():
        applied.append(f"fault {name!r} added")
    for name in old_rules.keys() - new_rules.keys():
        applied.append(f"fault {name!r} removed")
    for name in new_rules.keys() & old_rules.keys():
        if new_rules[name] != old_rules[name]:
            applied.append(f"fault {name!r} changed")
    if [r.name for r in old.rules] != [r.name for r in new.rules] and not applied:
        applied.append("fault rules reordered")
    return sorted(applied), restart


def keep_restart_settings(old: Settings, new: Settings) -> Settings:
    """`new`, with the settings that need a restart left as the running server has them."""
    return dataclasses.replace(
        new,
        smtp=dataclasses.replace(new.smtp, host=old.smtp.host, port=old.smtp.port),
        storage=dataclasses.replace(new.storage, path=old.storage.path),
        tls=old.tls,
    )


class ConfigWatcher:
    """Reloads `path` into `server` whenever it changes; `overrides` are the command line's."""

    def __init__(self, path: Path, server: SinkServer, **overrides: Any):
        self.path = path.resolve()
        self.server = server
        self.overrides = overrides
        self.error: str | None = None  # the last edit that could not be applied
        self.reloads = 0
        self.listeners: list[Callable[[ConfigWatcher], None]] = []

    async def reload(self) -> bool:
        """Load the file now; True when it was applied."""
        try:
            new = await asyncio.to_thread(load, self.path)
        except ConfigError as error:
            if error.reason == "file not found":
                return False  # mid-rename: the new file is about to appear
            log.error("config not applied, keeping the previous one: %s", error)
            self.error = str(error)
            self._notify()
            return False
        new = new.with_overrides(**self.overrides)
        applied, restart = differences(self.server.settings, new)
        self.server.apply_settings(keep_restart_settings(self.server.settings, new))
        log.info("config reloaded from %s: %s", self.path, "; ".join(applied) or "no changes")
        for change in restart:
            log.warning("config: %s needs a restart of mailsink to take effect", change)
        self.error = None
        self.reloads += 1
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in self.listeners:
            listener(self)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Watch until cancelled (or `stop` is set)."""
        from watchfiles import awatch  # deferred: only a server with --config watches

        name = self.path.name
        try:
            async for _changes in awatch(
                self.path.parent,
                watch_filter=lambda _change, changed: Path(changed).name == name,
                recursive=False,
                stop_event=stop,
                step=50,
            ):
                try:
                    await self.reload()
                except Exception:  # a bug here must not end the watch, nor the server
                    log.exception("config reload failed")
        except Exception as error:  # e.g. the directory was removed
            log.error("stopped watching %s: %s", self.path, error)
