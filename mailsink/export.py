"""Export stored messages as .eml files, an mbox file or a Maildir.

Nothing is parsed or regenerated: an .eml file and a Maildir entry hold the stored bytes exactly;
an mbox entry is the stored bytes after a `From ` line, with mboxrd quoting (`>` before each line
that matches `>*From `) and a blank line after, and a final newline only if the message had none.

Files are never replaced and links never followed: each is written under a temporary name in its
own directory, then linked to its real name, which fails if anything (a file, a symlink) has that
name. On any failure everything this export wrote is removed again, an mbox it appended to is cut
back to its old length, and the error names what could not be written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mailsink.store.queries import MessageRecord, Reader
from mailsink.text import visible


class ExportError(Exception):
    """Nothing was exported; the message says why."""


_TEMP_PREFIX = ".mailsink-export-"
_QUOTE = re.compile(rb"^>*From ", re.MULTILINE)
_SPACE = re.compile(r"\s")
# link() is how a name is taken without replacing what has it; some file systems (FAT, some
# FUSE ones) have no hard links and say so with one of these.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _name(path: Path | str) -> str:
    return visible(str(path))


def _messages(reader: Reader, ids: list[int]) -> Iterator[tuple[MessageRecord, bytes]]:
    """One message at a time, so that memory does not grow with the export. A message deleted
    meanwhile (retention, another `mailsink clear`) is left out."""
    for message_id in ids:
        record = reader.get_message(message_id)
        raw = reader.get_raw(message_id)
        if record is not None and raw is not None:
            yield record, raw


def mbox_entry(record: MessageRecord, raw: bytes) -> bytes:
    """One mboxrd entry: `From ` line (envelope sender, arrival time), quoted bytes, blank line."""
    sender = _SPACE.sub("_", record.envelope.mail_from or "MAILER-DAEMON")
    when = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(record.received_at / 1000))
    body = _QUOTE.sub(rb">\g<0>", raw)
    if not body.endswith(b"\n"):
        body += b"\n"
    return f"From {sender} {when}\n".encode() + body + b"\n"


def _write_temp(directory: Path, data: bytes | Iterator[bytes]) -> str:
    """Write `data` into a new file in `directory` (O_EXCL and O_NOFOLLOW, readable by the owner
    only) and return its path; nothing is left behind when writing fails."""
    fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            for block in [data] if isinstance(data, bytes) else data:
                file.write(block)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _take_name(temp: str, target: Path) -> None:
    """Give the written file its real name, never replacing an existing entry of that name."""
    try:
        os.link(temp, target, follow_symlinks=False)
    except FileExistsError:
        raise ExportError(
            f"{_name(target)} already exists; nothing exported (export never replaces a file)"
        ) from None
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        # No hard links here: a check, then rename, which a name taken in between would lose.
        if os.path.lexists(target):
            raise ExportError(
                f"{_name(target)} already exists; nothing exported (export never replaces a file)"
            ) from None
        os.rename(temp, target)
        return
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _directory(out: Path, fmt: str, created: list[Path]) -> None:
    """`out` as a directory: an existing one (a symlink to one is fine) or a new one."""
    try:
        if not stat.S_ISDIR(os.stat(out).st_mode):
            raise ExportError(f"{_name(out)} is not a directory; {fmt} export needs a directory")
        return
    except FileNotFoundError:
        pass
    missing = [out, *[p for p in out.parents if not p.exists()]]
    out.mkdir(parents=True)
    created.extend(missing)  # deepest first: the order to remove them in


def _export_eml(reader: Reader, ids: list[int], out: Path, created: list[Path]) -> int:
    _directory(out, "eml", created)
    count = 0
    for record, raw in _messages(reader, ids):
        target = out / f"{record.id}.eml"
        _take_name(_write_temp(out, raw), target)
        created.insert(0, target)
        count += 1
    return count


def _maildir_name(sequence: int) -> str:
    """A unique name as the Maildir specification makes them: time, microseconds, pid, counter,
    host (with '/' and ':' written as octal escapes)."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{sequence}.{host}"


def _export_maildir(reader: Reader, ids: list[int], out: Path, created: list[Path]) -> int:
    _directory(out, "maildir", created)
    for sub in ("tmp", "new", "cur"):
        try:
            (out / sub).mkdir()
            created.insert(0, out / sub)
        except FileExistsError:
            if not (out / sub).is_dir():
                raise ExportError(
                    f"{_name(out)} is not a Maildir: {sub} is not a directory"
                ) from None
    count = 0
    for _record, raw in _messages(reader, ids):
        # Written in tmp/ and then moved to new/, as Maildir delivery is: readers never see half.
        name = _maildir_name(count)
        temp = _write_temp(out / "tmp", raw)
        _take_name(temp, out / "new" / name)
        created.insert(0, out / "new" / name)
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


def _append_mbox(reader: Reader, ids: list[int], out: Path, status: os.stat_result) -> int:
    """Append as mbox tools do, under an fcntl lock (no .lock file beside it); on failure the
    file is cut back to the length it had."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(out, flags)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
            status.st_dev,
            status.st_ino,
        ):
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
        count = 0
        try:
            with os.fdopen(os.dup(fd), "wb") as file:
                file.write(lead)
                for record, raw in _messages(reader, ids):
                    file.write(mbox_entry(record, raw))
                    count += 1
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
        return count
    finally:
        os.close(fd)  # also releases the lock


def _export_mbox(reader: Reader, ids: list[int], out: Path, created: list[Path]) -> int:
    status = _mbox_target(out)
    if status is not None:
        return _append_mbox(reader, ids, out, status)
    count = 0

    def entries() -> Iterator[bytes]:
        nonlocal count
        for record, raw in _messages(reader, ids):
            yield mbox_entry(record, raw)
            count += 1

    _take_name(_write_temp(out.parent, entries()), out)
    created.append(out)
    return count


_EXPORTERS = {"eml": _export_eml, "mbox": _export_mbox, "maildir": _export_maildir}


def export_messages(reader: Reader, ids: list[int], fmt: str, out: Path) -> int:
    """Write the messages (all accepted ones if `ids` is empty), oldest first; returns how many.

    All or nothing: on any error what this call wrote is removed and ExportError says why."""
    if ids:
        ids = list(dict.fromkeys(ids))  # `export 1 1` is one message, not a name taken twice
        for message_id in ids:
            if reader.get_message(message_id) is None:
                raise ExportError(f"no message {message_id}; nothing exported")
    else:
        ids = list(reader.message_index(include_rejected=False))
    out = out.expanduser()
    created: list[Path] = []  # newest first, so that files go before their directories
    try:
        return _EXPORTERS[fmt](reader, ids, out, created)
    except BaseException as error:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        if isinstance(error, OSError):
            named = error.filename and _TEMP_PREFIX not in str(error.filename)
            where = error.filename if named else out
            raise ExportError(
                f"cannot write {_name(where)}: {error.strerror or error}; nothing exported"
            ) from None
        raise
