"""Injected failures, AUTH, TLS and address validation against a live server with real clients."""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path

import pytest
from conftest import ROOT, RawClient, message, run_cli

from mailsink.testing import RunningSink


@pytest.fixture
def configured(tmp_path):
    """configured(toml) -> a running sink with that config file (watched for edits)."""
    started = []

    def start(text: str) -> RunningSink:
        path = tmp_path / "mailsink.toml"
        path.write_text(text)
        sink = RunningSink(tmp_path / "mail.db", config=path).start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def session_of(sink: RunningSink):
    return sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])


def notes(sink: RunningSink, session_id: int) -> list[str]:
    with sink.reader() as reader:
        return [text for _, d, text in reader.get_session(session_id).events if d == "I"]


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# ---- 530: authentication required


AUTH_REQUIRED = (ROOT / "sample_configs" / "auth-required.toml").read_text()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_required_530_then_login_and_auth_user_is_stored(configured, mechanism):
    sink = configured(AUTH_REQUIRED)
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        code, reply = client.mail("app@x.test")
        assert (code, reply) == (530, b"5.7.0 Authentication required")
        client.user, client.password = "dev", "secret"
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        client.sendmail("app@x.test", ["a@x.test"], message())
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.envelope.auth_user == "dev"
    session = session_of(sink)
    assert session.auth_user == "dev"
    with sink.reader() as reader:
        texts = [text for _, _, text in reader.get_session(session.id).events]
    assert not any("secret" in t or "c2VjcmV0" in t for t in texts)  # the password, or its base64
    assert (
        any(t.startswith("AUTH") and "[redacted]" in t for t in texts)
        or "[auth response redacted]" in texts
    )


def test_wrong_credentials_get_535(configured):
    sink = configured(AUTH_REQUIRED)
    with smtplib.SMTP(sink.host, sink.port) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.login("dev", "wrong")
        assert caught.value.smtp_code == 535
        assert caught.value.smtp_error.startswith(b"5.7.8")
    with sink.reader() as reader:
        assert reader.count_messages() == 0


def test_without_users_any_credentials_pass(configured):
    sink = configured('[auth]\nmode = "required"\n')
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.login("anyone", "anything")
        client.sendmail("app@x.test", ["a@x.test"], message())
    with sink.reader() as reader:
        assert reader.list_messages()[0].envelope.auth_user == "anyone"


def test_auth_off_is_not_offered(configured):
    sink = configured('[auth]\nmode = "off"\n')
    raw = RawClient(sink.host, sink.port)
    assert not any("AUTH" in line for line in raw.command("EHLO x"))
    assert raw.command("AUTH PLAIN AGRldgBzZWNyZXQ=")[0].startswith("502 5.5.1")
    raw.close()


# ---- 550 5.7.1 at mail and rcpt


def test_reject_sender_and_recipient_sample(tmp_path):
    config = ROOT / "sample_configs" / "reject-sender.toml"
    with (
        RunningSink(tmp_path / "m.db", config=config) as sink,
        smtplib.SMTP(sink.host, sink.port) as client,
    ):
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            client.sendmail("news@marketing.test", ["a@x.test"], message())
        assert (caught.value.smtp_code, caught.value.smtp_error) == (
            550,
            b"5.7.1 Sender not permitted",
        )
        client.rset()
        refused = client.sendmail(
            "app@x.test", ["a@x.test", "blocked@x.test", "b@x.test"], message()
        )
        assert refused == {"blocked@x.test": (550, b"5.7.1 Recipient not permitted")}
        with sink.reader() as reader:
            (record,) = reader.list_messages(include_rejected=True)
        assert record.envelope.mail_from == "app@x.test"
        assert record.envelope.rcpt_to == ["a@x.test", "b@x.test"]
        assert sink.faults.policy.stats["marketing sender blocked"].hits == 1
        assert sink.faults.policy.stats["blocked recipient"].hits == 1


# ---- 452


def test_mailbox_full_sample(tmp_path):
    config = ROOT / "sample_configs" / "mailbox-full.toml"
    with (
        RunningSink(tmp_path / "m.db", config=config) as sink,
        smtplib.SMTP(sink.host, sink.port) as client,
    ):
        client.ehlo()
        client.mail("app@x.test")
        assert client.rcpt("a@x.test")[0] == 250
        assert client.rcpt("full@x.test") == (452, b"4.2.2 Mailbox full")
        assert client.rcpt("b@x.test")[0] == 250
        assert client.rcpt("c@x.test") == (452, b"4.5.3 Too many recipients")
        assert client.data(message(subject="first try")) == (
            452,
            b"4.3.1 Insufficient system storage",
        )
        # the retry succeeds: `times = 1`
        client.mail("app@x.test")
        client.rcpt("a@x.test")
        client.rcpt("b@x.test")
        code, reply = client.data(message(subject="retry"))
        assert code == 250, reply
        with sink.reader() as reader:
            (accepted,) = reader.list_messages()
            assert accepted.headers["subject"] == "retry"
            assert accepted.envelope.rcpt_to == ["a@x.test", "b@x.test"]
            everything = reader.list_messages(include_rejected=True)
        rejected = everything[1]
        assert rejected.status == "rejected"
        assert rejected.reply == "452 4.3.1 Insufficient system storage"
        assert rejected.envelope.rcpt_to == ["a@x.test", "b@x.test"]
    listing = run_cli("list", "--db", sink.db, "--json")
    assert [m["subject"] for m in __import__("json").loads(listing.out)] == ["retry"]
    listing = run_cli("list", "--db", sink.db, "--all")
    assert "[rejected] first try" in listing.out


def test_flaky_sample_fails_twice_then_succeeds(tmp_path):
    config = ROOT / "sample_configs" / "flaky.toml"
    with (
        RunningSink(tmp_path / "m.db", config=config) as sink,
        smtplib.SMTP(sink.host, sink.port) as client,
    ):
        outcomes = []
        for attempt in range(3):
            try:
                client.sendmail("app@x.test", ["a@x.test"], message(subject=f"attempt {attempt}"))
                outcomes.append(250)
            except smtplib.SMTPDataError as error:
                outcomes.append(error.smtp_code)
        assert outcomes == [451, 451, 250]
        with sink.reader() as reader:
            assert reader.count_messages() == 1
            assert reader.count_messages(include_rejected=True) == 3


# ---- disconnect, drop, delay, rate


def test_disconnect_with_421_and_drop_without_reply(configured):
    sink = configured(
        '[[fault]]\nname = "bye"\nstage = "rcpt"\naction = "disconnect"\n'
        'reply = "421 4.3.2 Going away"\n[fault.match]\nrecipient = "bye@*"\n\n'
        '[[fault]]\nname = "vanish"\nstage = "rcpt"\naction = "drop"\n'
        '[fault.match]\nrecipient = "drop@*"\n'
    )
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    raw.command("MAIL FROM:<a@x.test>")
    assert raw.command("RCPT TO:<bye@x.test>") == ["421 4.3.2 Going away"]
    with pytest.raises(ConnectionError):
        raw.command("NOOP")
    raw.close()
    assert session_of(sink).end_reason == "fault_disconnect"

    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    raw.command("MAIL FROM:<a@x.test>")
    with pytest.raises(ConnectionError):  # closed, no reply at all
        raw.command("RCPT TO:<drop@x.test>")
    raw.close()
    with sink.reader() as reader:
        assert reader.list_sessions()[0].id != 0
    dropped = sink.wait_for(
        lambda r: (s := r.list_sessions()) and s[0].end_reason == "fault_drop" and s[0]
    )
    assert any("fault 'vanish' fired at rcpt: drop" in n for n in notes(sink, dropped.id))


def test_delay_holds_the_reply_back(configured):
    sink = configured(
        '[[fault]]\nname = "slow"\nstage = "mail"\naction = "delay"\ndelay = "400ms"\n'
    )
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    started = time.monotonic()
    assert raw.command("MAIL FROM:<a@x.test>")[0].startswith("250")
    assert time.monotonic() - started >= 0.4
    raw.close()


def test_client_timeout_against_a_delayed_reply(configured):
    sink = configured('[[fault]]\nname = "hang"\nstage = "data"\naction = "delay"\ndelay = "3s"\n')
    client = smtplib.SMTP(sink.host, sink.port, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        client.sendmail("a@x.test", ["b@x.test"], message())
    assert time.monotonic() - started < 2.5  # the client gave up; the server was still waiting
    client.close()


def test_rate_limit_sample(tmp_path):
    config = ROOT / "sample_configs" / "rate-limit.toml"
    with (
        RunningSink(tmp_path / "m.db", config=config) as sink,
        smtplib.SMTP(sink.host, sink.port) as client,
    ):
        for n in range(5):
            client.sendmail("app@x.test", ["a@x.test"], message(subject=f"n{n}"))
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            client.sendmail("app@x.test", ["a@x.test"], message(subject="sixth"))
        assert caught.value.smtp_code == 421
        with sink.reader() as reader:
            assert reader.count_messages() == 5


def test_connect_stage_refusal_and_multi_line_reply(configured):
    sink = configured(
        '[[fault]]\nname = "closed"\nstage = "connect"\n'
        'reply = "554 5.3.2 No service today\\nCome back tomorrow"\n'
    )
    raw = RawClient(sink.host, sink.port)
    assert raw.greeting == ["554-5.3.2 No service today", "554 5.3.2 Come back tomorrow"]
    assert raw.command("EHLO x")[0].startswith("503")
    assert raw.command("QUIT")[0].startswith("221")
    raw.close()


def test_replies_are_sent_exactly_as_configured(configured):
    sink = configured('[[fault]]\nname = "plain"\nstage = "mail"\nreply = "550 No enhanced code"\n')
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    assert raw.command("MAIL FROM:<a@x.test>") == ["550 No enhanced code"]
    raw.close()


def test_firings_are_in_the_transcript_and_counted(configured):
    sink = configured(
        '[[fault]]\nname = "greylist"\nstage = "rcpt"\nreply = "450 4.7.1 Greylisted"\ntimes = 2\n'
    )
    with smtplib.SMTP(sink.host, sink.port) as client:
        for _ in range(3):
            try:
                client.sendmail("a@x.test", ["b@x.test"], message())
            except smtplib.SMTPRecipientsRefused:
                client.rset()
    session = session_of(sink)
    fired = [n for n in notes(sink, session.id) if n.startswith("fault")]
    assert fired == ["fault 'greylist' fired at rcpt: reply 450 4.7.1 Greylisted"] * 2
    assert sink.faults.policy.stats["greylist"].hits == 2
    with sink.reader() as reader:
        row = reader.conn.execute(
            "SELECT faults FROM sessions WHERE id = ?", (session.id,)
        ).fetchone()
    assert row == (2,)


def test_header_rule_at_data(configured):
    sink = configured(
        '[[fault]]\nname = "no invoices"\nstage = "data"\nreply = "554 5.7.1 Invoices refused"\n'
        '[fault.match]\nheader = { Subject = "^invoice" }\n'
    )
    with smtplib.SMTP(sink.host, sink.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("a@x.test", ["b@x.test"], message(subject="Invoice 42"))
        assert caught.value.smtp_code == 554
        client.sendmail("a@x.test", ["b@x.test"], message(subject="Receipt 42"))
    with sink.reader() as reader:
        assert [m.headers["subject"] for m in reader.list_messages()] == ["Receipt 42"]


def test_chaos_sample_is_reproducible(tmp_path):
    def run(directory: Path) -> list[str]:
        directory.mkdir()
        config = ROOT / "sample_configs" / "chaos.toml"
        outcomes = []
        with RunningSink(directory / "m.db", config=config) as sink:
            for n in range(25):
                try:
                    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
                        refused = client.sendmail(
                            "a@x.test", ["b@x.test", "c@x.test"], message(subject=str(n))
                        )
                        outcomes.append(f"ok {sorted(refused)}")
                except (smtplib.SMTPException, OSError) as error:
                    outcomes.append(type(error).__name__)
        return outcomes

    first, second = run(tmp_path / "one"), run(tmp_path / "two")
    assert first == second
    assert len(set(first)) > 2  # a mix of outcomes, not all the same


# ---- TLS


def test_starttls_required_then_accepted(tmp_path):
    config = tmp_path / "tls.toml"
    config.write_text("[tls]\nstarttls = true\nrequire = true\n")
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            code, reply = client.mail("a@x.test")
            assert code == 530 and reply.startswith(b"5.7.0")
            client.starttls(context=unverified())
            client.sendmail("a@x.test", ["b@x.test"], message())
        with sink.reader() as reader:
            (record,) = reader.list_messages()
        assert record.envelope.tls is True
        assert session_of(sink).tls is True
        assert (tmp_path / "mailsink-localhost-cert.pem").exists()  # generated beside the store


def test_implicit_tls_listener(tmp_path):
    from conftest import free_port

    port = free_port()
    config = tmp_path / "tls.toml"
    config.write_text(f"[tls]\nimplicit_port = {port}\n")
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        assert ("SMTPS, implicit TLS") in sink.server.labels
        with smtplib.SMTP_SSL(sink.host, port, context=unverified()) as client:
            client.sendmail("a@x.test", ["b@x.test"], message(subject="over tls"))
        with smtplib.SMTP(sink.host, sink.port) as plain:
            plain.ehlo()
            assert not plain.has_extn("starttls")  # only the implicit listener was asked for
        with sink.reader() as reader:
            (record,) = reader.list_messages()
        assert record.envelope.tls is True


def test_tls_sample_config_runs(tmp_path):
    from mailsink.config import load

    settings = load(ROOT / "sample_configs" / "tls.toml")
    assert settings.tls.starttls and settings.tls.require and settings.tls.implicit_port == 1465
    config = tmp_path / "tls.toml"
    config.write_text((ROOT / "sample_configs" / "tls.toml").read_text().replace("1465", "0"))
    with (
        RunningSink(tmp_path / "t.db", config=config) as sink,
        smtplib.SMTP(sink.host, sink.port) as client,
    ):
        assert client.mail("a@x.test")[0] in (503, 530)  # nothing before STARTTLS
        client.starttls(context=unverified())
        client.sendmail("a@x.test", ["b@x.test"], message())


# ---- address validation


def test_validation_reject(configured):
    sink = configured('[validation]\naddresses = "reject"\n')
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    assert raw.command('MAIL FROM:<"bad addr">')[0].startswith("553 5.1.7")
    assert raw.command("MAIL FROM:<jörg@bücher.test>")[0].startswith("553 5.6.7")  # no SMTPUTF8
    assert raw.command("MAIL FROM:<jörg@bücher.test> SMTPUTF8")[0].startswith("250")
    assert raw.command("RCPT TO:<a..b@x.test>")[0].startswith("553 5.1.3")
    assert raw.command("RCPT TO:<zoë@example.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<dev@localhost>")[0].startswith("250")
    raw.close()


def test_validation_flag_and_off(configured, tmp_path):
    sink = configured('[validation]\naddresses = "flag"\n')
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@x.test", ["a..b@x.test"], message())
    with sink.reader() as reader:
        kinds = [f["kind"] for f in reader.list_messages()[0].findings]
    assert "invalid_address" in kinds
    (tmp_path / "mailsink.toml").write_text('[validation]\naddresses = "off"\n')
    sink.wait_for(lambda _: sink.server.settings.validation.addresses == "off")
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@x.test", ["a..b@x.test"], message())
    with sink.reader() as reader:
        kinds = [f["kind"] for f in reader.list_messages()[0].findings]
    assert "invalid_address" not in kinds
