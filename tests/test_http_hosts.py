"""Host names on every bind (DNS rebinding): a page whose name someone points at the server must
not become the server's own origin, on `--http-host 0.0.0.0` (the docker-compose recipe's) as on
loopback; `[http] allowed_hosts` and `--http-allowed-host` add names, a reload applies them;
an empty `--host` / `--http-host` is a usage error.

Real servers on loopback, spoken to with http.client and Host headers of the test's choosing."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerLines, mailsink_process, run_cli

from mailsink.config import ConfigError, HttpSettings, Settings, allowed_hosts, load
from mailsink.testing import RunningSink

ADVICE = "add it to [http] allowed_hosts (or --http-allowed-host)"
RULE = b'{"stage":"rcpt","reply":"550 5.7.1 x","name":"pwn"}'


def call(
    port: int,
    method: str,
    path: str,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:`port` with exactly this Host header."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body or method in ("POST", "PUT"):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def status(port: int, host: str) -> int:
    return call(port, "GET", "/api/mailsink/faults", host)[0]


def rule_names(port: int) -> list[str]:
    code, body = call(port, "GET", "/api/mailsink/faults", f"127.0.0.1:{port}")
    assert code == 200, body
    return [rule["name"] for rule in json.loads(body)["rules"]]


def is_localhost_name(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    """HTTP on every interface (SMTP stays on loopback), as in a container."""
    names = allowed_hosts(["mailsink", "*.dev.test", "bücher.test"])
    settings = Settings(http=HttpSettings(host="0.0.0.0", allowed_hosts=names))
    with RunningSink(tmp_path_factory.mktemp("wide") / "mail.db", settings) as sink:
        yield sink


def test_the_rebinding_request_is_refused_on_a_wide_bind(wide: RunningSink) -> None:
    port = wide.http_port
    evil = {"Origin": f"http://evil.example:{port}", "Content-Type": "text/plain"}
    code, body = call(port, "POST", "/api/mailsink/faults", f"evil.example:{port}", evil, RULE)
    assert code == 403, body
    assert json.loads(body) == {
        "error": f"Host 'evil.example:{port}' is not one of this server's names: {ADVICE}"
    }
    assert "pwn" not in rule_names(port)
    # Nor can it read mail, or open the live events (a WebSocket upgrade without Origin too).
    assert call(port, "GET", "/api/v1/messages", f"evil.example:{port}")[0] == 403
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "MDEyMzQ1Njc4OWFiY2RlZg==",
        "Sec-WebSocket-Version": "13",
    }
    assert call(port, "GET", "/api/events", f"evil.example:{port}", upgrade)[0] == 403
    # A page really served under an allowed name is same-origin, and may.
    ours = {"Origin": f"http://mailsink:{port}", "Content-Type": "text/plain"}
    code, body = call(port, "POST", "/api/mailsink/faults", f"mailsink:{port}", ours, RULE)
    assert code == 201, body
    assert "pwn" in rule_names(port)
    assert call(port, "DELETE", "/api/mailsink/faults/pwn", f"127.0.0.1:{port}")[0] == 200
    assert "pwn" not in rule_names(port)


def test_a_wide_bind_serves_ip_addresses_localhost_own_and_allowed_names(
    wide: RunningSink,
) -> None:
    port = wide.http_port
    own = [socket.gethostname(), socket.getfqdn()]
    served = [
        f"127.0.0.1:{port}",
        f"10.1.2.3:{port}",  # any address: a browser sends one only for a page at it
        "203.0.113.9",
        f"[::1]:{port}",
        f"[2001:db8::5]:{port}",
        f"localhost:{port}",
        f"LOCALHOST:{port}",
        f"app.localhost:{port}",
        *(f"{name}:{port}" for name in own),
        *(name.upper() for name in own),
        f"mailsink:{port}",
        "MailSink",
        f"mailsink.:{port}",  # the same name, absolute
        f"a.dev.test:{port}",
        "x.y.DEV.test",
        f"xn--bcher-kva.test:{port}",  # bücher.test as a browser sends it
    ]
    for host in served:
        assert status(port, host) == 200, host
    refused = [
        f"evil.example:{port}",
        f"dev.test:{port}",  # *.dev.test is the names under it, not itself
        f"mailsink.evil.example:{port}",
        f"evilmailsink:{port}",
        f"dev.test.evil.example:{port}",
        f"a.dev.test.evil.example:{port}",
        f"localhost.evil.example:{port}",
        f"127.0.0.1.evil.example:{port}",
        f"0x7f.1:{port}",  # no browser's spelling of an address
        f"{socket.gethostname()}.evil.example:{port}",
    ]
    for host in refused:
        code, body = call(port, "GET", "/api/mailsink/faults", host)
        assert code == 403, host
        assert json.loads(body)["error"].endswith(ADVICE), host
    # No Host at all (HTTP/1.0; no browser sends that) is not checked, as before.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /api/mailsink/faults HTTP/1.0\r\n\r\n")
        assert raw.makefile("rb").readline().split()[1] == b"200"


def raw_status(port: int, host_line: bytes) -> tuple[bytes, bytes]:
    """The status and body of a GET sent over a socket with exactly this Host line, as no
    http.client would write it."""
    request = (
        b"GET /api/mailsink/faults HTTP/1.1\r\n" + host_line + b"\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1], body


def test_a_host_with_text_after_the_bracket_or_an_empty_one_is_refused(
    wide: RunningSink,
) -> None:
    port = wide.http_port
    for host_line in (b"Host: [::1]", b"Host: [::1]:%d" % port, b"Host: [::1]:"):
        assert raw_status(port, host_line)[0] == b"200", host_line
    for host_line in (
        b"Host: [::1]evil.example",
        b"Host: [::1]evil.example:%d" % port,
        b"Host: [::1]:%d.evil.example" % port,
        b"Host: [::1%evil.example]",
        b"Host: [::1%%25evil.example]:%d" % port,
        b"Host: [mailsink]",  # an allowed name, but not an address in brackets
        b"Host: [a.dev.test]",
        b"Host: [127.0.0.1]",
        b"Host: mailsink:evil.example",
        b"Host: ",
        b"Host:   ",
    ):
        code, body = raw_status(port, host_line)
        assert code == b"403", host_line
        assert json.loads(body)["error"].endswith(ADVICE), host_line


def test_a_loopback_bind_is_as_strict_as_before_and_takes_allowed_names(
    tmp_path: Path,
) -> None:
    settings = Settings(http=HttpSettings(allowed_hosts=allowed_hosts(["Mailsink.Test"])))
    with RunningSink(tmp_path / "mail.db", settings) as sink:
        port = sink.http_port
        for host in (
            f"127.0.0.1:{port}",
            "127.5.5.5",
            f"[::1]:{port}",
            f"localhost:{port}",
            "a.localhost",
            f"mailsink.test:{port}",
        ):
            assert status(port, host) == 200, host
        own = socket.gethostname()
        for host in (f"10.1.2.3:{port}", "203.0.113.9", f"[2001:db8::5]:{port}", "evil.example"):
            code, body = call(port, "GET", "/api/mailsink/faults", host)
            assert code == 403, host
            assert "on loopback it answers to localhost and loopback addresses" in body.decode()
        # This machine's own name is a wide bind's name only (as before, a loopback bind's not).
        assert status(port, f"{own}:{port}") == (200 if is_localhost_name(own) else 403)
        evil = {"Origin": f"http://evil.example:{port}", "Content-Type": "text/plain"}
        code, _ = call(port, "POST", "/api/mailsink/faults", f"evil.example:{port}", evil, RULE)
        assert code == 403 and "pwn" not in rule_names(port)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ('"mailsink"', 'expected a list of host names such as ["mailsink", "*.example.test"]'),
        ('["mailsink", "a b"]', "name 2: expected a host name such as"),
        ('["mailsink:8025"]', "name 1: 'mailsink:8025': expected a host name alone"),
        ('["http://mailsink"]', "without a scheme or port"),
        ('["*"]', "'*' would let any name in, a DNS-rebound one too: list the names"),
        ('["*.com"]', "'*.com' would let any name under .com in, a DNS-rebound one too"),
        ('["mailsink", "*.Test."]', "name 2: '*.Test.' would let any name under .test in"),
        ('["a.*.test"]', "expected a host name such as"),
        ('["*."]', "expected a host name such as"),
        ('[""]', "expected a host name such as"),
        ("[8025]", "got 8025"),
        (f'["{"a" * 64}.test"]', "expected a host name such as"),
    ],
)
def test_bad_allowed_hosts_name_file_line_and_key(tmp_path: Path, value: str, hint: str) -> None:
    path = tmp_path / "mailsink.toml"
    path.write_text(f"[smtp]\nport = 2525\n[http]\nport = 0\nallowed_hosts = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}:5: http.allowed_hosts: "), caught.value
    assert hint in str(caught.value), caught.value
    checked = run_cli("check-config", str(path))
    assert checked.code == 1 and checked.err.count("\n") == 1 and hint in checked.err


def test_allowed_hosts_are_spelt_as_compared_and_the_command_line_adds_to_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mailsink.toml"
    path.write_text(
        '[http]\nallowed_hosts = ["MailSink", "*.Dev.Test", "[::1]", "bücher.test", "app."]\n'
    )
    settings = load(path)
    assert settings.http.allowed_hosts == (
        "mailsink",
        "*.dev.test",
        "::1",
        "xn--bcher-kva.test",
        "app",
    )
    both = settings.with_overrides(http_allowed_hosts=["WEB", "mailsink"])
    assert both.http.allowed_hosts == (*settings.http.allowed_hosts, "web")
    assert Settings().http.allowed_hosts == ()


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--host", ""),
        ("serve", "--http-host", ""),
        ("serve", "--http-host", "  "),
        ("tui", "--host", ""),
        ("tui", "--http-host", ""),
        ("--http-host", ""),  # bare mailsink
        ("--host", " "),
    ],
)
def test_an_empty_host_is_a_usage_error_naming_the_option(args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--port", "0", "--db", ":memory:")
    option = args[-2]
    assert result.code == 2, result
    assert result.err == (
        f"mailsink: Invalid value for '{option}': expected a host name or IP address, got an"
        " empty one (0.0.0.0 listens on every interface) (see mailsink --help)\n"
    )


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("mailsink:8025", "without a scheme or port"),
        ("*", "would let any name in"),
        ("*.test", "'*.test' would let any name under .test in, a DNS-rebound one too"),
    ],
)
def test_a_bad_allowed_host_option_is_a_usage_error(name: str, hint: str) -> None:
    result = run_cli("serve", "--port", "0", "--db", ":memory:", "--http-allowed-host", name)
    assert result.code == 2, result
    assert result.err.startswith("mailsink: Invalid value for '--http-allowed-host': ")
    assert hint in result.err and result.err.count("\n") == 1


def test_the_option_adds_to_the_file_and_a_reload_applies_the_file_s_new_names(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mailsink.toml"
    config.write_text('[http]\nhost = "0.0.0.0"\nallowed_hosts = ["extra.test"]\n')
    process = mailsink_process(
        "serve", "--port", "0", "--db", str(tmp_path / "mail.db"), "--config", str(config),
        "--http-port", "0", "--http-allowed-host", "mailsink", "--http-allowed-host", "*.CI.test",
    )  # fmt: skip
    lines = ServerLines(process)
    try:
        started = lines.until(r"HTTP API on http://0\.0\.0\.0:[0-9]+").string.strip()
        port = int(started.rsplit(":", 1)[1])
        lines.until("watching ")
        for host in ("extra.test", f"mailsink:{port}", "a.ci.test", "127.0.0.1"):
            assert status(port, host) == 200, host
        assert status(port, f"evil.example:{port}") == 403
        # An event stream, let in under the old names: the reload ends it (to be opened again).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stream:
            stream.sendall(b"GET /api/mailsink/events HTTP/1.1\r\nHost: extra.test\r\n\r\n")
            opened = b""
            while b"retry: 2000" not in opened:  # streaming: registered with the service
                chunk = stream.recv(65536)
                assert chunk, opened
                opened += chunk
            assert opened.startswith(b"HTTP/1.1 200"), opened
            config.write_text('[http]\nhost = "0.0.0.0"\nallowed_hosts = ["other.test"]\n')
            reloaded = lines.until("config reloaded from").string
            assert (
                "http.allowed_hosts: extra.test, mailsink, *.ci.test"
                " -> other.test, mailsink, *.ci.test" in reloaded
            ), reloaded
            whole = opened
            while not whole.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                chunk = stream.recv(65536)
                assert chunk, whole  # (or closed before its end)
                whole += chunk
        assert not any("needs a restart" in line for line in lines.seen), lines.seen
        code, body = call(port, "GET", "/api/mailsink/faults", "extra.test")
        assert code == 403 and ADVICE in json.loads(body)["error"]
        for host in ("other.test", f"mailsink:{port}", "b.ci.test"):
            assert status(port, host) == 200, host
    finally:
        process.terminate()
        process.wait(timeout=15)
        lines.reader.join(timeout=5)  # to the end of stderr, which the exit closed
        assert process.stderr is not None and process.stdout is not None
        process.stderr.close()
        process.stdout.close()
