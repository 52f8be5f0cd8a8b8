"""The HTTP core against hostile input (an adversarial review's findings): other origins and
DNS-rebound names, body caps, lone surrogates and NaN in JSON, huge tag lists, odd numbers in
parameters and Authorization headers, HEAD without side effects, raw streaming, OpenAPI's
success statuses, and a reload that adds users ending the open event streams.

One server, HTTP on 127.0.0.2 and SMTP on 127.0.0.1, so that every request also checks that
RunningSink.url is where HTTP listens and that the bound address is a loopback Host name."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import message, run_cli

from mailsink.config import HttpSettings, Settings
from mailsink.store import Reader
from mailsink.testing import RunningSink

HTTP_HOST = "127.0.0.2"
BIG = 1_500_000  # bytes of body: two pieces of the store's raw stream


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    settings = Settings(http=HttpSettings(host=HTTP_HOST))
    with RunningSink(tmp_path_factory.mktemp("hard") / "mail.db", settings) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.sendmail("app@shop.test", ["a@x.test"], message(subject="small"))
            body = ("x" * 998 + "\r\n") * (BIG // 1000)
            client.sendmail("app@shop.test", ["a@x.test"], message(subject="big", body=body))
        yield sink


def call(
    sink: RunningSink,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    host: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(HTTP_HOST, sink.http_port, timeout=10)
    try:
        if host is not None:  # a Host header of the test's choosing
            connection.putrequest(method, path, skip_host=True)
            connection.putheader("Host", host)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders()
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def ids(sink: RunningSink) -> dict[str, int]:
    status, _, body = call(sink, "GET", "/api/mailsink/messages")
    assert status == 200
    return {item["subject"]: item["id"] for item in json.loads(body)}


def test_url_is_where_http_listens(running: RunningSink) -> None:
    assert running.host == "127.0.0.1"
    assert running.url == f"http://{HTTP_HOST}:{running.http_port}"
    status, _, body = call(running, "GET", "/api/mailsink/faults")
    assert status == 200 and "rules" in json.loads(body)


def test_other_origins_and_rebound_names_are_refused(running: RunningSink) -> None:
    port = running.http_port
    rule = b'{"name": "csrf", "stage": "connect", "action": "disconnect"}'
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, headers, body = call(running, "POST", "/api/mailsink/faults", rule, evil)
    assert status == 403 and headers["Content-Type"].startswith("application/json")
    assert "evil.example" in json.loads(body)["error"]
    assert all(
        r["name"] != "csrf"
        for r in json.loads(call(running, "GET", "/api/mailsink/faults")[2])["rules"]
    )
    upgrade = {
        "Origin": "http://evil.example",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Version": "13",
    }
    assert call(running, "GET", "/api/events", headers=upgrade)[0] == 403
    assert call(running, "GET", "/api/mailsink/faults", headers={"Origin": "null"})[0] == 403
    same = {"Origin": f"http://{HTTP_HOST}:{port}"}
    assert call(running, "GET", "/api/mailsink/faults", headers=same)[0] == 200
    # DNS rebinding: evil.example resolving to 127.0.0.2 makes its page same-origin.
    rebound = call(running, "GET", "/api/mailsink/faults", host=f"evil.example:{port}")
    assert rebound[0] == 403 and "loopback" in json.loads(rebound[2])["error"]
    for name in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"{HTTP_HOST}:{port}"):
        assert call(running, "GET", "/api/mailsink/faults", host=name)[0] == 200, name


def test_bodies_are_capped_at_5_mib_except_send(running: RunningSink) -> None:
    huge = b'{"read": true, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    status, _, body = call(running, "PUT", "/api/mailsink/messages/1", huge)
    assert status == 413 and "5 MiB" in json.loads(body)["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is on what is read
        yield from (huge[at : at + 1024 * 1024] for at in range(0, len(huge), 1024 * 1024))

    connection = http.client.HTTPConnection(HTTP_HOST, running.http_port, timeout=10)
    try:
        connection.request("PUT", "/api/mailsink/faults/nope", body=chunks(), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and "error" in json.loads(response.read())
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the whole body went: the same answer, unread
    finally:
        connection.close()
    # A route of small bodies caps them lower: json.loads would hold the loop (and the GIL).
    padded = json.dumps({"enabled": True, "pad": [0] * 40_000}).encode()
    status, _, body = call(running, "PUT", "/api/mailsink/faults/nope", padded)
    assert status == 413 and json.loads(body)["error"] == "the body is over 64 KiB"
    # Over 64 KiB and under the route's cap: parsed on a worker thread, and answered.
    padded = json.dumps({"read": False, "add_tags": ["x"] * 20_000}).encode()
    status, _, body = call(running, "PUT", "/api/mailsink/messages/999999", padded)
    assert status == 404 and len(padded) > 64 * 1024


def test_lone_surrogates_become_u_fffd_and_nan_is_refused(running: RunningSink) -> None:
    faults = "/api/mailsink/faults"
    status, _, body = call(running, "PUT", "/api/mailsink/messages/1", rb'{"\ud800": 1}')
    assert status == 400 and json.loads(body.decode("utf-8"))["error"].startswith("\ufffd")
    named = rb'{"name": "s\ud800", "stage": "data", "reply": "451 4.3.0 \udfff"}'
    status, _, body = call(running, "POST", faults, named)
    assert status == 201, body
    added = json.loads(body.decode("utf-8"))
    assert added["name"] == "s\ufffd" and added["reply"] == "451 4.3.0 \ufffd"
    try:
        status, _, body = call(running, "GET", faults)
        assert status == 200 and "s\ufffd" in body.decode("utf-8")  # valid UTF-8 JSON
    finally:
        assert call(running, "DELETE", faults + "/s%EF%BF%BD")[0] == 200
    nan = b'{"name": "nan", "stage": "data", "action": "delay", "delay": NaN}'
    status, _, body = call(running, "POST", faults, nan)
    assert status == 400 and "NaN" in json.loads(body)["error"]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_check_config_refuses_a_non_finite_delay(tmp_path: Any, value: str) -> None:
    config = tmp_path / "nan.toml"
    config.write_text(f'[[fault]]\nname = "x"\nstage = "data"\naction = "delay"\ndelay = {value}\n')
    result = run_cli("check-config", str(config))
    assert result.code != 0 and f"delay: expected a finite number, got {value}" in result.err


def test_rules_refuse_non_finite_numbers_from_http(running: RunningSink) -> None:
    # JSON's own NaN is refused as JSON; 1e999 is JSON, and Python reads it as infinity.
    rule = b'{"name": "inf", "stage": "data", "action": "delay", "delay": 1e999}'
    status, _, body = call(running, "POST", "/api/mailsink/faults", rule)
    assert status == 400 and json.loads(body)["error"] == "delay: expected a finite number, got inf"


def test_a_huge_tag_list_is_refused_at_once(running: RunningSink) -> None:
    message_id = ids(running)["small"]
    many = json.dumps({"add_tags": ["same"] * 20_000}).encode()
    started = time.perf_counter()
    status, _, body = call(running, "PUT", f"/api/mailsink/messages/{message_id}", many)
    assert status == 400 and "over 1000 tags given" in json.loads(body)["error"]
    assert time.perf_counter() - started < 1.0
    fine = json.dumps({"add_tags": ["same"] * 20}).encode()
    status, _, body = call(running, "PUT", f"/api/mailsink/messages/{message_id}", fine)
    assert status == 200 and json.loads(body)["tags"] == ["same"]


def test_integer_parameters_are_ascii_digits(running: RunningSink) -> None:
    for raw in ("%205", "1_000", "%D9%A5", "5.0", "0x5"):
        status, _, body = call(running, "GET", f"/api/mailsink/messages?limit={raw}")
        assert status == 400 and "limit: expected a whole number" in json.loads(body)["error"]
    status, _, body = call(running, "GET", "/api/mailsink/messages?limit=-5")
    assert status == 400 and "limit: expected 1 to 10000, got -5" in json.loads(body)["error"]
    status, _, body = call(running, "GET", "/api/mailsink/messages?limit=" + "9" * 5000)
    assert status == 400 and "limit: expected 1 to 10000" in json.loads(body)["error"]
    status, _, body = call(running, "GET", "/api/mailsink/sessions?limit=1000")
    assert status == 200 and len(json.loads(body)) >= 1


def test_auth_with_a_non_ascii_header_and_a_reload_adding_users(running: RunningSink) -> None:
    assert running.sink is not None and running.sink.http is not None
    service = running.sink.http
    before = service.settings
    stream = socket.create_connection((HTTP_HOST, running.http_port), timeout=5)
    try:
        key = base64.b64encode(b"0123456789abcdef")
        stream.sendall(
            b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.2\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            + key
            + b"\r\n\r\n"
        )
        assert stream.recv(65536).startswith(b"HTTP/1.1 101")
        users = dataclasses.replace(before.http, users={"alice": "s3cret"})

        async def reload() -> None:
            service.apply_settings(dataclasses.replace(before, http=users))

        running._call(reload())
        seen = b""
        while b"server stopping" not in seen:  # closed: it was let in without a password
            chunk = stream.recv(65536)
            assert chunk, seen
            seen += chunk
        status, headers, body = call(
            running, "GET", "/api/mailsink/faults", headers={"Authorization": "Basic \u00e9t\u00e9"}
        )
        assert status == 401 and "WWW-Authenticate" in headers and json.loads(body)["error"]
        good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert (
            call(running, "GET", "/api/mailsink/faults", headers={"Authorization": good})[0] == 200
        )
    finally:
        stream.close()

        async def restore() -> None:
            service.apply_settings(before)

        running._call(restore())


def test_head_does_not_read_and_raw_streams_whole(running: RunningSink) -> None:
    found = ids(running)
    small, big = found["small"], found["big"]
    status, headers, _ = call(running, "HEAD", f"/api/mailsink/messages/{small}")
    assert status == 200
    assert not next(
        m for m in json.loads(call(running, "GET", "/api/mailsink/messages")[2]) if m["id"] == small
    )["read"]
    status, headers, raw = call(running, "GET", f"/api/mailsink/messages/{big}/raw")
    assert status == 200 and headers["Content-Type"] == "message/rfc822"
    assert int(headers["Content-Length"]) == len(raw) > BIG and raw.endswith(b"x\r\n")
    status, headers, nothing = call(running, "HEAD", f"/api/mailsink/messages/{big}/raw")
    assert status == 200 and int(headers["Content-Length"]) == len(raw) and nothing == b""
    assert call(running, "GET", "/api/mailsink/messages/999999/raw")[0] == 404


def test_openapi_declares_each_success_status(running: RunningSink) -> None:
    document = json.loads(call(running, "GET", "/api/openapi.json")[2])
    add = document["paths"]["/api/mailsink/faults"]["post"]["responses"]
    assert "201" in add and "200" not in add
    assert "200" in document["paths"]["/api/mailsink/faults"]["get"]["responses"]


def test_json_of_too_many_arrays_is_refused_before_parsing(running: RunningSink) -> None:
    # 10 001 arrays in 22 KB (re-review X1: 4.9 MB of them held the GIL, so SMTP, ~2 s).
    wide = b"[" + b",".join([b"[[[[[]]]]]"] * 2_000) + b",[]]"
    for method, path, body, key in (
        ("PUT", "/api/v1/messages", b'{"Read": true, "IDs": ["999999"], "X": %s}', None),
        ("PUT", "/api/v1/tags", b'{"Tags": ["a"], "IDs": %s}', None),
        ("POST", "/api/mailsink/faults", b'{"name": "w", "x": %s}', "error"),
    ):
        status, _, answer = call(running, method, path, body % wide)
        text = json.loads(answer)[key] if key else answer.decode()
        assert status == 413 and text == "the body holds more than 10000 JSON arrays and objects"
    # Brackets in strings are no arrays (a note, CSS): counted out, and the body is taken.
    escaped = json.dumps({"Read": False, "IDs": ["999999"], "X": '\\"[{' * 11_000}).encode()
    assert escaped.count(b"[") > 10_000
    assert call(running, "PUT", "/api/v1/messages", escaped)[:1] == (200,)
    # ... but not one outside a string that only seems to be inside one.
    status, _, _ = call(running, "PUT", "/api/v1/messages", b'{"X": "\\\\", "Y": %s}' % wide)
    assert status == 413


def test_mailpit_raw_and_mailhog_download_are_read_in_pieces(
    running: RunningSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-review X2: each held the whole message per download. The real read, counted.
    pieces: list[int] = []
    real = Reader.raw_piece

    def counted(reader: Reader, message_id: int, start: int, size: int) -> Any:
        pieces.append(start)
        return real(reader, message_id, start, size)

    monkeypatch.setattr(Reader, "raw_piece", counted)
    big = ids(running)["big"]
    whole = call(running, "GET", f"/api/mailsink/messages/{big}/raw")[2]
    assert len(whole) > BIG
    for path, content_type, disposition in (
        (f"/api/v1/message/{big}/raw", "text/plain; charset=utf-8", None),
        (f"/api/v1/message/{big}/raw?dl=1", "text/plain; charset=utf-8", f"{big}.eml"),
        (f"/api/v1/messages/{big}/download", "message/rfc822", f"{big}.eml"),
    ):
        pieces.clear()
        status, headers, raw = call(running, "GET", path)
        assert status == 200 and raw == whole and int(headers["Content-Length"]) == len(whole)
        assert headers["Content-Type"] == content_type
        if disposition:
            assert headers["Content-Disposition"] == f'attachment; filename="{disposition}"'
        assert pieces == [0, 1024 * 1024], path
    status, headers, body = call(running, "GET", "/api/v1/message/999999/raw")
    assert (status, body) == (404, b"404 page not found")
    assert headers["Content-Type"].startswith("text/plain")
    assert call(running, "GET", "/api/v1/messages/999999/download")[0] == 404


def test_another_site_s_requests_change_nothing_even_without_origin(running: RunningSink) -> None:
    """A form posted from another site: some browsers send no Origin, every current one says
    Sec-Fetch-Site. Reads stay open (a page of another site cannot read the answers anyway)."""
    rule = b'{"name": "csrf-form", "stage": "connect", "action": "disconnect"}'
    for where in ("cross-site", "same-site", "Cross-Site"):
        form = {"Sec-Fetch-Site": where, "Content-Type": "application/x-www-form-urlencoded"}
        status, _, body = call(running, "POST", "/api/mailsink/faults", rule, form)
        assert status == 403 and "may not POST" in json.loads(body)["error"], where
        assert call(running, "DELETE", "/api/v1/messages", b"{}", form)[0] == 403
    rules = json.loads(call(running, "GET", "/api/mailsink/faults")[2])["rules"]
    assert all(r["name"] != "csrf-form" for r in rules)
    read = {"Sec-Fetch-Site": "cross-site"}
    assert call(running, "GET", "/api/mailsink/faults", headers=read)[0] == 200
    own = {"Sec-Fetch-Site": "same-origin"}
    status, _, _ = call(running, "POST", "/api/mailsink/faults", rule, own)
    assert status == 201
    assert call(running, "DELETE", "/api/mailsink/faults/csrf-form", headers=own)[0] == 200


def test_the_server_s_token_and_its_file_beside_the_store(tmp_path) -> None:
    """What attached UIs use (mailsink.server_link): a token that passes as `[http] users` do,
    in a file only the store's owner reads, gone when the server stops."""
    from mailsink.server_link import find_server, server_file

    settings = Settings(http=HttpSettings(users={"ci": "right"}))
    with RunningSink(tmp_path / "mail.db", settings) as sink:
        found = find_server(str(tmp_path / "mail.db"))
        assert found is not None and found.url == sink.url
        path = server_file(str(tmp_path / "mail.db"))
        assert path.stat().st_mode & 0o777 == 0o600
        assert found.token == sink.call(lambda: sink.sink.http.token)

        def get(authorization: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", sink.http_port, timeout=10)
            try:
                connection.request("GET", "/api/v1/info", headers={"Authorization": authorization})
                return connection.getresponse().status
            finally:
                connection.close()

        assert get(f"Bearer {found.token}") == 200
        assert get(f"Bearer {found.token[:-1]}") == 401
        assert get("Bearer ") == 401
        assert get(f"Basic {base64.b64encode(b'ci:right').decode()}") == 200
        assert found.token not in (tmp_path / "mail.db").read_bytes().decode("latin-1")
    assert not path.exists()
    assert find_server(str(tmp_path / "mail.db")) is None


def test_a_server_file_left_by_a_dead_server_finds_nothing(tmp_path) -> None:
    from mailsink.server_link import ServerAddress, find_server, server_file, write_server_file

    store = tmp_path / "mail.db"
    with RunningSink(store, Settings()):
        pass
    write_server_file(str(store), ServerAddress("http://127.0.0.1:9", "stale"))
    assert find_server(str(store)) is None  # nobody holds the store's lock
    # A server holds the lock, but the file is another's, whose process is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with RunningSink(store, Settings()) as sink:
        assert find_server(str(store)) is not None
        path = server_file(str(store))
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "pid": gone.pid}))
        assert find_server(str(store)) is None
        path.write_text(json.dumps(data))
        assert find_server(str(store)).url == sink.url  # type: ignore[union-attr]
