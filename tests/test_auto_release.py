"""Automatic release (`[relay] auto`, mailsink/auto_release.py): after the commit, in the
background, never delaying the 250; retried with backoff for temporary failures, each try
recorded; on and off with a reload; a bounded queue (issue 18)."""

from __future__ import annotations

import logging
import smtplib
import time
from pathlib import Path

import pytest
from conftest import message
from relay_upstream import SilentServer, Upstream

from mailsink import auto_release
from mailsink.events import ConfigReloaded, MessageReleased, MessageStored
from mailsink.relay import Delivery
from mailsink.store import Reader
from mailsink.testing import RunningSink

RAW = message(to="ann@example.test", subject="auto")


def _silent_relay(silent: SilentServer, **extra: str) -> str:
    table = (
        f'[relay]\nhost = "127.0.0.1"\nport = {silent.port}\ntls = "none"\ntimeout = 5\n'
        'allowed_recipients = ["*@example.test"]\nauto = true\n'
        'auto_recipients = ["*@example.test"]\n'
    )
    return table + "".join(f"{key} = {value}\n" for key, value in extra.items())


def _released(events, count: int, timeout: float = 15.0) -> list[MessageReleased]:
    """The next `count` MessageReleased events."""
    found: list[MessageReleased] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        seen = events.until(MessageReleased, max(0.1, deadline - time.monotonic()))
        found += [event for event in seen if isinstance(event, MessageReleased)]
    return found


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _releases(sink: RunningSink, message_id: int):
    with sink.reader() as reader:
        return reader.releases(message_id)


def test_an_upstream_that_hangs_does_not_delay_the_250(tmp_path: Path, caplog):
    with SilentServer() as silent:
        config = tmp_path / "mailsink.toml"
        config.write_text(_silent_relay(silent))
        with (
            caplog.at_level(logging.INFO, logger="mailsink"),
            RunningSink(tmp_path / "mail.db", config=config) as sink,
        ):
            with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                client.ehlo("app.test")
                took = []
                for _ in range(3):
                    client.mail("app@shop.test")
                    client.rcpt("ann@example.test")
                    started = time.monotonic()
                    code, _ = client.data(RAW)
                    took.append(time.monotonic() - started)
                    assert code == 250
            # Each is in hand: its delivery waits on the silent upstream (5 s timeout).
            auto = sink.sink.auto_release
            _wait_until(lambda: sink.call(lambda: auto.pending) == [1, 2, 3])
        # The 250 came at once each time: the release waits on a thread, after the commit.
        assert max(took) < 1.0, took
        assert "stopped with 3 message(s) not released yet: 1, 2, 3" in caplog.text


def test_a_temporary_failure_is_retried_and_each_try_recorded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(auto_release, "RETRY_FIRST_SECONDS", 0.2)
    with Upstream(tmp_path / "upstream") as up:
        config = tmp_path / "mailsink.toml"
        config.write_text(up.relay_toml(auto=True, auto_recipients=["ann@*"], auto_retries=10))
        up.add_fault(name="greylist", stage="rcpt", action="reply", reply="451 4.7.1 try later")
        with RunningSink(tmp_path / "mail.db", config=config) as sink:
            with sink.events(MessageReleased) as events:
                with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                    client.sendmail("app@shop.test", ["ann@example.test", "bob@example.test"], RAW)
                (first,) = _released(events, 1)
                assert (first.outcome, first.attempt, first.trigger) == ("retrying", 1, "auto")
                assert first.code == 451 and "try later" in first.reply
                assert first.recipients == ("ann@example.test",)  # auto_recipients: ann only
                up.clear_faults()
                later = []
                while not later or later[-1].outcome == "retrying":
                    later += _released(events, 1)
            rows = _releases(sink, 1)
        assert later[-1].outcome == "sent" and later[-1].attempt == len(later) + 1
        assert [row.outcome for row in rows] == ["retrying"] * len(later) + ["sent"]
        assert [row.attempt for row in rows] == list(range(1, len(rows) + 1))
        assert [row.id for row in rows] == [first.release_id] + [e.release_id for e in later]
        assert up.wait_for_messages(1) == [RAW]
        assert up.envelopes() == [("app@shop.test", ["ann@example.test"])]


def test_the_last_try_is_failed_and_a_5xx_is_not_retried(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(auto_release, "RETRY_FIRST_SECONDS", 0.05)
    with Upstream(tmp_path / "upstream") as up:
        config = tmp_path / "mailsink.toml"
        config.write_text(
            up.relay_toml(auto=True, auto_recipients=["*@example.test"], auto_retries=2)
        )
        up.add_fault(
            name="full",
            stage="rcpt",
            action="reply",
            reply="452 4.2.2 Mailbox full",
            match={"recipient": "full@*"},
        )
        up.add_fault(
            name="nobody",
            stage="rcpt",
            action="reply",
            reply="550 5.1.1 no such user",
            match={"recipient": "nobody@*"},
        )
        with RunningSink(tmp_path / "mail.db", config=config) as sink:
            with sink.events(MessageReleased) as events:
                with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                    client.sendmail("app@shop.test", ["nobody@example.test"], RAW)
                    client.sendmail("app@shop.test", ["full@example.test"], RAW)
                seen = _released(events, 3)
            # Nothing more in hand: no try of either is to come.
            _wait_until(lambda: sink.call(lambda: sink.sink.auto_release.pending) == [])
            permanent, temporary = _releases(sink, 1), _releases(sink, 2)
        assert [(r.outcome, r.attempt, r.code) for r in permanent] == [("failed", 1, 550)]
        assert [(r.outcome, r.attempt, r.code) for r in temporary] == [
            ("retrying", 1, 452),
            ("failed", 2, 452),
        ]
        assert sorted((e.message_id, e.outcome) for e in seen) == [
            (1, "failed"),
            (2, "failed"),
            (2, "retrying"),
        ]


def test_a_reload_turns_auto_release_on_and_off(tmp_path: Path):
    with Upstream(tmp_path / "upstream") as up:
        config = tmp_path / "mailsink.toml"
        off = up.relay_toml(auto=False)
        on = up.relay_toml(auto=True, auto_recipients=["*@example.test"])
        config.write_text(off)
        with RunningSink(tmp_path / "mail.db", config=config) as sink:
            auto = sink.sink.auto_release

            def send() -> None:
                with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                    client.sendmail("app@shop.test", ["ann@example.test"], RAW)

            def reload(text: str) -> None:
                with sink.events(ConfigReloaded) as reloaded:
                    config.write_text(text)
                    reloaded.until(ConfigReloaded, 10)

            with sink.events(MessageStored, MessageReleased) as events:
                send()  # 1: auto off
                assert [type(e) for e in events.until(MessageStored)] == [MessageStored]
                assert sink.call(lambda: auto._subscription) is None  # no cost on ingest
                reload(on)
                send()  # 2: released by itself
                (event,) = _released(events, 1)
                assert (event.message_id, event.outcome, event.trigger) == (2, "sent", "auto")
                reload(off)
                send()  # 3: off again
                assert events.until(MessageStored)[-1].message_id == 3
                sink.run(sink.sink.flush())
                assert sink.call(lambda: auto.pending) == []
            assert (_releases(sink, 1), _releases(sink, 3)) == ([], [])
            assert [r.outcome for r in _releases(sink, 2)] == ["sent"]
        assert len(up.wait_for_messages(1)) == 1


def test_the_queue_is_bounded_and_what_is_beyond_it_skipped_and_counted(
    tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.setattr(auto_release, "QUEUE_LIMIT", 2)
    with SilentServer() as silent:
        config = tmp_path / "mailsink.toml"
        config.write_text(_silent_relay(silent))
        with (
            caplog.at_level(logging.WARNING, logger="mailsink"),
            RunningSink(tmp_path / "mail.db", config=config) as sink,
        ):
            auto = sink.sink.auto_release
            with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                for _ in range(4):
                    client.sendmail("app@shop.test", ["ann@example.test"], RAW)
            _wait_until(lambda: sink.call(lambda: auto.skipped) == 2)
            assert sink.call(lambda: auto.pending) == [1, 2]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("2 messages are waiting already; message 3" in w for w in warnings), warnings
        assert sum("waiting already" in w for w in warnings) == 1  # once, not per message


def test_only_auto_recipients_that_are_allowed_are_released_to(tmp_path: Path):
    with Upstream(tmp_path / "upstream") as up:
        config = tmp_path / "mailsink.toml"
        # auto_recipients wider than allowed_recipients: the allow-list still holds.
        config.write_text(
            up.relay_toml(allowed=["ann@example.test"], auto=True, auto_recipients=["*@*"])
        )
        with RunningSink(tmp_path / "mail.db", config=config) as sink:
            with sink.events(MessageReleased) as events:
                with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                    client.sendmail("app@shop.test", ["zed@other.test"], RAW)
                    client.sendmail("app@shop.test", ["zed@other.test", "ann@example.test"], RAW)
                (event,) = _released(events, 1)
            assert (event.message_id, event.recipients) == (2, ("ann@example.test",))
            assert _releases(sink, 1) == []
        assert up.envelopes() == [("app@shop.test", ["ann@example.test"])]


@pytest.mark.parametrize(
    "code, stage, timed_out, again",
    [
        (451, "rcpt", False, True),
        (421, "data", False, True),  # a 421 and the connection closed
        (None, "connect", False, True),  # refused
        (None, "data", False, True),  # the connection lost
        (None, "data", True, True),
        (550, "rcpt", False, False),
        (535, "auth", False, False),
        (None, "tls", False, False),  # a certificate: the same next time
        (None, "mail", False, False),  # SMTPUTF8 needed, not offered
    ],
)
def test_which_failures_are_tried_again(code, stage, timed_out, again):
    delivery = Delivery(
        "mx:25", "", ("a@x.test",), "failed", code, "", stage=stage, timed_out=timed_out
    )
    assert auto_release.temporary(delivery) is again


@pytest.mark.parametrize("attempt, wait", [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (12, 60.0)])
def test_backoff_doubles_up_to_a_minute(attempt: int, wait: float):
    assert auto_release.backoff(attempt) == wait


def test_a_release_in_flight_at_the_stop_ends_and_is_recorded(tmp_path: Path, caplog):
    """The server stops while an auto release waits for the upstream's reply to DATA: the stop
    waits for it, and what reached the upstream is recorded as sent."""
    with Upstream(tmp_path / "upstream") as up:
        up.add_fault(name="slow", stage="data", action="delay", delay="1500ms")
        config = tmp_path / "mailsink.toml"
        config.write_text(
            up.relay_toml(auto=True, auto_recipients=["*@example.test"], tls="none", auth=False)
        )
        with caplog.at_level(logging.INFO, logger="mailsink"):
            sink = RunningSink(tmp_path / "mail.db", config=config, http=False).start()
            try:
                with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                    client.sendmail("app@shop.test", ["ann@example.test"], RAW)
                # The upstream has the message's DATA in hand (its session is at DATA).
                _wait_until(lambda: any(s.state == "DATA" for s in up.running.live_sessions()), 10)
            finally:
                sink.stop()
        assert up.raw_messages() == [RAW]
        with Reader(str(tmp_path / "mail.db")) as reader:
            (record,) = reader.releases(1)
        assert (record.outcome, record.code, record.trigger) == ("sent", 250, "auto")
        assert "finishing 1 release(s) in flight" in caplog.text


def test_releases_give_way_to_incoming_mail_for_a_bounded_time(tmp_path: Path, monkeypatch):
    """While mail keeps arriving, auto release waits (its CPU would come out of ingest); it
    starts QUIET_SECONDS after the last message, or once a message has waited
    DEFER_MOST_SECONDS however busy the server is."""
    monkeypatch.setattr(auto_release, "DEFER_MOST_SECONDS", 1.5)
    with Upstream(tmp_path / "upstream") as up:
        config = tmp_path / "mailsink.toml"
        config.write_text(up.relay_toml(auto=True, auto_recipients=["*@example.test"]))
        with RunningSink(tmp_path / "mail.db", config=config) as sink:
            with sink.events(MessageReleased) as events:
                with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
                    # A message every 0.1 s for 0.6 s: never quiet long enough.
                    for _ in range(6):
                        client.sendmail("app@shop.test", ["ann@example.test"], RAW)
                        time.sleep(0.1)
                    last = time.monotonic()
                    assert _releases(sink, 1) == []  # (the first has waited 0.6 s)
                    # Busy for longer than DEFER_MOST_SECONDS: the first goes anyway.
                    busy_until = time.monotonic() + 2.0
                    while time.monotonic() < busy_until and not _releases(sink, 1):
                        client.sendmail("app@shop.test", ["zed@other.test"], RAW)
                        time.sleep(0.05)
                    assert _releases(sink, 1), "the release waited past DEFER_MOST_SECONDS"
                    assert time.monotonic() - last < 2.0
                released = _released(events, 6)
            assert sorted(event.message_id for event in released) == [1, 2, 3, 4, 5, 6]
