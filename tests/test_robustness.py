"""Edge cases found in review: each was a real failure before its fix."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time

import pytest
from conftest import RawClient, free_port, message, run_cli

from mailsink.store.reader import Reader
from mailsink.testing import RunningSink


def last_session(sink: RunningSink):
    return sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])


def transaction(raw: RawClient) -> None:
    raw.command("EHLO x")
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    assert raw.command("DATA")[0].startswith("354")


def test_a_failed_starttls_handshake_ends_the_session(tmp_path):
    config = tmp_path / "tls.toml"
    config.write_text("[tls]\nstarttls = true\n")
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        client = smtplib.SMTP(sink.host, sink.port)
        with pytest.raises(ssl.SSLError):  # a client that verifies the self-signed certificate
            client.starttls(context=ssl.create_default_context())
        client.close()
        session = last_session(sink)
        assert session.end_reason == "tls_failed"
        deadline = time.monotonic() + 5
        while sink.live_sessions() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.live_sessions() == []
        started = time.monotonic()
    assert time.monotonic() - started < 3  # stopping did not wait for a stuck session


def test_non_utf8_command_arguments_are_refused_and_the_session_survives(sink, raw):
    assert raw.command(b"EHLO h\xffst")[0].startswith("501 5.5.2")
    raw.command("EHLO host")
    assert raw.command(b"MAIL FROM:<a\xff@x.test>")[0].startswith("501 5.5.2")
    assert raw.command(b"VRFY <<\xff")[0].startswith("501 5.5.2")
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    raw.command("DATA")
    assert raw.command(message() + b".")[0].startswith("250")
    raw.command("QUIT")
    session = last_session(sink)
    assert session.end_reason == "quit" and session.message_count == 1
    with sink.reader() as reader:
        assert len(reader.get_session(session.id).events) > 10


def test_malformed_addresses_and_parameters_get_501_not_an_internal_error(raw):
    raw.command("EHLO x")
    assert raw.command("MAIL FROM:a@")[0].startswith("501")
    assert raw.command("VRFY a@")[0].startswith("502")
    assert raw.command("MAIL FROM:<a@x.test> SIZE=²")[0].startswith("501 5.5.4")


def test_a_monstrous_header_does_not_stall_other_clients(sink):
    subject = b" ".join([b"=?utf-8?q?a?="] * 30000)
    monster = b"From: a@x.test\r\nSubject: " + subject + b"\r\n\r\nbody\r\n"
    with smtplib.SMTP(sink.host, sink.port) as first, smtplib.SMTP(sink.host, sink.port) as other:
        first.sendmail("a@x.test", ["b@x.test"], monster)
        started = time.monotonic()
        other.sendmail("a@x.test", ["b@x.test"], message(subject="small"))
        assert time.monotonic() - started < 1.0
    with sink.reader() as reader:
        stored = reader.list_messages()[1]
        assert stored.headers["subject"].endswith("[…]")
        assert reader.get_raw(stored.id) == monster


def test_a_client_that_half_closes_still_gets_every_reply(sink):
    sock = socket.create_connection((sink.host, sink.port))
    sock.sendall(
        b"EHLO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
        + message()
        + b".\r\nQUIT\r\n"
    )
    sock.shutdown(socket.SHUT_WR)  # what `nc -N` does
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    assert b"250 2.0.0 Ok: queued as 1" in received
    assert received.rstrip().endswith(b"221 2.0.0 mailsink closing connection")
    assert last_session(sink).end_reason == "quit"


def test_sessions_cut_off_at_shutdown_are_all_finished(tmp_path):
    sink = RunningSink(tmp_path / "s.db").start()
    clients = [RawClient(sink.host, sink.port) for _ in range(3)]
    for raw in clients:
        transaction(raw)
        raw.send(b"Subject: stuck\r\n\r\nhalf")
    time.sleep(0.1)
    db = sink.db
    sink.stop(grace=0.3)
    for raw in clients:
        raw.close()
    with Reader(db) as reader:
        sessions = reader.list_sessions()
        assert [s.end_reason for s in sessions] == ["server_shutdown"] * 3
        assert reader.count_messages(include_rejected=True) == 0


def test_no_name_lookup_per_connection(sink, monkeypatch):
    def refuse(*_args):
        raise AssertionError("a DNS lookup on the event loop")

    monkeypatch.setattr(socket, "getfqdn", refuse)
    monkeypatch.setattr(socket, "gethostbyaddr", refuse)
    raw = RawClient(sink.host, sink.port)
    assert raw.greeting == ["220 mailsink ESMTP mailsink"]
    raw.close()


def test_auth_over_implicit_tls_when_insecure_auth_is_off(tmp_path):
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nmode = "required"\nallow_insecure = false\n[tls]\nimplicit_port = {port}\n'
    )
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        with smtplib.SMTP(sink.host, sink.port) as plain:
            plain.ehlo()
            assert not plain.has_extn("auth")  # not offered in the clear
        with smtplib.SMTP_SSL(sink.host, port, context=context) as client:
            client.login("dev", "pw")
            client.sendmail("a@x.test", ["b@x.test"], message())
        with sink.reader() as reader:
            assert reader.list_messages()[0].envelope.auth_user == "dev"


def test_memory_store_serves_readers_while_clients_send():
    with RunningSink(":memory:") as sink:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                with smtplib.SMTP(sink.host, sink.port) as client:
                    for _ in range(30):
                        client.sendmail("a@x.test", ["b@x.test"], message())
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=send) for _ in range(3)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            with sink.reader() as reader:
                reader.list_messages(limit=5)
        for thread in threads:
            thread.join()
        assert errors == []
        with sink.reader() as reader:
            assert reader.count_messages() == 90
        directory = sink.db.rsplit("/", 1)[0]
    import os

    assert not os.path.exists(directory)  # nothing kept


def test_clear_keeps_open_sessions(sink, raw):
    raw.command("EHLO open.session")
    assert run_cli("clear", "--db", sink.db).code == 0
    raw.command("QUIT")
    session = last_session(sink)
    assert session.helo == "open.session" and session.end_reason == "quit"


def test_idle_timeout_does_not_count_mailsink_own_delay(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[smtp]\ntimeout = "300ms"\n[[fault]]\nname = "slow"\nstage = "data"\n'
        'action = "delay"\ndelay = "800ms"\n'
    )
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.sendmail("a@x.test", ["b@x.test"], message())
        with sink.reader() as reader:
            assert reader.count_messages() == 1


@pytest.mark.parametrize(("size", "accepted"), [(1024, True), (1025, False)])
def test_size_limit_is_exact_and_dot_stuffing_does_not_count(tmp_path, size, accepted):
    with RunningSink(tmp_path / "s.db", max_message_size=1024) as sink:
        line = b".dotted line\r\n"  # stuffed on the wire, one byte longer each
        body = line * ((size - 20) // len(line))
        raw = b"Subject: s\r\n\r\n" + body
        raw += b"x" * (size - len(raw) - 2) + b"\r\n"
        assert len(raw) == size
        client = RawClient(sink.host, sink.port)
        transaction(client)
        reply = client.command(raw.replace(b"\r\n.", b"\r\n..") + b".")[0]
        client.close()
        assert reply.startswith("250" if accepted else "552 5.3.4")


def test_auth_login_transcript_is_in_order_and_redacted(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[auth]\nusers = { dev = "s3cret" }\n')
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            client.ehlo()
            client.user, client.password = "dev", "s3cret"
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        session = last_session(sink)
        with sink.reader() as reader:
            events = [(d, t) for _, d, t in reader.get_session(session.id).events]
    start = events.index(("C", "AUTH LOGIN"))
    assert [d for d, _ in events[start : start + 7]] == ["C", "S", "C", "S", "C", "I", "S"]
    assert events[start + 2] == ("C", "[auth response redacted]")
    assert events[start + 5] == ("I", "AUTH LOGIN as 'dev': accepted")
    assert events[start + 6][1].startswith("235 2.7.0")
    assert not any("s3cret" in t or "czNjcmV0" in t for _, t in events)


def test_cli_expands_home_and_refuses_huge_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with RunningSink("~/home.db") as sink:
        assert sink.db == str(tmp_path / "home.db")
    assert run_cli("list", "--db", "~/home.db").out == "no messages\n"
    for args in (["show", "99999999999999999999"], ["session", "99999999999999999999"]):
        result = run_cli(*args, "--db", "~/home.db")
        assert result.code in (1, 2) and result.err.count("\n") == 1, result
        assert "Traceback" not in result.err and "internal error" not in result.err


@pytest.mark.parametrize("where", ["in DATA", "after an AUTH challenge"])
def test_a_silent_client_times_out_mid_command(tmp_path, where):
    with RunningSink(tmp_path / "t.db", timeout=0.3) as sink:
        raw = RawClient(sink.host, sink.port)
        if where == "in DATA":
            transaction(raw)
            raw.send(b"Subject: half\r\n\r\nand then nothing")
        else:
            raw.command("EHLO x")
            assert raw.command("AUTH LOGIN")[0].startswith("334")
        assert raw.reply()[0].startswith("421 4.4.2")
        raw.close()
        assert last_session(sink).end_reason == "timeout"


def test_header_parsing_never_fails_a_message(sink):
    nested = b"To: " + b"(" * 600 + b"\r\nSubject: nested\r\n\r\nbody\r\n"
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], nested)
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.headers["subject"] == "nested"
    assert any(f["kind"] == "parse_defect" and "To header" in f["detail"] for f in record.findings)


def test_encoded_words_beside_raw_utf8_and_unknown_charsets_decode():
    from mailsink.mail.parse import parse_headers

    summary = parse_headers(
        "Subject: =?utf-8?q?caf=C3=A9?= Grüße\r\nFrom: =?utf-8?q?J=C3=B6rg?= Müller <j@x.test>\r\n"
        "To: a@x.test, b@x.test,\r\nCc: a@x.test (Smith, Alice), c@x.test\r\n\r\n".encode()
    )
    assert summary.subject == "café Grüße"
    assert summary.from_ == ["Jörg Müller <j@x.test>"]
    assert summary.to_addrs == ["a@x.test", "b@x.test"]  # a trailing comma drops nothing
    assert summary.cc_addrs == ["a@x.test", "c@x.test"]
    odd = parse_headers(b"Subject: =?x-unknown?q?abc?= and =?utf-8?q?caf=C3=A9?=\r\n\r\n")
    assert odd.subject == "abc and café"


def test_pruning_never_removes_a_live_session(tmp_path):
    from mailsink.config import Settings, StorageSettings

    settings = Settings(storage=StorageSettings(max_messages=3))
    with RunningSink(tmp_path / "p.db", settings) as sink:
        live = RawClient(sink.host, sink.port)
        transaction(live)  # a message: the transcript so far is written with it
        assert live.command(message(subject="first") + b".")[0].startswith("250")
        live.command("EHLO long.lived")
        for n in range(6):
            with smtplib.SMTP(sink.host, sink.port) as client:
                client.sendmail("a@x.test", ["b@x.test"], message(subject=f"n{n}"))
        live.command("QUIT")
        live.close()
        session = sink.wait_for(
            lambda r: (
                next((s for s in r.list_sessions() if s.helo == "long.lived"), None)
                if r.list_sessions()[0].end_reason
                else None
            )
        )
        with sink.reader() as reader:
            record = reader.get_session(session.id)
        texts = [text for _, _, text in record.events]
        assert texts[0] == "220 mailsink ESMTP mailsink"  # the start of its transcript survived
        assert record.end_reason == "quit" and record.message_count == 1
