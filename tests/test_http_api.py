"""The HTTP API as a whole: its OpenAPI document against what aiohttp serves, a fuzz of every
route in that document, Basic auth, and how `mailsink serve` serves it (or not)."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import mailsink_process, message, run_cli

from mailsink.config import HttpSettings, Settings
from mailsink.testing import RunningSink

OPERATIONS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
LOGIN, PASSWORD = "tester", "pw-Zq8#never-logged"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    with RunningSink(tmp_path_factory.mktemp("api") / "mail.db") as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            for n in range(3):
                client.sendmail(
                    "app@shop.test", ["a@x.test", "hidden@x.test"], message(subject=f"Order {n}")
                )
        yield sink


class Client:
    """One keep-alive connection, reopened when the server closes it (as after a 413)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        whole: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            try:
                self.connection.request(
                    method, path, body=body, headers={**self.headers, **(headers or {})}
                )
                response = self.connection.getresponse()
                break
            except (http.client.HTTPException, ConnectionError) as error:
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                if attempt == 2:
                    raise AssertionError(f"{method} {path}: no answer ({error!r})") from None
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        if whole or response.status >= 300:
            data = response.read()
        else:  # a stream (events): the status and headers say enough
            data = b""
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        if response.will_close:
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        return response.status, answer_headers, data

    def json(self, method: str, path: str, **options: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, **options)
        return status, json.loads(data)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def document(running: RunningSink) -> dict[str, Any]:
    client = Client(running.http_port)
    status, headers, data = client.request("GET", "/api/openapi.json")
    client.close()
    assert status == 200 and headers["content-type"].startswith("application/json")
    return json.loads(data)


def served_routes(running: RunningSink) -> set[tuple[str, str]]:
    """(METHOD, /path/{param}) of every route aiohttp serves (GET's automatic HEAD aside)."""
    assert running.sink is not None and running.sink.http is not None
    served = set()
    for route in running.sink.http.app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", route.resource.canonical)
        served.add((route.method, canonical))
    return served


def test_openapi_lists_exactly_what_is_served(running: RunningSink, document: dict[str, Any]):
    assert document["openapi"].startswith("3.") and document["info"]["title"] == "mailsink"
    assert document["info"]["version"]
    documented = set()
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/"), path
        for method, operation in item.items():
            assert method in OPERATIONS, (path, method)
            documented.add((method.upper(), path))
            operation_ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d|default", status) and response["description"]
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(PATH_PARAM.findall(path)), (path, method)
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in {"query", "path", "header"}
                assert parameter["schema"]["type"] in {"string", "integer", "boolean", "number"}
            if "requestBody" in operation:
                assert operation["requestBody"]["content"]["application/json"]["schema"]
    assert len(operation_ids) == len(set(operation_ids)), "operationIds are unique"
    from mailsink.http.web_ui import UI_PATHS  # the UI in a browser: pages, not the API

    served = served_routes(running) - {("GET", path) for path in UI_PATHS}
    assert served - documented == set(), "served but not in /api/openapi.json"
    assert documented - served == set(), "in /api/openapi.json but not served"
    assert ("GET", "/api/openapi.json") in served


# ---- the fuzz

BAD_IDS = ["garbage", "0", "-1", str(2**70), "%C3%A9t%C3%A9", "%F0%9F%92%A5", "1.5", "%00"]
BAD_INTEGERS = ["-1", "-99999999999999999999", str(2**70), "abc", "1e9", "0x10", " "]
BAD_QUERIES = ["nosuchprefix:x", 'subject:"unclosed', "before:notadate", "size:>9e999", "\x00"]
BAD_BODIES = [
    b"not json",
    b"{",
    b"[]",
    b'"a string"',
    b"12",
    b"null",
    b"\xff\xfe",
    b'{"IDs": 5, "Read": "yes", "Tags": {}, "Search": [], "name": 7, "enabled": "x"}',
    b'{"IDs": [1e400, -1, "x", null, {}], "Read": 1e400, "limit": ' + b"9" * 5000 + b"}",
    b'{"IDs": [' + str(2**70).encode() + b'], "Tags": [' + b'"x",' * 2000 + b'"x"]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
]


def wrong_value(schema: dict[str, Any]) -> Any:
    """A value of another type than the schema says."""
    return {
        "string": 12,
        "integer": "twelve",
        "number": "twelve",
        "boolean": "yes",
        "array": "not a list",
        "object": ["not", "an", "object"],
    }.get(schema.get("type", ""), {"unexpected": True})


def schema_bodies(schema: dict[str, Any]) -> list[bytes]:
    """Bodies shaped like the route's schema with each field of the wrong type or huge."""
    properties = schema.get("properties") or {}
    if not properties:
        return []
    wrong = {name: wrong_value(prop) for name, prop in properties.items()}
    huge = {name: 2**70 for name in properties}
    return [json.dumps(wrong).encode(), json.dumps(huge).encode()]


def fill(path: str, value: str, good: str = "1") -> str:
    """The path with its first parameter `value` and the others `good`."""
    names = PATH_PARAM.findall(path)
    for index, name in enumerate(names):
        path = path.replace("{" + name + "}", value if index == 0 else good, 1)
    return path


def fuzz_requests(
    document: dict[str, Any],
) -> Iterator[tuple[str, str, str, bytes | None, str]]:
    """(method, documented path, path with query, body, what) for every route in the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            method = method.upper()
            params = [p for p in operation.get("parameters", []) if p["in"] == "query"]
            # Long waits are cut short, so that a request that is accepted answers at once.
            quick = "&".join(f"{p['name']}=0" for p in params if p["name"] in {"timeout", "wait"})

            def with_query(url: str, extra: str = "", quick: str = quick) -> str:
                parts = "&".join(part for part in (quick, extra) if part)
                return f"{url}?{parts}" if parts else url

            base = fill(path, "1")
            if PATH_PARAM.search(path):
                for bad_id in BAD_IDS:
                    yield method, path, with_query(fill(path, bad_id)), None, f"id {bad_id}"
            for param in params:
                name = param["name"]
                values = BAD_INTEGERS if param["schema"]["type"] == "integer" else BAD_QUERIES
                if param["schema"]["type"] == "boolean":
                    values = ["maybe", "2", ""]
                for value in values:
                    encoded = "".join(
                        c if c.isalnum() or c in "-_.:" else f"%{ord(c):02X}"
                        for c in value.encode("utf-8").decode("latin-1")
                    )
                    yield (
                        method,
                        path,
                        with_query(base, f"{name}={encoded}"),
                        None,
                        f"{name}={value!r}",
                    )
            yield method, path, with_query(base, "unknown_parameter=%FF"), None, "unknown parameter"
            if method in {"PUT", "POST", "DELETE", "PATCH"}:
                bodies = BAD_BODIES + schema_bodies(
                    (operation.get("requestBody") or {})
                    .get("content", {})
                    .get("application/json", {})
                    .get("schema", {})
                )
                for body in bodies:
                    yield method, path, with_query(base), body, f"body {body[:30]!r}"


def test_fuzz_every_route_answers_below_500_in_json_or_its_declared_type(
    running: RunningSink, document: dict[str, Any]
):
    client = Client(running.http_port)
    problems = []
    count = 0
    streams = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "event-stream" in str(operation) or path.endswith("/events")
    }
    for method, template, url, body, what in fuzz_requests(document):
        stream = (method, template) in streams
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, answer, data = client.request(method, url, body, headers, whole=not stream)
        count += 1
        kind = answer.get("content-type", "")
        if status >= 500:
            problems.append(f"{method} {url[:80]} ({what}): {status} {data[:120]!r}")
        elif status >= 400 and not (
            kind.startswith("application/json") or kind.startswith("text/plain")
        ):
            problems.append(f"{method} {url[:80]} ({what}): {status} as {kind!r}")
        elif status >= 400 and kind.startswith("application/json"):
            error = json.loads(data)
            if not isinstance(error, dict) or not isinstance(error.get("error"), str):
                problems.append(f"{method} {url[:80]} ({what}): {data[:120]!r}")
        if b"Traceback" in data:
            problems.append(f"{method} {url[:80]} ({what}): a traceback")
    assert not problems, "\n".join(problems[:40])
    assert count > 20
    # and the server still answers
    status, info = client.json("GET", "/api/openapi.json")
    assert status == 200 and info["paths"] == document["paths"]
    client.close()


def test_wrong_methods_are_405_with_allow(running: RunningSink, document: dict[str, Any]):
    client = Client(running.http_port)
    checked = 0
    for path, item in document["paths"].items():
        allowed = {method.upper() for method in item}
        wrong = next(m for m in ("PATCH", "PUT", "POST", "DELETE") if m not in allowed)
        status, headers, data = client.request(wrong, fill(path, "1"))
        assert status == 405, (wrong, path, status)
        assert "allow" in headers, (wrong, path)
        assert allowed <= set(headers["allow"].replace(" ", "").split(",")), (path, headers)
        assert isinstance(json.loads(data)["error"], str)
        checked += 1
    status, _, data = client.request("GET", "/api/no/such/route")
    assert status == 404 and json.loads(data)["error"]
    assert checked == len(document["paths"])
    client.close()


# ---- Basic auth


def test_basic_auth_guards_every_family_and_never_logs_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    settings = Settings(http=HttpSettings(users={LOGIN: PASSWORD}))
    good = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    bad_password = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}x".encode()).decode()
    bad_login = "Basic " + base64.b64encode(f"other:{PASSWORD}".encode()).decode()
    with RunningSink(tmp_path / "auth.db", settings) as sink:
        client = Client(sink.http_port)
        routes = ["/api/openapi.json", "/api/v1/messages", "/api/v2/messages"]
        routes += ["/api/mailsink/messages", "/api/v1/info", "/api/no/such/route"]
        for path in routes:
            for header in (None, bad_password, bad_login, "Basic !!!", "Bearer x", good[:-2]):
                status, answer, data = client.request(
                    "GET", path, headers={"Authorization": header} if header else {}
                )
                assert status == 401, (path, header, status)
                assert answer["www-authenticate"].startswith('Basic realm="mailsink"')
                assert json.loads(data) == {"error": "authentication required"}
        status, _, _ = client.request("GET", "/api/openapi.json", headers={"Authorization": good})
        assert status == 200
        opened = 0
        for path in routes[1:-1]:
            status, _, _ = client.request("GET", path, headers={"Authorization": good})
            if status != 404:  # a family whose routes have landed
                assert status == 200, path
                opened += 1
        status, _, _ = client.request("GET", routes[-1], headers={"Authorization": good})
        assert status == 404  # past auth, an unknown route is just unknown
        client.close()
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert PASSWORD not in logged and good.split()[1] not in logged
    assert "HTTP API on http://127.0.0.1:" in caplog.text


# ---- serving from the command line


def _started(process: subprocess.Popen, marker: str, seen: list[str]) -> str:
    """Read stderr into `seen` up to the line containing `marker` (the process keeps running)."""
    assert process.stderr is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"no {marker!r} in: {''.join(seen)}")


def _stop(process: subprocess.Popen, seen: list[str]) -> str:
    if process.poll() is None:
        process.terminate()
    _, err = process.communicate(timeout=15)
    return "".join(seen) + err.decode()


def test_serve_logs_the_url_refuses_a_taken_port_no_http_serves_none_http_host_wins(tmp_path: Path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    config = tmp_path / "open.toml"
    config.write_text('[http]\nhost = "0.0.0.0"\nport = 8025\n')
    common = ("serve", "--port", "0", "--db")
    # All at once: each start pays Python's import time, and they do not interact.
    wide = mailsink_process(
        *common, str(tmp_path / "a.db"), "--config", str(config), "--http-port", "0"
    )
    none = mailsink_process(*common, str(tmp_path / "c.db"), "--no-http", "--http-port", str(busy))
    # --http-host wins over the file's [http] host, as --http-port over its port.
    narrow = mailsink_process(
        *common, str(tmp_path / "d.db"), "--config", str(config), "--http-port", "0",
        "--http-host", "127.0.0.2",
    )  # fmt: skip
    seen: dict[subprocess.Popen, list[str]] = {p: [] for p in (wide, none, narrow)}
    try:
        line = _started(wide, "HTTP API on ", seen[wide])
        url = re.search(r"HTTP API on http://0\.0\.0\.0:(\d+)$", line.strip())
        assert url and url.group(1) != "8025", line  # --http-port wins over the file
        connection = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=5)
        connection.request("GET", "/api/openapi.json")
        assert connection.getresponse().status == 200
        connection.close()
        _started(wide, "reachable from other machines", seen[wide])
        assert (
            "HTTP listens on 0.0.0.0: reachable from other machines without a password"
            in (seen[wide][-1])
        )

        # In this process (one Python start less): the CLI's own exit and line.
        refused = run_cli(*common, str(tmp_path / "b.db"), "--http-port", str(busy))
        assert refused.code == 1, refused
        last = refused.err.splitlines()[-1]
        assert last.startswith(f"mailsink: cannot listen on 127.0.0.1:{busy} (HTTP): "), last
        assert last.lower().endswith("address already in use"), last
        assert "Traceback" not in refused.err

        _started(none, "listening on", seen[none])

        line = _started(narrow, "HTTP API on ", seen[narrow])
        url = re.search(r"HTTP API on http://127\.0\.0\.2:(\d+)$", line.strip())
        assert url, line
        connection = http.client.HTTPConnection("127.0.0.2", int(url.group(1)), timeout=5)
        connection.request("GET", "/api/openapi.json")
        assert connection.getresponse().status == 200
        connection.close()
        with pytest.raises(ConnectionRefusedError):  # only where it was told to listen
            socket.create_connection(("127.0.0.1", int(url.group(1))), timeout=5).close()
    finally:
        logs = {process: _stop(process, lines) for process, lines in seen.items()}
        taken.close()
    assert none.returncode == 0 and "HTTP API on" not in logs[none], logs[none]
    assert "cannot listen" not in logs[none] and "Traceback" not in logs[wide]
