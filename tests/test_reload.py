"""Live config reload with watchfiles, and `mailsink check-config`."""

from __future__ import annotations

import logging
import os
import signal
import smtplib
import time

import pytest
from conftest import RawClient, free_port, mailsink_process, message, run_cli, wait_for_port

from mailsink.testing import RunningSink

REJECT_MAIL = '[[fault]]\nname = "no mail"\nstage = "mail"\nreply = "550 5.7.1 Not today"\n'


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def watched(tmp_path):
    config = tmp_path / "mailsink.toml"
    config.write_text('[smtp]\ntimeout = "5m"\n')
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        yield sink, config


def test_a_valid_edit_applies_to_the_next_command_of_an_open_connection(watched):
    sink, config = watched
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    assert raw.command("MAIL FROM:<a@x.test>")[0].startswith("250")
    raw.command("RSET")
    config.write_text(REJECT_MAIL)
    wait_until(lambda: sink.watcher.reloads == 1)
    assert raw.command("MAIL FROM:<a@x.test>") == ["550 5.7.1 Not today"]  # same connection
    config.write_text("")
    wait_until(lambda: sink.watcher.reloads == 2)
    assert raw.command("MAIL FROM:<a@x.test>")[0].startswith("250")
    raw.close()


def test_an_invalid_edit_keeps_the_previous_rules_and_says_where(watched, caplog):
    sink, config = watched
    config.write_text(REJECT_MAIL)
    wait_until(lambda: sink.watcher.reloads == 1)
    with caplog.at_level(logging.ERROR, logger="mailsink"):
        config.write_text(
            REJECT_MAIL + '\n[[fault]]\nname = "broken"\nstage = "lunch"\nreply = "550 x"\n'
        )
        wait_until(lambda: sink.watcher.error is not None)
    assert sink.watcher.error == (
        f"{config.resolve()}:8: fault[2].stage: 'lunch' is not a stage; "
        "allowed: connect, helo, auth, mail, rcpt, data"
    )
    assert "keeping the previous one" in caplog.text
    with smtplib.SMTP(sink.host, sink.port) as client, pytest.raises(smtplib.SMTPSenderRefused):
        client.sendmail("a@x.test", ["b@x.test"], message())  # the old rule still answers
    config.write_text("")  # fixed: the error clears
    wait_until(lambda: sink.watcher.error is None and sink.watcher.reloads == 2)


def test_editors_that_write_and_rename_are_followed(watched):
    sink, config = watched
    for round_ in range(2):
        temporary = config.with_name(f".mailsink.toml.{round_}.swp")
        temporary.write_text(REJECT_MAIL if round_ == 0 else "")
        os.replace(temporary, config)
        wait_until(lambda r=round_: sink.watcher.reloads == r + 1)
    assert sink.server.settings.rules == ()
    assert not [rule for rule in sink.faults.policy.rules if rule.enabled]  # presets stay off


def test_settings_that_need_a_restart_say_so_and_keep_their_value(watched, caplog):
    sink, config = watched
    port = sink.port
    with caplog.at_level(logging.INFO, logger="mailsink"):
        config.write_text('[smtp]\ntimeout = "30s"\nhostname = "renamed"\n[tls]\nstarttls = true\n')
        wait_until(lambda: sink.watcher.reloads == 1)
    assert "tls.starttls: False -> True needs a restart" in caplog.text
    assert not sink.server.settings.tls.starttls
    assert "smtp.hostname: 'mailsink' -> 'renamed'" in caplog.text
    assert sink.server.settings.smtp.timeout == 30.0
    raw = RawClient(sink.host, port)  # still listening where it was
    assert raw.greeting == ["220 renamed ESMTP mailsink"]
    raw.close()


def test_serve_watches_its_config_file(tmp_path):
    port = free_port()
    config = tmp_path / "live.toml"
    config.write_text(f"[smtp]\nport = {port}\n")
    process = mailsink_process("serve", "--config", str(config), "--db", str(tmp_path / "s.db"))
    try:
        wait_for_port(port)
        time.sleep(0.3)
        config.write_text(f"[smtp]\nport = {port}\n" + REJECT_MAIL)
        deadline = time.monotonic() + 10
        refused = False
        while not refused and time.monotonic() < deadline:
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.ehlo()
                refused = client.mail("a@x.test")[0] == 550
            time.sleep(0.05)
        assert refused
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    log = err.decode()
    assert f"watching {config}" in log
    assert "config reloaded from" in log and "fault 'no mail' added" in log
    assert "fault 'no mail' fired at mail" in log


def test_check_config_prints_settings_and_rules_in_order(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        "[smtp]\nport = 2525\n[faults]\nseed = 9\n"
        '[[fault]]\nname = "first"\nstage = "rcpt"\nreply = "452 4.5.3 Too many recipients"\n'
        "[fault.match]\nrecipients_over = 2\n"
        '[[fault]]\nname = "second"\nstage = "data"\nreply = "451 4.3.0 Try later"\ntimes = 2\n'
    )
    result = run_cli("check-config", str(config))
    assert result.code == 0, result.err
    assert "port = 2525" in result.out and "seed = 9" in result.out
    assert "2 fault rule(s), tried in this order:" in result.out
    lines = result.out.splitlines()
    first = lines.index(next(line for line in lines if "1. first" in line))
    assert (
        '1. first: rcpt: reply "452 4.5.3 Too many recipients" when recipients_over=2'
        in lines[first]
    )
    assert '2. second: data: reply "451 4.3.0 Try later" 2 time(s)' in lines[first + 1]


def test_check_config_error_exits_1_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[fault]]\nstage = "mail"\nreply = "550 x"\nprobability = 2\n')
    result = run_cli("check-config", str(config))
    assert result.code == 1
    assert result.err == (
        f"mailsink: {config}:4: fault[1].probability: expected a number from 0 to 1, got 2\n"
    )


def test_differences_sort_live_changes_from_restart_ones():
    from mailsink.config import Settings, SmtpSettings, StorageSettings
    from mailsink.reload import differences

    old = Settings()
    new = Settings(smtp=SmtpSettings(port=2525, timeout=30.0), storage=StorageSettings(path="x.db"))
    applied, restart = differences(old, new)
    assert applied == ["smtp.timeout: 300.0 -> 30.0"]
    assert restart == ["smtp.port: 1025 -> 2525", "storage.path: '' -> 'x.db'"]
