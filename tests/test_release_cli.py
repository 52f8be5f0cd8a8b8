"""`mailsink release`, releases in `mailsink show`, the store's releases rows, and the [relay]
secret kept out of check-config, logs and transcripts (issue 18).

The upstream is a second real mailsink (tests/relay_upstream.py): STARTTLS with the test's own
CA, AUTH, and fault rules to make it refuse."""

from __future__ import annotations

import json
import smtplib
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import HOSTILE, ServerLines, downgrade, mailsink_process, message, run_cli
from relay_upstream import PASSWORD, SilentServer, Upstream

from mailsink.events import MessageReleased
from mailsink.output import release_lines
from mailsink.relay import ReleaseRecord
from mailsink.store import Reader, operations, run_here
from mailsink.testing import RunningSink

RAW = message(to="ann@example.test", subject="Release me", body="Line one\r\n.dot line\r\n")


@pytest.fixture
def upstream(tmp_path: Path):
    with Upstream(tmp_path / "upstream") as up:
        yield up


def _send(host: str, port: int, raw: bytes, rcpt: list[str], sender: str = "app@shop.test"):
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.sendmail(sender, rcpt, raw)


def _store_with_mail(db: Path, *messages: tuple[bytes, list[str]]) -> None:
    """A store holding these messages, and no server running for it."""
    with RunningSink(db, http=False) as sink:
        for raw, rcpt in messages:
            _send(sink.host, sink.port, raw, rcpt)


def _config(tmp_path: Path, relay: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(relay)
    return path


def _releases(db: Path, message_id: int = 1):
    with Reader(str(db)) as reader:
        return reader.releases(message_id)


# ---- without a server: released by the CLI's own process


def test_release_here_sends_the_stored_bytes_unchanged_and_records_it(tmp_path, upstream):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    config = _config(tmp_path, upstream.relay_toml(allowed=["*@example.test"]))

    result = run_cli(
        "release", "1", "--to", "ann@example.test", "--config", str(config), "--db", str(db)
    )

    assert result.code == 0, result.err
    assert result.err == ""
    line = result.out.strip()
    assert line.startswith(
        f"released message 1 to ann@example.test via 127.0.0.1:{upstream.port}: 250 2.0.0 Ok:"
    ), line
    assert upstream.wait_for_messages(1) == [RAW]  # the bytes as stored, dot line and all
    assert upstream.envelopes() == [("app@shop.test", ["ann@example.test"])]  # its own sender
    (record,) = _releases(db)
    assert (record.trigger, record.outcome, record.recipients) == (
        "cli",
        "sent",
        ("ann@example.test",),
    )
    assert (record.code, record.upstream, record.mail_from) == (
        250,
        f"127.0.0.1:{upstream.port}",
        "app@shop.test",
    )
    assert "queued as" in record.reply


def test_release_defaults_to_the_allowed_envelope_recipients(tmp_path, upstream):
    db = tmp_path / "mail.db"
    # Bcc'd ann is in the envelope only; zed is outside the allow-list.
    _store_with_mail(
        db, (message(to="zed@elsewhere.test"), ["zed@elsewhere.test", "Ann@Example.test"])
    )
    config = _config(tmp_path, upstream.relay_toml(allowed=["*@example.test"]))

    result = run_cli("release", "latest", "--config", str(config), "--db", str(db))

    assert result.code == 0, result.err
    assert "released message 1 to Ann@Example.test via" in result.out
    upstream.wait_for_messages(1)
    assert upstream.envelopes() == [("app@shop.test", ["Ann@Example.test"])]


def test_a_recipient_outside_the_allow_list_is_refused_before_any_connection(tmp_path, upstream):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    config = _config(tmp_path, upstream.relay_toml(allowed=["*@example.test"]))

    result = run_cli(
        "release",
        "1",
        "--to",
        "ann@example.test",
        "--to",
        "eve@evil.test",
        "--config",
        str(config),
        "--db",
        str(db),
    )

    assert result.code == 1 and result.out == ""
    assert len(result.err.splitlines()) == 1
    assert result.err.startswith("mailsink: release of message 1: not allowed by [relay]")
    assert result.err.endswith("): eve@evil.test; nothing was sent\n")  # only the refused one
    assert upstream.sessions() == []  # not even a connection
    assert _releases(db) == []


def test_releasing_is_off_without_a_relay_host(tmp_path):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))

    result = run_cli("release", "1", "--db", str(db))

    assert (result.code, result.out) == (1, "")
    assert result.err == "mailsink: releasing is off: no [relay] host in the config\n"
    assert _releases(db) == []


def test_an_unknown_message_is_one_line_and_the_others_are_released(tmp_path, upstream):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    config = _config(tmp_path, upstream.relay_toml())

    result = run_cli("release", "7", "1", "--config", str(config), "--db", str(db))

    assert result.code == 1
    assert result.err.strip().splitlines() == ["mailsink: no message 7"]
    assert result.out.startswith("released message 1 to ann@example.test via")


def test_an_upstream_refusal_is_quoted_recorded_and_exits_1(tmp_path, upstream):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    config = _config(tmp_path, upstream.relay_toml())
    upstream.add_fault(name="nobody", stage="rcpt", action="reply", reply="550 5.1.1 no such user")

    result = run_cli("release", "1", "--json", "--config", str(config), "--db", str(db))

    assert result.code == 1
    (line,) = result.err.splitlines()
    assert line.startswith("mailsink: release of message 1 failed at RCPT")
    assert "550 5.1.1 no such user" in line and f"127.0.0.1:{upstream.port}" in line
    (printed,) = json.loads(result.out)  # --json: the record written for the failure
    assert (printed["outcome"], printed["code"], printed["trigger"]) == ("failed", 550, "cli")
    (record,) = _releases(db)
    assert record.outcome == "failed" and record.code == 550 and printed["id"] == record.id
    assert upstream.raw_messages() == []


def test_a_failure_is_one_line_on_stderr_of_a_real_process(tmp_path):
    """The sink logs each release; a `mailsink release` process (no logging set up, so
    Python's last-resort handler would print the warning) says it once, its own way."""
    import socket
    import subprocess
    import sys

    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = _config(
        tmp_path,
        f'[relay]\nhost = "127.0.0.1"\nport = {closed}\ntls = "none"\n'
        'allowed_recipients = ["*@example.test"]\n',
    )
    command = [sys.executable, "-m", "mailsink", "release", "1", "-c", str(config)]
    done = subprocess.run([*command, "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("mailsink: release of message 1 failed at connect: 127.0.0.1:")


def test_a_partial_release_names_the_refused_and_who_got_it(tmp_path, upstream):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test", "bob@example.test"]))
    config = _config(tmp_path, upstream.relay_toml())
    upstream.add_fault(
        name="no bob",
        stage="rcpt",
        action="reply",
        reply="550 5.1.1 no such user",
        match={"recipient": "bob@*"},
    )

    result = run_cli("release", "1", "--config", str(config), "--db", str(db))

    assert (result.code, result.out) == (1, "")
    (line,) = result.err.splitlines()
    assert "partial" in line and "bob@example.test (550 5.1.1 no such user)" in line
    assert "ann@example.test got it: 250 2.0.0 Ok" in line
    assert upstream.wait_for_messages(1) == [RAW]
    assert upstream.envelopes() == [("app@shop.test", ["ann@example.test"])]
    (record,) = _releases(db)
    assert record.outcome == "partial"
    assert record.refused == {"bob@example.test": "550 5.1.1 no such user"}


def test_an_upstream_that_never_answers_times_out_in_one_line(tmp_path):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    with SilentServer() as silent:
        config = _config(
            tmp_path,
            f'[relay]\nhost = "127.0.0.1"\nport = {silent.port}\ntls = "none"\ntimeout = 0.5\n'
            'allowed_recipients = ["*@example.test"]\n',
        )
        started = time.monotonic()
        result = run_cli("release", "1", "--config", str(config), "--db", str(db))
        took = time.monotonic() - started
    assert result.code == 1 and result.out == ""
    (line,) = result.err.splitlines()
    assert "timed out" in line and "message 1" in line
    assert took < 5  # the timeout, not a hang
    (record,) = _releases(db)
    assert record.outcome == "failed" and record.code is None


# ---- with a server: the server releases


def test_release_goes_through_the_running_server(tmp_path, upstream):
    db = tmp_path / "mail.db"
    server_config = _config(tmp_path, upstream.relay_toml())
    with RunningSink(db, config=server_config) as sink:
        _send(sink.host, sink.port, RAW, ["ann@example.test"])
        with sink.events(MessageReleased) as events:
            # No --config: this process has no [relay]; the server's is used.
            result = run_cli("release", "latest", "--db", str(db))
            (event,) = [
                e for e in events.until(MessageReleased, 10) if isinstance(e, MessageReleased)
            ]
        assert result.code == 0, result.err
        assert result.out.startswith(
            f"released message 1 to ann@example.test via 127.0.0.1:{upstream.port}: 250 2.0.0 Ok:"
        )
        assert (event.message_id, event.outcome, event.trigger) == (1, "sent", "cli")
        (record,) = _releases(db)
        assert record.id == event.release_id and record.trigger == "cli"
    assert upstream.wait_for_messages(1) == [RAW]


def test_release_through_the_server_reports_its_refusals(tmp_path, upstream):
    db = tmp_path / "mail.db"
    with RunningSink(db, config=_config(tmp_path, upstream.relay_toml())) as sink:
        _send(sink.host, sink.port, RAW, ["ann@example.test"])
        refused = run_cli("release", "1", "--to", "eve@evil.test", "--db", str(db))
        upstream.add_fault(
            name="full", stage="rcpt", action="reply", reply="452 4.2.2 Mailbox full"
        )
        failed = run_cli("release", "1", "--db", str(db))
        gone = run_cli("release", "9", "--db", str(db))
    assert (
        refused.code == 1 and "eve@evil.test" in refused.err and len(refused.err.splitlines()) == 1
    )
    assert failed.code == 1 and "452 4.2.2 Mailbox full" in failed.err
    assert len(failed.err.splitlines()) == 1
    assert gone.code == 1 and gone.err == "mailsink: no message 9\n"
    assert [record.outcome for record in _releases(db)] == ["failed"]


# ---- show


def test_show_lists_each_release_and_show_json_has_the_records(tmp_path, upstream):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test", "bob@example.test"]))
    config = _config(tmp_path, upstream.relay_toml())
    assert (
        run_cli(
            "release", "1", "--to", "ann@example.test", "--config", str(config), "--db", str(db)
        ).code
        == 0
    )
    upstream.add_fault(
        name="no bob",
        stage="rcpt",
        action="reply",
        reply="550 5.1.1 no such user",
        match={"recipient": "bob@*"},
    )
    assert run_cli("release", "1", "--config", str(config), "--db", str(db)).code == 1

    shown = run_cli("show", "1", "--db", str(db))
    as_json = run_cli("show", "1", "--json", "--db", str(db))

    assert shown.code == 0 and as_json.code == 0
    block = shown.out.split("Releases", 1)[1].split("MIME structure", 1)[0]
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    assert len(lines) == 3, block  # two tries, and bob's refusal under the second
    assert " cli " in lines[0] and " sent " in lines[0] and "to ann@example.test via" in lines[0]
    assert "250 2.0.0 Ok: queued as" in lines[0]
    assert " partial " in lines[1] and "to ann@example.test, bob@example.test" in lines[1]
    assert lines[2].split() == ["✗", "bob@example.test", "550", "5.1.1", "no", "such", "user"]
    releases = json.loads(as_json.out)["releases"]
    assert [r["outcome"] for r in releases] == ["sent", "partial"]
    assert releases[1]["refused"] == {"bob@example.test": "550 5.1.1 no such user"}
    assert set(releases[0]) >= {"id", "message_id", "at", "trigger", "upstream", "recipients"}


def test_show_json_of_a_message_never_released_has_no_releases(tmp_path):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    assert json.loads(run_cli("show", "1", "--json", "--db", str(db)).out)["releases"] == []
    assert "Releases" not in run_cli("show", "1", "--db", str(db)).out


def test_release_lines_make_the_upstreams_text_visible():
    record = ReleaseRecord(
        id=3,
        message_id=1,
        at=1_700_000_000_000,
        trigger="auto",
        upstream="mx.example.test:587",
        mail_from="",
        recipients=("ann@example.test", "bob@example.test"),
        outcome="retrying",
        code=451,
        reply=f"4.7.1 {HOSTILE}",
        refused={"bob@example.test": f"550 {HOSTILE}"},
        attempt=2,
    )
    head, refused = release_lines([record])
    assert "\x1b" not in head + refused and "\x07" not in head + refused
    assert " auto " in head and " retrying (try 2) " in head
    assert head.endswith(": 451 4.7.1 [bold red]x␛[2J␇")  # the code put before its text
    assert refused.strip() == "✗ bob@example.test  550 [bold red]x␛[2J␇"


# ---- the store


def _record(db: Path, message_id: int, at: int = 1000) -> int | None:
    return run_here(
        str(db),
        operations.record_release,
        message_id=message_id,
        at=at,
        trigger="cli",
        upstream="mx.example.test:587",
        mail_from="",
        recipients=["ann@example.test"],
        outcome="sent",
        code=250,
        reply="250 2.0.0 Ok",
        refused={},
        attempt=1,
    )


def test_record_release_writes_a_row_once_and_none_for_a_message_gone(tmp_path):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]), (RAW, ["bob@example.test"]))

    first = _record(db, 1)
    again = _record(db, 1)  # sent again after a writer died before answering: same row
    other = _record(db, 1, at=2000)
    assert first is not None and again == first and other not in (None, first)
    assert _record(db, 99) is None
    assert [r.id for r in _releases(db)] == [first, other]
    run_here(str(db), operations.delete_messages, [1])
    with sqlite3.connect(db) as conn:  # its releases went with it (the trigger)
        assert conn.execute("SELECT count(*) FROM releases").fetchone()[0] == 0
    assert _releases(db) == []


def test_a_store_older_than_releases_has_none_and_records_none(tmp_path):
    db = tmp_path / "mail.db"
    _store_with_mail(db, (RAW, ["ann@example.test"]))
    downgrade(db, 7)
    assert _releases(db) == []
    assert _record(db, 1) is None
    shown = run_cli("show", "1", "--json", "--db", str(db))
    assert shown.code == 0 and json.loads(shown.out)["releases"] == []


# ---- the secret


def _drained(lines: ServerLines) -> str:
    """Everything the (ended) server wrote on stderr."""
    lines.reader.join(10)
    while not lines._lines.empty():
        lines.seen.append(lines._lines.get_nowait())
    return "".join(lines.seen)


def test_check_config_shows_relay_with_the_password_masked(tmp_path, upstream):
    config = _config(tmp_path, upstream.relay_toml())
    shown = run_cli("check-config", str(config))
    assert shown.code == 0, shown.err
    assert PASSWORD not in shown.out + shown.err
    relay = shown.out.split("[relay]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert "password = (set, hidden)" in relay
    assert 'username = "relayuser"' in relay
    assert 'host = "127.0.0.1"' in relay and f"port = {upstream.port}" in relay
    assert 'allowed_recipients = ["*@example.test"]' in relay


def test_check_config_says_releasing_is_off_without_a_relay(tmp_path):
    config = _config(tmp_path, "[smtp]\nport = 2525\n")
    shown = run_cli("check-config", str(config))
    assert '[relay]\nhost = ""  # releasing is off\n' in shown.out


def test_the_password_is_in_no_log_transcript_record_or_output(tmp_path, upstream):
    db = tmp_path / "mail.db"
    config = _config(tmp_path, upstream.relay_toml())
    server = mailsink_process("serve", "--config", str(config), "--db", str(db), "--port", "0")
    lines = ServerLines(server)
    try:
        port = int(lines.until(r"listening on 127\.0\.0\.1:(\d+) \(SMTP\)").group(1))
        lines.until(r"HTTP API")
        _send("127.0.0.1", port, RAW, ["ann@example.test"])
        lines.until(r"message 1 from")
        released = run_cli("release", "1", "--json", "--db", str(db))
        assert released.code == 0, released.err
        lines.until(r"released message 1 to ann@example.test")
        shown = run_cli("show", "1", "--json", "--db", str(db))
    finally:
        server.terminate()
        server.wait(10)
    log = _drained(lines)
    assert "released message 1" in log
    assert PASSWORD not in log
    assert PASSWORD not in released.out + released.err + shown.out
    # The upstream's transcript of the session that logged in, and mailsink's own.
    (session,) = [s for s in upstream.sessions() if s.auth_user == "relayuser"]
    with upstream.running.reader() as reader:
        transcript = "\n".join(text for _, _, text in reader.get_session(session.id).events)
    assert "AUTH" in transcript and PASSWORD not in transcript
    with Reader(str(db)) as reader:
        ours = [reader.get_session(s.id) for s in reader.list_sessions()]
        rows = sqlite3.connect(db).execute("SELECT * FROM releases").fetchall()
    assert all(PASSWORD not in text for s in ours for _, _, text in s.events)
    assert PASSWORD not in repr(rows)
