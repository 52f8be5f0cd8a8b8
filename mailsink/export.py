"""Export stored messages as .eml files, an mbox file or a Maildir.

Nothing is parsed or regenerated: an .eml file and a Maildir entry hold the stored bytes exactly;
an mbox entry is the stored bytes after a `From ` line, with mboxrd quoting (`>` before each line
that matches `>*From `) and a blank line after, and a final newline only if the message had none.

Files are never replaced and links never followed: each is written under a temporary name in its
own directory, then linked to its real name, which fails if anything (a file, a symlink) has that
name. On any failure, and on Ctrl-C, SIGTERM or SIGHUP, everything this export made is removed
again (only what still has the inode it was made with), an mbox it appended to is cut back to its
old length, and the error names what could not be written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from mailsink.errors import ExportError, ExportInterrupted
from mailsink.mail.attachments import free_names
from mailsink.store.reader import MessageRecord, Reader
from mailsink.text import visible

T = TypeVar("T")


_TEMP_PREFIX = ".mailsink-export-"
# The place before each line that matches `>*From `, where mboxrd adds one `>`.
_QUOTE_AT = re.compile(rb"^(?=>*From )", re.MULTILINE)
# Quoting works on slices of about this size, ending at a line end, so that a message is never
# held twice: a 20 MB message of From lines would otherwise take 20 copies' worth of pieces.
_QUOTE_SLICE = 1 << 20
_SPACE = re.compile(r"\s")
# link() is how a name is taken without replacing what has it; some file systems (FAT, some
# FUSE ones) have no hard links and say so with one of these.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_TRIES = 100  # as tempfile's TMP_MAX: names are random, so a clash twice is already odd


def _name(path: Path | str) -> str:
    return visible(str(path))


class _Run:
    """One export: what it has made so far, and how a signal stops it.

    Each file and directory is recorded, with its inode, in the same step that makes it, and no
    signal cuts such a step in two (one that arrives meanwhile takes effect after it). So undoing
    removes exactly what this export made, and never what another program has put at one of its
    names since."""

    def __init__(self) -> None:
        self.made: dict[str, tuple[int, int, bool]] = {}  # path: st_dev, st_ino, is a directory
        self.mbox_fd: int | None = None  # an mbox appended to, held open (and locked) to the end
        self.mbox_size: int | None = None  # its length before this export
        self.finished = False
        self._held = 1  # until the signal handlers are in place
        self._pending = False
        self._previous: dict[int, Any] = {}  # signal: the handler it had

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._held or self.finished:
            # Mid-step: stop right after it. Finished: the export stands, the signal came after.
            self._pending = True
            return
        raise KeyboardInterrupt

    def start(self) -> None:
        """SIGTERM and SIGHUP stop the export as Ctrl-C does, so that it is undone too (without a
        handler they would end the process on the spot). A signal the process ignores (nohup)
        stays ignored; handlers can only be set in the main thread (the TUI exports from another,
        and gets no signals there)."""
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                handler = signal.getsignal(signum)
                if handler is not None and handler != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        self._release()

    def _release(self) -> None:
        self._held -= 1
        if not self._held and self._pending and not self.finished:
            self._pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A step that must not be cut in two: something made and recorded."""
        self._held += 1
        try:
            yield
        except BaseException:
            self._held -= 1
            raise
        self._release()

    def record(self, path: str, status: os.stat_result) -> None:
        self.made[path] = (status.st_dev, status.st_ino, stat.S_ISDIR(status.st_mode))

    def forget(self, path: str) -> None:
        """`path` is gone (a temporary name after linking): nothing to undo there any more."""
        dev, ino, _ = self.made[path]
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (dev, ino):
                os.unlink(path)
        del self.made[path]

    def undo(self) -> None:
        """Remove what this export made, newest first (so files before their directories), and
        cut an appended mbox back; a second Ctrl-C does not stop this half-way."""
        self._held += 1  # for good: from here on, signals wait for end()
        if self.mbox_fd is not None and self.mbox_size is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.mbox_fd, self.mbox_size)
        for path, (dev, ino, is_dir) in reversed(self.made.items()):
            with contextlib.suppress(OSError):
                now = os.lstat(path)
                if (now.st_dev, now.st_ino) == (dev, ino):
                    os.rmdir(path) if is_dir else os.unlink(path)
        self.made.clear()

    def end(self) -> None:
        self._held += 1
        if self.mbox_fd is not None:
            os.close(self.mbox_fd)  # also releases the lock
            self.mbox_fd = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _messages(reader: Reader, ids: list[int]) -> Iterator[tuple[MessageRecord, bytes]]:
    """One message at a time, so that memory does not grow with the export. A message deleted
    meanwhile (retention, another `mailsink clear`) is left out."""
    for message_id in ids:
        record = reader.get_message(message_id)
        raw = reader.get_raw(message_id)
        if record is not None and raw is not None:
            yield record, raw


def mbox_entry(record: MessageRecord, raw: bytes) -> Iterator[bytes]:
    """One mboxrd entry, in pieces: `From ` line (envelope sender, arrival time), the stored
    bytes quoted a slice at a time, blank line."""
    sender = _SPACE.sub("_", record.envelope.mail_from or "MAILER-DAEMON")
    when = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(record.received_at / 1000))
    yield f"From {sender} {when}\n".encode()
    view = memoryview(raw)
    start = 0
    while start < len(raw):
        # Each slice starts at a line start, so that `^` means the same in it as in the whole.
        end = raw.find(b"\n", start + _QUOTE_SLICE)
        end = len(raw) if end < 0 else end + 1
        yield _QUOTE_AT.sub(b">", view[start:end])
        start = end
    yield b"\n" if raw.endswith(b"\n") else b"\n\n"


def _write_temp(run: _Run, directory: Path, data: Iterable[bytes]) -> tuple[str, os.stat_result]:
    """Write `data` into a new file in `directory` (readable by the owner only) and return its
    path and status. The file is made (O_EXCL, O_NOFOLLOW) and recorded in one step."""
    for _ in range(_TEMP_TRIES):
        temp = os.path.join(directory, f"{_TEMP_PREFIX}{secrets.token_hex(8)}.tmp")
        try:
            with run.step():
                fd = os.open(temp, _TEMP_FLAGS, 0o600)
                status = os.fstat(fd)
                run.record(temp, status)
                file = open(fd, "wb")  # noqa: SIM115 (closed by the `with` just below)
        except FileExistsError:
            continue
        with file:
            for block in data:
                file.write(block)
        return temp, status
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def _already_exists(target: Path) -> ExportError:
    return ExportError(
        f"{_name(target)} already exists; nothing exported (export never replaces a file)"
    )


def _claim(run: _Run, temp: str, status: os.stat_result, target: Path) -> bool:
    """Give the written file the name `target` unless something has it: False then."""
    try:
        with run.step():
            os.link(temp, target, follow_symlinks=False)
            run.record(str(target), status)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
    # No hard links here: a check, then rename, which a name taken in between would lose.
    if os.path.lexists(target):
        return False
    with run.step():
        os.rename(temp, target)
        run.record(str(target), status)
        del run.made[temp]
    return True


def _take_name(run: _Run, temp: str, status: os.stat_result, target: Path) -> None:
    """Give the written file its real name, never replacing an existing entry of that name."""
    try:
        if not _claim(run, temp, status, target):
            raise _already_exists(target)
    finally:
        if temp in run.made:
            run.forget(temp)


def _take_free_name(run: _Run, temp: str, status: os.stat_result, out: Path, name: str) -> Path:
    """Give the written file `name` in `out`, or the first free one after it, as saved
    attachments are named ("12.eml", "12 (1).eml", ...)."""
    try:
        for candidate in free_names(name):
            if _claim(run, temp, status, out / candidate):
                return out / candidate
        raise ExportError(f"no free name for {name} in {_name(out)}; nothing exported")
    finally:
        if temp in run.made:
            run.forget(temp)


def _is_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ExportError(
                f"{_name(path)} is a symbolic link to nothing; export does not follow it"
            ) from None
        raise


def _mkdir(run: _Run, path: Path) -> None:
    """Make `path` and record it in one step; one made meanwhile by someone else is theirs."""
    try:
        with run.step():
            os.mkdir(path)
            run.record(str(path), os.lstat(path))
    except FileExistsError:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise ExportError(
                f"{_name(path)} is a symbolic link; export does not follow it"
            ) from None
        if not stat.S_ISDIR(mode):
            raise ExportError(f"{_name(path)} is not a directory") from None


def _directory(out: Path, fmt: str, run: _Run) -> Path:
    """`out` as a directory to write into: an existing one (a symlink to one is fine) or a new
    one, returned as the path to write through."""
    try:
        if not _is_directory(out):
            raise ExportError(f"{_name(out)} is not a directory; {fmt} export needs a directory")
        return out
    except FileNotFoundError:
        pass
    # Made one directory at a time along the path with `.` and `..` taken out first, so that
    # `new/../old/sub` makes only `sub` and never counts `old` as its own (a failed export
    # removes only what it made).
    path = Path(os.path.normpath(out))
    parts = path.parts
    have = len(parts)
    while have and not os.path.lexists(Path(*parts[:have])):
        have -= 1
    if have and not _is_directory(Path(*parts[:have])):
        raise ExportError(
            f"{_name(Path(*parts[:have]))} is not a directory; {fmt} export needs a directory"
        )
    for end in range(have + 1, len(parts) + 1):
        _mkdir(run, Path(*parts[:end]))
    return path


def _export_eml(reader: Reader, ids: list[int], out: Path, run: _Run) -> int:
    out = _directory(out, "eml", run)
    count = 0
    for record, raw in _messages(reader, ids):
        temp, status = _write_temp(run, out, [raw])
        _take_name(run, temp, status, out / f"{record.id}.eml")
        count += 1
    return count


def _maildir_host() -> str:
    """The host part of Maildir names, with '/' and ':' written as octal escapes."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


def _maildir_name(host: str, sequence: int) -> str:
    """A unique name as the Maildir specification makes them: time, microseconds, pid, counter,
    host."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{sequence}.{host}"


def _export_maildir(reader: Reader, ids: list[int], out: Path, run: _Run) -> int:
    out = _directory(out, "maildir", run)
    for sub in ("tmp", "new", "cur"):
        _mkdir(run, out / sub)  # an existing one is used, unless it is a link
    host = _maildir_host()
    count = 0
    for _record, raw in _messages(reader, ids):
        # Written in tmp/ and then moved to new/, as Maildir delivery is: readers never see half.
        temp, status = _write_temp(run, out / "tmp", [raw])
        _take_name(run, temp, status, out / "new" / _maildir_name(host, count))
        count += 1
    return count


def _mbox_target(out: Path) -> os.stat_result | None:
    """The existing file to append to, None for a new one; anything else is refused."""
    try:
        status = os.lstat(out)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(status.st_mode):
        raise ExportError(f"{_name(out)} is a symbolic link; export does not follow it")
    if stat.S_ISDIR(status.st_mode):
        raise ExportError(f"{_name(out)} is a directory; mbox needs a file path")
    if not stat.S_ISREG(status.st_mode):
        raise ExportError(f"{_name(out)} is not a regular file; export writes only regular files")
    return status


def _mbox_entries(reader: Reader, ids: list[int], counted: list[int]) -> Iterator[bytes]:
    for record, raw in _messages(reader, ids):
        yield from mbox_entry(record, raw)
        counted[0] += 1


def _append_mbox(
    reader: Reader, ids: list[int], out: Path, status: os.stat_result, run: _Run
) -> int:
    """Append as mbox tools do, under an fcntl lock (no .lock file beside it); undoing cuts the
    file back to the length it had."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with run.step():
        fd = run.mbox_fd = os.open(out, flags)
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (status.st_dev, status.st_ino):
        raise ExportError(f"{_name(out)} changed while it was opened; nothing exported")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ExportError(f"{_name(out)} is locked by another program; try again") from None
    size = os.fstat(fd).st_size
    lead = b""
    if size:
        if os.pread(fd, 5, 0) != b"From ":
            raise ExportError(
                f"{_name(out)} is not an mbox file (it does not start with a From line);"
                " nothing exported"
            )
        tail = os.pread(fd, 2, size - 2 if size > 1 else 0)
        lead = b"" if tail.endswith(b"\n\n") else b"\n" if tail.endswith(b"\n") else b"\n\n"
    run.mbox_size = size
    counted = [0]
    with open(fd, "wb", closefd=False) as file:
        file.write(lead)
        for block in _mbox_entries(reader, ids, counted):
            file.write(block)
    return counted[0]


def _export_mbox(reader: Reader, ids: list[int], out: Path, run: _Run) -> int:
    status = _mbox_target(out)
    if status is not None:
        return _append_mbox(reader, ids, out, status, run)
    counted = [0]
    temp, written = _write_temp(run, out.parent, _mbox_entries(reader, ids, counted))
    _take_name(run, temp, written, out)
    return counted[0]


_EXPORTERS = {"eml": _export_eml, "mbox": _export_mbox, "maildir": _export_maildir}


def export_messages(reader: Reader, ids: list[int], fmt: str, out: Path) -> int:
    """Write the messages (all accepted ones if `ids` is empty), oldest first; returns how many.

    All or nothing: on any error what this call made is removed and ExportError says why; on
    Ctrl-C, SIGTERM or SIGHUP (in the main thread) the same, and ExportInterrupted."""

    def export(run: _Run) -> int:
        chosen = ids
        if chosen:
            # Ids only grow, so ascending is oldest first; `export 1 1` is one message.
            chosen = sorted(set(chosen))
            for message_id in chosen:
                if reader.get_message(message_id) is None:
                    raise ExportError(f"no message {message_id}; nothing exported")
        else:
            chosen = list(reader.message_index(include_rejected=False))
        return _EXPORTERS[fmt](reader, chosen, out.expanduser(), run)

    return _all_or_nothing(out, export)


def export_eml(reader: Reader, message_id: int, out: Path) -> Path:
    """One message as `ID.eml` in the directory `out` (created if missing), under the first free
    name: where `12.eml` exists, `12 (1).eml`, as saved attachments are named (the TUI's `e`: the
    user picks a directory and wants the file, not a refusal). Returns the path written."""

    def export(run: _Run) -> Path:
        record, raw = reader.get_message(message_id), reader.get_raw(message_id)
        if record is None or raw is None:
            raise ExportError(f"no message {message_id}; nothing exported")
        directory = _directory(out.expanduser(), "eml", run)
        temp, status = _write_temp(run, directory, [raw])
        return _take_free_name(run, temp, status, directory, f"{message_id}.eml")

    return _all_or_nothing(out, export)


def _all_or_nothing(out: Path, export: Callable[[_Run], T]) -> T:
    """Run one export; on any error or signal, remove what it made and say why in one
    ExportError (ExportInterrupted for a signal)."""
    run = _Run()
    try:
        run.start()
        result = export(run)
        run.finished = True
        return result
    except BaseException as error:
        run.undo()
        if isinstance(error, KeyboardInterrupt):
            raise ExportInterrupted("export interrupted; nothing exported") from None
        if isinstance(error, OSError):
            named = error.filename and _TEMP_PREFIX not in str(error.filename)
            where = error.filename if named else out
            raise ExportError(
                f"cannot write {_name(where)}: {error.strerror or error}; nothing exported"
            ) from None
        raise
    finally:
        run.end()
