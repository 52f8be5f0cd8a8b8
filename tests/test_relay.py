"""mailsink/relay.py: the allow-list, the plan, the records' JSON, the error words, and
`deliver` itself, with the stdlib's smtplib, to a second real mailsink on loopback
(tests/relay_upstream.py: STARTTLS and implicit TLS under the test's own CA, AUTH, fault
rules), a mailsink without TLS, an aiosmtpd without SMTPUTF8, a listener that never answers
and a closed port. What the upstream stored is read back byte for byte."""

from __future__ import annotations

import base64
import dataclasses
import socket
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from relay_upstream import PASSWORD, USER, SilentServer, Upstream

from mailsink import relay as relay_module
from mailsink.config import RelaySettings, Settings, parse
from mailsink.errors import ReleaseError, UpstreamError
from mailsink.relay import (
    FAILED,
    PARTIAL,
    SENT,
    Delivery,
    ReleasePlan,
    ReleaseRecord,
    auto_recipients,
    deliver,
    error_text,
    glob_matches,
    helo_name,
    once_each,
    plan,
    read_password,
    refused_recipients,
    release_error,
    wire_bytes,
)
from mailsink.testing import RunningSink

WRONG = "wrong-Secret-41d7e2"  # a wrong password: not in any transcript either
# CRLF lines, one starting with a dot (dot-stuffed on the wire, not in the store), 8-bit UTF-8.
RAW = (
    b"From: Shop <orders@shop.test>\r\n"
    b"To: Ann <ann@example.test>\r\n"
    b"Subject: =?utf-8?q?Bestellung_f=C3=BCr_Ann?=\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, Ann \xe2\x80\x94 your order:\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b".\r\n"
    b"end\r\n"
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with Upstream(tmp_path_factory.mktemp("upstream")) as up:
        yield up


@pytest.fixture(autouse=True)
def no_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").clear_faults()


def relay_of(up: Upstream, **options: Any) -> RelaySettings:
    """The [relay] settings `up.relay_toml(**options)` writes, as the config loader reads them."""
    return parse(tomllib.loads(up.relay_toml(**options))).relay


def stored(up: Upstream, before: int) -> list[bytes]:
    """The messages the upstream took since it held `before`."""
    return up.wait_for_messages(before + 1)[before:]


def last_envelope(up: Upstream) -> Any:
    with up.running.reader() as reader:
        return reader.list_messages(limit=1)[0].envelope


def client_lines(running: RunningSink, sessions_before: int = 0) -> list[str]:
    """What SMTP clients said to `running` in the sessions after the first `sessions_before`,
    once they have ended (their transcripts are written by then)."""

    def ended(reader: Any) -> list[Any] | None:
        listed = reader.list_sessions(limit=1000)
        newer = sorted(listed, key=lambda s: s.id)[sessions_before:]
        return newer if newer and all(s.ended_at is not None for s in newer) else None

    sessions = running.wait_for(ended, timeout=10)
    assert sessions, "no session ended"
    with running.reader() as reader:
        return [
            text
            for session in sessions
            for _at, direction, text in reader.get_session(session.id).events
            if direction == "C"
        ]


def session_count(running: RunningSink) -> int:
    with running.reader() as reader:
        return len(reader.list_sessions(limit=1000))


def free_port() -> int:
    """A port nothing listens on (closed on leaving)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- deliver: the bytes


def test_the_stored_bytes_arrive_unchanged(upstream: Upstream) -> None:
    relay = relay_of(upstream)
    before = len(upstream.raw_messages())
    delivery = deliver(relay, RAW, "orders@shop.test", ["ann@example.test"], message_id=12)
    assert delivery.outcome == SENT, delivery
    assert delivery.code == 250 and delivery.reply.startswith("250 ")
    assert delivery.accepted == ("ann@example.test",) and delivery.refused == {}
    assert delivery.stage == "" and delivery.timed_out is False
    assert delivery.upstream == f"127.0.0.1:{upstream.port}"
    assert stored(upstream, before) == [RAW]
    envelope = last_envelope(upstream)
    assert (envelope.mail_from, envelope.rcpt_to) == ("orders@shop.test", ["ann@example.test"])
    assert "BODY=8BITMIME" in envelope.mail_options  # 8-bit bytes, and the upstream offers it
    assert f"SIZE={len(RAW)}" in envelope.mail_options
    assert "SMTPUTF8" not in envelope.mail_options  # ASCII header and addresses
    assert envelope.tls is True and envelope.auth_user == USER
    # The EHLO name (no [relay] helo): this machine's FQDN or the connection's own address.
    assert envelope.helo == helo_name(relay, "127.0.0.1")
    assert envelope.helo not in ("", "-", "localhost") and "localhost" not in envelope.helo


def test_the_null_sender_goes_as_null(upstream: Upstream) -> None:
    before = len(upstream.raw_messages())
    delivery = deliver(relay_of(upstream), RAW, "", ["ann@example.test"])
    assert delivery.outcome == SENT, delivery
    assert stored(upstream, before) == [RAW]
    assert last_envelope(upstream).mail_from == ""


def test_the_trace_header_adds_exactly_one_line_at_the_top(upstream: Upstream) -> None:
    relay = relay_of(upstream, trace_header=True, helo="relay-host.example.test")
    before = len(upstream.raw_messages())
    delivery = deliver(relay, RAW, "orders@shop.test", ["ann@example.test"], message_id=7)
    assert delivery.outcome == SENT, delivery
    line = b"X-Mailsink-Released-From: mailsink on relay-host.example.test, message 7\r\n"
    assert stored(upstream, before) == [line + RAW]
    assert last_envelope(upstream).helo == "relay-host.example.test"  # [relay] helo


def test_a_bare_lf_message_arrives_with_crlf(upstream: Upstream) -> None:
    bare = RAW.replace(b"\r\n", b"\n")
    assert b"\r" not in bare
    before = len(upstream.raw_messages())
    delivery = deliver(relay_of(upstream), bare, "orders@shop.test", ["ann@example.test"])
    assert delivery.outcome == SENT, delivery
    assert stored(upstream, before) == [RAW]
    # (and a lone CR too, and no end of line doubled: the framing SMTP needs, no more)
    assert wire_bytes(b"a\rb\nc\r\nd") == b"a\r\nb\r\nc\r\nd"


def test_a_non_ascii_address_goes_with_smtputf8(upstream: Upstream) -> None:
    before = len(upstream.raw_messages())
    delivery = deliver(relay_of(upstream), RAW, "bestellung@shop.test", ["jörg@example.test"])
    assert delivery.outcome == SENT, delivery
    assert stored(upstream, before) == [RAW]
    envelope = last_envelope(upstream)
    assert envelope.rcpt_to == ["jörg@example.test"] and "SMTPUTF8" in envelope.mail_options


def test_smtputf8_needed_and_not_offered_fails_at_mail(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    class Keep:
        def __init__(self) -> None:
            self.messages: list[bytes] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append(envelope.original_content)
            return "250 OK"

    handler = Keep()
    # (aiosmtpd's Controller cannot listen on port 0 and tell which port it got)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
    controller.start()
    try:
        relay = RelaySettings(
            host="127.0.0.1",
            port=controller.port,
            tls="none",
            allowed_recipients=("*@example.test",),
            timeout=5,
        )
        delivery = deliver(relay, RAW, "orders@shop.test", ["jörg@example.test"])
        assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "mail", None)
        assert "SMTPUTF8" in delivery.reply
        # ... and an ASCII release to the same server goes (8BITMIME offered, SMTPUTF8 not).
        assert deliver(relay, RAW, "orders@shop.test", ["ann@example.test"]).outcome == SENT
        assert handler.messages == [RAW]
    finally:
        controller.stop()


# ---- deliver: TLS


def test_starttls_with_the_ca_file_verifies(upstream: Upstream) -> None:
    relay = relay_of(upstream)
    assert relay.tls == "starttls" and relay.verify and relay.ca_file
    before = len(upstream.raw_messages())
    assert deliver(relay, RAW, "", ["ann@example.test"]).outcome == SENT
    assert stored(upstream, before) == [RAW] and last_envelope(upstream).tls is True


def test_verify_on_without_the_ca_file_fails_at_tls(upstream: Upstream) -> None:
    relay = dataclasses.replace(relay_of(upstream), ca_file="")  # the system's CAs
    before, sessions = len(upstream.raw_messages()), session_count(upstream.running)
    delivery = deliver(relay, RAW, "orders@shop.test", ["ann@example.test"], message_id=5)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "tls", None)
    assert delivery.reply.startswith("certificate verify failed: ")
    assert error_text(delivery, 5) == (
        f"release of message 5 failed at TLS: 127.0.0.1:{upstream.port}: {delivery.reply}"
    )
    assert len(upstream.raw_messages()) == before
    said = client_lines(upstream.running, sessions)
    assert said[-1] == "STARTTLS"  # and then nothing in clear: no AUTH, no MAIL
    assert not any(line.upper().startswith(("AUTH", "MAIL")) for line in said)


def test_verify_off_takes_any_certificate(upstream: Upstream) -> None:
    relay = relay_of(upstream, verify=False)
    assert not relay.verify and not relay.ca_file
    before = len(upstream.raw_messages())
    assert deliver(relay, RAW, "", ["ann@example.test"]).outcome == SENT
    assert stored(upstream, before) == [RAW] and last_envelope(upstream).tls is True


def test_implicit_tls(upstream: Upstream) -> None:
    relay = relay_of(upstream, tls="implicit")
    assert relay.port == upstream.implicit_port
    before = len(upstream.raw_messages())
    delivery = deliver(relay, RAW, "", ["ann@example.test"])
    assert delivery.outcome == SENT, delivery
    assert delivery.upstream == f"127.0.0.1:{upstream.implicit_port}"
    assert stored(upstream, before) == [RAW] and last_envelope(upstream).tls is True


def test_implicit_tls_verifies_too(upstream: Upstream) -> None:
    relay = dataclasses.replace(relay_of(upstream, tls="implicit"), ca_file="")
    delivery = deliver(relay, RAW, "", ["ann@example.test"])
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "tls", None)
    assert delivery.reply.startswith("certificate verify failed: ")


def test_tls_none_stays_plain(upstream: Upstream) -> None:
    before = len(upstream.raw_messages())
    delivery = deliver(relay_of(upstream, tls="none"), RAW, "", ["ann@example.test"])
    assert delivery.outcome == SENT, delivery
    assert stored(upstream, before) == [RAW]
    envelope = last_envelope(upstream)
    assert envelope.tls is False and envelope.auth_user == USER  # (STARTTLS was offered)


def test_starttls_not_offered_fails_before_auth_or_mail(tmp_path: Path) -> None:
    with RunningSink(tmp_path / "plain.db", Settings()) as plain:  # no [tls]: no STARTTLS
        relay = RelaySettings(
            host="127.0.0.1",
            port=plain.port,
            username=USER,
            password=PASSWORD,
            allowed_recipients=("*@example.test",),
            timeout=5,
        )
        delivery = deliver(relay, RAW, "orders@shop.test", ["ann@example.test"], message_id=3)
        assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "tls", None)
        assert "does not offer STARTTLS" in delivery.reply
        assert str(release_error(delivery, 3)) == (
            f"release of message 3 failed at TLS: 127.0.0.1:{plain.port}:"
            ' the upstream does not offer STARTTLS (and [relay] tls = "starttls")'
        )
        said = client_lines(plain)
        assert said[0].lower().startswith("ehlo ")
        assert not any(line.upper().startswith(("AUTH", "MAIL", "RCPT", "DATA")) for line in said)
        with plain.reader() as reader:
            assert reader.list_messages(limit=10, include_rejected=True) == []


# ---- deliver: AUTH and the password


def test_auth_with_the_right_password(upstream: Upstream) -> None:
    before = len(upstream.raw_messages())
    assert deliver(relay_of(upstream), RAW, "", ["ann@example.test"]).outcome == SENT
    assert stored(upstream, before) == [RAW] and last_envelope(upstream).auth_user == USER
    # Without a username, no AUTH at all (the upstream's AUTH is optional).
    delivery = deliver(relay_of(upstream, auth=False), RAW, "", ["ann@example.test"])
    assert delivery.outcome == SENT and last_envelope(upstream).auth_user is None


def test_a_wrong_password_fails_at_auth_with_535(upstream: Upstream) -> None:
    relay = dataclasses.replace(relay_of(upstream), password=WRONG)
    before = len(upstream.raw_messages())
    delivery = deliver(relay, RAW, "", ["ann@example.test"], message_id=9)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "auth", 535)
    assert delivery.reply.startswith("535 ")
    assert error_text(delivery, 9) == (
        f"release of message 9 failed at AUTH: the upstream (127.0.0.1:{upstream.port})"
        f" answered {delivery.reply}"
    )
    assert len(upstream.raw_messages()) == before
    assert WRONG not in repr(delivery) + error_text(delivery, 9)


def test_password_file_and_password_env(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "relay-password"
    secret.write_text(PASSWORD + "\n")
    by_file = relay_of(upstream, auth=False, username=USER, password_file=str(secret))
    assert read_password(by_file) == PASSWORD  # one trailing newline dropped
    before = len(upstream.raw_messages())
    assert deliver(by_file, RAW, "", ["ann@example.test"]).outcome == SENT
    assert stored(upstream, before) == [RAW] and last_envelope(upstream).auth_user == USER
    # Read at each release: a rotated file is used at once.
    secret.write_text(WRONG + "\r\n")
    assert read_password(by_file) == WRONG
    assert deliver(by_file, RAW, "", ["ann@example.test"]).code == 535
    secret.write_text("two\n\n")
    assert read_password(by_file) == "two\n"  # only one newline is the file's end

    monkeypatch.setenv("MAILSINK_TEST_RELAY_PASSWORD", PASSWORD)
    by_env = relay_of(
        upstream, auth=False, username=USER, password_env="MAILSINK_TEST_RELAY_PASSWORD"
    )
    before = len(upstream.raw_messages())
    assert deliver(by_env, RAW, "", ["ann@example.test"]).outcome == SENT
    assert stored(upstream, before) == [RAW]
    monkeypatch.setenv("MAILSINK_TEST_RELAY_PASSWORD", WRONG)
    assert deliver(by_env, RAW, "", ["ann@example.test"]).code == 535


def test_a_missing_password_variable_is_a_release_error_and_no_connection(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILSINK_TEST_NO_SUCH_VARIABLE", raising=False)
    relay = relay_of(
        upstream, auth=False, username=USER, password_env="MAILSINK_TEST_NO_SUCH_VARIABLE"
    )
    sessions = session_count(upstream.running)
    with pytest.raises(ReleaseError) as raised:
        deliver(relay, RAW, "", ["ann@example.test"])
    assert str(raised.value) == (
        "[relay] password_env: the environment variable MAILSINK_TEST_NO_SUCH_VARIABLE is not set"
    )
    monkeypatch.setenv("MAILSINK_TEST_NO_SUCH_VARIABLE", "")
    with pytest.raises(ReleaseError, match="MAILSINK_TEST_NO_SUCH_VARIABLE is empty"):
        deliver(relay, RAW, "", ["ann@example.test"])
    gone = dataclasses.replace(relay, password_env="", password_file="/nonexistent/relay-pw")
    with pytest.raises(ReleaseError, match=r"^\[relay\] password_file /nonexistent/relay-pw: "):
        deliver(gone, RAW, "", ["ann@example.test"])
    assert session_count(upstream.running) == sessions


def test_the_password_is_in_no_transcript_delivery_or_error(upstream: Upstream) -> None:
    sessions = session_count(upstream.running)
    right = relay_of(upstream)
    wrong = dataclasses.replace(right, password=WRONG)
    plain = relay_of(upstream, tls="none")  # AUTH in clear: what the upstream saw is all there
    deliveries = [
        deliver(right, RAW, "", ["ann@example.test"]),
        deliver(wrong, RAW, "", ["ann@example.test"]),  # CRAM-MD5, then PLAIN, then LOGIN
        deliver(plain, RAW, "", ["ann@example.test"]),
        deliver(dataclasses.replace(plain, password=WRONG), RAW, "", ["ann@example.test"]),
    ]
    assert [d.outcome for d in deliveries] == [SENT, FAILED, SENT, FAILED]
    transcript = "\n".join(client_lines(upstream.running, sessions))
    assert "AUTH" in transcript and "MAIL FROM" in transcript  # (the transcript is there)
    for secret in (PASSWORD, WRONG):
        forms = [
            secret,
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{USER}\0{secret}".encode()).decode(),
        ]
        shown = " ".join(repr(d) + str(d) + error_text(d, 1) for d in deliveries)
        shown += repr(right) + repr(wrong) + str(release_error(deliveries[1], 1))
        for form in forms:
            assert form not in transcript
            assert form not in shown


class RawUpstream:
    """A few lines of SMTP over a raw socket, on a thread: `answer(line)` is the bytes sent
    back for each line the client sends (b"" nothing); a greeting first. For what a real
    server would not do: echo an AUTH line, trickle a reply a byte at a time."""

    def __init__(self, answer: Callable[[bytes, socket.socket], bytes]) -> None:
        self.answer = answer
        self.heard: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as lines:
            try:
                connection.sendall(b"220 raw ESMTP\r\n")
                for line in lines:
                    self.heard.append(line)
                    if line.upper().startswith(b"QUIT"):
                        connection.sendall(b"221 bye\r\n")
                        return
                    connection.sendall(self.answer(line, connection))
            except OSError:  # (the client gave up: what the test is about)
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


def echoing_auth(line: bytes, _: socket.socket) -> bytes:
    upper = line.upper()
    if upper.startswith(b"EHLO"):
        return b"250-raw\r\n250 AUTH PLAIN\r\n"
    if upper.startswith(b"AUTH"):
        return b"535 5.7.8 failed for " + line.strip() + b"\r\n"
    return b"250 2.0.0 ok\r\n"


@pytest.mark.parametrize("secret", ["hunter2secret", "s3c"])
def test_an_upstream_echoing_auth_plain_shows_no_secret(secret: str) -> None:
    up = RawUpstream(echoing_auth)
    try:
        relay = RelaySettings(
            host="127.0.0.1",
            port=up.port,
            tls="none",
            username="ann",
            password=secret,
            allowed_recipients=("*@example.test",),
            timeout=5,
        )
        delivery = deliver(relay, RAW, "", ["ann@example.test"], message_id=3)
    finally:
        up.close()
    sent = base64.b64encode(f"\0ann\0{secret}".encode())
    assert b"AUTH PLAIN " + sent + b"\r\n" in up.heard  # (what the upstream echoed)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "auth", 535)
    # The codes intact even with a 3-character secret; the AUTH PLAIN token hidden.
    assert delivery.reply == "535 5.7.8 failed for AUTH PLAIN (hidden)"
    shown = repr(delivery) + error_text(delivery, 3)
    assert sent.decode() not in shown and sent.decode()[:-4] not in shown


def test_any_base64_token_holding_the_password_is_hidden() -> None:
    from mailsink.relay import _scrub

    token = base64.b64encode(b"prefix:abcdef:suffix").decode()
    assert _scrub(f"550 {token} and 2.0.0 ABCDEFGH", "abcdef") == (
        "550 (hidden) and 2.0.0 ABCDEFGH"
    )
    user_form = base64.b64encode(b"ann\0abc").decode()
    assert _scrub(f"535 {user_form}", "abc", "ann") == "535 (hidden)"
    assert _scrub("250 hunter 2.0.0", "2") == "250 hunter 2.0.0"  # (short: plain text kept)


def test_a_trickled_reply_to_data_times_out_as_a_whole() -> None:
    in_data = threading.Event()  # (the message's lines get no reply)

    def trickle(line: bytes, connection: socket.socket) -> bytes:
        upper = line.upper()
        if in_data.is_set() and upper != b".\r\n":
            return b""
        if upper == b".\r\n":
            for byte in b"250 2.0.0 queued as ABCDEFGHIJ\r\n":  # 3 s in all: never in time
                connection.sendall(bytes([byte]))
                time.sleep(0.1)
            return b""
        if upper.startswith(b"DATA"):
            in_data.set()
            return b"354 go on\r\n"
        return b"250 ok\r\n"

    up = RawUpstream(trickle)
    try:
        relay = RelaySettings(
            host="127.0.0.1",
            port=up.port,
            tls="none",
            allowed_recipients=("*@example.test",),
            timeout=0.5,
        )
        started = time.monotonic()
        delivery = deliver(relay, RAW, "", ["ann@example.test"], message_id=4)
        took = time.monotonic() - started
    finally:
        up.close()
    assert took < 1.5  # (each byte came within the timeout: per-recv it would take 3 s)
    assert (delivery.outcome, delivery.stage, delivery.timed_out) == (FAILED, "data", True)
    assert error_text(delivery, 4) == (
        "release of message 4 timed out after 0.5 s waiting for the upstream's reply to DATA"
    )


# ---- deliver: what the upstream answers


def test_one_of_two_recipients_refused_is_partial(upstream: Upstream) -> None:
    upstream.add_fault(
        name="no bob",
        stage="rcpt",
        action="reply",
        reply="550 5.1.1 no such user",
        match={"recipient": "bob@*"},
    )
    before = len(upstream.raw_messages())
    delivery = deliver(
        relay_of(upstream),
        RAW,
        "orders@shop.test",
        ["ann@example.test", "bob@example.test"],
        message_id=4,
    )
    assert delivery.outcome == PARTIAL, delivery
    assert delivery.accepted == ("ann@example.test",)
    assert delivery.refused == {"bob@example.test": "550 5.1.1 no such user"}
    assert delivery.code == 250 and delivery.stage == ""
    assert stored(upstream, before) == [RAW]
    assert last_envelope(upstream).rcpt_to == ["ann@example.test"]
    assert error_text(delivery, 4) == (
        f"release of message 4 was partial: the upstream (127.0.0.1:{upstream.port}) refused"
        f" bob@example.test (550 5.1.1 no such user); ann@example.test got it: {delivery.reply}"
    )


def test_every_recipient_refused_fails_at_rcpt(upstream: Upstream) -> None:
    upstream.add_fault(name="nobody", stage="rcpt", action="reply", reply="550 5.1.1 no such user")
    before = len(upstream.raw_messages())
    recipients = ["ann@example.test", "bob@example.test"]
    delivery = deliver(relay_of(upstream), RAW, "", recipients, message_id=12)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "rcpt", 550)
    assert delivery.reply == "550 5.1.1 no such user" and delivery.accepted == ()
    assert delivery.refused == dict.fromkeys(recipients, "550 5.1.1 no such user")
    error = release_error(delivery, 12)
    assert str(error) == (
        f"release of message 12 failed at RCPT: the upstream (127.0.0.1:{upstream.port})"
        " answered 550 5.1.1 no such user"
    )
    assert (error.code, error.stage, error.timed_out) == (550, "rcpt", False)
    assert len(upstream.raw_messages()) == before


def test_a_421_at_mail_fails_quoting_it(upstream: Upstream) -> None:
    upstream.add_fault(
        name="closing", stage="mail", action="disconnect", reply="421 4.7.0 Try again later"
    )
    before = len(upstream.raw_messages())
    delivery = deliver(relay_of(upstream), RAW, "", ["ann@example.test"], message_id=6)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "mail", 421)
    assert delivery.reply == "421 4.7.0 Try again later"
    assert str(release_error(delivery, 6)) == (
        f"release of message 6 failed at MAIL: the upstream (127.0.0.1:{upstream.port})"
        " answered 421 4.7.0 Try again later"
    )
    assert len(upstream.raw_messages()) == before


def test_a_421_at_rcpt_ends_the_release(upstream: Upstream) -> None:
    upstream.add_fault(
        name="closing",
        stage="rcpt",
        action="disconnect",
        reply="421 4.3.2 Shutting down",
        match={"recipient": "bob@*"},
    )
    recipients = ["ann@example.test", "bob@example.test", "cy@example.test"]
    delivery = deliver(relay_of(upstream), RAW, "", recipients)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "rcpt", 421)
    assert delivery.reply == "421 4.3.2 Shutting down"


def test_a_554_at_data_fails_at_data(upstream: Upstream) -> None:
    upstream.add_fault(
        name="spam", stage="data", action="reply", reply="554 5.7.1 Message rejected as spam"
    )
    before = len(upstream.raw_messages())
    delivery = deliver(relay_of(upstream), RAW, "", ["ann@example.test"], message_id=8)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "data", 554)
    assert delivery.reply == "554 5.7.1 Message rejected as spam" and delivery.accepted == ()
    assert "failed at DATA: the upstream" in error_text(delivery, 8)
    assert len(upstream.raw_messages()) == before


def test_no_reply_in_time_fails_timed_out(upstream: Upstream) -> None:
    with SilentServer() as silent:
        relay = RelaySettings(
            host=silent.host,
            port=silent.port,
            allowed_recipients=("*@example.test",),
            timeout=0.5,
        )
        started = time.monotonic()
        delivery = deliver(relay, RAW, "", ["ann@example.test"], message_id=2)
        took = time.monotonic() - started
    assert 0.4 < took < 2.0
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "connect", None)
    assert delivery.timed_out is True
    assert delivery.reply == "timed out after 0.5 s waiting for the upstream's greeting"
    error = release_error(delivery, 2)
    assert (
        str(error)
        == "release of message 2 timed out after 0.5 s waiting for the upstream's greeting"
    )
    assert error.timed_out is True and error.code is None


def test_a_slow_reply_to_rcpt_times_out_there(upstream: Upstream) -> None:
    upstream.add_fault(name="slow", stage="rcpt", action="delay", delay="3s")
    relay = dataclasses.replace(relay_of(upstream), timeout=0.5)
    started = time.monotonic()
    delivery = deliver(relay, RAW, "", ["ann@example.test"], message_id=2)
    assert time.monotonic() - started < 2.0
    assert (delivery.outcome, delivery.stage, delivery.timed_out) == (FAILED, "rcpt", True)
    assert error_text(delivery, 2) == (
        "release of message 2 timed out after 0.5 s waiting for the upstream's reply to RCPT"
    )


def test_a_release_slow_at_every_reply_ends_within_its_whole_time(upstream: Upstream) -> None:
    """Each RCPT answered just within the timeout: the whole release still ends within
    WHOLE_RELEASE_TIMEOUTS timeouts (a server's stop waits for it), timed out at RCPT."""
    upstream.add_fault(name="slowish", stage="rcpt", action="delay", delay="400ms")
    relay = dataclasses.replace(relay_of(upstream, auth=False), timeout=0.6)
    recipients = [f"u{number}@example.test" for number in range(12)]  # 12 x 0.4 s = 4.8 s
    started = time.monotonic()
    delivery = deliver(relay, RAW, "", recipients, message_id=3)
    took = time.monotonic() - started
    assert took < 0.6 * relay_module.WHOLE_RELEASE_TIMEOUTS + 0.5, took
    assert (delivery.outcome, delivery.stage, delivery.timed_out) == (FAILED, "rcpt", True)


def test_a_short_password_leaves_random_base64_alone() -> None:
    """For a password of a few characters, random tokens (queue ids) decode to bytes holding
    it now and then: only the login's own forms are hidden."""
    import base64

    queue_id = "250 2.0.0 Ok: queued as GG6K9WGJUYSJ"
    assert relay_module._scrub(queue_id, "a", "user") == queue_id
    echoed = "535 5.7.8 no: " + base64.b64encode(b"\0user\0a").decode()
    assert relay_module._scrub(echoed, "a", "user") == "535 5.7.8 no: (hidden)"


def test_a_refused_connection_fails_at_connect() -> None:
    port = free_port()
    relay = RelaySettings(host="127.0.0.1", port=port, allowed_recipients=("*@example.test",))
    delivery = deliver(relay, RAW, "", ["ann@example.test"], message_id=12)
    assert (delivery.outcome, delivery.stage, delivery.code) == (FAILED, "connect", None)
    assert delivery.reply == "Connection refused" and delivery.timed_out is False
    assert str(release_error(delivery, 12)) == (
        f"release of message 12 failed at connect: 127.0.0.1:{port}: Connection refused"
    )


def test_addresses_that_smtp_cannot_carry_are_not_sent() -> None:
    relay = RelaySettings(host="127.0.0.1", port=free_port(), allowed_recipients=("*",))
    delivery = deliver(relay, RAW, "", ["ann@example.test>\r\nRCPT TO:<eve@evil.test"])
    assert (delivery.outcome, delivery.stage) == (FAILED, "rcpt")  # before any connection
    assert delivery.reply.endswith("cannot be sent in SMTP")


# ---- who may be released to


def settings(allowed: tuple[str, ...], auto: tuple[str, ...] = ()) -> RelaySettings:
    return RelaySettings(host="smtp.example.test", allowed_recipients=allowed, auto_recipients=auto)


def test_the_allow_list_globs() -> None:
    relay = settings(("*@Example.test", "me+?@gmail.com", "a[bc]@x.test"))
    given = [
        "Ann@EXAMPLE.test",  # case does not matter, either side
        "me+a@gmail.com",  # ? one character
        "me+ab@gmail.com",  # ... not two
        "me+@gmail.com",  # ... nor none
        "eve@evil.test",
        "EVE@evil.test",  # refused once, as first given
        "ann@example.test.evil.test",  # * does not end early
        "not an address",
        "@example.test",  # matches the glob, is no address
        "ab@x.test",  # [ is itself, not a set
    ]
    assert refused_recipients(relay, given) == [
        "me+ab@gmail.com",
        "me+@gmail.com",
        "eve@evil.test",
        "ann@example.test.evil.test",
        "not an address",
        "@example.test",
        "ab@x.test",
    ]
    assert refused_recipients(relay, ["ann@example.test", "me+z@gmail.com"]) == []
    assert refused_recipients(settings(()), ["ann@example.test"]) == ["ann@example.test"]
    assert glob_matches(["*"], "x@y.test") and not glob_matches([], "x@y.test")
    assert glob_matches(["a[bc]@x.test"], "A[BC]@x.test")  # (which is no address)
    assert once_each(["a@x.test", "B@x.test", "A@X.test", "b@x.test", "c@x.test"]) == [
        "a@x.test",
        "B@x.test",
        "c@x.test",
    ]


def test_auto_recipients_are_both_named_and_allowed() -> None:
    relay = settings(("*@example.test", "*@corp.test"), auto=("qa+*@*", "ann@example.test"))
    rcpt_to = [
        "qa+1@example.test",
        "QA+1@example.test",
        "qa+2@elsewhere.test",  # named, not allowed
        "ann@example.test",
        "bob@example.test",  # allowed, not named
        "qa+3@corp.test",
    ]
    assert auto_recipients(relay, rcpt_to) == [
        "qa+1@example.test",
        "ann@example.test",
        "qa+3@corp.test",
    ]
    assert auto_recipients(settings(("*@example.test",)), rcpt_to) == []


def test_the_plan() -> None:
    relay = settings(("*@example.test",))
    rcpt_to = ["zed@elsewhere.test", "Ann@Example.test", "ann@example.test", "bob@example.test"]
    got = plan(relay, 3, "orders@shop.test", rcpt_to)
    assert got == ReleasePlan(
        message_id=3,
        configured=True,
        upstream="smtp.example.test:587",
        mail_from="orders@shop.test",
        recipients=("Ann@Example.test", "bob@example.test"),
        not_allowed=("zed@elsewhere.test",),
        allowed_recipients=("*@example.test",),
    )
    fixed = dataclasses.replace(relay, mail_from="bounces@example.test", tls="implicit")
    assert plan(fixed, 3, "", rcpt_to).mail_from == "bounces@example.test"
    assert plan(fixed, 3, "", rcpt_to).upstream == "smtp.example.test:465"
    off = plan(RelaySettings(), 3, "", ["ann@example.test"])
    assert (off.configured, off.upstream, off.recipients) == (False, "", ())
    assert off.not_allowed == ("ann@example.test",)
    assert ReleasePlan.from_json(got.as_json()) == got
    assert got.as_json()["recipients"] == ["Ann@Example.test", "bob@example.test"]


def test_helo_name() -> None:
    assert helo_name(RelaySettings(helo="mx.example.test"), "10.0.0.1") == "mx.example.test"
    name = helo_name(RelaySettings(), "192.0.2.7")
    fqdn = socket.getfqdn()
    if "." in fqdn and not fqdn.startswith("localhost"):
        assert name == fqdn
    else:
        assert name == "[192.0.2.7]"
    if name.startswith("["):
        assert helo_name(RelaySettings(), "2001:db8::7") == "[IPv6:2001:db8::7]"


# ---- records and errors


def record(**changes: Any) -> ReleaseRecord:
    base = ReleaseRecord(
        id=4,
        message_id=12,
        at=1_796_000_000_123,
        trigger="cli",
        upstream="smtp.example.test:587",
        mail_from="orders@shop.test",
        recipients=("ann@example.test", "bob@example.test"),
        outcome=SENT,
        code=250,
        reply="250 2.0.0 Ok: queued as 4F2",
    )
    return dataclasses.replace(base, **changes)


def test_a_record_as_json_and_back() -> None:
    partial = record(outcome=PARTIAL, refused={"bob@example.test": "550 5.1.1 no such user"})
    data = partial.as_json()
    assert data == {
        "id": 4,
        "message_id": 12,
        "at": "2026-11-30T00:53:20.123Z",
        "trigger": "cli",
        "upstream": "smtp.example.test:587",
        "mail_from": "orders@shop.test",
        "recipients": ["ann@example.test", "bob@example.test"],
        "outcome": "partial",
        "code": 250,
        "reply": "250 2.0.0 Ok: queued as 4F2",
        "refused": {"bob@example.test": "550 5.1.1 no such user"},
        "attempt": 1,
    }
    assert ReleaseRecord.from_json(data) == partial
    failed = record(outcome=FAILED, code=None, reply="Connection refused", attempt=3, at=1)
    assert ReleaseRecord.from_json(failed.as_json()) == failed


def test_a_record_summary() -> None:
    assert record(recipients=("ann@example.test",)).summary() == (
        "sent to ann@example.test via smtp.example.test:587: 250 2.0.0 Ok: queued as 4F2"
    )
    partial = record(outcome=PARTIAL, refused={"bob@example.test": "550 5.1.1 no such user"})
    assert partial.summary() == (
        "partial to ann@example.test, bob@example.test via smtp.example.test:587: 250 2.0.0 Ok:"
        " queued as 4F2; refused bob@example.test (550 5.1.1 no such user)"
    )
    retrying = record(outcome="retrying", code=421, reply="4.3.2 later", attempt=2)
    assert retrying.summary().startswith("retrying (try 2) to ann@example.test, bob@")
    assert retrying.summary().endswith(": 421 4.3.2 later")


def test_an_error_shows_the_upstreams_text_visibly() -> None:
    delivery = Delivery(
        upstream="mx.example.test:25",
        mail_from="",
        recipients=("ann@example.test",),
        outcome=FAILED,
        code=550,
        reply="550 no \x1b[31mred\x1b[0m here",
        stage="rcpt",
    )
    text = str(release_error(delivery, 1))
    assert "\x1b" not in text and text.startswith(
        "release of message 1 failed at RCPT: the upstream (mx.example.test:25) answered 550 no "
    )
    assert isinstance(release_error(delivery), UpstreamError)
    assert str(release_error(delivery)).startswith("release failed at RCPT")
