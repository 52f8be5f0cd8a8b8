"""mailsink's own API for messages and sessions over real HTTP: the same JSON as the CLI's
`list --json`, `show --json`, `sessions --json` and `session ID --json` for the same store,
raw bytes exactly as received, read state and tags, deletion, and live sessions."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RawClient, message, run_cli

from mailsink.testing import RunningSink

# 8-bit bytes (UTF-8 and a Latin-1 é that is no UTF-8) and a bare CR: what must come back
# byte for byte.
EIGHT_BIT = (
    b"From: a@shop.test\r\nTo: b@x.test\r\nSubject: caf\xc3\xa9\r\n\r\ncaf\xe9 and a bare\rCR\r\n"
)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    with RunningSink(tmp_path_factory.mktemp("native") / "mail.db") as running:
        with smtplib.SMTP(running.host, running.port) as smtp:
            smtp.sendmail("shop@shop.test", ["a@x.test"], message(subject="Order 1"))  # 1
            smtp.sendmail("shop@shop.test", ["a@x.test"], message(subject="Order 2"))  # 2
        raw = RawClient(running.host, running.port)  # 3: what smtplib would rewrite
        for line in ("EHLO raw.test", "MAIL FROM:<raw@shop.test> BODY=8BITMIME"):
            assert raw.command(line)[0].startswith("250")
        assert raw.command("RCPT TO:<a@b@c>")[0][0] == "5"  # a refusal (syntax)
        assert raw.command("RCPT TO:<b@x.test>")[0].startswith("250")
        assert raw.command("DATA")[0].startswith("354")
        raw.send(EIGHT_BIT + b".\r\n")
        assert raw.reply()[0].startswith("250")
        raw.command("QUIT")
        raw.close()
        yield running


def call(
    sink: RunningSink, path: str, method: str = "GET", body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(sink.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def ok(sink: RunningSink, path: str, method: str = "GET", body: Any = None) -> Any:
    status, _, answer = call(sink, path, method, body)
    assert status == 200, answer
    return json.loads(answer)


def error(sink: RunningSink, path: str, method: str = "GET", body: Any = None) -> tuple[int, str]:
    status, _, answer = call(sink, path, method, body)
    return status, json.loads(answer)["error"]


def cli_json(sink: RunningSink, *args: str) -> Any:
    result = run_cli(*args, "--db", sink.db, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_list_is_the_cli_list(own: RunningSink) -> None:
    listed = ok(own, "/api/mailsink/messages")
    assert listed == cli_json(own, "list")
    assert [m["id"] for m in listed] == [3, 2, 1]
    assert [m["id"] for m in ok(own, "/api/mailsink/messages?limit=1&before_id=3")] == [2]
    query = urllib.parse.quote('subject:"order 1"')
    assert ok(own, f"/api/mailsink/messages?query={query}") == cli_json(
        own, "list", "--search", 'subject:"order 1"'
    )
    for bad in ("limit=many", "limit=-1", "limit=0", "limit=100001", "before_id=x", "query=nope:1"):
        status, text = error(own, f"/api/mailsink/messages?{bad}")
        assert status == 400 and text.startswith(bad.split("=")[0] + ":"), text


def test_show_is_the_cli_show_and_marks_read(own: RunningSink) -> None:
    assert ok(own, "/api/mailsink/messages/1") == cli_json(own, "show", "1")  # both mark read
    assert ok(own, "/api/mailsink/messages/2")["read"] is True  # it was unread
    assert [m["read"] for m in ok(own, "/api/mailsink/messages")] == [False, True, True]
    shown = ok(own, "/api/mailsink/messages/3")
    assert shown["envelope"]["helo"] == "raw.test" and shown["id"] == 3
    assert [r["address"] for r in shown["envelope"]["rcpt_refused"]] == ["<a@b@c>"]
    for unknown in ("999", "x", "-1", "99999999999999999999"):
        assert call(own, f"/api/mailsink/messages/{unknown}")[0] == 404


def test_raw_is_byte_exact(own: RunningSink) -> None:
    status, headers, body = call(own, "/api/mailsink/messages/3/raw")
    assert status == 200 and body == EIGHT_BIT
    assert headers["Content-Type"] == "message/rfc822"
    assert headers["Content-Length"] == str(len(EIGHT_BIT))
    assert call(own, "/api/mailsink/messages/999/raw")[0] == 404


def test_put_read_state_and_tags(own: RunningSink) -> None:
    path = "/api/mailsink/messages/1"
    changed = ok(own, path, "PUT", {"read": False, "add_tags": ["vip", "Invoice"]})
    assert (changed["read"], changed["tags"]) == (False, ["Invoice", "vip"])
    assert ok(own, "/api/mailsink/messages")[-1] == changed  # what list says now
    changed = ok(own, path, "PUT", {"remove_tags": ["VIP"], "read": True})
    assert (changed["read"], changed["tags"]) == (True, ["Invoice"])
    assert error(own, path, "PUT", {"read": True, "colour": "red"}) == (
        400,
        "colour: unknown key; the keys are read, add_tags, remove_tags",
    )
    assert error(own, path, "PUT", {"read": "yes"})[1].startswith("read:")
    assert error(own, path, "PUT", {"add_tags": "vip"})[1].startswith("add_tags:")
    status, text = error(own, path, "PUT", {"add_tags": ["no<tag>"]})
    assert status == 400 and "is not a tag" in text
    assert ok(own, path)["tags"] == ["Invoice"]  # nothing written by a refused change
    assert error(own, path, "PUT", b"{not json")[0] == 400
    assert error(own, path, "PUT", [1, 2])[0] == 400
    assert error(own, "/api/mailsink/messages/999", "PUT", {"read": True})[0] == 404


def test_sessions_with_a_live_one(own: RunningSink) -> None:
    live = smtplib.SMTP(own.host, own.port, local_hostname="live.test", timeout=10)
    try:
        live.ehlo()
        live.mail("mid@shop.test")
        live.rcpt("someone@x.test")  # and no DATA yet: mid-transaction
        sessions = ok(own, "/api/mailsink/sessions")
        newest = sessions[0]
        assert (newest["helo"], newest["end_reason"], newest["ended_at"]) == (
            "live.test",
            None,
            None,
        )
        stored = {s["id"]: s for s in cli_json(own, "sessions")}
        for session in sessions[1:]:  # the ended ones: exactly as the CLI says them
            assert session == stored[session["id"]]
        detail = ok(own, f"/api/mailsink/sessions/{newest['id']}")
        lines = [line["text"] for line in detail["transcript"]]
        assert any(text.lower().startswith("rcpt to:<someone@x.test>") for text in lines), lines
        assert {k: v for k, v in detail.items() if k != "transcript"} == newest
    finally:
        live.quit()
    ended = sessions[1]["id"]
    assert ok(own, f"/api/mailsink/sessions/{ended}") == cli_json(own, "session", str(ended))
    refused = ok(own, "/api/mailsink/sessions?refusals=1")
    assert [s["helo"] for s in refused] == ["raw.test"] and refused[0]["refusals"] == 1
    assert len(ok(own, "/api/mailsink/sessions?limit=1")) == 1
    for bad in ("limit=0", "limit=x", "limit=5000", "refusals=maybe"):
        status, text = error(own, f"/api/mailsink/sessions?{bad}")
        assert status == 400 and text.startswith(bad.split("=")[0] + ":"), text
    assert error(own, "/api/mailsink/sessions/999") == (404, "no session 999")
    assert error(own, "/api/mailsink/sessions/x")[0] == 404


def test_delete_one_then_all(own: RunningSink) -> None:
    assert ok(own, "/api/mailsink/messages/2", "DELETE") == {"deleted": 1}
    assert call(own, "/api/mailsink/messages/2", "DELETE")[0] == 404
    assert [m["id"] for m in ok(own, "/api/mailsink/messages")] == [3, 1]
    assert ok(own, "/api/mailsink/messages", "DELETE") == {"deleted": 2}
    assert ok(own, "/api/mailsink/messages") == []
