"""The SMTP server over loopback with real clients: smtplib and raw sockets."""

from __future__ import annotations

import re
import smtplib
import threading
import time

import pytest
from conftest import RawClient, message

from mailsink.testing import RunningSink

ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def kinds(record) -> set[str]:
    return {f["kind"] for f in record.findings}


def test_envelope_is_stored_apart_from_headers(sink, client):
    raw = message(sender="Shop <noreply@shop.test>", to="a@x.test")
    client.ehlo("app.local")
    assert client.mail("bounce@app.test")[0] == 250
    assert client.rcpt("a@x.test")[0] == 250
    assert client.rcpt("B@Y.test")[0] == 250
    code, reply = client.data(raw)
    assert code == 250
    match = re.fullmatch(rb"2\.0\.0 Ok: queued as (\d+)", reply)
    assert match, reply

    with sink.reader() as reader:
        record = reader.get_message(int(match.group(1)))
        assert record is not None
        assert record.envelope.mail_from == "bounce@app.test"
        assert record.envelope.rcpt_to == ["a@x.test", "B@Y.test"]
        assert record.envelope.helo == "app.local"
        assert record.envelope.peer.startswith("127.0.0.1:")
        assert record.envelope.tls is False and record.envelope.auth_user is None
        assert record.headers["from"] == ["Shop <noreply@shop.test>"]
        assert record.headers["to"] == ["a@x.test"]
        assert record.headers["bcc"] == []
        assert reader.get_raw(record.id) == raw  # never rewritten: no Return-Path, no Bcc
    hidden = [f for f in record.findings if f["kind"] == "hidden_recipient"]
    assert [f["address"] for f in hidden] == ["B@Y.test"]
    assert "sender_mismatch" in kinds(record)
    assert "domain_misaligned" in kinds(record)  # app.test vs shop.test


def test_several_messages_on_one_connection_each_stored(sink, client):
    for n in range(3):
        client.sendmail(
            "app@x.test", [f"user{n}@x.test"], message(to=f"user{n}@x.test", subject=f"n{n}")
        )
    client.quit()
    with sink.reader() as reader:
        records = reader.list_messages()
    assert [r.headers["subject"] for r in records] == ["n2", "n1", "n0"]
    assert [r.envelope.rcpt_to for r in records] == [
        ["user2@x.test"],
        ["user1@x.test"],
        ["user0@x.test"],
    ]
    assert len({r.session_id for r in records}) == 1
    session = sink.wait_for(
        lambda r: (s := r.get_session(records[0].session_id)) and s.end_reason and s
    )
    assert session.end_reason == "quit"
    assert session.message_count == 3
    assert session.message_ids == sorted(r.id for r in records)


def test_rset_discards_the_transaction_in_progress(sink, raw):
    raw.command("EHLO app.local")
    assert raw.command("MAIL FROM:<first@x.test>")[0].startswith("250 2.1.0")
    assert raw.command("RCPT TO:<dropped@x.test>")[0].startswith("250 2.1.5")
    assert raw.command("RSET") == ["250 2.0.0 OK"]
    assert raw.command("MAIL FROM:<second@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<kept@x.test>")[0].startswith("250")
    assert raw.command("DATA")[0].startswith("354")
    assert raw.command(b"Subject: after rset\r\n\r\nhello\r\n.")[0].startswith(
        "250 2.0.0 Ok: queued as"
    )
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.envelope.mail_from == "second@x.test"
    assert record.envelope.rcpt_to == ["kept@x.test"]


def test_null_sender_is_kept_as_empty_string(sink, raw):
    raw.command("EHLO bounce.local")
    assert raw.command("MAIL FROM:<>")[0].startswith("250")
    assert raw.command("RCPT TO:<user@x.test>")[0].startswith("250")
    raw.command("DATA")
    assert raw.command(b"From: MAILER-DAEMON@x.test\r\nTo: user@x.test\r\n\r\nbounce\r\n.")[
        0
    ].startswith("250")
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.envelope.mail_from == ""
    assert "null_sender" in kinds(record)
    assert "sender_mismatch" not in kinds(record)


def test_null_recipient_and_missing_mail_are_refused(raw):
    raw.command("EHLO x")
    assert raw.command("RCPT TO:<a@x.test>")[0].startswith("503 5.5.1")
    raw.command("MAIL FROM:<a@x.test>")
    assert raw.command("MAIL FROM:<b@x.test>")[0].startswith("503 5.5.1")
    assert raw.command("RCPT TO:<>")[0].startswith("501 5.1.3")
    assert raw.command("DATA")[0].startswith("503 5.5.1")


def test_smtputf8_address(sink, client):
    sender, recipient = "jörg@bücher.test", "zoë@example.test"
    raw = f"From: {sender}\r\nTo: {recipient}\r\nSubject: grüße\r\n\r\nhallo\r\n".encode()
    client.sendmail(sender, [recipient], raw, mail_options=["SMTPUTF8"])
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id) == raw
    assert record.envelope.mail_from == sender
    assert record.envelope.rcpt_to == [recipient]
    assert "SMTPUTF8" in record.envelope.mail_options
    assert record.headers["subject"] == "grüße"
    assert "invalid_address" not in kinds(record)
    assert "hidden_recipient" not in kinds(record)


def test_8bit_body_is_stored_byte_exact(sink, client):
    raw = (
        b"From: a@x.test\r\nTo: b@x.test\r\nSubject: 8bit\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Fa\xc3\xa7ade \xe2\x82\xac 100\r\n"
    )
    client.sendmail("a@x.test", ["b@x.test"], raw, mail_options=["BODY=8BITMIME"])
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id) == raw
        assert reader.get_parsed(record.id).text == "Façade € 100\n"
    assert "BODY=8BITMIME" in record.envelope.mail_options


def _send_data(raw, stuffed: bytes) -> list[str]:
    """One transaction with DATA sent exactly as given (already dot-stuffed); the final reply."""
    raw.command("EHLO x")
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    raw.command("DATA")
    return raw.command(stuffed + b".")


def test_lines_starting_with_a_dot_round_trip_byte_exact(sink, raw):
    original = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\tdot tab\r\nend\r\n"
    stuffed = original.replace(b"\r\n.", b"\r\n..")
    assert _send_data(raw, stuffed)[0].startswith("250")
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id) == original


def test_dot_stuffing_across_read_blocks_and_on_the_first_line_round_trips(sink, raw):
    # DATA is read in 64 KiB blocks: lines of every length put a "\r\n." at every offset of a
    # block boundary, and the first line starts with a dot too.
    lines = [b"." * (n % 3) + b"x" * (n % 97) for n in range(12_000)]
    original = b".first\r\n" + b"\r\n".join(lines) + b"\r\n"
    stuffed = b"." + original.replace(b"\r\n.", b"\r\n..")
    assert _send_data(raw, stuffed)[0].startswith("250")
    with sink.reader() as reader:
        assert reader.get_raw(reader.latest_id()) == original


def test_smtplib_dot_stuffing_round_trips(sink, client):
    original = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n"
    client.sendmail("a@x.test", ["b@x.test"], original)
    with sink.reader() as reader:
        assert reader.get_raw(reader.latest_id()) == original


def test_empty_message_and_message_without_final_newline(sink, raw):
    raw.command("EHLO x")
    for body, stored in ((b".", b""), (b"no newline at end", b"no newline at end\r\n")):
        raw.command("MAIL FROM:<a@x.test>")
        raw.command("RCPT TO:<b@x.test>")
        raw.command("DATA")
        if body == b".":
            assert raw.command(body)[0].startswith("250")
        else:
            assert raw.command(body + b"\r\n.")[0].startswith("250")
        with sink.reader() as reader:
            assert reader.get_raw(reader.latest_id()) == stored


@pytest.fixture
def small_sink(tmp_path):
    with RunningSink(tmp_path / "small.db", max_message_size=10 * 1024) as running:
        yield running


def test_over_size_gets_552_and_nothing_is_stored(small_sink):
    raw = RawClient(small_sink.host, small_sink.port)
    ehlo = raw.command("EHLO x")
    assert "250-SIZE 10240" in ehlo
    assert raw.command("MAIL FROM:<a@x.test> SIZE=20000")[0].startswith("552 5.3.4")
    # Without SIZE the limit is enforced on the data itself, after reading it all.
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    raw.command("DATA")
    body = b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 200
    assert raw.command(body + b".")[0].startswith("552 5.3.4")
    assert raw.command("NOOP")[0] == "250 2.0.0 OK"  # the session goes on, envelope reset
    assert raw.command("RCPT TO:<b@x.test>")[0].startswith("503")
    raw.close()
    with small_sink.reader() as reader:
        assert reader.count_messages(include_rejected=True) == 0
    # and a message under the limit still goes through
    with smtplib.SMTP(small_sink.host, small_sink.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: small\r\n\r\nok\r\n")
    with small_sink.reader() as reader:
        assert reader.count_messages() == 1


def test_client_vanishing_mid_data_stores_nothing_and_records_abort(sink):
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO x")
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    raw.command("DATA")
    raw.send(b"Subject: half\r\n\r\nhalf a message")
    time.sleep(0.1)
    raw.close()

    def aborted(reader):
        sessions = reader.list_sessions()
        return sessions and sessions[0].end_reason and sessions[0]

    session = sink.wait_for(aborted)
    assert session.end_reason == "aborted"
    assert session.message_ids == []
    with sink.reader() as reader:
        assert reader.count_messages(include_rejected=True) == 0
        events = reader.get_session(session.id).events
    assert [text for _, d, text in events if d == "C"][-1] == "DATA"


def test_garbage_and_over_long_lines_get_5xx_and_others_keep_being_served(sink, raw):
    raw.command("EHLO x")
    assert raw.command(b"\xff\xfe\x00garbage")[0].startswith("500 5.5.2")
    assert (
        raw.command("FROBNICATE now")[0] == '500 5.5.2 Error: command "FROBNICATE" not recognized'
    )
    assert raw.command("")[0].startswith("500 5.5.2")
    assert raw.command("NOOP " + "x" * 2000)[0].startswith("500 5.5.2")
    assert raw.command(b"X" * 200_000)[0].startswith("500 5.5.2")  # beyond the read buffer
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as other:
        other.sendmail("a@x.test", ["b@x.test"], b"Subject: meanwhile\r\n\r\nstill here\r\n")
    assert raw.command("NOOP")[0] == "250 2.0.0 OK"
    with sink.reader() as reader:
        assert reader.count_messages() == 1


def test_too_many_unrecognized_commands_close_the_connection(raw):
    raw.command("EHLO x")
    replies = [raw.command(f"BOGUS{n}")[0] for n in range(10)]
    assert all(r.startswith("500") for r in replies[:-1])
    assert replies[-1].startswith("421 4.7.0")
    with pytest.raises(ConnectionError):
        raw.command("NOOP")


def test_pipelined_commands_are_answered_in_order(sink, raw):
    ehlo = raw.command("EHLO x")
    assert "250-PIPELINING" in ehlo
    raw.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")
    assert [raw.reply()[0][:3] for _ in range(4)] == ["250", "250", "250", "354"]
    raw.send(
        b"Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<d@x.test>\r\nRCPT TO:<e@x.test>\r\nDATA\r\n"
    )
    assert raw.reply()[0].startswith("250 2.0.0 Ok: queued as")
    assert [raw.reply()[0][:3] for _ in range(3)] == ["250", "250", "354"]
    assert raw.command(b"Subject: second\r\n\r\n.")[0].startswith("250")
    with sink.reader() as reader:
        assert [r.headers["subject"] for r in reader.list_messages()] == ["second", "piped"]


def test_ehlo_and_replies_carry_extensions_and_enhanced_codes(raw):
    assert raw.greeting == ["220 mailsink ESMTP mailsink"]
    ehlo = raw.command("EHLO client.test")
    assert ehlo[0] == "250-mailsink"
    for keyword in (
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ):
        assert f"250-{keyword}" in ehlo
    assert ehlo[-1] == "250 HELP"
    replies = [
        raw.command("NOOP"),
        raw.command("HELP"),
        raw.command("VRFY someone@x.test"),
        raw.command("MAIL FROM:<a@x.test>"),
        raw.command("RCPT TO:<b@x.test>"),
        raw.command("RSET"),
        raw.command("EXPN list"),
        raw.command("QUIT"),
    ]
    for reply in replies:
        assert ENHANCED.match(reply[0]), reply
    assert replies[1][0].startswith("214 2.0.0 Supported commands:")
    assert replies[2][0].startswith("252 2.0.0")
    assert replies[-1][0].startswith("221 2.0.0")


def test_helo_without_extensions(sink, raw):
    assert raw.command("HELO old.client") == ["250 mailsink"]
    assert raw.command("MAIL FROM:<a@x.test> SIZE=10")[0].startswith("501")  # no ESMTP params
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("RCPT TO:<b@x.test>")
    raw.command("DATA")
    assert raw.command(b"Subject: helo\r\n\r\nx\r\n.")[0].startswith("250")
    with sink.reader() as reader:
        assert reader.list_messages()[0].envelope.helo == "old.client"


def test_dsn_parameters_are_kept_per_recipient(sink, raw):
    raw.command("EHLO x")
    assert raw.command("MAIL FROM:<a@x.test> RET=HDRS ENVID=QQ314159")[0].startswith("250")
    assert raw.command("RCPT TO:<b@x.test> NOTIFY=success,failure ORCPT=rfc822;B@x.test")[
        0
    ].startswith("250")
    assert raw.command("RCPT TO:<c@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<d@x.test> FOO=bar")[0].startswith("555 5.5.4")
    assert raw.command("RCPT TO:<d@x.test> NOTIFY=SOMETIMES")[0].startswith("501 5.5.4")
    raw.command("DATA")
    raw.command(b"Subject: dsn\r\n\r\nx\r\n.")
    with sink.reader() as reader:
        (record,) = reader.list_messages()
    assert record.envelope.mail_options == ["RET=HDRS", "ENVID=QQ314159"]
    assert record.envelope.rcpt_to == ["b@x.test", "c@x.test"]
    assert record.envelope.rcpt_options == [["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@x.test"], []]


def test_transcript_records_every_line_with_timestamps(sink, client):
    client.sendmail("a@x.test", ["b@x.test"], b"Subject: t\r\n\r\nhello\r\n")
    client.quit()
    session = sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])
    with sink.reader() as reader:
        record = reader.get_session(session.id)
    lines = [(d, text) for _, d, text in record.events]
    assert lines[0] == ("S", "220 mailsink ESMTP mailsink")
    assert ("C", "mail FROM:<a@x.test> size=21") in lines
    assert ("S", "250 2.1.0 Ok") in lines
    assert ("D", "[message data: 24 bytes]") in lines
    assert lines[-2:] == [("C", "quit"), ("S", "221 2.0.0 mailsink closing connection")]
    stamps = [at for at, _, _ in record.events]
    assert stamps == sorted(stamps) and stamps[0] > 1_700_000_000_000  # ms since the epoch
    assert record.end_reason == "quit"
    assert record.last_reply == "221 2.0.0 mailsink closing connection"


def test_sessions_that_deliver_nothing_are_recorded(sink, raw):
    raw.command("EHLO nothing.sent")
    raw.command("MAIL FROM:<a@x.test>")
    raw.command("QUIT")
    session = sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])
    assert session.helo == "nothing.sent"
    assert session.message_count == 0
    assert session.end_reason == "quit"


def test_idle_timeout_answers_421_and_is_recorded(tmp_path):
    with RunningSink(tmp_path / "t.db", timeout=0.3) as sink:
        raw = RawClient(sink.host, sink.port)
        raw.command("EHLO x")
        assert raw.reply()[0].startswith("421 4.4.2")
        session = sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])
        assert session.end_reason == "timeout"
        raw.close()


def test_many_concurrent_clients_all_get_their_own_ids(sink):
    acknowledged: list[int] = []
    lock = threading.Lock()

    def send(worker: int) -> None:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            for n in range(10):
                client.ehlo()
                client.mail(f"w{worker}@x.test")
                client.rcpt("b@x.test")
                code, reply = client.data(message(subject=f"{worker}-{n}"))
                assert code == 250
                with lock:
                    acknowledged.append(int(reply.rsplit(b" ", 1)[1]))

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(acknowledged) == len(set(acknowledged)) == 80
    with sink.reader() as reader:
        assert sorted(reader.message_ids()) == sorted(acknowledged)


def test_shutdown_lets_a_message_in_flight_finish(tmp_path):
    sink = RunningSink(tmp_path / "s.db").start()
    busy = RawClient(sink.host, sink.port)
    idle = RawClient(sink.host, sink.port)
    busy.command("EHLO x")
    busy.command("MAIL FROM:<a@x.test>")
    busy.command("RCPT TO:<b@x.test>")
    busy.command("DATA")
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    stopper = threading.Thread(target=sink.stop, kwargs={"grace": 5})
    db = sink.db
    stopper.start()
    assert idle.reply()[0].startswith("421 4.3.2")  # idle sessions are told at once
    busy.send(b"second half\r\n.\r\n")
    assert busy.reply()[0].startswith("250 2.0.0 Ok: queued as")
    assert busy.reply()[0].startswith("421 4.3.2")  # then the connection closes
    stopper.join(10)
    from mailsink.store.reader import Reader

    with Reader(db) as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id).endswith(b"second half\r\n")
        reasons = sorted(s.end_reason for s in reader.list_sessions())
    assert reasons == ["server_shutdown", "server_shutdown"]


def test_retention_keeps_the_newest_messages(tmp_path):
    from mailsink.config import Settings, StorageSettings

    settings = Settings(storage=StorageSettings(max_messages=3))
    with RunningSink(tmp_path / "r.db", settings) as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            for n in range(6):
                client.sendmail("a@x.test", ["b@x.test"], message(subject=f"n{n}"))
        with sink.reader() as reader:
            subjects = [r.headers["subject"] for r in reader.list_messages()]
            assert subjects == ["n5", "n4", "n3"]
            assert all(reader.get_raw(i) is None for i in (1, 2, 3))


def test_memory_store_keeps_messages_while_running(tmp_path):
    with RunningSink(":memory:") as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            client.sendmail("a@x.test", ["b@x.test"], message())
        with sink.reader() as reader:
            assert reader.count_messages() == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argument",
    [
        "<a@b.test> SIZE=10 BODY=8BITMIME",
        "<a@b.test>",
        "  <a@b.test>  x",
        "<üser@bü.test> SMTPUTF8",
        "<a..b@x.test>",
        '<"q x"@b.test>',
        "<a@[127.0.0.1]>",
        "<>",
        "<@relay.test:a@b.test>",
        "a@b.test",
        "<a@example..com>",
        "<a@.example.com>",
        "<a@example.com.>",
        "<a@.>",
        "<a@example.com>(comment)",
        "<a@b.test>   ",
        "<a@b.test>\tSIZE=1",
    ],
)
def test_fast_address_path_agrees_with_aiosmtpd(argument):
    from aiosmtpd.smtp import SMTP

    from mailsink.smtp.protocol import SmtpConnection

    ours, theirs = (
        SmtpConnection.__new__(SmtpConnection),
        SMTP.__new__(SMTP),
    )  # the method needs no state
    ours.local_part_limit = theirs.local_part_limit = 0
    assert ours._getaddr(argument) == theirs._getaddr(argument)


def test_aiosmtpd_finds_every_command_hook_and_auth_method_through_the_cached_names():
    from mailsink.smtp.handler import SmtpHandler
    from mailsink.smtp.protocol import SmtpConnection

    every = set(object.__dir__(SmtpConnection.__new__(SmtpConnection)))
    wanted = {name for name in every if name.startswith(("smtp_", "auth_"))}
    assert {"smtp_DATA", "smtp_EHLO", "auth_PLAIN", "auth_LOGIN"} <= wanted
    assert set(SmtpConnection.__dir__(SmtpConnection.__new__(SmtpConnection))) == wanted
    hooks = {name for name in object.__dir__(SmtpHandler(None)) if name.startswith("handle_")}
    assert {"handle_DATA", "handle_EHLO", "handle_exception"} <= hooks
    assert set(dir(SmtpHandler(None))) == hooks
