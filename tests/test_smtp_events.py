"""The SMTP side of the event stream, and live sessions as frozen snapshots: a real server on
loopback, real clients, a real store."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import smtplib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RawClient, message

from mailsink.config import parse as parse_config
from mailsink.events import (
    FaultFired,
    MessageStored,
    SessionEnded,
    SessionStarted,
    TranscriptLine,
)
from mailsink.testing import RunningSink

RULES = [
    {"name": "no b", "stage": "rcpt", "reply": "550 5.7.1 Not b", "match": {"recipient": "b@*"}},
    {
        "name": "no spam",
        "stage": "data",
        "reply": "554 5.7.1 Spam",
        "match": {"header": {"Subject": "spam"}},
    },
]


def on_loop(sink: RunningSink, function: Callable[[], Any]) -> Any:
    """`function()` on the sink's loop, where the server lives."""

    async def call() -> Any:
        return function()

    return asyncio.run_coroutine_threadsafe(call(), sink.loop).result(10)


def until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return result


@pytest.fixture
def faulty(tmp_path):
    with RunningSink(tmp_path / "mail.db", settings=parse_config({"fault": RULES})) as sink:
        yield sink


def test_a_subscriber_hears_one_session_in_the_order_it_happened(faulty):
    sink = faulty
    kinds = (SessionStarted, TranscriptLine, FaultFired, MessageStored, SessionEnded)
    with sink.events(*kinds) as events:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.ehlo("client.test")
            refused = client.sendmail("a@x.test", ["a@y.test", "b@y.test"], message())
            assert refused == {"b@y.test": (550, b"5.7.1 Not b")}
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail("a@x.test", ["a@y.test"], message(subject="spam, spam"))
        seen = events.until(SessionEnded)

    started, ended = seen[0], seen[-1]
    assert isinstance(started, SessionStarted) and started.session.live
    session_id = started.session.id
    others = [event for event in seen if not isinstance(event, TranscriptLine)]
    assert [type(event) for event in others] == [
        SessionStarted,
        FaultFired,
        MessageStored,
        FaultFired,
        MessageStored,
        SessionEnded,
    ]
    assert all(event.session_id == session_id for event in seen if hasattr(event, "session_id"))
    assert [(e.rule, e.stage, e.reply) for e in others if isinstance(e, FaultFired)] == [
        ("no b", "rcpt", "550 5.7.1 Not b"),
        ("no spam", "data", "554 5.7.1 Spam"),
    ]
    stored = [event for event in others if isinstance(event, MessageStored)]
    assert [event.rejected for event in stored] == [False, True]

    # Every transcript line once, in order, each beside what it tells.
    lines = [event.line for event in seen if isinstance(event, TranscriptLine)]
    assert [line[0] for line in lines] == list(range(1, len(lines) + 1))
    texts = [text for _, _, _, text in lines]
    stream = [
        event.line[3] if isinstance(event, TranscriptLine) else type(event).__name__
        for event in seen
    ]
    rcpt_b = stream.index("rcpt TO:<b@y.test>")  # as smtplib spells it
    assert stream[rcpt_b + 1 : rcpt_b + 4] == [
        "FaultFired",
        "fault 'no b' fired at rcpt: reply 550 5.7.1 Not b",
        "550 5.7.1 Not b",
    ]
    queued = f"250 2.0.0 Ok: queued as {stored[0].message_id}"
    assert stream.index("MessageStored") < stream.index(queued)
    assert texts[-1].startswith("221")

    # The end: what the connection knew, which the store then has too.
    snapshot = ended.session
    assert (snapshot.id, snapshot.end_reason, snapshot.helo) == (session_id, "quit", "client.test")
    assert snapshot.message_ids == tuple(event.message_id for event in stored)
    assert (snapshot.faults_fired, snapshot.transcript_lines) == (2, len(lines))
    assert sink.wait_for(lambda reader: reader.get_session(session_id).end_reason) == "quit"
    with sink.reader() as reader:
        assert reader.session_events(session_id) == lines


def test_live_sessions_show_what_the_store_does_not_have_yet_until_it_commits(faulty):
    sink = faulty
    client = smtplib.SMTP(sink.host, sink.port, timeout=10)
    client.ehlo("client.test")
    client.sendmail("a@x.test", ["a@y.test"], message())
    writer = sink.store.writer_pid
    os.kill(writer, signal.SIGSTOP)  # nothing commits from here until SIGCONT
    try:
        assert client.mail("a@x.test")[0] == 250
        time.sleep(0.3)  # a progress write (PROGRESS_DELAY 0.2 s) is handed over, uncommitted
        (live,) = sink.live_sessions()
        assert (live.helo, live.state, live.live, live.faults_fired) == (
            "client.test",
            "MAIL",
            True,
            0,
        )
        assert len(live.message_ids) == 1
        texts = [text for _, _, _, text in live.unwritten]
        assert texts[-2:] == ["mail FROM:<a@x.test>", "250 2.1.0 Ok"]
        assert on_loop(sink, lambda: sink.server.live_session(live.id)) == live
        client.quit()
        ended = until(lambda: [s for s in sink.live_sessions() if not s.live])
        (ended,) = ended  # ended, its last row not committed: still listed
        assert (ended.id, ended.end_reason, ended.helo) == (live.id, "quit", "client.test")
        assert ended.ended_at is not None
        texts = [text for _, _, _, text in ended.unwritten]
        assert texts[-2] == "quit" and texts[-1].startswith("221")
        with sink.reader() as reader:
            assert reader.get_session(live.id, with_events=False).end_reason is None
    finally:
        os.kill(writer, signal.SIGCONT)
    assert until(lambda: not sink.live_sessions())
    assert on_loop(sink, lambda: sink.server.live_session(live.id)) is None
    with sink.reader() as reader:
        record = reader.get_session(live.id, with_events=False)
        stored = reader.session_events(live.id)
    assert record.end_reason == "quit"
    assert [line[0] for line in stored] == list(range(1, ended.transcript_lines + 1))
    assert set(ended.unwritten) <= set(stored)


def test_a_session_ended_right_at_its_end_event_is_still_live_for_the_subscriber(faulty):
    """A face that hears SessionEnded and asks for the session finds it, whatever the store
    has committed by then."""
    sink = faulty
    found: list[Any] = []

    async def listen() -> None:
        with sink.sink.subscribe(SessionEnded) as ends:
            event = await ends.get()
            found.append((event, sink.server.live_session(event.session.id)))

    task = asyncio.run_coroutine_threadsafe(listen(), sink.loop)
    until(lambda: sink.sink.events.wants(SessionEnded))
    raw = RawClient(sink.host, sink.port)
    raw.command("QUIT")
    raw.close()
    task.result(10)
    ((event, live),) = found
    assert live is not None and live.end_reason == "quit" and live.id == event.session.id


def test_no_transcript_event_is_built_when_nobody_listens(faulty, monkeypatch):
    """The SMTP path's busiest code: a TranscriptLine is made only for a subscriber."""
    made = []
    original = TranscriptLine.__init__

    def counting(self, *args, **kwargs):
        made.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TranscriptLine, "__init__", counting)
    with smtplib.SMTP(faulty.host, faulty.port, timeout=10) as client:
        client.sendmail("a@x.test", ["a@y.test"], message())
    assert made == []
    with faulty.events(TranscriptLine) as events:
        with smtplib.SMTP(faulty.host, faulty.port, timeout=10) as client:
            client.noop()
        assert isinstance(events.next(), TranscriptLine)
    assert made


def _send_and_reset(sink: RunningSink) -> None:
    """A whole message, then a reset (RST) before its reply: the server is left committing it
    for a connection that is gone."""
    raw = RawClient(sink.host, sink.port)
    for line in ("HELO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"):
        raw.command(line)
    raw.send(b"Subject: reset\r\n\r\nbody\r\n.\r\n")
    time.sleep(0.1)  # the server has read it and handed it to the (stopped) writer
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    assert until(lambda: [s for s in sink.live_sessions() if not s.live])


def test_a_message_committed_after_its_client_reset_the_connection_is_told_first(sink):
    """aiosmtpd cancels the command loop when the connection goes: the commit goes on, and
    its MessageStored comes before the session's end, whose snapshot and row count it."""
    with sink.events(MessageStored, SessionEnded) as events:
        writer = sink.store.writer_pid
        os.kill(writer, signal.SIGSTOP)  # the commit waits until the connection is gone
        try:
            _send_and_reset(sink)
        finally:
            os.kill(writer, signal.SIGCONT)
        stored, ended = events.until(SessionEnded)
    assert isinstance(stored, MessageStored) and not stored.rejected
    assert ended.session.id == stored.session_id
    assert ended.session.message_ids == (stored.message_id,)
    assert ended.session.end_reason == "aborted"
    assert until(lambda: not sink.live_sessions())
    with sink.reader() as reader:
        record = reader.get_session(stored.session_id, with_events=False)
        assert (record.end_reason, record.message_count) == ("aborted", 1)
        assert reader.get_message(stored.message_id).headers["subject"] == "reset"


def test_a_commit_that_fails_after_its_client_left_still_ends_the_session(sink, caplog):
    caplog.set_level(logging.ERROR, logger="mailsink")
    with sink.events(MessageStored, SessionEnded) as events:
        writer = sink.store.writer_pid
        os.kill(writer, signal.SIGSTOP)
        try:
            _send_and_reset(sink)
        finally:
            os.kill(writer, signal.SIGKILL)  # dies with the message uncommitted
        (ended,) = events.until(SessionEnded, timeout=10)
    assert ended.session.message_ids == () and ended.session.end_reason == "aborted"
    assert until(lambda: not sink.live_sessions())
    assert "a message was not stored" in caplog.text
    assert sink.wait_for(lambda r: r.get_session(ended.session.id).end_reason) == "aborted"


def test_resets_landing_as_the_commit_answers_still_tell_the_message_first(tmp_path):
    """A client that resets 0-4 ms after its final "." can land between the commit's answer and
    the save resuming: the session still ends only once its message is told, with its id."""
    import random
    import socket
    import struct

    from mailsink.events import MessageStored, SessionEnded
    from mailsink.testing import RunningSink

    rounds = 120
    chance = random.Random(1)
    with (
        RunningSink(tmp_path / "mail.db") as running,
        running.events(MessageStored, SessionEnded) as events,
    ):
        for index in range(rounds):
            client = socket.create_connection((running.host, running.port))
            with client.makefile("rb") as replies:
                replies.readline()
                client.sendall(b"HELO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
                for _ in range(4):
                    replies.readline()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sendall(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % index)
            until = time.perf_counter() + chance.uniform(0, 0.004)
            while time.perf_counter() < until:
                pass
            client.close()  # a reset, not a FIN: SO_LINGER 0
        told: dict[int, int] = {}
        ended = 0
        while ended < rounds:
            event = events.next(timeout=10)
            if isinstance(event, MessageStored):
                told[event.session_id] = event.message_id
            else:
                ended += 1
                stored = told.get(event.session.id)
                if stored is not None:  # told before its end, and counted in it
                    assert event.session.message_ids == (stored,)
                else:  # nothing was told: then nothing was stored for it
                    with running.reader() as reader:
                        ids = [m.id for m in reader.list_messages(limit=1000)]
                        kept = {m.session_id for m in reader.list_messages(limit=1000)}
                    assert event.session.id not in kept, (event.session.id, ids)
        running._call(running.sink.flush())  # the last sessions' end rows
        assert running.live_sessions() == []
        with running.reader() as reader:
            assert {m.session_id: m.id for m in reader.list_messages(limit=1000)} == told
