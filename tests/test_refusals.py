"""What the server refused, recorded: each refused RCPT TO on the stored envelope (with its
reply, the fault rule or reason behind it), a message rejected at the end of DATA with its rule,
and each session's count of refusals and the last of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, RawClient

from mailsink.mail.envelope import RefusedRecipient
from mailsink.testing import RunningSink


@pytest.fixture
def configured(tmp_path: Path):
    """configured(toml) -> a running sink with that config."""
    started: list[RunningSink] = []

    def start(text: str) -> RunningSink:
        path = tmp_path / f"mailsink{len(started)}.toml"
        path.write_text(text)
        started.append(RunningSink(tmp_path / f"mail{len(started)}.db", config=path).start())
        return started[-1]

    yield start
    for sink in started:
        sink.stop()


def sample(name: str) -> str:
    return (ROOT / "sample_configs" / name).read_text()


def open_transaction(raw: RawClient, sender: str = "app@x.test") -> None:
    assert raw.command("EHLO client.test")[0].startswith("250")
    assert raw.command(f"MAIL FROM:<{sender}>")[0].startswith("250")


def finish(raw: RawClient) -> str:
    """DATA with a small message, then QUIT; the reply to the end of DATA."""
    assert raw.command("DATA")[0].startswith("354")
    reply = raw.command(b"Subject: hi\r\n\r\nhello\r\n.")[0]
    raw.command("QUIT")
    raw.close()
    return reply


def ended_session(sink: RunningSink):
    return sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])


def stored(sink: RunningSink, *, rejected: bool = False):
    with sink.reader() as reader:
        (record,) = reader.list_messages(include_rejected=rejected)
        assert reader.get_message(record.id) == record
    return record


def test_a_recipient_refused_by_validation(configured):
    sink = configured('[validation]\naddresses = "reject"\n')
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    reply = raw.command("RCPT TO:<a..b@x.test> NOTIFY=never")
    assert reply[0].startswith("553 5.1.3")
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert finish(raw).startswith("250")
    record = stored(sink)
    assert record.envelope.rcpt_to == ["ok@x.test"]
    assert record.envelope.rcpt_refused == [
        RefusedRecipient("a..b@x.test", ["NOTIFY=never"], reply[0], None, "validation")
    ]
    session = ended_session(sink)
    assert session.refusals == 1
    assert session.last_refusal == f"RCPT TO:<a..b@x.test> NOTIFY=never: {reply[0]}"


def test_a_recipient_refused_by_a_fault_rule_names_the_rule(configured):
    sink = configured(sample("mailbox-full.toml"))
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<full@x.test> NOTIFY=success") == ["452 4.2.2 Mailbox full"]
    assert raw.command("RCPT TO:<two@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<three@x.test>") == ["452 4.5.3 Too many recipients"]
    assert raw.command("DATA")[0].startswith("354")
    # The first end of DATA meets "no storage once"; the message is kept, rejected.
    assert raw.command(b"Subject: hi\r\n\r\nhello\r\n.") == [
        "452 4.3.1 Insufficient system storage"
    ]
    raw.command("QUIT")
    raw.close()
    record = stored(sink, rejected=True)
    assert (record.status, record.reply, record.reply_rule) == (
        "rejected",
        "452 4.3.1 Insufficient system storage",
        "no storage once",
    )
    assert record.envelope.rcpt_to == ["ok@x.test", "two@x.test"]
    assert record.envelope.rcpt_refused == [
        RefusedRecipient(
            "full@x.test", ["NOTIFY=success"], "452 4.2.2 Mailbox full", "mailbox full"
        ),
        RefusedRecipient(
            "three@x.test", [], "452 4.5.3 Too many recipients", "too many recipients"
        ),
    ]
    session = ended_session(sink)
    assert session.refusals == 3
    assert session.last_refusal == "end of DATA: 452 4.3.1 Insufficient system storage"


def test_a_multi_line_refusal_after_a_delay_rule_is_kept_whole(configured):
    sink = configured(
        '[[fault]]\nname = "slow"\nstage = "rcpt"\naction = "delay"\ndelay = "10ms"\n'
        '[[fault]]\nname = "two lines"\nstage = "rcpt"\nreply = "550 5.1.1 No such user\\nReally"\n'
        '[fault.match]\nrecipient = "gone@*"\n'
    )
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    assert raw.command("RCPT TO:<gone@x.test>") == ["550-5.1.1 No such user", "550 5.1.1 Really"]
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert finish(raw).startswith("250")
    (refused,) = stored(sink).envelope.rcpt_refused
    assert (refused.reply, refused.rule, refused.reason) == (
        "550-5.1.1 No such user\n550 5.1.1 Really",
        "two lines",
        "fault_rule",
    )
    assert ended_session(sink).last_refusal == (
        "RCPT TO:<gone@x.test>: 550-5.1.1 No such user\n550 5.1.1 Really"
    )


def test_recipients_refused_for_their_syntax_or_parameters(sink):
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    sent = [
        ("RCPT TO:<a@b@c> NOTIFY=never", "501 5.1.3"),
        ("RCPT TO:<ctl\x01@x.test>", "501 5.1.3"),
        ("RCPT TO:", "501 5.5.4"),
        ("RCPT TO:<p@x.test> FOO=bar NOTIFY=success", "555 5.5.4"),
        ("RCPT TO:<q@x.test> NOTIFY=sometimes", "501 5.5.4"),
    ]
    replies = []
    for command, code in sent:
        (reply,) = raw.command(command)
        assert reply.startswith(code), (command, reply)
        replies.append(reply)
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert finish(raw).startswith("250")
    refused = stored(sink).envelope.rcpt_refused
    assert [(r.address, r.options, r.reply, r.rule, r.reason) for r in refused] == [
        ("<a@b@c> NOTIFY=never", [], replies[0], None, "syntax"),
        ("ctl\x01@x.test", [], replies[1], None, "syntax"),
        ("", [], replies[2], None, "syntax"),
        ("p@x.test", ["FOO=bar", "NOTIFY=success"], replies[3], None, "parameters"),
        ("q@x.test", ["NOTIFY=sometimes"], replies[4], None, "parameters"),
    ]
    session = ended_session(sink)
    assert session.refusals == 5
    assert session.last_refusal == f"RCPT TO:<q@x.test> NOTIFY=sometimes: {replies[4]}"


def test_all_recipients_refused_then_data_and_a_fresh_list_after_rset(configured):
    sink = configured(sample("reject-sender.toml"))
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    assert raw.command("RCPT TO:<blocked@x.test>") == ["550 5.7.1 Recipient not permitted"]
    assert raw.command("DATA") == ["503 5.5.1 Error: need RCPT command"]
    # What this session's `mailsink sessions` row says while it is still open.
    live = sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].refusals == 2 and s[0])
    assert live.end_reason is None
    assert live.last_refusal == "DATA: 503 5.5.1 Error: need RCPT command"
    (snapshot,) = sink.live_sessions()
    assert (snapshot.refusals, snapshot.last_refusal) == (2, live.last_refusal)
    assert raw.command("RSET")[0].startswith("250")
    assert raw.command("MAIL FROM:<app@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert finish(raw).startswith("250")
    assert stored(sink).envelope.rcpt_refused == []  # RSET started a new transaction
    assert ended_session(sink).refusals == 2


def test_a_refused_sender_and_what_does_not_count(configured):
    sink = configured(sample("reject-sender.toml"))
    raw = RawClient(sink.host, sink.port)
    assert raw.command("EHLO client.test")[0].startswith("250")
    assert raw.command("MAIL FROM:<x@marketing.test>") == ["550 5.7.1 Sender not permitted"]
    # Not refusals: an unknown command, NOOP, VRFY, HELP.
    assert raw.command("FOO")[0].startswith("500")
    for command in ("NOOP", "VRFY someone", "HELP"):
        assert raw.command(command)[0][:1] == "2"
    raw.command("QUIT")
    raw.close()
    session = ended_session(sink)
    assert session.refusals == 1
    assert session.last_refusal == "MAIL FROM:<x@marketing.test>: 550 5.7.1 Sender not permitted"
    with sink.reader() as reader:
        assert reader.list_messages(include_rejected=True) == []


def test_a_refused_greeting_counts(configured):
    sink = configured('[[fault]]\nname = "closed"\nstage = "connect"\nreply = "554 5.3.2 Closed"\n')
    raw = RawClient(sink.host, sink.port)
    assert raw.greeting == ["554 5.3.2 Closed"]
    raw.command("QUIT")
    raw.close()
    session = ended_session(sink)
    assert (session.refusals, session.last_refusal) == (1, "greeting: 554 5.3.2 Closed")


def test_a_new_mail_after_a_message_starts_a_fresh_list(configured):
    sink = configured(
        sample("mailbox-full.toml").replace("times = 1", "times = 1\nenabled = false")
    )
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    assert raw.command("RCPT TO:<full@x.test>")[0].startswith("452")
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert raw.command("DATA")[0].startswith("354")
    assert raw.command(b"Subject: one\r\n\r\n1\r\n.")[0].startswith("250")
    assert raw.command("MAIL FROM:<app@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
    assert finish(raw).startswith("250")
    with sink.reader() as reader:
        second, first = reader.list_messages()
    assert [r.address for r in first.envelope.rcpt_refused] == ["full@x.test"]
    assert second.envelope.rcpt_refused == []


def test_a_data_stage_reply_with_control_characters_is_stored_as_sent(configured):
    """A fault reply is the user's own text, but no reply carries a control character: the
    one that rejects a message is escaped on the wire, and kept so (as a RCPT refusal is)."""
    sink = configured(
        '[[fault]]\nname = "esc"\nstage = "data"\n'
        'reply = "554 5.6.0 \\u001b[31mred\\u0007\\ndone"\n'
    )
    raw = RawClient(sink.host, sink.port)
    open_transaction(raw)
    assert raw.command("RCPT TO:<b@x.test>")[0].startswith("250")
    assert raw.command("DATA")[0].startswith("354")
    sent = raw.command(b"Subject: hi\r\n\r\nhello\r\n.")
    raw.command("QUIT")
    raw.close()
    assert sent == ["554-5.6.0 \\x1b[31mred\\x07", "554 5.6.0 done"]
    record = stored(sink, rejected=True)
    assert (record.reply, record.reply_rule) == ("\n".join(sent), "esc")
    assert ended_session(sink).last_refusal == "end of DATA: " + "\n".join(sent)
