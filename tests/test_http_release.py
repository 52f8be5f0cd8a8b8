"""Releasing over HTTP (issue 18): Mailpit's `POST /api/v1/message/{ID}/release`, MailHog's
`POST /api/v1/messages/{id}/release`, mailsink's own `/api/mailsink/messages/{id}/release(s)`,
Mailpit's `/api/v1/webui` MessageRelay, the `message-released` event, and
`ServerLink.release` / `release_plan` (an attached sink asking the server).

A real server over loopback, with `[relay]` pointing at a second real mailsink
(tests/relay_upstream.py: STARTTLS under the test's own CA, AUTH, fault rules), read back
byte for byte; real HTTP clients (http.client, aiohttp through ServerLink, the npm clients)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import message
from relay_upstream import PASSWORD, SilentServer, Upstream

from mailsink.config import Settings, SmtpSettings, StorageSettings
from mailsink.errors import (
    NoSuchMessage,
    RecipientsRefused,
    RelayNotConfigured,
    ReleaseError,
    UpstreamError,
)
from mailsink.events import EventBus
from mailsink.http.mailpit_api import allowed_regexp, glob_regexp
from mailsink.relay import ReleaseRecord, glob_matches
from mailsink.run import loop_factory
from mailsink.server_link import UNREACHABLE, LinkError, ServerAddress, ServerLink
from mailsink.sink import Sink
from mailsink.testing import RunningSink

T = TypeVar("T")
ALLOWED = ["*@example.test", "team+?1@corp.test"]
RELAY_FROM = "relay-bounces@example.test"
INTEROP = Path(__file__).resolve().parent / "interop"


# ---- the servers: an upstream, a sink releasing to it, one with releasing off


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with Upstream(tmp_path_factory.mktemp("upstream")) as up:
        yield up


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[RunningSink]:
    directory = tmp_path_factory.mktemp("served")
    config = directory / "relay.toml"
    config.write_text(upstream.relay_toml(allowed=ALLOWED, mail_from=RELAY_FROM))
    with RunningSink(directory / "mail.db", config=config) as sink:
        yield sink


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    with RunningSink(tmp_path_factory.mktemp("plain") / "mail.db") as sink:
        store(sink, message(), ["ann@example.test"])
        yield sink


@pytest.fixture(autouse=True)
def no_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").clear_faults()


_stored = 0


def store(sink: RunningSink, raw: bytes, rcpt: list[str], sender: str = "app@shop.test") -> int:
    """Send `raw` to `sink` over SMTP; its id."""
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.sendmail(sender, rcpt, raw)
    with sink.reader() as reader:
        return reader.list_messages(limit=1)[0].id


def fresh(to: str = "ann@example.test") -> bytes:
    """A message unlike any other here (its own Subject and Message-ID), with a dot line."""
    global _stored
    _stored += 1
    return message(
        to=to,
        subject=f"Release {_stored}",
        message_id=f"<r{_stored}@shop.test>",
        body="Line one\r\n.dot line\r\nLast\r\n",
    )


def call(
    sink: RunningSink,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    raw: bytes | None = None,
) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one request; `body` sent as JSON."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", sink.http_port, timeout=30)
    try:
        sent = dict(headers or {})
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def call_json(sink: RunningSink, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, kind, data = call(sink, method, path, body)
    assert kind.startswith("application/json"), (status, kind, data[:200])
    return status, json.loads(data)


def releases(sink: RunningSink, message_id: int) -> list[ReleaseRecord]:
    with sink.reader() as reader:
        return reader.releases(message_id)


def upstream_count(upstream: Upstream) -> tuple[int, int]:
    """(messages, sessions) the upstream has had: a refusal must leave both as they were.
    Counted once no session is open or unwritten there (the last release's QUIT may still be
    on its way)."""
    deadline = time.monotonic() + 10
    while upstream.running.live_sessions():
        assert time.monotonic() < deadline, "the upstream's sessions do not end"
        time.sleep(0.02)
    return len(upstream.raw_messages()), len(upstream.sessions())


def received(upstream: Upstream, before: int) -> bytes:
    """The one message the upstream got after its first `before`."""
    got = upstream.wait_for_messages(before + 1)
    assert len(got) == before + 1, len(got)
    return got[-1]


# ---- mailsink's own routes


def test_native_plan_release_and_records(served: RunningSink, upstream: Upstream) -> None:
    raw = fresh()
    # Bcc'd Ann is in the envelope only; zed is outside the allow-list.
    message_id = store(served, raw, ["zed@elsewhere.test", "Ann@Example.test"])
    before = len(upstream.raw_messages())

    status, plan = call_json(served, "GET", f"/api/mailsink/messages/{message_id}/release")
    assert status == 200
    assert plan["configured"] is True and plan["message_id"] == message_id
    assert plan["upstream"] == f"127.0.0.1:{upstream.port}"
    assert plan["mail_from"] == RELAY_FROM
    assert plan["recipients"] == ["Ann@Example.test"]
    assert plan["not_allowed"] == ["zed@elsewhere.test"]
    assert plan["allowed_recipients"] == ALLOWED

    status, answer = call_json(served, "POST", f"/api/mailsink/messages/{message_id}/release")
    assert status == 200, answer
    record = answer["release"]
    assert (record["outcome"], record["trigger"], record["code"]) == ("sent", "http", 250)
    assert record["recipients"] == ["Ann@Example.test"] and record["message_id"] == message_id
    assert record["reply"].startswith("250 2.0.0 Ok") or "queued as" in record["reply"]
    assert received(upstream, before) == raw  # the stored bytes, dot line and all
    assert upstream.envelopes()[-1] == (RELAY_FROM, ["Ann@Example.test"])

    # Given recipients, once each whatever their case; another trigger.
    body = {"to": ["bob@example.test", "BOB@example.test", "team+a1@corp.test"], "trigger": "tui"}
    status, answer = call_json(served, "POST", f"/api/mailsink/messages/{message_id}/release", body)
    assert status == 200, answer
    assert answer["release"]["recipients"] == ["bob@example.test", "team+a1@corp.test"]
    assert answer["release"]["trigger"] == "tui"
    assert received(upstream, before + 1) == raw
    assert upstream.envelopes()[-1] == (RELAY_FROM, ["bob@example.test", "team+a1@corp.test"])

    status, listed = call_json(served, "GET", f"/api/mailsink/messages/{message_id}/releases")
    assert status == 200
    stored = releases(served, message_id)
    assert [r.id for r in stored] == [r["id"] for r in listed["releases"]]
    assert listed["releases"] == [r.as_json() for r in stored]
    assert [r["trigger"] for r in listed["releases"]] == ["http", "tui"]
    # ... and `show --json` over HTTP has them too.
    status, shown = call_json(served, "GET", f"/api/mailsink/messages/{message_id}")
    assert status == 200 and shown["releases"] == listed["releases"]


def test_native_refusals_send_nothing_and_name_the_cause(
    served: RunningSink, upstream: Upstream
) -> None:
    message_id = store(served, fresh(), ["ann@example.test"])
    path = f"/api/mailsink/messages/{message_id}/release"
    before = upstream_count(upstream)

    status, answer = call_json(
        served, "POST", path, {"to": ["ann@example.test", "eve@evil.test", "not an address"]}
    )
    assert status == 400
    assert answer["refused"] == ["eve@evil.test", "not an address"]
    assert "eve@evil.test" in answer["error"] and "not an address" in answer["error"]
    status, answer = call_json(served, "POST", path, {"to": ["team+ab1@corp.test"]})  # ?: one
    assert (status, answer["refused"]) == (400, ["team+ab1@corp.test"])
    status, answer = call_json(served, "POST", path, {"to": []})
    assert status == 400 and "no recipients" in answer["error"]

    for body, named in (
        ({"to": "ann@example.test"}, "to:"),
        ({"to": ["ann@example.test", 7]}, "to:"),
        ({"to": [f"u{n}@example.test" for n in range(101)]}, "to: 101 recipients"),
        ({"trigger": "auto"}, "trigger:"),
        ({"trigger": "cron"}, "trigger:"),
        ({"trigger": ["http"]}, "trigger:"),
        ({"Host": "smtp.elsewhere.test"}, "Host: unknown key"),
        ([], "expected a JSON object"),
    ):
        status, answer = call_json(served, "POST", path, body)
        assert status == 400 and answer["error"].startswith(named), (body, answer)
        assert "refused" not in answer
    status, _, data = call(served, "POST", path, raw=b"{not json")
    assert status == 400 and json.loads(data)["error"].startswith("the body is not JSON")

    for method, route in (("POST", "release"), ("GET", "release"), ("GET", "releases")):
        status, answer = call_json(served, method, f"/api/mailsink/messages/999999/{route}")
        assert status == 404 and answer == {"error": "no message 999999"}, (method, route)
        status, answer = call_json(served, method, f"/api/mailsink/messages/nope/{route}")
        assert status == 404

    assert upstream_count(upstream) == before  # no message, and not even a connection
    assert releases(served, message_id) == []  # nothing recorded


def test_native_upstream_failures_are_502_and_a_partial_release_is_200(
    served: RunningSink, upstream: Upstream
) -> None:
    message_id = store(served, fresh(), ["ann@example.test", "bob@example.test"])
    path = f"/api/mailsink/messages/{message_id}/release"
    before = len(upstream.raw_messages())

    upstream.add_fault(
        name="no bob",
        stage="rcpt",
        action="reply",
        reply="550 5.1.1 no such user",
        match={"recipient": "bob@*"},
    )
    status, answer = call_json(served, "POST", path)
    assert status == 200, answer
    record = answer["release"]
    assert record["outcome"] == "partial"
    assert record["refused"] == {"bob@example.test": "550 5.1.1 no such user"}
    assert len(upstream.wait_for_messages(before + 1)) == before + 1
    assert upstream.envelopes()[-1] == (RELAY_FROM, ["ann@example.test"])

    upstream.add_fault(name="nobody", stage="rcpt", action="reply", reply="550 5.1.1 gone away")
    status, answer = call_json(served, "POST", path, {"to": ["ann@example.test"]})
    assert status == 502
    assert answer["error"].startswith(f"release of message {message_id} failed at RCPT")
    assert "550 5.1.1 gone away" in answer["error"]
    assert (answer["code"], answer["stage"], answer["timed_out"]) == (550, "rcpt", False)
    assert answer["release"]["outcome"] == "failed" and answer["release"]["code"] == 550
    assert [r.outcome for r in releases(served, message_id)] == ["partial", "failed"]
    assert answer["release"]["id"] == releases(served, message_id)[-1].id
    assert len(upstream.raw_messages()) == before + 1


def test_a_silent_upstream_is_a_504_in_the_timeout(tmp_path: Path) -> None:
    with SilentServer() as silent:
        config = tmp_path / "silent.toml"
        config.write_text(
            f'[relay]\nhost = "127.0.0.1"\nport = {silent.port}\ntls = "none"\ntimeout = 0.5\n'
            'allowed_recipients = ["*@example.test"]\n'
        )
        with RunningSink(tmp_path / "mail.db", config=config) as sink:
            message_id = store(sink, fresh(), ["ann@example.test"])
            started = time.monotonic()
            status, answer = call_json(sink, "POST", f"/api/mailsink/messages/{message_id}/release")
            took = time.monotonic() - started
            # MailHog's route answers it the same way.
            hog, hog_answer = call_json(
                sink, "POST", f"/api/v1/messages/{message_id}/release", {"Email": "a@example.test"}
            )
    assert status == 504 and answer["timed_out"] is True and answer["code"] is None
    assert "timed out" in answer["error"] and answer["release"]["outcome"] == "failed"
    assert took < 5
    assert hog == 504 and "timed out" in hog_answer["error"]


def test_every_face_says_when_releasing_is_off(plain: RunningSink) -> None:
    status, answer = call_json(plain, "POST", "/api/mailsink/messages/1/release")
    assert (status, answer) == (409, {"error": "releasing is off: no [relay] host in the config"})
    status, answer = call_json(plain, "POST", "/api/v1/messages/1/release", {"Email": "a@x.test"})
    assert (status, answer) == (409, {"error": "releasing is off: no [relay] host in the config"})
    status, kind, data = call(plain, "POST", "/api/v1/message/1/release", {"To": ["a@x.test"]})
    assert (status, kind, data) == (
        400,
        "text/plain; charset=utf-8",
        b"releasing is off: no [relay] host in the config",
    )
    status, plan = call_json(plain, "GET", "/api/mailsink/messages/1/release")
    assert status == 200 and plan["configured"] is False and plan["upstream"] == ""
    status, webui = call_json(plain, "GET", "/api/v1/webui")
    assert status == 200 and webui["MessageRelay"] == {
        "Enabled": False,
        "SMTPServer": "",
        "ReturnPath": "",
        "AllowedRecipients": "",
        "BlockedRecipients": "",
        "OverrideFrom": "",
        "PreserveMessageIDs": False,
        "RecipientAllowlist": "",
    }
    assert releases(plain, 1) == []


# ---- Mailpit


def test_mailpit_release_answers_ok_and_sends_the_bytes(
    served: RunningSink, upstream: Upstream
) -> None:
    raw = fresh()
    message_id = store(served, raw, ["ann@example.test"])
    before = len(upstream.raw_messages())

    latest = {"To": ["carl@example.test"]}
    status, kind, data = call(served, "POST", "/api/v1/message/latest/release", latest)
    assert (status, kind, data) == (200, "text/plain; charset=utf-8", b"ok")
    assert received(upstream, before) == raw
    assert upstream.envelopes()[-1] == (RELAY_FROM, ["carl@example.test"])
    # Go's decoder takes a key in any case, as Mailpit does.
    status, _, data = call(
        served, "POST", f"/api/v1/message/{message_id}/release", {"to": ["dan@example.test"]}
    )
    assert (status, data) == (200, b"ok")
    assert received(upstream, before + 1) == raw
    (first, second) = releases(served, message_id)
    assert (first.trigger, first.recipients) == ("http", ("carl@example.test",))
    assert second.recipients == ("dan@example.test",)


def test_mailpit_release_refusals_are_text_as_mailpit_s(
    served: RunningSink, upstream: Upstream
) -> None:
    message_id = store(served, fresh(), ["ann@example.test", "bob@example.test"])
    path = f"/api/v1/message/{message_id}/release"
    before = upstream_count(upstream)

    def text(body: Any, **options: Any) -> tuple[int, str]:
        status, kind, data = call(served, "POST", options.get("path", path), body)
        assert kind.startswith("text/plain"), (status, kind, data)
        return status, data.decode()

    assert text({"To": ["eve@evil.test"]}) == (
        400,
        "Failed: 1 Address do not match the allowlist: eve@evil.test",
    )
    assert text({"To": ["ann@example.test", "eve@evil.test", "mal@evil.test"]}) == (
        400,
        "Failed: 2 Addresses do not match the allowlist: eve@evil.test, mal@evil.test",
    )
    assert text({"To": ["nobody"]}) == (400, "Invalid email address: nobody")
    assert text({"To": []}) == (400, "No valid addresses found")
    assert text({"Subject": "x"}) == (400, "No valid addresses found")
    assert text({"To": "ann@example.test"})[1].startswith("To: expected a list")
    assert text([1]) == (400, "expected a JSON object")
    assert text({"To": ["a@example.test"]}, path="/api/v1/message/999999/release") == (
        404,
        "404 page not found",
    )
    assert upstream_count(upstream) == before
    assert releases(served, message_id) == []

    upstream.add_fault(name="nobody", stage="rcpt", action="reply", reply="550 5.1.1 gone away")
    status, said = text({"To": ["ann@example.test"]})
    assert status == 400
    assert said.startswith(f"SMTP error: release of message {message_id} failed at RCPT")
    assert said.endswith("answered 550 5.1.1 gone away")
    upstream.clear_faults()

    upstream.add_fault(
        name="no bob",
        stage="rcpt",
        action="reply",
        reply="550 5.1.1 no such user",
        match={"recipient": "bob@*"},
    )
    status, said = text({"To": ["ann@example.test", "bob@example.test"]})
    assert status == 400  # some went, some did not: not Mailpit's "ok"
    assert said.startswith(f"SMTP error: release of message {message_id} was partial")
    assert "bob@example.test (550 5.1.1 no such user)" in said and "ann@example.test" in said
    assert [r.outcome for r in releases(served, message_id)] == ["failed", "partial"]


def test_mailpit_webui_message_relay_is_the_relay_section(
    served: RunningSink, upstream: Upstream
) -> None:
    status, webui = call_json(served, "GET", "/api/v1/webui")
    assert status == 200
    relay = webui["MessageRelay"]
    pattern = "^(?:.*@example\\.test|team\\+.1@corp\\.test)$"
    assert relay == {
        "Enabled": True,
        "SMTPServer": f"127.0.0.1:{upstream.port}",
        "ReturnPath": RELAY_FROM,
        "AllowedRecipients": pattern,
        "BlockedRecipients": "",
        "OverrideFrom": "",
        "PreserveMessageIDs": True,  # the bytes go unchanged
        "RecipientAllowlist": pattern,
    }
    assert PASSWORD not in json.dumps(webui)


@pytest.mark.parametrize(
    "glob",
    ["*@example.test", "a?c@x.test", "team+?1@corp.test", "[a-c]*@x.test", "[!]]@y.test",
     "a.b+(c)|d^$@x.test", "x\\y@z.test", "*", "ANN@Example.TEST"],
)  # fmt: skip
def test_the_allowlist_regexp_matches_what_the_glob_matches(glob: str) -> None:
    candidates = [
        "ann@example.test", "abc@x.test", "aXc@x.test", "team+a1@corp.test",
        "team+ab1@corp.test", "b@x.test", "[a-c]b@x.test", "[!]]@y.test", "]@y.test",
        "a.b+(c)|d^$@x.test", "aab+(c)|d^$@x.test", "x\\y@z.test", "xy@z.test",
    ]  # fmt: skip
    expression = re.compile(allowed_regexp((glob,)))
    for address in candidates:
        assert bool(expression.fullmatch(address)) == glob_matches([glob], address), (
            glob,
            address,
            glob_regexp(glob),
        )
    assert allowed_regexp(()) == "^$"  # none allowed (Mailpit's "" would allow all)


# ---- MailHog


def test_mailhog_release_with_its_release_config(served: RunningSink, upstream: Upstream) -> None:
    raw = fresh()
    message_id = store(served, raw, ["ann@example.test"])
    path = f"/api/v1/messages/{message_id}/release"
    before = len(upstream.raw_messages())

    body = {"Host": "127.0.0.1", "Port": str(upstream.port), "Email": "ann@example.test"}
    status, kind, data = call(served, "POST", path, body)
    assert (status, kind, data) == (200, "text/json", b"")  # as MailHog: no body
    assert received(upstream, before) == raw
    assert upstream.envelopes()[-1] == (RELAY_FROM, ["ann@example.test"])
    # npm's mailhog client spells the keys in lower case; no Host at all is [relay]'s too.
    for body in (
        {"host": "127.0.0.1", "port": upstream.port, "email": "bob@example.test"},
        {"Email": "carl@example.test"},
    ):
        status, _, data = call(served, "POST", path, body)
        assert (status, data) == (200, b""), body
    assert len(upstream.wait_for_messages(before + 3)) == before + 3
    records = releases(served, message_id)
    assert [r.recipients for r in records] == [
        ("ann@example.test",),
        ("bob@example.test",),
        ("carl@example.test",),
    ]
    assert {r.trigger for r in records} == {"http"}


def test_mailhog_release_never_goes_where_the_client_says(
    served: RunningSink, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    message_id = store(served, fresh(), ["ann@example.test"])
    path = f"/api/v1/messages/{message_id}/release"
    before = upstream_count(upstream)
    only = f"mailsink releases only through its [relay] server (127.0.0.1:{upstream.port})"

    for body, expected in (
        ({"Host": "smtp.elsewhere.test", "Port": "25", "Email": "a@example.test"}, only),
        ({"Host": "127.0.0.1", "Port": "2525", "Email": "a@example.test"}, only),
        ({"Host": "localhost", "Email": "a@example.test"}, only),  # (another name: refused)
        ({"Port": "25", "Email": "a@example.test"}, only),
        ({"Email": "a@example.test", "Save": True, "Name": "gmail"}, "Save: mailsink keeps no"),
        ({"Email": "a@example.test", "Name": "gmail"}, "Name: mailsink keeps no named servers"),
        ({"Email": "a@example.test", "Username": "me"}, "Username: the login is [relay]'s"),
        ({"Email": "a@example.test", "password": "hunter2-Zx"}, "Password: the login is"),
        ({"Email": "a@example.test", "Mechanism": "PLAIN"}, "Mechanism: the login is"),
        ({"Host": "127.0.0.1"}, "Email: expected the address"),
        ({"Email": ["a@example.test"]}, "Email: expected a string"),
        ({"Email": "a@example.test", "Save": "yes"}, "Save: expected true or false"),
        ([], "expected a JSON object with Email"),
    ):
        status, answer = call_json(served, "POST", path, body)
        assert (status, answer["error"][: len(expected)]) == (400, expected), body
        assert "hunter2" not in answer["error"]

    status, answer = call_json(served, "POST", path, {"Email": "eve@evil.test"})
    assert status == 400 and "eve@evil.test" in answer["error"]
    status, answer = call_json(served, "POST", "/api/v1/messages/999999/release", {"Email": "a@x"})
    assert status == 404 and answer["error"] == "no message 999999"
    assert upstream_count(upstream) == before
    assert releases(served, message_id) == []

    upstream.add_fault(name="nobody", stage="rcpt", action="reply", reply="550 5.1.1 gone away")
    status, answer = call_json(served, "POST", path, {"Email": "ann@example.test"})
    assert status == 502 and "550 5.1.1 gone away" in answer["error"]
    assert answer["release"]["outcome"] == "failed"
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert "hunter2" not in logged and PASSWORD not in logged


# ---- every family: the guard, the event, the fuzz


def test_another_site_s_release_is_refused_and_nothing_is_sent(
    served: RunningSink, upstream: Upstream
) -> None:
    message_id = store(served, fresh(), ["ann@example.test"])
    before = upstream_count(upstream)
    requests = [
        (f"/api/mailsink/messages/{message_id}/release", {"to": ["ann@example.test"]}),
        (f"/api/v1/message/{message_id}/release", {"To": ["ann@example.test"]}),
        (f"/api/v1/messages/{message_id}/release", {"Email": "ann@example.test"}),
    ]
    for path, body in requests:
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},  # a form's POST from another site
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "http://evil.example"},
            {"Host": "evil.example:8025"},  # a rebound name
        ):
            status, kind, data = call(served, "POST", path, body, headers)
            assert status == 403 and kind.startswith("application/json"), (path, headers)
            assert json.loads(data)["error"].startswith(("blocked", "Host")), data
    assert upstream_count(upstream) == before
    assert releases(served, message_id) == []


class EventStream:
    """/api/mailsink/events, read a line at a time (each read within the socket's timeout)."""

    def __init__(self, sink: RunningSink) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", sink.http_port, timeout=10)
        self.connection.request("GET", "/api/mailsink/events")
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        # The stream's first line is written once it follows the sink's events.
        assert self.response.readline().startswith(b"retry:")

    def until(self, kind: str, deadline: float = 10.0) -> dict[str, Any]:
        ends = time.monotonic() + deadline
        while time.monotonic() < ends:
            line = self.response.readline().decode()
            if line.startswith("data: "):
                data = json.loads(line[6:])
                if data.get("type") == kind:
                    return data
        raise AssertionError(f"no {kind} within {deadline} s")

    def close(self) -> None:
        self.connection.close()


def test_a_release_is_told_on_the_event_stream(served: RunningSink, upstream: Upstream) -> None:
    message_id = store(served, fresh(), ["ann@example.test"])
    stream = EventStream(served)
    try:
        status, answer = call_json(
            served, "POST", f"/api/mailsink/messages/{message_id}/release", {"trigger": "cli"}
        )
        assert status == 200, answer
        event = stream.until("message-released")
    finally:
        stream.close()
    assert event == {
        "type": "message-released",
        "message_id": message_id,
        "release_id": answer["release"]["id"],
        "outcome": "sent",
        "recipients": ["ann@example.test"],
        "upstream": f"127.0.0.1:{upstream.port}",
        "code": 250,
        "reply": answer["release"]["reply"],
        "trigger": "cli",
        "attempt": 1,
    }
    assert PASSWORD not in json.dumps(event)


def test_openapi_lists_the_release_routes_and_their_bad_input_is_never_a_500(
    served: RunningSink,
) -> None:
    from test_http_api import Client, fuzz_requests

    store(served, fresh(), ["ann@example.test"])
    status, document = call_json(served, "GET", "/api/openapi.json")
    routes = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if "release" in path
    }
    assert routes == {
        ("POST", "/api/v1/message/{id}/release"),
        ("POST", "/api/v1/messages/{id}/release"),
        ("GET", "/api/mailsink/messages/{id}/release"),
        ("POST", "/api/mailsink/messages/{id}/release"),
        ("GET", "/api/mailsink/messages/{id}/releases"),
    }
    # The fuzz of tests/test_http_api.py, here with releasing on (there it is off: 409).
    document["paths"] = {p: item for p, item in document["paths"].items() if "release" in p}
    client = Client(served.http_port)
    problems, count = [], 0
    for method, _template, url, body, what in fuzz_requests(document):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, answer, data = client.request(method, url, body, headers)
        count += 1
        kind = answer.get("content-type", "")
        if status >= 500 and status not in (502, 504):
            problems.append(f"{method} {url[:80]} ({what}): {status} {data[:120]!r}")
        elif status >= 400 and kind.startswith("application/json"):
            if not isinstance(json.loads(data).get("error"), str):
                problems.append(f"{method} {url[:80]} ({what}): {data[:120]!r}")
        elif status >= 400 and not kind.startswith("text/plain"):
            problems.append(f"{method} {url[:80]} ({what}): {status} as {kind!r}")
        if b"Traceback" in data:
            problems.append(f"{method} {url[:80]} ({what}): a traceback")
    client.close()
    assert not problems, "\n".join(problems[:40])
    assert count > 50


# ---- ServerLink: an attached sink asks the server


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(scenario())  # type: ignore[arg-type]


def attached_settings(db: str) -> Settings:
    """A view of `db` with no [relay] of its own: whatever it releases, the server does."""
    base = Settings()
    return dataclasses.replace(
        base,
        smtp=dataclasses.replace(base.smtp or SmtpSettings(), port=0),
        storage=dataclasses.replace(base.storage or StorageSettings(), path=db),
    )


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_server_link_releases_through_the_server_and_maps_its_errors_back(
    served: RunningSink, upstream: Upstream, plain: RunningSink
) -> None:
    raw = fresh()
    message_id = store(served, raw, ["ann@example.test", "zed@elsewhere.test"])
    before = len(upstream.raw_messages())
    assert served.sink is not None
    own_plan = served.run(served.sink.release_plan(message_id))

    async def scenario() -> None:
        async with Sink.attached(attached_settings(served.db), link=True) as sink:
            assert sink.link is not None
            await until(lambda: sink.link is not None and sink.link.live)
            assert await sink.release_plan(message_id) == own_plan  # the server's [relay]
            record = await sink.release(message_id, None, trigger="tui")
            assert (record.outcome, record.trigger, record.code) == ("sent", "tui", 250)
            assert record.recipients == ("ann@example.test",)
            assert record == releases(served, message_id)[-1]
            await asyncio.to_thread(upstream.wait_for_messages, before + 1)

            with pytest.raises(RecipientsRefused) as refused:
                await sink.link.release(message_id, ["eve@evil.test"], "tui")
            assert refused.value.recipients == ("eve@evil.test",)
            assert "eve@evil.test" in str(refused.value)
            with pytest.raises(NoSuchMessage, match="no message 999999"):
                await sink.link.release(999999, None, "tui")
            with pytest.raises(NoSuchMessage, match="no message 999999"):
                await sink.link.release_plan(999999)
            with pytest.raises(ReleaseError, match="trigger:") as bad:
                await sink.link.release(message_id, None, "auto")
            assert type(bad.value) is ReleaseError

            await asyncio.to_thread(
                upstream.add_fault,
                name="nobody",
                stage="rcpt",
                action="reply",
                reply="550 5.1.1 gone away",
            )
            with pytest.raises(UpstreamError) as failed:
                await sink.release(message_id, ["ann@example.test"], trigger="tui")
            error = failed.value
            assert (error.code, error.stage, error.timed_out) == (550, "rcpt", False)
            assert "550 5.1.1 gone away" in str(error) and "failed at RCPT" in str(error)
            assert isinstance(error.record, ReleaseRecord) and error.record.outcome == "failed"
            assert error.record == releases(served, message_id)[-1]

        async with Sink.attached(attached_settings(plain.db), link=True) as sink:
            await until(lambda: sink.link is not None and sink.link.live)
            with pytest.raises(RelayNotConfigured, match="releasing is off"):
                await sink.release(1, ["ann@example.test"], trigger="tui")
            assert (await sink.release_plan(1)).configured is False

    run(scenario)
    assert len(upstream.raw_messages()) == before + 1
    assert [r.trigger for r in releases(served, message_id)] == ["tui", "tui"]
    assert releases(plain, 1) == []


def test_server_link_unreachable_is_a_link_error() -> None:
    with SilentServer() as closed:
        port = closed.port
    address = ServerAddress(f"http://127.0.0.1:{port}", "token")  # nothing listens there

    async def scenario() -> None:
        link = ServerLink("/nonexistent/mail.db", EventBus(), find=lambda _path: address)
        link.start()
        try:
            await until(lambda: link.state == UNREACHABLE)
            with pytest.raises(LinkError, match="no link to the store's server"):
                await link.release(1, None, "tui")
            with pytest.raises(LinkError):
                await link.release_plan(1)
        finally:
            await link.close()

    run(scenario)


# ---- the npm clients


NODE_SCRIPT = """
import { createRequire } from "node:module";
import { MailpitClient } from "mailpit-api";
const require = createRequire(import.meta.url);
const mailhog = require("mailhog");
const [base, httpPort, upstreamPort, id] = process.argv.slice(1);
const fail = (what) => { console.error(what); process.exit(1); };
const mailpit = new MailpitClient(base);
const ok = await mailpit.releaseMessage(id, { To: ["ann@example.test"] });
if (ok !== "ok") fail(`mailpit-api releaseMessage: ${JSON.stringify(ok)}`);
const config = await mailpit.getConfiguration();
if (config.MessageRelay.Enabled !== true) fail("webui: MessageRelay.Enabled");
try {
  await mailpit.releaseMessage(id, { To: ["eve@evil.test"] });
  fail("mailpit-api: eve@evil.test was released");
} catch (error) {
  if (!String(error.message).includes("do not match the allowlist: eve@evil.test"))
    fail(`mailpit-api refusal: ${error.message}`);
}
const hog = mailhog({ host: "127.0.0.1", port: Number(httpPort) });
const answer = await hog.releaseMessage(id, {
  host: "127.0.0.1", port: upstreamPort, email: "bob@example.test",
});
if (answer.statusCode !== 200) fail(`mailhog releaseMessage: ${answer.statusCode}`);
console.log("released by both clients");
"""


def test_the_npm_clients_release_calls(served: RunningSink, upstream: Upstream) -> None:
    from test_http_interop import _installed, _skip

    if shutil.which("node") is None or shutil.which("npm") is None:
        _skip("no node")
    _installed()
    raw = fresh()
    message_id = store(served, raw, ["ann@example.test"])
    before = len(upstream.raw_messages())
    result = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_SCRIPT, served.url,
         str(served.http_port), str(upstream.port), str(message_id)],
        cwd=INTEROP, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "released by both clients" in result.stdout
    assert upstream.wait_for_messages(before + 2)[-2:] == [raw, raw]
    assert [r.recipients for r in releases(served, message_id)] == [
        ("ann@example.test",),
        ("bob@example.test",),
    ]


def test_a_server_without_the_release_route_is_no_link_not_a_message_gone():
    """A 404 naming no message (an older mailsink's unknown route, `{"error": "Not Found"}`)
    is the server's lack, not the message's: the TUI must not say "This message is gone"."""
    from mailsink.errors import NoSuchMessage
    from mailsink.server_link import LinkError, ServerAddress, _release_error

    address = ServerAddress(url="http://127.0.0.1:9", token="t")
    gone = _release_error(404, {"error": "no message 7"}, b"", address)
    assert isinstance(gone, NoSuchMessage)
    unknown = _release_error(404, {"error": "Not Found"}, b'{"error": "Not Found"}', address)
    assert isinstance(unknown, LinkError) and "cannot release messages" in str(unknown)


def test_a_release_the_server_is_still_sending_is_not_called_failed(
    tmp_path: Path, upstream: Upstream, monkeypatch
) -> None:
    """The client's wait ends while the server still talks to a slow upstream: the answer says
    the release may be under way (not that it failed, which would invite a duplicate), and
    the server records it as sent."""
    import mailsink.server_link as server_link

    config = tmp_path / "relay.toml"
    config.write_text(upstream.relay_toml(allowed=ALLOWED))
    with RunningSink(tmp_path / "mail.db", config=config) as served:
        message_id = store(served, fresh(), ["u1@example.test", "u2@example.test"])
        upstream.add_fault(name="slow", stage="rcpt", action="delay", delay="1s")
        monkeypatch.setattr(server_link, "RELEASE_SECONDS", 0.5)

        async def scenario() -> None:
            async with Sink.attached(attached_settings(served.db), link=True) as sink:
                await until(lambda: sink.link is not None and sink.link.live)
                with pytest.raises(ReleaseError, match="may still be under way") as slow:
                    await sink.release(message_id, None, trigger="tui")
                assert type(slow.value) is ReleaseError  # no UpstreamError: nothing failed

        run(scenario)
        served.wait_for(lambda reader: reader.releases(message_id) or None, timeout=10)
        (record,) = releases(served, message_id)
        assert (record.outcome, record.code) == ("sent", 250)
