"""SMTP typed by hand, as the tutorials teach it: over telnet (CRLF) and over `nc` without -C
(every line ends in a bare LF). Also [smtp] bare_lf = "reject", [smtp] helo_required and the
AUTH habits of hand-typed and small clients (LOGIN's prompts, CRAM-MD5)."""

from __future__ import annotations

import base64
import hmac
import re
import smtplib
import socket
import time
from pathlib import Path

import pytest
from conftest import RawClient

from mailsink.testing import RunningSink

BARE_LF_REPLY = "550 5.5.2 mailsink Error: bare <LF> received"


class Typist(RawClient):
    """A person at telnet (eol CRLF) or at `nc` without -C (eol LF)."""

    def __init__(self, host: str, port: int, eol: bytes):
        super().__init__(host, port)
        self.eol = eol

    def type(self, line: str) -> list[str]:
        self.send(line.encode() + self.eol)
        return self.reply()

    def type_message(self, lines: list[str]) -> list[str]:
        """The message's lines, then a lone "."; the reply to the end of DATA."""
        self.send(b"".join(line.encode() + self.eol for line in [*lines, "."]))
        return self.reply()


def ended_session(sink: RunningSink):
    return sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])


def transcript(sink: RunningSink, session_id: int) -> list[tuple[str, str]]:
    with sink.reader() as reader:
        record = reader.get_session(session_id)
    assert record is not None
    return [(direction, text) for _, direction, text in record.events]


# The tutorials' sessions: the commands as typed and the reply each gets, then the message.
TUTORIAL = [
    (
        [
            ("EHLO client.contoso.com", "250"),
            ("mail from: sender@contoso.com", "250 2.1.0"),
            ("RCPT TO:kate@fabrikam.com NOTIFY=success,failure", "250 2.1.5"),
            ("DATA", "354"),
        ],
        ["This is a test message.", "It has no headers at all."],
    ),
    (
        [
            ("MAIL FROM: <sender@domain.com>", "250 2.1.0"),
            ("RCPT TO: <user@domain.com>", "250 2.1.5"),
            ("DATA", "354"),
        ],
        ["Subject: Test message", "", "..a line that starts with a dot", "Bye."],
    ),
]


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["telnet-CRLF", "nc-bare-LF"])
def test_the_tutorial_sessions_store_every_message_as_typed(sink, eol):
    typist = Typist(sink.host, sink.port, eol)
    for commands, lines in TUTORIAL:
        for command, expected in commands:
            assert typist.type(command)[-1].startswith(expected), command
        assert typist.type_message(lines)[0].startswith("250 2.0.0 Ok: queued as")
    assert typist.type("QUIT")[0].startswith("221")
    typist.close()

    with sink.reader() as reader:
        second, first = reader.list_messages()
        raws = [reader.get_raw(first.id), reader.get_raw(second.id)]
    assert (first.envelope.mail_from, first.envelope.rcpt_to) == (
        "sender@contoso.com",
        ["kate@fabrikam.com"],
    )
    assert first.envelope.rcpt_options == [["NOTIFY=SUCCESS,FAILURE"]]
    assert first.envelope.helo == "client.contoso.com"
    assert (second.envelope.mail_from, second.envelope.rcpt_to) == (
        "sender@domain.com",
        ["user@domain.com"],
    )
    # Exactly the bytes typed, line endings untouched; only the stuffed dot is gone.
    assert raws[0] == b"This is a test message." + eol + b"It has no headers at all." + eol
    assert raws[1] == eol.join(
        [b"Subject: Test message", b"", b".a line that starts with a dot", b"Bye.", b""]
    )
    assert second.headers["subject"] == "Test message"

    session = ended_session(sink)
    assert session.end_reason == "quit" and session.refusals == 0
    lines = transcript(sink, session.id)
    assert not [text for _, text in lines if "\r" in text or "\n" in text]
    client_lines = [text for direction, text in lines if direction == "C"]
    assert "mail from: sender@contoso.com" in client_lines
    assert "RCPT TO:kate@fabrikam.com NOTIFY=success,failure" in client_lines
    summaries = [text for direction, text in lines if direction == "D"]
    assert len(summaries) == 2
    if eol == b"\n":
        assert all('ended by a lone "." (bare-LF client)' in text for text in summaries)
    else:
        assert summaries[0] == f"[message data: {len(raws[0]) + 3} bytes]"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (b".\n", b""),  # a lone dot as the very first line: an empty message
        (b"a\r\nb\r\n.\n", b"a\r\nb\r\n"),  # CRLF lines, the dot line in LF alone
        (b"a\nb\n.\r\n", b"a\nb\n"),  # the dot line in CRLF
        (b".\r\n", b""),
        (b"..\n.x\n.\r.\n.\n", b".\nx\n\r.\n"),  # stuffed lines; ".\r." is not an end
        (b"a\n.\rb\n.\n", b"a\n\rb\n"),
    ],
    ids=["first-line", "crlf-lines", "dot-crlf", "first-line-crlf", "stuffed", "dot-cr"],
)
def test_a_bare_lf_client_ends_data_at_a_lone_dot_line(sink, raw, sent, stored):
    for command in (b"EHLO x", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
        raw.send(command + b"\n")
        assert raw.reply()[0][:1] in ("2", "3")
    raw.send(sent)
    assert raw.reply()[0].startswith("250 2.0.0 Ok: queued")
    assert raw.command("NOOP") == ["250 2.0.0 OK"]  # nothing left over read as a command
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id) == stored


def test_the_data_line_decides_how_the_message_ends(sink, raw):
    """Only CRLF.CRLF ends DATA sent with CRLF (its bare LFs and LF.LF are content); after a
    DATA line in LF alone, LF.LF ends it."""
    content = b"Subject: mixed\r\n\r\nline one\nline two\n.\nstill the message"
    raw.command("EHLO x")
    for data_line, end in ((b"DATA\r\n", b"\r\n.\r\n"), (b"DATA\n", b"\n.\n")):
        raw.command("MAIL FROM:<a@x.test>")
        raw.command("RCPT TO:<b@x.test>")
        raw.send(data_line)
        assert raw.reply()[0].startswith("354")
        raw.send(content + end)
        assert raw.reply()[0].startswith("250")
    with sink.reader() as reader:
        after_lf, after_crlf = reader.list_messages()
        assert reader.get_raw(after_crlf.id) == content + b"\r\n"
        assert reader.get_raw(after_lf.id) == b"Subject: mixed\r\n\r\nline one\nline two\n"


def test_an_unfinished_bare_lf_data_says_no_dot_line_came(tmp_path):
    with RunningSink(tmp_path / "mail.db") as sink:
        raw = RawClient(sink.host, sink.port)
        for command in (b"EHLO x", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
            raw.send(command + b"\n")
            raw.reply()
        raw.send(b"Subject: cut\n\nhalf a message\n")
        raw.close()
        session = ended_session(sink)
        assert session.end_reason == "aborted"
        notes = [text for direction, text in transcript(sink, session.id) if direction == "I"]
    assert any('no lone "." line yet' in note for note in notes), notes


def open_data(raw: RawClient, eol: bytes) -> None:
    for command in (b"EHLO x", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
        raw.send(command + eol)
        assert raw.reply()[0][:1] in ("2", "3"), command


def test_dot_lines_from_a_bare_lf_client_cost_what_a_crlf_clients_do(sink):
    """A MiB of dot-stuffed lines: read a line at a time, a bare-LF client's took some 40 times
    a CRLF client's (about 8 µs a line, the loop held meanwhile); read in blocks, the same."""
    elapsed = {}
    for eol in (b"\r\n", b"\n"):
        raw = RawClient(sink.host, sink.port)
        open_data(raw, eol)
        lines = b"." + b"x" + eol
        blob = b"." + lines * (1024 * 1024 // len(lines)) + b"." + eol
        started = time.perf_counter()
        raw.send(blob)
        assert raw.reply()[0].startswith("250 2.0.0 Ok: queued")
        elapsed[eol] = time.perf_counter() - started
        raw.close()
    assert elapsed[b"\n"] < 3 * elapsed[b"\r\n"] + 0.3, elapsed
    with sink.reader() as reader:
        by_lf, by_crlf = reader.list_messages()
        assert reader.get_raw(by_lf.id).startswith(b".x\nx\nx\n")  # every dot unstuffed once
        assert reader.get_raw(by_crlf.id).startswith(b".x\r\nx\r\nx\r\n")


# The ends and stuffings a bare-LF client's message can hold, each across any block boundary.
ODD_MESSAGE = b"..first\n.\r.\n.\rx\nmid\r\n..\r\n. \n.\r\r\nlast\n.\r\nNOOP\n"
ODD_STORED = b".first\n\r.\n\rx\nmid\r\n.\r\n \n\r\r\nlast\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_a_bare_lf_message_delivered_in_odd_chunks(sink, raw, chunk):
    """The "." line that ends the message (LF or CRLF after it), the stuffed dots, and a
    command behind the end, arriving a few bytes at a time."""
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    open_data(raw, b"\n")
    for start in range(0, len(ODD_MESSAGE), chunk):
        raw.send(ODD_MESSAGE[start : start + chunk])
        time.sleep(0.001)  # each chunk its own read
    assert raw.reply()[0].startswith("250 2.0.0 Ok: queued")
    assert raw.reply() == ["250 2.0.0 OK"]  # the NOOP behind the end
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id) == ODD_STORED


# ---- [smtp] bare_lf = "reject": as Postfix with smtpd_forbid_bare_newline = reject


def test_bare_lf_reject_refuses_a_bare_lf_command_and_closes(tmp_path):
    with RunningSink(tmp_path / "mail.db", bare_lf="reject") as sink:
        raw = RawClient(sink.host, sink.port)
        assert raw.command("EHLO x")[0].startswith("250")  # CRLF: served
        raw.send(b"MAIL FROM:<a@x.test>\n")
        assert raw.reply() == [BARE_LF_REPLY]
        with pytest.raises(ConnectionError):
            raw.reply()
        raw.close()
        session = ended_session(sink)
    assert session.end_reason == "bare_lf"
    assert session.refusals == 1
    assert session.last_refusal == f"MAIL FROM:<a@x.test>: {BARE_LF_REPLY}"


@pytest.mark.parametrize(
    ("line", "answered"),
    [
        ("NOOP", "NOOP"),
        ("RSET", "RSET"),
        ("QUIT", "QUIT"),
        ("FOO secret", "FOO"),
        (" x", "(no command)"),
    ],
)
def test_bare_lf_reject_counts_every_line_it_refuses_by_its_verb(tmp_path, line, answered):
    """Commands that are not counted as refusals otherwise (NOOP, RSET, QUIT, a line that is
    not a command) are when bare_lf refuses them, named by their verb: the rest of the line
    could be a secret."""
    with RunningSink(tmp_path / "mail.db", bare_lf="reject") as sink:
        raw = RawClient(sink.host, sink.port)
        raw.send(line.encode() + b"\n")
        assert raw.reply() == [BARE_LF_REPLY]
        raw.close()
        session = ended_session(sink)
    assert (session.end_reason, session.refusals) == ("bare_lf", 1)
    assert session.last_refusal == f"{answered}: {BARE_LF_REPLY}"


def test_bare_lf_is_read_live(tmp_path):
    config = tmp_path / "bare-lf.toml"
    config.write_text('[smtp]\nbare_lf = "accept"\n')
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        raw = RawClient(sink.host, sink.port)
        raw.send(b"EHLO x\n")
        assert raw.reply()[-1].startswith("250")
        config.write_text('[smtp]\nbare_lf = "reject"\n')
        deadline = time.monotonic() + 10
        while sink.watcher.reloads < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert raw.command("NOOP") == ["250 2.0.0 OK"]  # CRLF: served
        raw.send(b"NOOP\n")  # the same connection, now refused
        assert raw.reply() == [BARE_LF_REPLY]
        raw.close()
        assert ended_session(sink).end_reason == "bare_lf"


def test_bare_lf_reject_refuses_a_crlf_clients_bare_lf_content_at_the_end_of_data(tmp_path):
    """Postfix reads such a message to its end, answers 550 and serves the session on; the
    message is kept, rejected, with that reply (no fault rule gave it)."""
    with RunningSink(tmp_path / "mail.db", bare_lf="reject") as sink:
        raw = RawClient(sink.host, sink.port)
        raw.command("EHLO x")
        raw.command("MAIL FROM:<a@x.test>")
        raw.command("RCPT TO:<b@x.test>")
        assert raw.command("DATA")[0].startswith("354")
        raw.send(b"Subject: hand-built MIME\r\n\r\nline one\nline two\r\n.\r\n")
        assert raw.reply() == [BARE_LF_REPLY]
        assert raw.command("NOOP") == ["250 2.0.0 OK"]
        raw.command("MAIL FROM:<a@x.test>")
        raw.command("RCPT TO:<b@x.test>")
        raw.command("DATA")
        assert raw.command(b"Subject: clean\r\n\r\nfine\r\n.")[0].startswith("250")
        assert raw.command("QUIT")[0].startswith("221")
        raw.close()
        session = ended_session(sink)
        with sink.reader() as reader:
            (clean,) = reader.list_messages()  # rejected messages are not listed by default
            _, record = reader.list_messages(include_rejected=True)
            kept = reader.get_raw(record.id)
    assert kept == b"Subject: hand-built MIME\r\n\r\nline one\nline two\r\n"
    assert (record.status, record.reply, record.reply_rule) == ("rejected", BARE_LF_REPLY, None)
    assert clean.status == "accepted"
    assert session.end_reason == "quit"
    assert session.last_refusal == f"end of DATA: {BARE_LF_REPLY}"


# ---- [smtp] helo_required


def test_mail_before_helo_is_served_by_default_without_extensions(sink, raw):
    assert raw.command("MAIL FROM:<a@x.test> SIZE=10")[0].startswith("501 5.5.4")  # not ESMTP
    assert raw.command("MAIL FROM:<a@x.test>")[0].startswith("250 2.1.0")
    assert raw.command("RCPT TO:<b@x.test>")[0].startswith("250 2.1.5")
    assert raw.command("DATA")[0].startswith("354")
    assert raw.command(b"no headers\r\n.")[0].startswith("250 2.0.0 Ok: queued")
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.envelope.helo is None and record.envelope.mail_from == "a@x.test"


def test_helo_required_restores_503_and_is_read_live(tmp_path):
    config = tmp_path / "helo.toml"
    config.write_text("[smtp]\nhelo_required = true\n")
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        raw = RawClient(sink.host, sink.port)
        assert raw.command("MAIL FROM:<a@x.test>") == ["503 5.5.1 Error: send HELO first"]
        assert raw.command("RCPT TO:<b@x.test>") == ["503 5.5.1 Error: send HELO first"]
        config.write_text("[smtp]\nhelo_required = false\n")
        deadline = time.monotonic() + 10
        while sink.watcher.reloads < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert raw.command("MAIL FROM:<a@x.test>")[0].startswith("250")  # same connection
        raw.close()


# ---- AUTH


def test_auth_login_prompts_are_username_and_password(sink, raw):
    raw.command("EHLO x")
    prompt = raw.command("AUTH LOGIN")
    assert prompt == ["334 VXNlcm5hbWU6"]
    assert base64.b64decode(prompt[0][4:]) == b"Username:"
    prompt = raw.command(base64.b64encode(b"dev"))
    assert base64.b64decode(prompt[0][4:]) == b"Password:"
    assert raw.command(base64.b64encode(b"secret"))[0].startswith("235")
    # The initial-response form goes straight to the password.
    again = RawClient(raw.sock.getpeername()[0], raw.sock.getpeername()[1])
    again.command("EHLO x")
    prompt = again.command(b"AUTH LOGIN " + base64.b64encode(b"dev"))
    assert base64.b64decode(prompt[0][4:]) == b"Password:"
    assert again.command(base64.b64encode(b"secret"))[0].startswith("235")
    again.close()


@pytest.fixture
def with_users(tmp_path: Path):
    config = tmp_path / "auth.toml"
    config.write_text('[auth]\nusers = { dev = "secret" }\n')
    with RunningSink(tmp_path / "mail.db", config=config) as running:
        yield running


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["telnet-CRLF", "nc-bare-LF"])
def test_a_password_typed_in_clear_after_a_failed_auth_is_not_recorded_or_echoed(with_users, eol):
    """The Username: prompt answered with a plain name gets 501 and ends the exchange; the
    password typed next is not a command. A known verb after a failed AUTH is served as usual."""
    sink = with_users
    typist = Typist(sink.host, sink.port, eol)
    typist.type("EHLO x")
    assert typist.type("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert typist.type("dev") == ["501 5.5.2 Can't decode base64"]
    assert typist.type("Hunter2pass") == ["500 5.5.2 Error: command not recognized"]
    assert typist.type("Hunter2pass") == ['500 5.5.2 Error: command "HUNTER2PASS" not recognized']
    assert typist.type("AUTH PLAIN " + base64.b64encode(b"\0dev\0wrong").decode())[0][:3] == "535"
    assert typist.type("NOOP") == ["250 2.0.0 OK"]
    assert typist.type("QUIT")[0].startswith("221")
    typist.close()
    session = ended_session(sink)
    texts = [text for _, text in transcript(sink, session.id)]
    assert texts.count("[line after a failed AUTH redacted]") == 1
    assert texts.count("Hunter2pass") == 1  # the second time it was not after an AUTH
    assert "NOOP" in texts


def test_cram_md5_is_offered_and_picked_by_smtplib(with_users):
    sink = with_users
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["CRAM-MD5", "LOGIN", "PLAIN"]
        code, _ = client.login("dev", "secret")  # smtplib prefers CRAM-MD5 when offered
        assert code == 235
        client.sendmail("app@x.test", ["a@x.test"], b"Subject: cram\r\n\r\nx\r\n")
    session = ended_session(sink)
    assert session.auth_user == "dev"
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.envelope.auth_user == "dev"
    lines = transcript(sink, session.id)
    texts = [text for _, text in lines]
    assert "AUTH CRAM-MD5" in texts and "[auth response redacted]" in texts
    assert "AUTH CRAM-MD5 as 'dev': accepted" in texts
    challenge = next(text for text in texts if text.startswith("334 "))
    assert re.fullmatch(rb"<\d+\.\d+@mailsink>", base64.b64decode(challenge[4:]))
    digest = hmac.new(b"secret", base64.b64decode(challenge[4:]), "md5").hexdigest()
    assert not [text for text in texts if "secret" in text or digest in text]


@pytest.mark.parametrize(("password", "code"), [("secret", 235), ("wrong", 535)])
def test_cram_md5_forced_checks_the_password(with_users, password, code):
    sink = with_users
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.ehlo()
        client.user, client.password = "dev", password
        if code == 235:
            assert client.auth("CRAM-MD5", client.auth_cram_md5)[0] == 235
        else:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.auth("CRAM-MD5", client.auth_cram_md5)
            assert refused.value.smtp_code == 535
    session = ended_session(sink)
    if code == 535:
        assert session.auth_user is None
        assert session.refusals == 1
        assert session.last_refusal == "AUTH: 535 5.7.8 Authentication credentials invalid"


def test_cram_md5_without_users_accepts_anyone_and_each_challenge_is_new(sink):
    challenges = []
    for login in ("anyone", "someone"):
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.ehlo()
            client.user, client.password = login, "whatever"

            def answer(challenge=None, client=client):
                if challenge is not None:
                    challenges.append(challenge)
                return client.auth_cram_md5(challenge)

            assert client.auth("CRAM-MD5", answer)[0] == 235
    assert len(set(challenges)) == 2


def test_cram_md5_answers_that_do_not_parse_get_501(sink, raw):
    raw.command("EHLO x")
    assert raw.command(b"AUTH CRAM-MD5 " + base64.b64encode(b"x"))[0].startswith("501")
    assert raw.command("AUTH CRAM-MD5")[0].startswith("334 ")
    assert raw.command(base64.b64encode(b"nospace"))[0].startswith("501 5.5.2")
    assert raw.command("AUTH CRAM-MD5")[0].startswith("334 ")
    assert raw.command("*")[0].startswith("501 5.7.0")
    assert raw.command("NOOP") == ["250 2.0.0 OK"]  # one reply each, nothing more


def test_a_large_bare_lf_message_and_the_size_limit(tmp_path):
    """Lines longer than the reader's buffer, dot lines between blocks, 552 past the limit."""
    content = [b"Subject: big", b"", b"x" * 100_000, b".stuffed", b"y" * 70_000 + b".", b"."]
    expected = b"\n".join(content) + b"\n"
    with RunningSink(tmp_path / "mail.db", max_message_size=len(expected)) as sink:
        raw = RawClient(sink.host, sink.port)
        for extra, reply in ((b"", "250"), (b"z", "552 5.3.4")):
            for command in (b"EHLO x", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
                raw.send(command + b"\n")
                raw.reply()
            lines = [b"." + line if line.startswith(b".") else line for line in content]
            body = b"\n".join(lines) + b"\n" + (extra + b"\n" if extra else b"")
            raw.send(body + b".\n")
            assert raw.reply()[0].startswith(reply)
        assert raw.command("NOOP") == ["250 2.0.0 OK"]
        raw.close()
        with sink.reader() as reader:
            (record,) = reader.list_messages()
            assert reader.get_raw(record.id) == expected


def test_fault_rules_at_auth_answer_cram_md5_too(tmp_path):
    config = tmp_path / "auth-fault.toml"
    config.write_text(
        '[[fault]]\nname = "auth down"\nstage = "auth"\n'
        'reply = "454 4.7.0 Temporary authentication failure"\n'
    )
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.ehlo()
            client.user, client.password = "dev", "secret"
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.auth("CRAM-MD5", client.auth_cram_md5)
            assert refused.value.smtp_code == 454
        session = ended_session(sink)
    assert session.last_refusal == "AUTH: 454 4.7.0 Temporary authentication failure"
