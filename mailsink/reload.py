"""Live config reload: watch the file, validate each edit, swap the settings and rules in.

The watch is on the file's directory, so editors that write a new file and rename it over the old
one are seen; with a symlinked config, on the directory of every link and of the target too. A
directory that disappears is watched for from its nearest existing ancestor until it is back. An
invalid edit keeps the previous config and is reported with file, line and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsink.config import ConfigError, Settings, load
from mailsink.events import ConfigRejected, ConfigReloaded

if TYPE_CHECKING:
    from mailsink.sink import Sink

log = logging.getLogger("mailsink")

# Settings a running server cannot change: they are kept until a restart.
RESTART_KEYS = frozenset(
    {"smtp.host", "smtp.port", "storage.path", "http.enabled", "http.host", "http.port"}
)
RESTART_SECTIONS = ("tls.",)
_SECTIONS = ("smtp", "storage", "auth", "tls", "validation", "faults", "tags", "http")


def _shown(key: str, value: Any) -> str:
    if key in ("auth.users", "http.users"):
        return f"{len(value)} user(s)"
    if key == "http.allowed_hosts":  # applied at once, as users: the guard reads it per request
        return ", ".join(value) or "none"
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
        http=dataclasses.replace(
            new.http, enabled=old.http.enabled, host=old.http.host, port=old.http.port
        ),
    )


# Symlinks followed at most, as the kernel's own limit (ELOOP) for one path.
_MAX_LINKS = 40
# How often the watch is checked against the file system even without events: it re-arms on
# directories that came back in the moment between looking for them and watching them.
_RECHECK_MS = 1000


def _links(path: Path) -> list[Path]:
    """`path` and every path its symlinks lead through: a change to any of them is a change of
    the config."""
    chain = [path]
    for _ in range(_MAX_LINKS):
        try:
            target = chain[-1].readlink()
        except OSError:  # not a link (or gone): the end of the chain
            break
        chain.append(chain[-1].parent / target)  # relative targets start at the link's directory
    return chain


def _watch_point(path: Path) -> Path:
    """The directory to watch for `path`: its own, or while that is gone its nearest ancestor."""
    directory = path.parent
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    return directory


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What to watch for the config as the file system is now."""

    # (directory, its device and inode): a directory replaced under the same name (a swapped
    # symlink, a removed and re-created directory) is a new watch
    directories: frozenset[tuple[Path, int, int]]
    relevant: frozenset[Path]  # paths whose change matters: the links, the file, their parents
    identity: tuple[Any, ...] | None  # the file as it is now; None when it does not exist

    @property
    def paths(self) -> list[Path]:
        return sorted({directory for directory, _dev, _ino in self.directories})


def _is_relevant(relevant: frozenset[Path], _change: object, changed: str) -> bool:
    """watchfiles' filter: a change to one of the paths the plan says matter."""
    return Path(changed) in relevant


def _plan(path: Path) -> _Plan:
    directories: set[tuple[Path, int, int]] = set()
    relevant: set[Path] = set()
    for link in _links(path):
        # Both spellings: events name a path as watched, and a link's parent may be a link too.
        spellings: tuple[Path, ...]
        try:
            spellings = (link, link.parent.resolve() / link.name)
        except (OSError, RuntimeError):  # a loop of directory links: only the first spelling
            spellings = (link,)
        for spelling in spellings:
            relevant.add(spelling)
            relevant.update(spelling.parents)
            directory = _watch_point(spelling)
            with contextlib.suppress(OSError):
                info = directory.stat()
                directories.add((directory, info.st_dev, info.st_ino))
    try:
        info = path.stat()
        identity: tuple[Any, ...] | None = (
            str(path.resolve()),
            info.st_dev,
            info.st_ino,
            info.st_mtime_ns,
            info.st_size,
        )
    except (OSError, RuntimeError):  # gone, or a symlink loop
        identity = None
    return _Plan(frozenset(directories), frozenset(relevant), identity)


class ConfigWatcher:
    """Reloads `path` into `sink` (mailsink.sink.Sink) whenever it changes, and tells the
    sink's subscribers (ConfigReloaded, ConfigRejected); `overrides` are the command line's."""

    def __init__(self, path: Path, sink: Sink, **overrides: Any):
        # Not resolved: a symlinked config is followed anew on every change.
        self.path = Path(os.path.abspath(path))
        self.sink = sink
        self.overrides = overrides
        self.error: str | None = None  # the last edit that could not be applied
        self.reloads = 0
        self._identity: tuple[Any, ...] | None = None
        self._present = True  # the file existed when last looked at
        self._prepared = False  # prepare() took the file's identity

    async def reload(self) -> bool:
        """Load the file now; True when it was applied."""
        try:
            new = await asyncio.to_thread(load, self.path)
        except ConfigError as error:
            if error.reason == "file not found":
                return False  # mid-rename: the new file is about to appear
            log.error("config not applied, keeping the previous one: %s", error)
            self._rejected(str(error))
            return False
        new = new.with_overrides(**self.overrides)
        applied, restart = differences(self.sink.settings, new)
        self.sink.apply_settings(keep_restart_settings(self.sink.settings, new))
        log.info("config reloaded from %s: %s", self.path, "; ".join(applied) or "no changes")
        for change in restart:
            log.warning("config: %s needs a restart of mailsink to take effect", change)
        self.error = None
        self.reloads += 1
        self.sink.events.publish(ConfigReloaded(str(self.path), tuple(applied), tuple(restart)))
        return True

    def _rejected(self, error: str) -> None:
        self.error = error
        self.sink.events.publish(ConfigRejected(str(self.path), error))

    async def _look(self, plan: _Plan, changed: bool) -> None:
        """Act on the file as `plan` found it; `changed`: the watch reported a change to it."""
        if plan.identity is None:
            if self._present:
                self._present = False
                self._identity = None
                log.warning("config file %s was deleted; keeping the current settings", self.path)
                self._rejected(f"{self.path} was deleted; keeping the current settings")
            return
        if not self._present:
            self._present = True
            log.info("config file %s is back; reloading it", self.path)
            changed = True
        if changed or plan.identity != self._identity:
            self._identity = plan.identity
            try:
                await self.reload()
            except Exception:  # a bug here must not end the watch, nor the server
                log.exception("config reload failed")

    async def prepare(self) -> None:
        """Take the file as it is now as what later edits are told against, before the server
        says it watches: an edit right after that line (while the watch is still starting)
        would otherwise be taken for the file as it started, and never reloaded."""
        plan = await asyncio.to_thread(_plan, self.path)
        self._identity, self._present = plan.identity, plan.identity is not None
        self._prepared = True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Watch until cancelled (or `stop` is set)."""
        from watchfiles import awatch  # deferred: only a server with --config watches

        # watchfiles logs "1 change detected" at INFO for every event; mailsink says what changed.
        logging.getLogger("watchfiles.main").setLevel(logging.WARNING)
        plan = await asyncio.to_thread(_plan, self.path)
        if self._prepared:
            # An edit since prepare() (the server already said it watches): told now.
            await self._look(plan, False)
        else:
            self._identity, self._present = plan.identity, plan.identity is not None
        failure = None
        while stop is None or not stop.is_set():
            watch = awatch(
                *plan.paths,
                watch_filter=functools.partial(_is_relevant, plan.relevant),
                recursive=False,
                stop_event=stop,
                step=50,
                rust_timeout=_RECHECK_MS,
                yield_on_timeout=True,
            )
            try:
                async with contextlib.aclosing(watch):
                    async for changes in watch:
                        failure = None
                        now = await asyncio.to_thread(_plan, self.path)
                        await self._look(now, bool(changes))
                        if now.directories != plan.directories:
                            plan = now
                            break  # watch where the config's directories are now
                    else:
                        return  # stopped
            except Exception as error:  # e.g. a directory vanished just before the watch began
                if str(error) != failure:  # said once, not once a second
                    failure = str(error)
                    log.error("cannot watch %s (trying again): %s", self.path, error)
                await asyncio.sleep(_RECHECK_MS / 1000)
                plan = await asyncio.to_thread(_plan, self.path)
                await self._look(plan, False)
