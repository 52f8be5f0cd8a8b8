"""/api/mailsink/faults and Mailpit's /api/v1/chaos over real HTTP, and what a real SMTP client
(smtplib) then sees on its next command."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from mailsink.config import AuthSettings, Settings
from mailsink.faults.rules import parse_rule
from mailsink.testing import RunningSink

CONFIG_RULE = {"name": "from the file", "stage": "helo", "reply": "550 no", "enabled": False}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    auth = AuthSettings(users={"dev": "secret"})
    settings = Settings(rules=(parse_rule(CONFIG_RULE, 0),), auth=auth)
    with RunningSink(tmp_path_factory.mktemp("faults") / "mail.db", settings) as sink:
        yield sink


def call(sink: RunningSink, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    """(status, content type, the answer: JSON decoded, else text)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
    request = urllib.request.Request(
        sink.url + path,
        data=data.encode() if isinstance(data, str) else data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, kind, raw = (
                response.status,
                response.headers.get_content_type(),
                response.read(),
            )
    except urllib.error.HTTPError as error:
        status, kind, raw = error.code, error.headers.get_content_type(), error.read()
    text = raw.decode()
    return status, kind, json.loads(text) if kind == "application/json" else text


def send(sink: RunningSink, sender: str = "app@example.test") -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.sendmail(sender, ["user@example.test"], b"Subject: hi\r\n\r\nbody\r\n")


def rule(sink: RunningSink, name: str) -> dict[str, Any]:
    _, _, answer = call(sink, "GET", "/api/mailsink/faults")
    return next(r for r in answer["rules"] if r["name"] == name)


def test_the_next_two_data_get_451_then_250(running: RunningSink) -> None:
    status, _, listing = call(running, "GET", "/api/mailsink/faults")
    assert status == 200
    assert [p["key"] for p in listing["presets"]] == ["1", "2", "3", "4", "5"]
    sources = {r["name"]: r["source"] for r in listing["rules"]}
    assert sources["from the file"] == "config"
    assert sources["preset: 530 auth required"] == "preset"

    table = {"name": "flaky data", "stage": "data", "reply": "451 4.3.0 Try later", "times": 2}
    status, _, added = call(running, "POST", "/api/mailsink/faults", table)
    assert status == 201
    assert added["source"] == "runtime" and added["hits"] == 0 and added["enabled"] is True
    assert added["reply"] == "451 4.3.0 Try later" and added["times"] == 2
    assert running.faults.rule("flaky data").origin == "runtime"  # what the TUI lists
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(running)
        assert refused.value.smtp_code == 451
    send(running)  # the third: 250
    fired = rule(running, "flaky data")
    assert fired["hits"] == 2 and fired["last_fired_at"] is not None

    # What GET shows is a [[fault]] table again: POSTed under another name, the same rule.
    again = {k: fired[k] for k in ("stage", "action", "reply", "times", "match", "delay")}
    status, _, copy = call(running, "POST", "/api/mailsink/faults", {**again, "name": "copy"})
    assert status == 201 and copy["summary"] == fired["summary"]

    status, _, off = call(running, "PUT", "/api/mailsink/faults/copy", {"enabled": False})
    assert status == 200 and off["enabled"] is False
    assert running.faults.rule("copy").enabled is False
    quoted = urllib.parse.quote("flaky data")
    assert call(running, "DELETE", f"/api/mailsink/faults/{quoted}")[0] == 200
    assert call(running, "DELETE", "/api/mailsink/faults/copy")[0] == 200
    assert call(running, "DELETE", "/api/mailsink/faults/copy")[0] == 404
    names = {r["name"] for r in call(running, "GET", "/api/mailsink/faults")[2]["rules"]}
    assert not names & {"flaky data", "copy"}


def test_bad_rules_are_refused_in_check_configs_words(running: RunningSink, tmp_path: Path) -> None:
    bad_tables = [
        ({"stage": "data", "reply": "451 later", "colour": "red"}, 'colour = "red"'),
        ({"stage": "helo", "reply": "550 no", "match": {"recipient": "*"}}, ""),
        ({"stage": "data", "reply": "250 fine"}, ""),
    ]
    for table, _ in bad_tables:
        status, _, answer = call(running, "POST", "/api/mailsink/faults", table)
        assert status == 400, answer
        file = tmp_path / "bad.toml"
        lines = ["[[fault]]"]
        for key, value in table.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        file.write_text("\n".join(lines) + "\n")
        checked = run_cli("check-config", str(file))
        assert checked.code == 1
        assert checked.err.strip().endswith(f"fault[1].{answer['error']}"), (checked.err, answer)

    status, _, answer = call(running, "POST", "/api/mailsink/faults", ["not", "a", "table"])
    assert status == 400
    status, _, answer = call(running, "POST", "/api/mailsink/faults", {**CONFIG_RULE})
    assert status == 409 and "already named" in answer["error"]
    assert call(running, "PUT", "/api/mailsink/faults/nothing", {"enabled": True})[0] == 404
    status, _, answer = call(
        running, "PUT", "/api/mailsink/faults/from%20the%20file", {"enabled": 1}
    )
    assert status == 400 and answer["error"].startswith("enabled")
    status, _, answer = call(running, "DELETE", "/api/mailsink/faults/from%20the%20file")
    assert status == 409 and "config file" in answer["error"]
    status, _, answer = call(running, "DELETE", "/api/mailsink/faults/preset:%201")
    assert status == 404
    preset = urllib.parse.quote("preset: 530 auth required")
    assert call(running, "DELETE", f"/api/mailsink/faults/{preset}")[0] == 409
    assert call(running, "POST", "/api/mailsink/faults", b"{nope")[0] == 400


def test_reset_zeroes_the_counters(running: RunningSink) -> None:
    table = {
        "name": "once",
        "stage": "mail",
        "reply": "550 5.7.1 once",
        "times": 1,
        "match": {"sender": "reset@*"},
    }
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.ehlo()
        # Added while the client is connected: its next command already meets the rule.
        assert call(running, "POST", "/api/mailsink/faults", table)[0] == 201
        assert client.mail("reset@example.test")[0] == 550
    try:
        send(running, "reset@example.test")  # its one time is spent
        status, _, answer = call(running, "POST", "/api/mailsink/faults/reset")
        assert status == 200
        assert next(r for r in answer["rules"] if r["name"] == "once")["hits"] == 0
        with pytest.raises(smtplib.SMTPSenderRefused):
            send(running, "reset@example.test")
    finally:
        call(running, "DELETE", "/api/mailsink/faults/once")


# Mailpit's defaults, internal/smtpd/chaos/chaos.go (`Config = Triggers{...}`).
MAILPIT_DEFAULT = {
    "Sender": {"ErrorCode": 451, "Probability": 0},
    "Recipient": {"ErrorCode": 451, "Probability": 0},
    "Authentication": {"ErrorCode": 535, "Probability": 0},
}


def test_chaos_shape_and_effect(running: RunningSink) -> None:
    assert call(running, "GET", "/api/v1/chaos") == (200, "application/json", MAILPIT_DEFAULT)
    status, _, answer = call(
        running, "PUT", "/api/v1/chaos", {"Sender": {"ErrorCode": 452, "Probability": 100}}
    )
    assert status == 200
    assert answer == {**MAILPIT_DEFAULT, "Sender": {"ErrorCode": 452, "Probability": 100}}
    chaos = rule(running, "mailpit-chaos-sender")
    assert (chaos["stage"], chaos["probability"], chaos["source"]) == ("mail", 1.0, "runtime")
    for _ in range(3):
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(running)
        assert refused.value.smtp_code == 452
        assert b"Chaos sender error" in refused.value.smtp_error
    assert rule(running, "mailpit-chaos-sender")["hits"] == 3

    # Switched off in mailsink's own API (or the TUI): Mailpit's view says 0 %.
    call(running, "PUT", "/api/mailsink/faults/mailpit-chaos-sender", {"enabled": False})
    assert call(running, "GET", "/api/v1/chaos")[2]["Sender"] == {
        "ErrorCode": 452,
        "Probability": 0,
    }
    send(running)

    # Mailpit's validation, as text; nothing changes.
    for body, words in [
        (
            {"Sender": {"ErrorCode": 600, "Probability": 5}},
            "error code must be between 400 and 599",
        ),
        ({"recipient": {"Probability": 101}}, "probability must be between 0 and 100"),
        (
            {"Sender": {"Probability": "5"}},
            "json: cannot unmarshal string into Go struct field Triggers.Sender.Probability"
            " of type int",
        ),
    ]:
        assert call(running, "PUT", "/api/v1/chaos", body) == (400, "text/plain", words)
    assert call(running, "PUT", "/api/v1/chaos", b"")[:2] == (400, "text/plain")

    # Keys in any case, as Go decodes them; an ErrorCode of 0 is the default (535 for AUTH).
    triggers = {"recipient": {"probability": 50}, "Authentication": {"Probability": 100}}
    answer = call(running, "PUT", "/api/v1/chaos", triggers)[2]
    assert answer["Recipient"] == {"ErrorCode": 451, "Probability": 50}
    assert answer["Authentication"] == {"ErrorCode": 535, "Probability": 100}
    assert rule(running, "mailpit-chaos-recipient")["probability"] == 0.5
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("dev", "secret")
        assert refused.value.smtp_code == 535
        assert b"Chaos authentication error" in refused.value.smtp_error

    # {} switches everything off.
    assert call(running, "PUT", "/api/v1/chaos", {})[2] == MAILPIT_DEFAULT
    names = {r["name"] for r in call(running, "GET", "/api/mailsink/faults")[2]["rules"]}
    assert not any(name.startswith("mailpit-chaos-") for name in names)
    send(running)
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.login("dev", "secret")
