"""`mailsink faults …` against a real server's HTTP API, with a real SMTP client (smtplib) seeing
each change on its next command and `mailsink faults` showing the hits."""

from __future__ import annotations

import json
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, message, run_cli
from test_cli_wait import NotMailsink, answer_json, drip, not_mailsink_servers, silent

from mailsink import cli_faults
from mailsink.cli_faults import match_value
from mailsink.config import HttpSettings, Settings
from mailsink.testing import RunningSink


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningSink]:
    with RunningSink(tmp_path / "mail.db") as sink:
        yield sink


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    """A server whose rules no test changes: for what is refused before anything is sent."""
    with RunningSink(tmp_path_factory.mktemp("idle") / "mail.db") as sink:
        yield sink


# A rule as `GET /api/mailsink/faults` lists it.
RULE = {
    "name": "flaky",
    "stage": "data",
    "action": "reply",
    "reply": "451 4.3.0 Try again later",
    "delay": 0.0,
    "probability": 1.0,
    "times": 0,
    "enabled": True,
    "match": {},
    "source": "runtime",
    "preset_key": None,
    "hits": 1,
    "last_fired_at": 1796176222712,
    "summary": "451 4.3.0 Try again later",
}


def faults(sink: RunningSink, *args: str):
    return run_cli("faults", *args, "--url", sink.url)


def api_rules(sink: RunningSink) -> dict[str, dict[str, Any]]:
    """The rules in force as the API lists them, by name (read past the CLI)."""
    with urllib.request.urlopen(sink.url + "/api/mailsink/faults", timeout=10) as answer:
        return {rule["name"]: rule for rule in json.load(answer)["rules"]}


def deliver(sink: RunningSink, to: str = "ann@x.test") -> int:
    """Send one message; the reply code to the end of DATA (250, or the fault's)."""
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.ehlo()
        client.mail("app@x.test")
        client.rcpt(to)
        code, _ = client.data(message(to=to))
        return code


def row(listing: str, name: str) -> list[str]:
    """The cells of `name`'s row in the table (split on runs of 2+ spaces)."""
    import re

    for line in listing.splitlines():
        if line.startswith(name + "  "):
            return re.split(r"\s{2,}", line)
    raise AssertionError(f"no row for {name!r} in:\n{listing}")


def test_the_lifecycle_seen_by_a_real_smtp_client(running: RunningSink) -> None:
    added = faults(
        running, "add", "--name", "flaky data", "--stage", "data",
        "--reply", "451 4.3.0 Try again later",
    )  # fmt: skip
    assert added.code == 0, added.err
    assert added.out == "added 'flaky data' (data, on, 0 hits): 451 4.3.0 Try again later\n"
    assert deliver(running) == 451

    listed = faults(running)
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == [
        "NAME", "STAGE", "DOES", "ON", "HITS", "LAST", "FIRED", "SOURCE",
    ]  # fmt: skip
    cells = row(listed.out, "flaky data")
    assert cells[:5] == ["flaky data", "data", "451 4.3.0 Try again later", "on", "1"]
    assert cells[5] != "-" and cells[6] == "runtime"  # when it last fired; where it came from
    assert row(listed.out, "preset: 530 auth required")[3:5] == ["off", "0"]

    off = faults(running, "disable", "flaky data")
    assert off.code == 0, off.err
    assert off.out == "'flaky data' (data, off, 1 hit): 451 4.3.0 Try again later\n"
    assert deliver(running) == 250
    assert faults(running, "enable", "flaky data").code == 0
    assert deliver(running) == 451
    assert api_rules(running)["flaky data"]["hits"] == 2

    reset = faults(running, "reset")
    assert reset.code == 0, reset.err
    assert reset.out.startswith("reset 6 fault rules: ")
    assert api_rules(running)["flaky data"]["hits"] == 0

    removed = faults(running, "remove", "flaky data")
    assert removed.code == 0 and removed.out == "removed 'flaky data'\n"
    assert "flaky data" not in api_rules(running)
    assert deliver(running) == 250


def test_add_takes_every_key_and_typed_match_values(running: RunningSink) -> None:
    added = faults(
        running, "add", "--name", "many", "--stage", "rcpt", "--action", "disconnect",
        "--reply", "421 4.7.0 Slow down", "--delay", "250ms", "--probability", "0.5",
        "--times", "3", "--rate", "10/1m", "--disabled",
        "--match", "recipients_over=1", "--match", "recipient=*@big.test",
        "--match", "authenticated=false", "--match", "peer=127.0.0.0/8",
    )  # fmt: skip
    assert added.code == 0, added.err
    rule = api_rules(running)["many"]
    assert rule["action"] == "disconnect" and rule["reply"] == "421 4.7.0 Slow down"
    assert rule["delay"] == 0.25 and rule["probability"] == 0.5 and rule["times"] == 3
    assert rule["rate"] == "10/60s" and rule["enabled"] is False
    assert rule["match"] == {
        "recipient": "*@big.test",
        "authenticated": False,
        "recipients_over": 1,  # an int, as in TOML
        "peer": "127.0.0.0/8",
    }
    assert added.out.startswith("added 'many' (rcpt, off, 0 hits): 421 4.7.0 Slow down")
    assert "p=0.5, 3 times, over 10/60s per peer, when recipient=*@big.test" in added.out


def test_rule_json_with_options_on_top_fires_twice(running: RunningSink) -> None:
    table = {"stage": "data", "reply": "451 4.3.0 Try again later", "times": 5}
    added = faults(
        running, "add", "--rule", json.dumps(table), "--times", "2",
        "--match", "header.Subject=order", "--json",
    )  # fmt: skip
    assert added.code == 0, added.err
    rule = json.loads(added.out)  # the API's answer, as added
    assert rule["name"] == "run-time rule 1" and rule["times"] == 2
    assert rule["match"] == {"header": {"Subject": "order"}}
    assert [deliver(running) for _ in range(3)] == [451, 451, 250]
    listed = faults(running, "--json")
    assert listed.code == 0, listed.err
    answer = json.loads(listed.out)
    assert set(answer) == {"rules", "presets", "seed", "config"}
    assert next(r for r in answer["rules"] if r["name"] == "run-time rule 1")["hits"] == 2


def test_server_refusals_are_one_line_and_exit_1(running: RunningSink) -> None:
    assert (
        faults(running, "add", "--name", "taken", "--stage", "mail", "--reply", "550 no").code == 0
    )
    cases = [
        (
            ["add", "--rule", '{"stage": "rcpt", "reply": "550 x", "colour": "red"}'],
            "mailsink: faults add: colour: unknown key; allowed: ",
        ),
        (
            ["add", "--stage", "helo", "--reply", "550 no", "--match", "recipient=a@x.test"],
            "mailsink: faults add: match.recipient: cannot be checked at stage 'helo'",
        ),
        (["add", "--stage", "mail", "--reply", "250 fine"], "mailsink: faults add: reply: "),
        (["add", "--name", "taken", "--stage", "mail", "--reply", "550 no"], "name: another rule"),
        (["enable", "nope"], "mailsink: faults enable: no fault rule 'nope'"),
        (["remove", "nope"], "mailsink: faults remove: no fault rule 'nope'"),
        (
            ["remove", "preset: 530 auth required"],
            "mailsink: faults remove: name: 'preset: 530 auth required' is a preset",
        ),
    ]
    for args, says in cases:
        result = faults(running, *args)
        assert result.code == 1, (args, result)
        assert says in result.err and result.err.count("\n") == 1, (args, result.err)
        assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "--stage", "rcpt", "--match", "recipient"], "expected KEY=VALUE"),
        (["add", "--match", "=1"], "expected KEY=VALUE"),
        (["add", "--rule", "{stage: rcpt}"], "--rule: not JSON"),
        (["add", "--rule", "[1, 2]"], "--rule: expected a JSON object"),
        (["add", "--rule", '{"match": 1}', "--match", "helo=x"], "match is not a table"),
        (["add", "--probability", "often"], "Invalid value for '--probability'"),
        (
            ["add", "--stage", "rcpt", "--reply", "550 x", "--probability", "nan"],
            "faults add: --probability: nan is not a number from 0 to 1",
        ),
        (
            ["add", "--stage", "rcpt", "--reply", "550 x", "--probability", "inf"],
            "faults add: --probability: inf is not a number from 0 to 1",
        ),
        (
            ["add", "--rule", '{"stage": "rcpt", "reply": "550 x", "probability": NaN}'],
            "faults add: --rule: NaN is not a JSON number",
        ),
        (["add", "--rule", "[" * 100_000], "faults add: --rule: JSON nested too deeply"),
        (
            ["add", "--reply", "550 x"],
            "faults add: --stage is required (connect, helo, auth, mail, rcpt or data), unless"
            ' --rule has a "stage"',
        ),
        (["add", "--rule", '{"reply": "550 x"}'], "faults add: --stage is required"),
    ],
)
def test_usage_errors_are_exit_2(idle: RunningSink, args: list[str], says: str) -> None:
    result = faults(idle, *args)
    assert result.code == 2, result
    assert says in result.err and result.err.count("\n") == 1, result.err
    assert {rule["source"] for rule in api_rules(idle).values()} == {"preset"}  # none added


def test_match_values_are_toml_when_they_parse() -> None:
    assert match_value("1") == 1
    assert match_value("true") is True
    assert match_value('{ Subject = "reset" }') == {"Subject": "reset"}
    assert match_value('"quoted"') == "quoted"
    for text in ("full@*", "1MiB", "127.0.0.0/8", "2026-01-01", "inf", "1\nother = 2", ""):
        assert match_value(text) == text


def test_where_the_server_is(running: RunningSink, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAILSINK_URL", running.url)
    from_env = run_cli("faults", "add", "--stage", "mail", "--reply", "550 env")
    assert from_env.code == 0, from_env.err
    assert api_rules(running)["run-time rule 1"]["reply"] == "550 env"

    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MAILSINK_URL", nowhere)
    config = tmp_path / "dev.toml"
    config.write_text(f'[http]\nhost = "0.0.0.0"\nport = {running.http_port}\n')
    # --config given beats the environment; its 0.0.0.0 is reached on loopback
    from_config = run_cli("faults", "--config", str(config))
    assert from_config.code == 0, from_config.err
    assert row(from_config.out, "run-time rule 1")[1] == "mail"
    # a command's --url wins over the group's
    wins = run_cli("faults", "--url", nowhere, "disable", "run-time rule 1", "--url", running.url)
    assert wins.code == 0, wins.err
    assert api_rules(running)["run-time rule 1"]["enabled"] is False
    refused = run_cli("faults")  # the environment's
    assert refused.code == 1
    assert refused.err == (
        f"mailsink: faults: cannot reach {nowhere}: connection refused (is `mailsink serve`"
        " running? --url or MAILSINK_URL say where)\n"
    )
    bad = run_cli("faults", "--url", "localhost:8025")
    assert bad.code == 2 and "--url: 'localhost:8025' is not an HTTP URL" in bad.err


def test_basic_auth_from_the_url_or_the_config(tmp_path: Path) -> None:
    settings = Settings(http=HttpSettings(users={"ci": "s3cret"}))
    with RunningSink(tmp_path / "auth.db", settings) as sink:
        port = sink.http_port
        good = run_cli("faults", "--url", f"http://ci:s3cret@127.0.0.1:{port}")
        assert good.code == 0, good.err
        assert "preset: 530 auth required" in good.out
        refused = run_cli("faults", "--url", f"http://ci:nope@127.0.0.1:{port}")
        assert refused.code == 1
        assert refused.err.startswith("mailsink: faults: authentication required (give user:")
        config = tmp_path / "auth.toml"
        config.write_text(f'[http]\nport = {port}\nusers = {{ ci = "s3cret" }}\n')
        from_config = run_cli("faults", "reset", "--config", str(config))
        assert from_config.code == 0, from_config.err


def test_untrusted_text_is_shown_visible(running: RunningSink) -> None:
    hostile = "evil\x1b[2J\x07 \u202erule"
    added = faults(running, "add", "--name", hostile, "--stage", "rcpt", "--reply", "550 no")
    assert added.code == 0, added.err
    listed = faults(running)
    for output in (added.out, listed.out):
        assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
        assert "evil␛[2J␇ <U+202E>rule" in output
    as_json = faults(running, "--json")
    assert "\x1b" not in as_json.out and "\\u001b[2J" in as_json.out
    switched = faults(running, "disable", hostile)
    assert switched.code == 0 and "evil␛[2J␇" in switched.out
    missing = faults(running, "enable", hostile + "x")
    assert missing.code == 1 and "\x1b" not in missing.err


def test_help_everywhere() -> None:
    for command in ([], ["add"], ["enable"], ["disable"], ["remove"], ["reset"], ["list"]):
        result = run_cli("faults", *command, "--help")
        assert result.code == 0 and result.out.startswith("Usage: mailsink faults"), command


def test_a_header_condition_is_a_regex_as_text(running: RunningSink, tmp_path: Path) -> None:
    """The server's check (the one config files get) refuses a header condition that is not a
    string, naming the key; the CLI's --match header.NAME=VALUE keeps even `2024` as text."""
    config = tmp_path / "headers.toml"
    config.write_text(
        '[[fault]]\nstage = "data"\nreply = "550 5.7.1 no"\n'
        "match = { header = { Subject = { x = 1 } } }\n"
    )
    checked = run_cli("check-config", str(config))
    assert checked.code == 1
    assert checked.err == (
        f"mailsink: {config}:4: fault[1].match.header.Subject: expected a regular expression"
        """ as a string, such as "^Reset", got {'x': 1}\n"""
    )
    for value in (5, True, ["a"]):
        rule = {"stage": "data", "reply": "550 5.7.1 no", "match": {"header": {"Subject": value}}}
        request = urllib.request.Request(
            running.url + "/api/mailsink/faults",
            json.dumps(rule).encode(),
            {"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
        error = json.load(refused.value)["error"]
        assert error.startswith("match.header.Subject: expected a regular expression as a string")
    added = faults(
        running, "add", "--stage", "data", "--reply", "550 5.7.1 no", "--match",
        "header.Subject=2024", "--json",
    )  # fmt: skip
    assert added.code == 0, added.err
    assert json.loads(added.out)["match"] == {"header": {"Subject": "2024"}}
    assert deliver(running) == 250  # ("Your order": no 2024 in it)


def test_a_header_condition_names_a_header_field(running: RunningSink, tmp_path: Path) -> None:
    """A field name that no header can have ("", a space, a colon: not RFC 5322 ftext) would
    make a rule that never fires: refused, naming the key, in a config file and over the API."""
    hint = "is not a header field name (printable ASCII characters, at least one, no colon"
    config = tmp_path / "headers.toml"
    for name in ("", "Sub ject"):
        config.write_text(
            '[[fault]]\nstage = "data"\nreply = "550 5.7.1 no"\n'
            f'match = {{ header = {{ "{name}" = "^Reset" }} }}\n'
        )
        checked = run_cli("check-config", str(config))
        assert checked.code == 1
        where = f"mailsink: {config}:4: fault[1].match.header:"
        assert checked.err == f"{where} {name!r} {hint} or space; such as Subject)\n"
    for name in ("", "Sub ject", "Subject:", "Sübject", "X-\x7f"):
        rule = {"stage": "data", "reply": "550 5.7.1 no", "match": {"header": {name: "^Reset"}}}
        request = urllib.request.Request(
            running.url + "/api/mailsink/faults",
            json.dumps(rule).encode(),
            {"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400, name
        assert json.load(refused.value)["error"].startswith(f"match.header: {name!r} {hint}")
    added = faults(
        running, "add", "--stage", "data", "--reply", "550 5.7.1 no", "--match",
        "header.X-Order~ID!=^Your", "--json",
    )  # fmt: skip
    assert added.code == 0, added.err  # every printable character but colon is a name's
    assert json.loads(added.out)["match"] == {"header": {"X-Order~ID!": "^Your"}}


# ---- what no mailsink answers (test_cli_wait's NotMailsink: a proxy, another program)


@pytest.fixture
def not_mailsink() -> Iterator[Callable[..., NotMailsink]]:
    """not_mailsink(answer): an HTTP server that is not a mailsink, until the test ends."""
    with not_mailsink_servers() as start:
        yield start


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        pytest.param(
            {"rules": [{**RULE, "hits": True}]},
            "rule 1: 'hits' is true, not a whole number",
            id="bool",
        ),
        pytest.param(
            {"rules": [RULE, {**RULE, "last_fired_at": 10**30}]},
            f"rule 2: 'last_fired_at' is {10**30}, not a time",
            id="the year 10**22",
        ),
        pytest.param({"rules": [{"stage": "rcpt"}]}, "rule 1: no 'name'", id="no name"),
        pytest.param({"rules": {}}, "no list of rules", id="not a list"),
    ],
)
def test_an_odd_listing_is_one_line_and_exit_1(not_mailsink, answer: dict, says: str) -> None:
    server = not_mailsink(answer_json(200, json.dumps(answer)))
    for output in ([], ["--json"]):
        result = run_cli("faults", *output, "--url", server.url)
        assert (result.code, result.out) == (1, ""), result
        assert result.err == f"mailsink: faults: not a mailsink answer: {says}\n"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(json.dumps(RULE).replace('"hits": 1', '"hits": 1e400'), "1e400", id="inf"),
        pytest.param("[" * 100_000 + "]" * 100_000, "JSON nested too deeply", id="deep"),
        pytest.param(json.dumps({**RULE, "hits": "many"}), "'hits' is \"many\"", id="text"),
    ],
)
def test_an_odd_rule_in_an_answer_is_one_line_and_exit_1(
    not_mailsink, body: str, says: str
) -> None:
    server = not_mailsink(answer_json(201, body))
    for command in (["add", "--stage", "rcpt", "--reply", "550 x"], ["enable", "x"]):
        result = run_cli("faults", *command, "--url", server.url)
        assert (result.code, result.out) == (1, ""), result
        assert result.err.startswith(f"mailsink: faults {command[0]}: not a mailsink answer: ")
        assert says in result.err and result.err.count("\n") == 1, result.err


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(silent, id="silent"),
        pytest.param(drip(), id="dripping its body"),
        pytest.param(drip(in_headers=True), id="dripping its headers"),
    ],
)
def test_a_server_that_does_not_answer_is_cut_off(
    not_mailsink, answer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_faults, "ANSWER_SECONDS", 0.3)  # (10 s, made short for the test)
    server = not_mailsink(answer)
    started = time.monotonic()
    result = run_cli("faults", "reset", "--url", server.url)
    assert time.monotonic() - started < 1.0
    assert result.code == 1
    assert result.err == (
        f"mailsink: faults reset: {server.url} took the request but sent no whole answer"
        " within 0.3s\n"
    )


def test_a_redirect_is_not_followed(not_mailsink) -> None:
    elsewhere = not_mailsink(answer_json(200, json.dumps({"rules": [RULE]})))

    def redirect(handler, _number: int) -> None:
        handler.send_response(307)
        handler.send_header("Location", elsewhere.url + handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server = not_mailsink(redirect)
    result = run_cli("faults", "--url", server.url.replace("//", "//ci:s3cret@"))
    assert result.code == 1
    assert result.err == (
        "mailsink: faults: not a mailsink answer: HTTP 307, a redirect (a mailsink never"
        " redirects: give its own URL)\n"
    )
    assert elsewhere.requests == []
