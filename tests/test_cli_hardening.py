"""What the CLI says about stores and config files it cannot use: one line naming the file and
what is wrong with it, exit 1; `internal error` is left for mailsink's own bugs."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CliResult, downgrade, free_http, message, run_cli
from tui_support import run, settings_for

from mailsink.config import MAX_CONFIG_SIZE, ConfigError, load
from mailsink.store import Store, StoreError, StoreLocked
from mailsink.store.reader import Reader
from mailsink.testing import RunningSink
from mailsink.tui.app import create_app

# Every command that reads a store, with the arguments it needs.
STORE_COMMANDS = {
    "list": ["list"],
    "show": ["show", "1"],
    "show-latest": ["show", "latest"],
    "sessions": ["sessions"],
    "session": ["session", "1"],
    "export": ["export", "--format", "mbox", "--out", "{tmp}/out.mbox"],
    "clear": ["clear"],
}


def store_command(command: list[str], db: Path, tmp: Path) -> CliResult:
    return run_cli(*(arg.format(tmp=tmp) for arg in command), "--db", str(db))


def one_line(result: CliResult) -> str:
    assert result.code == 1, result
    assert result.err.count("\n") == 1 and result.err.startswith("mailsink: "), result
    assert "internal error" not in result.err and "Traceback" not in result.err
    return result.err


def cli_process(*args: str, memory: int | None = None, timeout: float = 20) -> CliResult:
    """The console script in a process of its own: for inputs that could hang or eat memory
    before the fix, bounded by `timeout` and (optionally) an address-space limit."""

    def limit() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    process = subprocess.Popen(
        [sys.executable, "-m", "mailsink", *free_http(args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return CliResult(-1, out.decode(), err.decode() + "(timed out)")
    return CliResult(process.returncode, out.decode(), err.decode())


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    """A real store: 60 messages over one session, everything checkpointed into the main file
    (so that overwriting one of its pages is the damage a reader sees)."""
    path = tmp_path_factory.mktemp("filled") / "mail.db"
    with RunningSink(path) as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            for n in range(60):
                client.sendmail("a@x.test", ["b@x.test"], message(subject=f"m{n}", body="x" * 900))
        sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


@pytest.fixture
def store(filled_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "mail.db"
    copy.write_bytes(filled_store.read_bytes())
    return copy


def page_size(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:18], "big")


def root_page(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.close()
    return page


def rightmost_leaf(path: Path, table: str) -> int:
    """The page holding a table's newest rows (SQLite file format: an interior table page,
    type 5, keeps its right-most child's number at bytes 8-11 of its header)."""
    size, data, page = page_size(path), path.read_bytes(), root_page(path, table)
    for _ in range(10):
        header = data[(page - 1) * size :]
        if header[0] != 5:
            return page
        page = int.from_bytes(header[8:12], "big")
    raise AssertionError("no leaf found")


def overwrite_page(path: Path, page: int) -> None:
    size = page_size(path)
    with open(path, "r+b") as file:
        file.seek((page - 1) * size)
        file.write(b"\xff" * size)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` made read-only for real. Root ignores permission bits, so as root the file (or
    directory) is made immutable instead (chattr +i; skipped where the file system has no such
    attribute)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make {path} read-only as root: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# ---- damaged and foreign stores


@pytest.mark.parametrize("command", STORE_COMMANDS.values(), ids=STORE_COMMANDS.keys())
def test_a_store_with_a_damaged_table_is_named_as_damaged(store, tmp_path, command):
    overwrite_page(store, root_page(store, "messages"))
    err = one_line(store_command(command, store, tmp_path))
    assert err.startswith(f"mailsink: {store} is damaged (database disk image is malformed);")


@pytest.mark.parametrize(
    "command", [["list"], ["show", "latest"], ["export", "--out", "{tmp}/eml"], ["clear"]]
)
def test_damage_met_in_the_middle_of_a_command_is_named_too(store, tmp_path, command):
    leaf = rightmost_leaf(store, "messages")  # the newest messages' page
    assert leaf != root_page(store, "messages")
    overwrite_page(store, leaf)
    assert run_cli("sessions", "--db", str(store)).code == 0  # the store opens: damage comes later
    err = one_line(store_command(command, store, tmp_path))
    assert err.startswith(f"mailsink: {store} is damaged (database disk image is malformed);")


def test_a_file_of_random_bytes_is_not_a_store(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(random.Random(10).randbytes(64 * 1024))
    for command in STORE_COMMANDS.values():
        err = one_line(store_command(command, junk, tmp_path))
        assert err == f"mailsink: {junk} is not a mailsink store: file is not a database\n"


@pytest.mark.parametrize("version", [0, 3])
def test_another_programs_sqlite_file_is_not_a_store(tmp_path, version):
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    expected = {
        0: f"mailsink: {foreign} is not a mailsink store: another program's SQLite database\n",
        3: (
            f"mailsink: {foreign} is not a mailsink store: an SQLite database with schema"
            " version 3 but none of mailsink's tables\n"
        ),
    }[version]
    for command in STORE_COMMANDS.values():
        assert one_line(store_command(command, foreign, tmp_path)) == expected


def test_serve_refuses_damaged_and_foreign_stores_and_leaves_them_alone(store, tmp_path):
    overwrite_page(store, root_page(store, "sessions"))
    result = cli_process("serve", "--db", str(store), "--port", "0", timeout=15)
    assert result.code == 1, result
    assert result.err.splitlines()[-1].startswith(f"mailsink: {store} is damaged")
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    result = cli_process("serve", "--db", str(foreign), "--port", "0", timeout=15)
    assert result.code == 1, result
    assert result.err.splitlines()[-1] == (
        f"mailsink: {foreign} is not a mailsink store: another program's SQLite database"
        " (left as it is)"
    )
    conn = sqlite3.connect(foreign)
    assert [name for (name,) in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]
    conn.close()


def test_the_tui_says_what_is_wrong_with_its_store(store, tmp_path):
    overwrite_page(store, root_page(store, "messages"))

    async def scenario(settings, attach: bool) -> BaseException | None:
        app = create_app(settings, attach=attach)
        async with app.run_test():
            pass
        assert app.return_code == 1
        return app.startup_error

    for attach in (True, False):
        error = run(lambda a=attach: scenario(settings_for(store), a))
        assert str(error).startswith(f"{store} is damaged (database disk image is malformed)")


# ---- read-only stores and directories


def test_clear_on_a_read_only_store_says_it_is_read_only(store):
    with read_only(store):
        result = run_cli("clear", "--db", str(store))
        assert one_line(result) == f"mailsink: cannot change {store}: the file is read-only\n"
        assert run_cli("list", "--db", str(store), "-n", "1").code == 0  # reading still works
        serving = cli_process("serve", "--db", str(store), "--port", "0", timeout=15)
    assert serving.code == 1, serving
    assert (
        serving.err.splitlines()[-1] == f"mailsink: cannot write to {store}: the file is read-only"
    )
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (60,)


def test_a_store_in_a_read_only_directory_is_not_called_foreign(store, tmp_path):
    with read_only(tmp_path):
        err = one_line(run_cli("list", "--db", str(store)))
        assert err == (
            f"mailsink: cannot open {store}: its directory is read-only and SQLite needs to"
            " create mail.db-shm there\n"
        )
        fresh = tmp_path / "new.db"
        result = cli_process("serve", "--db", str(fresh), "--port", "0", timeout=15)
    assert result.code == 1, result
    assert result.err.splitlines()[-1].startswith(f"mailsink: cannot create {fresh}.lock")


def test_a_named_pipe_as_store_is_refused_as_not_a_regular_file(tmp_path):
    pipe = tmp_path / "pipe.db"
    os.mkfifo(pipe)
    result = cli_process("list", "--db", str(pipe), timeout=10)
    assert (result.code, result.err) == (
        1,
        f"mailsink: {pipe} is not a store: not a regular file\n",
    )


# ---- config files


def test_a_deeply_nested_toml_array_is_a_config_error(tmp_path):
    config = tmp_path / "deep.toml"
    config.write_text("[smtp]\nhost = " + "[" * 5000 + "]" * 5000 + "\n")
    expected = f"mailsink: {config}: invalid TOML: arrays or tables nested too deeply\n"
    assert one_line(run_cli("check-config", str(config))) == expected
    assert one_line(run_cli("list", "--config", str(config))) == expected
    assert one_line(run_cli("serve", "--config", str(config))) == expected


@pytest.mark.parametrize("command", ["check-config", "serve --config"])
def test_an_endless_config_file_is_refused_at_once(command, tmp_path):
    pipe = tmp_path / "pipe.toml"
    os.mkfifo(pipe)
    for special, kind in ((Path("/dev/zero"), "a character device"), (pipe, "a named pipe")):
        # Bounded: before the fix /dev/zero grew memory without end and a pipe blocked for ever.
        result = cli_process(*command.split(), str(special), memory=1 << 30, timeout=20)
        assert (result.code, result.err) == (
            1,
            f"mailsink: {special}: not a regular file ({kind})\n",
        )


def test_a_config_file_over_1_mib_is_refused(tmp_path):
    config = tmp_path / "big.toml"
    config.write_bytes(b"#" * (MAX_CONFIG_SIZE - 1) + b"\n")
    assert run_cli("check-config", str(config)).code == 0  # 1 MiB exactly is still read
    config.write_bytes(b"#" * MAX_CONFIG_SIZE + b"\n")
    assert one_line(run_cli("check-config", str(config))) == (
        f"mailsink: {config}: larger than 1 MiB, too large for a config file\n"
    )


def test_a_directory_as_config_is_named_and_leaks_no_descriptor(tmp_path):
    """Live reload loads the file on every change: a directory in its place leaked one
    descriptor a load, and said `cannot read: [Errno 21] Is a directory: 103`."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(ConfigError) as refused:
            load(tmp_path)
    assert str(refused.value) == f"{tmp_path}: not a regular file (a directory)"
    assert len(os.listdir("/proc/self/fd")) <= before


def test_mailsinks_own_sql_errors_are_not_dressed_as_a_damaged_store(store):
    """A bug (a typo in SQL, a wrong argument) must show as one, not as the user's file."""
    with Reader(str(store)) as reader, pytest.raises(sqlite3.Error) as typo:
        reader.conn.execute("SELEC 1")
    assert not isinstance(typo.value, StoreError)
    with Reader(str(store)) as reader, pytest.raises(sqlite3.Error) as mismatch:
        reader.list_sessions(limit="x")  # type: ignore[arg-type]
    assert not isinstance(mismatch.value, StoreError)


def test_a_store_of_the_previous_schema_can_be_listed_and_cleared(store):
    """Schema 2 had no store_state (the deletion counter): read and clear it as it is."""
    downgrade(store, 2)
    listed = run_cli("list", "--db", str(store))
    assert listed.code == 0 and listed.out.count("\n") > 1, listed
    cleared = run_cli("clear", "--db", str(store))
    assert (cleared.code, cleared.err) == (0, ""), cleared
    assert cleared.out.startswith("deleted ")
    assert run_cli("list", "--db", str(store)).out.strip() == "no messages"


def test_a_second_server_on_a_symlink_to_a_store_in_use_is_refused(tmp_path):
    """Two names for one file are one store: two servers handing out the same session ids
    would mix their messages (a lost message answered 250, found by review)."""
    real = tmp_path / "real.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with RunningSink(real), pytest.raises(StoreLocked):
        Store(str(link))


def test_options_before_a_command_are_refused_not_ignored(tmp_path):
    """`mailsink --config X serve` parsed --config for the group and ran serve without it: a
    config's [http] users silently not applied."""
    config = tmp_path / "mailsink.toml"
    config.write_text('[http]\nusers = { ci = "pw" }\n')
    result = run_cli("--config", str(config), "serve")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "--config before the command 'serve' would not apply" in result.err
    result = run_cli("--no-web-ui", "-p", "3", "list")
    assert result.code == 2
    assert "--port, --no-web-ui before the command 'list'" in result.err
    assert run_cli("--version").code == 0
    assert run_cli("list", "--db", str(tmp_path / "none.db")).code == 1  # after: as before
