"""`mailsink wait` against a real server: through the HTTP API (--url) and by watching the store
(--db), mail already there and mail arriving later, the timeout, bad input, --since, --count,
--json, Basic auth, and the real process (`mailsink serve &` then `mailsink wait`, Ctrl-C)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port, mailsink_process, message, run_cli, wait_for_port

from mailsink import cli_wait
from mailsink.cli_http import ApiTarget
from mailsink.config import HttpSettings, Settings
from mailsink.testing import RunningSink

MODES = ["db", "url"]


def send(sink: RunningSink, to: str, subject: str) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.sendmail("app@x.test", [to], message(sender="app@x.test", to=to, subject=subject))


def where(sink: RunningSink, mode: str) -> list[str]:
    """The options that make `wait` watch this server's store, or ask its HTTP API."""
    return ["--db", sink.db] if mode == "db" else ["--url", sink.url]


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    """A server that no test sends to: for what is refused before anything is asked."""
    with RunningSink(tmp_path_factory.mktemp("idle") / "mail.db") as running:
        yield running


@pytest.fixture
def later() -> Iterator[Callable[[float, Callable[[], None]], threading.Thread]]:
    """later(seconds, action): run `action` on a thread after `seconds` (joined at the end)."""
    threads: list[threading.Thread] = []

    def start(seconds: float, action: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            time.sleep(seconds)
            action()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.join(10)


@pytest.mark.parametrize("mode", MODES)
def test_found_already_there_prints_as_list_does(sink: RunningSink, mode: str) -> None:
    for subject in ("first", "second", "third"):
        send(sink, "ann@x.test", subject)
    send(sink, "bob@x.test", "not for ann \x1b[2J")

    result = run_cli("wait", "to:ann@x.test", "--count", "2", *where(sink, mode))
    listed = run_cli("list", "--db", sink.db, "--search", "to:ann@x.test", "--limit", "2")
    assert result.code == 0, result.err
    assert result.err == ""
    assert result.out == listed.out  # the newest two, newest first, in list's table
    assert [line.split()[0] for line in result.out.splitlines()[1:]] == ["3", "2"]

    as_json = run_cli("wait", "to:ann@x.test", "-n", "2", "--json", *where(sink, mode))
    listed_json = run_cli("list", "--db", sink.db, "-s", "to:ann@x.test", "-n", "2", "--json")
    assert as_json.code == 0, as_json.err
    assert json.loads(as_json.out) == json.loads(listed_json.out)
    assert [m["subject"] for m in json.loads(as_json.out)] == ["third", "second"]


@pytest.mark.parametrize("mode", MODES)
def test_mail_arriving_later_ends_the_wait(sink: RunningSink, mode: str, later) -> None:
    finished = threading.Event()
    seen_waiting: list[bool] = []

    def deliver() -> None:
        seen_waiting.append(not finished.is_set())
        send(sink, "late@x.test", "Arrived late")

    later(0.4, deliver)
    started = time.monotonic()
    result = run_cli("wait", "rcpt:late@x.test", "--timeout", "20s", *where(sink, mode))
    elapsed = time.monotonic() - started
    finished.set()
    assert result.code == 0, result.err
    assert "Arrived late" in result.out
    assert seen_waiting == [True]  # it was still waiting when the mail came
    assert 0.4 <= elapsed < 5, elapsed  # woken by the commit, not by the 20 s timeout


@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_one_line_and_exit_1(sink: RunningSink, mode: str) -> None:
    send(sink, "ann@x.test", "only one")
    started = time.monotonic()
    result = run_cli("wait", "to:ann@x.test", "-n", "2", "-t", "300ms", *where(sink, mode))
    assert result.code == 1
    assert result.out == ""
    assert (
        result.err == "mailsink: timed out after 0.3s: 1 of 2 messages matching 'to:ann@x.test'\n"
    )
    assert 0.3 <= time.monotonic() - started < 3


@pytest.mark.parametrize("mode", MODES)
def test_since_counts_only_newer_messages(sink: RunningSink, mode: str) -> None:
    send(sink, "ann@x.test", "old")
    send(sink, "ann@x.test", "new")
    newer = run_cli("wait", "--since", "1", "--json", *where(sink, mode))
    assert newer.code == 0, newer.err
    assert [m["id"] for m in json.loads(newer.out)] == [2]

    none = run_cli("wait", "to:ann@x.test", "--since", "2", "-t", "0", *where(sink, mode))
    assert none.code == 1
    assert none.err == (
        "mailsink: timed out after 0s: 0 of 1 message matching 'to:ann@x.test' with an id above 2\n"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["frm:zoe"], "mailsink: wait: query: 'frm:zoe': unknown prefix frm:"),
        (["-t", "soon"], "mailsink: wait: --timeout: 'soon' is not a duration"),
        (["--count", "0"], "mailsink: Invalid value for '--count'"),
        (["--count", "1001"], "mailsink: Invalid value for '--count'"),
        (["--since", "-1"], "mailsink: Invalid value for '--since'"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_bad_input_is_one_line_and_exit_2(
    idle: RunningSink, mode: str, args: list[str], says: str
) -> None:
    result = run_cli("wait", *args, *where(idle, mode))
    assert result.code == 2
    assert result.err.startswith(says) and result.err.count("\n") == 1, result.err
    assert result.out == ""


def test_bad_choice_of_where_is_exit_2(idle: RunningSink) -> None:
    both = run_cli("wait", "--url", idle.url, "--db", idle.db)
    assert both.code == 2 and "give one" in both.err
    for url, says in [
        ("ftp://127.0.0.1:21", "is not an HTTP URL"),
        ("http://127.0.0.1:99999", "the port is not a number"),
        (f"{idle.url}/?x=1", "without ?query"),
    ]:
        result = run_cli("wait", "--url", url)
        assert result.code == 2 and says in result.err, result.err
        assert result.err.count("\n") == 1


def test_url_from_the_environment(sink: RunningSink, monkeypatch: pytest.MonkeyPatch) -> None:
    send(sink, "env@x.test", "Found through MAILSINK_URL")
    monkeypatch.setenv("MAILSINK_URL", sink.url)
    result = run_cli("wait", "rcpt:env@x.test", "-t", "2s")
    assert result.code == 0, result.err
    assert "Found through MAILSINK_URL" in result.out
    # --db given: the store it names, not the environment's server
    other = run_cli("wait", "--db", str(Path(sink.db).with_name("none.db")), "-t", "0")
    assert other.code == 1 and "no store at" in other.err
    monkeypatch.setenv("MAILSINK_URL", "127.0.0.1:8025")
    bad = run_cli("wait")
    assert bad.code == 2 and "wait: $MAILSINK_URL: '127.0.0.1:8025' is not an HTTP URL" in bad.err


def test_basic_auth_from_the_url(tmp_path: Path) -> None:
    settings = Settings(http=HttpSettings(users={"ci": "pass word:1"}))
    with RunningSink(tmp_path / "auth.db", settings) as sink:
        send(sink, "ann@x.test", "Behind a password")
        port = sink.http_port
        good = run_cli("wait", "--url", f"http://ci:pass%20word%3A1@127.0.0.1:{port}")
        assert good.code == 0, good.err
        assert "Behind a password" in good.out
        for url in (f"http://127.0.0.1:{port}", f"http://ci:wrong@127.0.0.1:{port}"):
            refused = run_cli("wait", "--url", url)
            assert refused.code == 1
            assert refused.err.startswith(
                f"mailsink: wait: http://127.0.0.1:{port}: authentication required (give user:"
            ), refused.err
            assert "wrong" not in refused.err and refused.err.count("\n") == 1


def test_limits_are_the_http_waits() -> None:
    from mailsink.http import live_api

    assert cli_wait.MAX_COUNT == live_api.WAIT_MAX_COUNT
    assert cli_wait.REQUEST_SECONDS == live_api.WAIT_MAX_SECONDS


def test_a_long_wait_is_several_requests_that_keep_since(
    sink: RunningSink, monkeypatch: pytest.MonkeyPatch, later
) -> None:
    send(sink, "ann@x.test", "before the wait")
    monkeypatch.setattr(cli_wait, "REQUEST_SECONDS", 0.2)  # the server's cap, made short
    asked: list[str] = []
    request = ApiTarget.request

    def counted(self: ApiTarget, method: str, path: str, **kwargs):
        asked.append(path)
        return request(self, method, path, **kwargs)

    monkeypatch.setattr(ApiTarget, "request", counted)
    later(0.9, lambda: send(sink, "ann@x.test", "after several requests"))
    result = run_cli("wait", "to:ann@x.test", "--since", "1", "-t", "10s", "--url", sink.url)
    assert result.code == 0, result.err
    assert [line.split()[0] for line in result.out.splitlines()[1:]] == ["2"]
    assert len(asked) >= 3, asked
    assert all("since=1" in path and "timeout=200ms" in path for path in asked), asked


def test_a_store_not_there_yet_is_waited_for(tmp_path: Path, later) -> None:
    db = tmp_path / "later" / "mail.db"
    missing = run_cli("wait", "--db", str(db), "-t", "200ms")
    assert missing.code == 1
    assert missing.err == (
        f"mailsink: timed out after 0.2s: no store at {db} (start `mailsink serve` or pass --db)\n"
    )

    servers: list[RunningSink] = []

    def serve_and_send() -> None:
        db.parent.mkdir()
        servers.append(RunningSink(db).start())
        send(servers[0], "first@x.test", "The store's first message")

    thread = later(0.3, serve_and_send)
    try:
        result = run_cli("wait", "--db", str(db), "-t", "20s")
        thread.join(10)
        assert result.code == 0, result.err
        assert "The store's first message" in result.out
    finally:
        thread.join(10)
        for server in servers:
            server.stop()


def test_an_empty_store_file_is_waited_for_and_said(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()  # what a server starting this instant has made, before its tables
    result = run_cli("wait", "--db", str(db), "-t", "100ms")
    assert result.code == 1
    assert result.err == (
        f"mailsink: timed out after 0.1s: {db} is empty: no mailsink server has written to it yet\n"
    )
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not SQLite at all" * 100)
    result = run_cli("wait", "--db", str(foreign), "-t", "10s")
    assert result.code == 1 and result.err.count("\n") == 1  # at once, not after 10 s
    assert str(foreign) in result.err and "Traceback" not in result.err


# ---- the real process


def test_serve_in_the_background_then_wait(tmp_path: Path) -> None:
    """CI's `mailsink serve &` then `mailsink wait --url`: the wait starts before the server
    listens (connection refused, tried again) and ends with the mail."""
    smtp_port, http_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    waiting = mailsink_process("wait", "rcpt:ci@x.test", "--timeout", "30s", "--url", url)
    server = None
    try:
        time.sleep(0.3)  # the wait is up and being refused
        assert waiting.poll() is None
        server = mailsink_process(
            "serve", "--port", str(smtp_port), "--http-port", str(http_port),
            "--db", str(tmp_path / "ci.db"),
        )  # fmt: skip
        wait_for_port(smtp_port)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("app@x.test", ["ci@x.test"], message(to="ci@x.test", subject="From CI"))
        out, err = waiting.communicate(timeout=20)
    finally:
        waiting.kill()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=15)
    assert waiting.returncode == 0, err.decode()
    assert "From CI" in out.decode() and err == b""


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the process did not get there"
        time.sleep(0.02)


def _has_open(pid: int, path: str) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the wait")
def test_ctrl_c_while_watching_the_store_is_exit_130(sink: RunningSink) -> None:
    waiting = mailsink_process("wait", "rcpt:nobody@x.test", "-t", "60s", "--db", sink.db)
    try:
        # The wait has the store open: it is past start-up, inside the wait.
        _wait_until(lambda: _has_open(waiting.pid, os.path.realpath(sink.db)))
        waiting.send_signal(signal.SIGINT)
        _, err = waiting.communicate(timeout=10)
    finally:
        waiting.kill()
    assert waiting.returncode == 130
    assert err.decode() == (
        "mailsink: wait interrupted: 0 of 1 message matching 'rcpt:nobody@x.test'\n"
    )


def test_ctrl_c_while_asking_a_server_is_exit_130() -> None:
    with socket.socket() as listener:  # a server that takes the request and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        waiting = mailsink_process("wait", "-t", "60s", "--url", f"http://127.0.0.1:{port}")
        try:
            listener.settimeout(10)
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)  # the request: the wait is blocked on its answer
                waiting.send_signal(signal.SIGINT)
                _, err = waiting.communicate(timeout=10)
        finally:
            waiting.kill()
    assert waiting.returncode == 130
    assert err.decode() == "mailsink: wait interrupted: 0 of 1 message\n"


def test_a_server_that_is_no_mailsink_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n"
                    b"Connection: close\r\n\r\n<html>"
                )

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = run_cli("wait", "-t", "5s", "--url", f"http://127.0.0.1:{port}")
        thread.join(5)
    assert result.code == 1
    assert result.err == (
        f"mailsink: wait: http://127.0.0.1:{port}: HTTP 200 but not JSON: is this a mailsink?\n"
    )


def test_help() -> None:
    result = run_cli("wait", "--help")
    assert result.code == 0 and "MAILSINK_URL" in result.out


# ---- --ready: the server, not mail


def _run_until(process, seconds: float = 20.0) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=seconds)
    return process.returncode, out.decode(), err.decode()


def test_ready_waits_for_mailsink_serve_then_sees_it_stopped(tmp_path: Path) -> None:
    """CI's `mailsink serve &` then `mailsink wait --ready`, both ways at once against one real
    server; then that server gone, its row left behind in the store."""
    smtp_port, http_port = free_port(), free_port()
    db = str(tmp_path / "ci.db")
    by_url = mailsink_process(
        "wait", "--ready", "-t", "30s", "--url", f"http://127.0.0.1:{http_port}"
    )
    by_store = mailsink_process("wait", "--ready", "-t", "30s", "--db", db)
    server = None
    try:
        time.sleep(0.3)  # both start before the server, and keep waiting
        assert by_url.poll() is None and by_store.poll() is None
        server = mailsink_process(
            "serve", "--port", str(smtp_port), "--http-port", str(http_port), "--db", db
        )
        for waiting in (by_store, by_url):
            code, out, err = _run_until(waiting)
            assert (code, out, err) == (0, "", "")
            # Ready means SMTP takes mail now: no retry of the sender's needed.
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
                assert client.noop()[0] == 250
    finally:
        by_url.kill()
        by_store.kill()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=15)
    assert server.returncode == 0

    # Gone: the store still names where it listened, no server holds it.
    stopped = run_cli("wait", "--ready", "-t", "0", "--db", db)
    assert stopped.code == 1
    assert stopped.err == f"mailsink: timed out after 0s: no mailsink server is running on {db}\n"
    # A server that has just taken the store (here: its lock, held by this test) and not yet
    # replaced the old server's row: not ready, although the row names a port.
    with open(f"{os.path.realpath(db)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        taken = run_cli("wait", "--ready", "-t", "200ms", "--db", db)
    assert taken.code == 1
    assert taken.err == (
        f"mailsink: timed out after 0.2s: a server has taken {db} but does not listen yet\n"
    )


@pytest.mark.parametrize("mode", MODES)
def test_ready_with_the_server_up_is_at_once_and_quiet(idle: RunningSink, mode: str) -> None:
    started = time.monotonic()
    result = run_cli("wait", "--ready", "-t", "10s", *where(idle, mode))
    assert (result.code, result.out, result.err) == (0, "", "")
    assert time.monotonic() - started < 2


def test_ready_timeout_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    refused = run_cli("wait", "--ready", "-t", "300ms", "--url", f"http://127.0.0.1:{port}")
    assert refused.code == 1 and refused.out == ""
    assert refused.err == (
        f"mailsink: timed out after 0.3s: nothing answered at http://127.0.0.1:{port}"
        " (connection refused)\n"
    )
    assert 0.3 <= time.monotonic() - started < 3
    db = tmp_path / "not" / "yet.db"
    missing = run_cli("wait", "--ready", "-t", "200ms", "--db", str(db))
    assert missing.code == 1 and missing.out == ""
    assert missing.err == (
        f"mailsink: timed out after 0.2s: no store at {db} (start `mailsink serve` or pass --db)\n"
    )


def test_ready_behind_a_password_says_so(tmp_path: Path) -> None:
    settings = Settings(http=HttpSettings(users={"ci": "secret"}))
    with RunningSink(tmp_path / "auth.db", settings) as sink:
        port = sink.http_port
        refused = run_cli("wait", "--ready", "-t", "10s", "--url", f"http://127.0.0.1:{port}")
        good = run_cli("wait", "--ready", "--url", f"http://ci:secret@127.0.0.1:{port}")
    assert refused.code == 1  # at once: waiting would not make the password right
    assert refused.err.startswith(
        f"mailsink: wait: http://127.0.0.1:{port}: authentication required (give user:"
    ), refused.err
    assert refused.err.count("\n") == 1
    assert (good.code, good.out, good.err) == (0, "", "")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["to:ann@x.test"], "QUERY 'to:ann@x.test'"),
        (["--count", "1"], "--count"),
        (["--since", "4"], "--since"),
        (["--json"], "--json"),
        (["-n", "2", "--json"], "--count, --json"),
    ],
)
def test_ready_with_what_says_which_mail_is_exit_2(
    idle: RunningSink, args: list[str], named: str
) -> None:
    result = run_cli("wait", "--ready", *args, "--url", idle.url)
    assert result.code == 2 and result.out == ""
    assert result.err == (
        f"mailsink: wait: --ready waits for the server, not for mail: it takes no {named}"
        " (see mailsink --help)\n"
    )
