"""`mailsink wait` against a real server: through the HTTP API (--url) and by watching the store
(--db), mail already there and mail arriving later, the timeout, bad input, --since, --count,
--json, Basic auth, and the real process (`mailsink serve &` then `mailsink wait`, Ctrl-C)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


def test_a_url_prefix_as_typed_is_percent_encoded() -> None:
    port = free_port()  # nothing listens there
    for command in (["wait", "-t", "0"], ["faults"]):
        result = run_cli(*command, "--url", f"http://127.0.0.1:{port}/mail box/é")
        assert result.code == 1 and result.err.count("\n") == 1, result.err  # not exit 70
        assert f"http://127.0.0.1:{port}/mail%20box/%C3%A9" in result.err, result.err


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
    settings = Settings(http=HttpSettings(users={"ci": "pass word:1", "dev": "p@ss:w rd/é#?%"}))
    with RunningSink(tmp_path / "auth.db", settings) as sink:
        send(sink, "ann@x.test", "Behind a password")
        port = sink.http_port
        good = run_cli("wait", "--url", f"http://ci:pass%20word%3A1@127.0.0.1:{port}")
        assert good.code == 0, good.err
        assert "Behind a password" in good.out
        # README's advice: percent-encode @ : / ? # % and spaces (é as its UTF-8 bytes).
        encoded = "p%40ss%3Aw%20rd%2F%C3%A9%23%3F%25"
        hard = run_cli("wait", "--url", f"http://dev:{encoded}@127.0.0.1:{port}")
        assert hard.code == 0, hard.err
        for url in (f"http://127.0.0.1:{port}", f"http://ci:wrong@127.0.0.1:{port}"):
            refused = run_cli("wait", "--url", url)
            assert refused.code == 1
            assert refused.err.startswith(
                f"mailsink: wait: http://127.0.0.1:{port}: authentication required (give user:"
            ), refused.err
            assert "wrong" not in refused.err and refused.err.count("\n") == 1


def test_a_store_in_memory_is_a_usage_error(tmp_path: Path) -> None:
    for ready in ([], ["--ready"]):
        result = run_cli("wait", *ready, "--db", ":memory:")
        assert (result.code, result.out) == (2, "")
        assert result.err == (
            "mailsink: wait: --db :memory: is a store in the serving process's memory, which no"
            " other process can watch: give the store's file, or ask the server with --url"
            " (see mailsink --help)\n"
        )
    config = tmp_path / "memory.toml"
    config.write_text('[storage]\npath = ":memory:"\n')
    result = run_cli("wait", "--config", str(config))
    assert result.code == 2
    assert result.err.startswith(f"mailsink: wait: {config}: [storage] path = ':memory:' is a")


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
        f"mailsink: wait: http://127.0.0.1:{port}: not a mailsink answer: HTTP 200, not JSON"
        " (Expecting value: line 1 column 1)\n"
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


# ---- what no mailsink does: a proxy in front, another program on the port, a broken server


class NotMailsink:
    """An HTTP server on loopback that answers each request as `answer(handler, number)` says
    (number: 1 for the first request), recording each request's path and Authorization header:
    what a proxy, another program or a broken server sends, which no real mailsink can be made
    to. `stopping` is set when the test is done, for answers that never end by themselves."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, int], None]) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Authorization")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with contextlib.suppress(OSError):  # the client gone: what some tests are about
                    answer(self, len(server.requests))

            do_POST = do_PUT = do_DELETE = do_GET

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> NotMailsink:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(5)


def answer_json(status: int, body: str | bytes, content_type: str = "application/json"):
    """An answer with this status and body, at once."""
    data = body.encode() if isinstance(body, str) else body

    def send(handler: BaseHTTPRequestHandler, _number: int) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return send


def drip(*, in_headers: bool = False):
    """An answer that never ends: a byte every 0.1 s, in the body (after a Content-Length of
    100 MB) or still in the headers, until the client goes or the test ends."""

    def send(handler: BaseHTTPRequestHandler, _number: int) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        if not in_headers:
            handler.wfile.write(b"Content-Type: application/json\r\n")
            handler.wfile.write(b"Content-Length: 100000000\r\n\r\n[")
        else:
            handler.wfile.write(b"X-Slow: ")
        handler.wfile.flush()
        stopping = handler.server.stopping  # type: ignore[attr-defined]
        while not stopping.wait(0.1):
            handler.wfile.write(b" ")
            handler.wfile.flush()

    return send


def silent(handler: BaseHTTPRequestHandler, _number: int) -> None:
    """Takes the request and says nothing, until the test ends."""
    handler.server.stopping.wait(30)  # type: ignore[attr-defined]


@contextlib.contextmanager
def not_mailsink_servers() -> Iterator[Callable[..., NotMailsink]]:
    """start(answer): a NotMailsink serving until the block ends."""
    servers: list[NotMailsink] = []

    def start(answer: Callable[[BaseHTTPRequestHandler, int], None]) -> NotMailsink:
        server = NotMailsink(answer)
        server.http.stopping = server.stopping  # type: ignore[attr-defined]
        servers.append(server.__enter__())
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.__exit__()


@pytest.fixture
def not_mailsink() -> Iterator[Callable[..., NotMailsink]]:
    """not_mailsink(answer): a NotMailsink serving until the test ends."""
    with not_mailsink_servers() as start:
        yield start


# A message summary as a mailsink's wait answers it.
SUMMARY = {
    "id": 7,
    "received_at": "2026-12-01T14:15:16.123Z",
    "status": "accepted",
    "reply": None,
    "reply_rule": None,
    "mail_from": "app@x.test",
    "rcpt_to": ["ann@x.test"],
    "rcpt_refused": [],
    "from": ["app@x.test"],
    "to": ["ann@x.test"],
    "subject": "Welcome",
    "size": 120,
    "findings": [],
    "read": False,
    "tags": [],
}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(
            json.dumps([{**SUMMARY, "id": True}]),
            "message summary 1: 'id' is true, not a whole number",
            id="id true",
        ),
        pytest.param(
            json.dumps([{k: v for k, v in SUMMARY.items() if k != "size"}]),
            "message summary 1: no 'size'",
            id="a key missing",
        ),
        pytest.param(
            json.dumps([SUMMARY, {**SUMMARY, "subject": {"x": 1}}]),
            "message summary 2: 'subject' is {\"x\": 1}, not a string or null",
            id="subject a table",
        ),
        pytest.param(
            json.dumps([{**SUMMARY, "rcpt_to": "ann"}]),
            "'rcpt_to' is \"ann\", not a list of strings",
            id="rcpt_to a string",
        ),
        pytest.param(
            json.dumps([{**SUMMARY, "received_at": "0001-01-01T00:00:00"}]),
            "'received_at' is '0001-01-01T00:00:00', not a time",
            id="year 1",
        ),
        pytest.param(
            json.dumps([SUMMARY]).replace("120", "1e400"),
            "HTTP 200, the number 1e400 is out of range",
            id="size 1e400",
        ),
        pytest.param(
            json.dumps([SUMMARY]).replace("120", "NaN"),
            "HTTP 200, NaN is not a JSON number",
            id="size NaN",
        ),
        pytest.param("[" * 100_000 + "]" * 100_000, "HTTP 200, JSON nested too deeply", id="deep"),
        pytest.param(
            json.dumps({"messages": []}),
            "expected a JSON array of message summaries",
            id="an object",
        ),
        pytest.param(
            "[" + "1," * 200_000 + "1]", "message summary 1: not a JSON object", id="ones"
        ),
    ],
)
def test_an_odd_answer_is_one_line_and_exit_1(not_mailsink, body: str, says: str) -> None:
    server = not_mailsink(answer_json(200, body))
    # The same refusal, whichever way it would be printed, and from --ready, which asks the same.
    for output in ([], ["--json"], ["--ready"]):
        result = run_cli("wait", "-t", "2s", *output, "--url", server.url)
        assert result.code == 1, result
        assert result.err.startswith(f"mailsink: wait: {server.url}: not a mailsink answer: ")
        assert says in result.err and result.err.count("\n") == 1, result.err
        assert result.out == ""


@pytest.mark.parametrize(
    ("messages", "code"),
    [([], 0), ([SUMMARY], 0), ([1], 1), ([{**SUMMARY, "id": "7"}], 1)],
)
def test_ready_checks_the_messages_of_a_408_as_well(
    not_mailsink, messages: list[Any], code: int
) -> None:
    """A wait that found too few answers 408 with those it found: --ready is up at such an
    answer only if they are message summaries as a mailsink gives them."""
    server = not_mailsink(answer_json(408, json.dumps({"messages": messages})))
    result = run_cli("wait", "--ready", "-t", "2s", "--url", server.url)
    assert result.code == code, result
    if code:
        assert result.err.startswith(f"mailsink: wait: {server.url}: not a mailsink answer: ")
        assert "message summary 1: " in result.err and result.err.count("\n") == 1


def test_a_right_answer_from_elsewhere_prints_as_list_does(not_mailsink) -> None:
    """What the odd answers above are told apart from: a summary as a mailsink gives it."""
    server = not_mailsink(answer_json(200, json.dumps([SUMMARY])))
    result = run_cli("wait", "-t", "2s", "--url", server.url)
    assert result.code == 0, result.err
    (row,) = result.out.splitlines()[1:]
    assert row.split()[0] == "7" and "Welcome" in row


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(silent, id="silent"),
        pytest.param(drip(), id="dripping its body"),
        pytest.param(drip(in_headers=True), id="dripping its headers"),
    ],
)
@pytest.mark.parametrize("ready", [False, True])
def test_the_timeout_is_a_hard_limit(
    not_mailsink, answer, ready: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last answer may come up to ANSWER_GRACE_SECONDS late (1 s); then it is cut off.
    monkeypatch.setattr(cli_wait, "ANSWER_GRACE_SECONDS", 0.1)  # (made short for the test)
    server = not_mailsink(answer)
    started = time.monotonic()
    result = run_cli("wait", *(["--ready"] * ready), "-t", "100ms", "--url", server.url)
    elapsed = time.monotonic() - started
    assert result.code == 1, result
    assert result.err == (
        f"mailsink: timed out after 0.1s: {server.url} took the request but sent no whole answer\n"
    )
    assert 0.2 <= elapsed < 1.5, elapsed


def test_answers_at_once_are_paced_not_a_tight_loop(
    not_mailsink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or what is in front of it) that answers a long wait's request at once with a
    408: the requests back off, until an answer with the mail."""
    monkeypatch.setattr(cli_wait, "PACE_SECONDS", 0.02)  # (0.1 s, made short for the test)
    started = time.monotonic()

    def early_408s_for_a_while(handler: BaseHTTPRequestHandler, _number: int) -> None:
        if time.monotonic() - started < 0.3:
            answer_json(408, json.dumps({"error": "timed out", "messages": []}))(handler, 0)
        else:
            answer_json(200, json.dumps([SUMMARY]))(handler, 0)

    server = not_mailsink(early_408s_for_a_while)
    result = run_cli("wait", "-t", "400s", "--url", server.url)
    assert result.code == 0, result.err
    # Pauses of 0.02, 0.04, 0.08, 0.16 s: 5 requests; without the pace, hundreds.
    assert 2 <= len(server.requests) <= 8, len(server.requests)
    assert all("timeout=300000ms" in path for path, _ in server.requests)


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("ready", [False, True])
def test_a_proxy_or_a_stopping_server_is_asked_again(
    not_mailsink, status: int, ready: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_wait, "PACE_SECONDS", 0.02)  # (0.1 s, made short for the test)

    def twice_then_mail(handler: BaseHTTPRequestHandler, number: int) -> None:
        if number <= 2:
            answer_json(status, "<html>Bad Gateway</html>", "text/html")(handler, number)
        else:
            answer_json(200, json.dumps([SUMMARY]))(handler, number)

    server = not_mailsink(twice_then_mail)
    result = run_cli("wait", *(["--ready"] * ready), "-t", "10s", "--url", server.url)
    assert result.code == 0, result.err
    assert len(server.requests) == 3


@pytest.mark.parametrize("ready", [False, True])
def test_a_proxy_that_never_lets_through_is_the_timeout(not_mailsink, ready: bool) -> None:
    always = not_mailsink(answer_json(504, '{"error": "upstream timed out"}'))
    result = run_cli("wait", *(["--ready"] * ready), "-t", "100ms", "--url", always.url)
    assert result.code == 1
    assert result.err == (
        f"mailsink: timed out after 0.1s: {always.url} answered HTTP 504: upstream timed out\n"
    )


@pytest.mark.parametrize("ready", [False, True])
def test_a_redirect_is_not_followed_and_the_password_stays(not_mailsink, ready: bool) -> None:
    elsewhere = not_mailsink(answer_json(200, json.dumps([SUMMARY])))

    def redirect(handler: BaseHTTPRequestHandler, _number: int) -> None:
        handler.send_response(302)
        handler.send_header("Location", elsewhere.url + handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server = not_mailsink(redirect)
    url = server.url.replace("http://", "http://ci:s3cret@")
    result = run_cli("wait", *(["--ready"] * ready), "-t", "2s", "--url", url)
    assert result.code == 1
    assert result.err == (
        f"mailsink: wait: {server.url}: not a mailsink answer: HTTP 302, a redirect (a mailsink"
        " never redirects: give its own URL)\n"
    )
    assert elsewhere.requests == []  # the credentials went nowhere else
    assert server.requests[0][1] is not None  # (they were sent: to the server named)


# A password of the characters a URL's user:password must have percent-encoded, between
# pieces that must never be shown.
PIECES = ("Zq1", "Wx2", "Vy3", "Ut4", "Rs5")


@pytest.mark.parametrize(
    "url",
    [
        "http://ci:Zq1#Wx2/Vy3?Ut4@Rs5@127.0.0.1:8025",  # as typed, nothing percent-encoded
        "http://ci:Zq1%23Wx2/Vy3%3FUt4%40Rs5@127.0.0.1:8025",  # the `/` left as it is
        "http://ci:Zq1%23Wx2%2FVy3%3FUt4%40Rs5@127.0.0.1:99999",  # a bad port
        "ftp://ci:Zq1%23Wx2%2FVy3%3FUt4%40Rs5@127.0.0.1:21",
        "ci:Zq1%23Wx2%2FVy3%3FUt4%40Rs5@127.0.0.1:8025",  # no scheme
    ],
)
@pytest.mark.parametrize("command", ["wait", "faults"])
def test_a_password_in_the_url_is_never_shown(
    url: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILSINK_URL", url)
    for given in (["--url", url], []):  # the option, or the environment
        result = run_cli(command, *given)
        assert result.code == 2, result
        assert result.err.count("\n") == 1 and "***@127.0.0.1:" in result.err, result.err
        assert not [piece for piece in PIECES if piece in result.err], result.err
