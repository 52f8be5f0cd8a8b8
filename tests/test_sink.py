"""The sink service, as every face sees it: events in order, live sessions as snapshots, one
write path that loses nothing acknowledged. A real server over loopback, real clients."""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
import time

import pytest
from conftest import RawClient, message

from mailsink.events import (
    ConfigReloaded,
    FaultFired,
    LiveSession,
    MessagesDeleted,
    MessageStored,
    SessionEnded,
    SessionStarted,
)
from mailsink.sink import Sink
from mailsink.testing import RunningSink

BLOCK_RCPT = (
    '[[fault]]\nname = "no blocked"\nstage = "rcpt"\nreply = "550 5.7.1 Not you"\n'
    'match = { recipient = "blocked@x.test" }\n'
)


def _on_loop(running: RunningSink, function):
    async def call():
        return function()

    return running._call(call())


def test_a_subscriber_sees_stored_ended_fault_and_reload_in_the_order_they_happened(tmp_path):
    config = tmp_path / "mailsink.toml"
    config.write_text(BLOCK_RCPT)
    with RunningSink(tmp_path / "mail.db", config=config) as running:
        kinds = (MessageStored, SessionEnded, FaultFired, ConfigReloaded)
        with running.events(*kinds) as events:
            with smtplib.SMTP(running.host, running.port) as client:
                client.sendmail("a@x.test", ["ok@x.test"], message())
            with smtplib.SMTP(running.host, running.port) as client:
                client.ehlo("x")
                client.mail("a@x.test")
                assert client.rcpt("blocked@x.test")[0] == 550
            config.write_text(BLOCK_RCPT + "\n[smtp]\ntimeout = '5m'\n")
            seen = events.until(ConfigReloaded, timeout=10)
        stored, first_end, fired, second_end, reloaded = seen
        assert isinstance(stored, MessageStored) and not stored.rejected
        assert isinstance(first_end, SessionEnded)
        assert first_end.session.id == stored.session_id
        assert first_end.session.message_ids == (stored.message_id,)
        assert first_end.session.end_reason == "quit"
        assert isinstance(fired, FaultFired)
        assert (fired.rule, fired.stage, fired.action) == ("no blocked", "rcpt", "reply")
        assert isinstance(second_end, SessionEnded)
        assert second_end.session.id == fired.session_id != stored.session_id
        assert second_end.session.faults_fired == 1
        assert isinstance(reloaded, ConfigReloaded)
        assert reloaded.path == str(config)
        with running.reader() as reader:
            assert reader.get_message(stored.message_id) is not None


def test_live_sessions_are_snapshots_with_what_the_store_has_not_got_yet(tmp_path):
    with RunningSink(tmp_path / "mail.db") as running:
        with running.events(SessionStarted, SessionEnded) as events:
            client = RawClient(running.host, running.port)
            started = events.next()
            assert isinstance(started, SessionStarted) and started.session.live
            client.command("EHLO snapshot.test")
            client.command("MAIL FROM:<a@x.test>")
            (live,) = running.live_sessions()
            assert isinstance(live, LiveSession)
            assert live.id == started.session.id
            assert (live.helo, live.state, live.end_reason) == ("snapshot.test", "MAIL", None)
            assert live.last_reply is not None and live.last_reply.startswith("250")
            # Lines reach the store 0.2 s after a command; until then only the snapshot has
            # them, and together they are the whole transcript so far.
            texts = [text for _seq, _at, _direction, text in live.unwritten]
            assert "MAIL FROM:<a@x.test>" in texts
            lines = running._call(running.sink.transcript(live.id))
            assert [line[0] for line in lines] == list(range(1, live.transcript_lines + 1))
            with pytest.raises(AttributeError):
                live.state = "changed"  # frozen: a face cannot change what the server knows
            client.close()
            ended = events.until(SessionEnded)[-1]
            assert ended.session.end_reason == "client_closed" and not ended.session.live
        running._call(running.sink.flush())
        assert running.live_sessions() == []
        with running.reader() as reader:
            record = reader.get_session(live.id)
        assert record is not None and record.end_reason == "client_closed"
        assert record.helo == "snapshot.test"


def test_a_session_that_ended_is_listed_until_its_last_row_has_committed(tmp_path):
    """Between a session's end and the commit of its last row, `sessions()` has it from its
    snapshot; after the commit, from the store: never from neither."""
    with RunningSink(tmp_path / "mail.db") as running:
        sink = running.sink
        assert sink is not None
        missing = []

        async def watch(stop: asyncio.Event) -> None:
            with sink.subscribe(SessionEnded) as ended:
                while not stop.is_set():
                    try:
                        event = await asyncio.wait_for(ended.get(), 0.05)
                    except TimeoutError:
                        continue
                    listed = {session.id for session in await sink.sessions(limit=50)}
                    if event.session.id not in listed:
                        missing.append(event.session.id)

        stop = asyncio.Event()
        watching = asyncio.run_coroutine_threadsafe(watch(stop), running.loop)
        time.sleep(0.05)
        for _ in range(30):
            client = RawClient(running.host, running.port)
            client.command("QUIT")
            client.close()
        time.sleep(0.3)
        running.loop.call_soon_threadsafe(stop.set)
        watching.result(5)
        assert missing == []
        with running.reader() as reader:
            assert len(reader.list_sessions(limit=100)) == 30


def _send_all(host: str, port: int, count: int, acknowledged: list[int], errors: list) -> None:
    try:
        with smtplib.SMTP(host, port) as client:
            client.ehlo("sender.test")
            for index in range(count):
                client.mail("a@x.test")
                client.rcpt(f"r{index}@x.test")
                code, reply = client.data(message(subject=f"n{index}"))
                assert code == 250, reply
                found = re.search(rb"queued as (\d+)", reply)
                assert found, reply
                acknowledged.append(int(found.group(1)))
    except Exception as error:  # reported by the test, not lost in a thread
        errors.append(error)


def test_deleting_while_eight_clients_send_loses_no_acknowledged_message(tmp_path):
    with RunningSink(tmp_path / "mail.db") as running:
        sink = running.sink
        assert sink is not None
        acknowledged: list[int] = []
        errors: list = []
        senders = [
            threading.Thread(
                target=_send_all, args=(running.host, running.port, 40, acknowledged, errors)
            )
            for _ in range(8)
        ]
        for sender in senders:
            sender.start()
        deleted: set[int] = set()
        with running.events(MessagesDeleted) as events:
            while any(sender.is_alive() for sender in senders):
                with running.reader() as reader:
                    listed = reader.message_ids()
                chosen = listed[::3][:20]
                if chosen:
                    gone = running._call(sink.delete_messages(chosen))
                    assert 0 <= gone <= len(chosen)
                    deleted.update(chosen)
                    assert events.next().message_ids == tuple(chosen)
                time.sleep(0.01)
        for sender in senders:
            sender.join()
        assert errors == []
        assert len(acknowledged) == 320 == len(set(acknowledged))
        assert deleted, "the deletions never overlapped the sending"
        with running.reader() as reader:
            kept = set(reader.message_ids())
            assert kept == set(acknowledged) - deleted
            assert reader.count_messages() == len(kept)
            assert [record.id for record in reader.list_messages(limit=400)] == sorted(
                kept, reverse=True
            )
            raw_ids = {row[0] for row in reader.conn.execute("SELECT id FROM message_raw")}
        assert raw_ids == kept
        # The search index, filled when the writer is idle, has every kept message and no other.
        fields = "SELECT rowid FROM message_fields"
        indexed = running.wait_for(lambda r: {row[0] for row in r.conn.execute(fields)} == kept)
        assert indexed


def test_an_attached_sink_reads_and_deletes_through_the_same_operations(tmp_path):
    with RunningSink(tmp_path / "mail.db") as running:
        with smtplib.SMTP(running.host, running.port) as client:
            for index in range(3):
                client.sendmail("a@x.test", [f"r{index}@x.test"], message())

        async def attached() -> tuple[int, bool, int, int, list]:
            async with Sink.attached(running.settings) as view:
                assert view.is_attached and view.faults is None and view.live_sessions() == []
                ids = [record.id for record in await view.messages()]
                first = await view.delete_messages(ids[:1])
                again = await view.delete_message(ids[0])
                left = await view.count_messages()
                cleared = await view.clear()
                return first, again, left, cleared, await view.messages()

        first, again, left, cleared, after = asyncio.run(attached())
        assert (first, again, left, cleared, after) == (1, False, 2, 2, [])


def test_a_served_deletion_is_one_commit_of_the_writer(tmp_path):
    """The serving sink's deletions are writer operations (the commit count is the writer's),
    not a transaction of the reader's beside it."""
    with RunningSink(tmp_path / "mail.db") as running:
        sink = running.sink
        assert sink is not None and sink.store is not None
        with smtplib.SMTP(running.host, running.port) as client:
            for index in range(3):
                client.sendmail("a@x.test", [f"r{index}@x.test"], message())
        running._call(sink.flush())  # the sessions' last rows too
        before = sink.store.commits
        assert running._call(sink.delete_messages([1, 2])) == 2
        assert sink.store.commits == before + 1
        assert running._call(sink.clear()) == 1
        assert sink.store.commits == before + 2


def test_deletions_go_on_while_the_writer_is_killed_again_and_again(tmp_path):
    """A deletion the writer died on (before or after its COMMIT) is run again by the next
    writer: deleting is idempotent, so the caller never sees WriterLost for a deletion that
    may have happened."""
    import os
    import signal

    with RunningSink(tmp_path / "mail.db") as running:
        sink = running.sink
        assert sink is not None and sink.store is not None
        with smtplib.SMTP(running.host, running.port) as client:
            for index in range(120):
                client.sendmail("a@x.test", [f"r{index}@x.test"], message())
        failures: list[BaseException] = []

        async def delete_all() -> None:
            for message_id in range(1, 121):
                try:
                    await sink.delete_message(message_id)
                except Exception as error:
                    failures.append(error)

        deleting = asyncio.run_coroutine_threadsafe(delete_all(), running.loop)
        kills = 0
        while not deleting.done() and kills < 12:
            writer = sink.store.writer_pid
            os.kill(writer, signal.SIGKILL)
            kills += 1
            deadline = time.monotonic() + 10
            while sink.store.writer_pid == writer and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(0.02)
        deleting.result(60)
        assert kills >= 3, "the deletions ended before the writer was killed a few times"
        assert failures == []
        with running.reader() as reader:
            assert reader.message_ids() == []


def test_an_attached_flush_waits_for_the_deletion_in_flight(tmp_path):
    """What `D` cut short by a quit counts: a read after flush() sees the change that was
    running when the caller stopped waiting for it."""
    from test_tui_safety import _fill

    from mailsink.config import Settings, StorageSettings

    db = tmp_path / "mail.db"
    _fill(db, 3000)
    settings = Settings(storage=StorageSettings(str(db)))

    async def scenario() -> tuple[int, int]:
        async with Sink.attached(settings) as view:
            ids = await view.read(lambda reader: reader.message_ids())
            # Under way, and the caller no longer waits for it (the app is quitting).
            deleting = asyncio.ensure_future(view.delete_messages(ids))
            await asyncio.sleep(0)
            await view.flush()
            left = len(await view.read(lambda reader: reader.message_ids()))
            await deleting
            return len(ids), left

    assert asyncio.run(scenario()) == (3000, 0)


def test_a_symlinked_store_is_watched_where_sqlite_writes(tmp_path):
    """Another program's change to a store served through a symlink (`--db link`) reaches the
    sink's subscribers: the files watched are the target's."""
    from mailsink.events import StoreChanged
    from mailsink.store import operations, run_here

    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "real" / "real.db"
    link = tmp_path / "links" / "mail.db"
    link.symlink_to(target)
    with RunningSink(link) as running:
        with smtplib.SMTP(running.host, running.port) as client:
            client.sendmail("a@x.test", ["b@x.test"], message())
        running._call(running.sink.flush())
        with running.events(StoreChanged) as events:
            time.sleep(0.3)  # the watch starts and the server's own commits settle
            while True:  # what the server wrote before the subscription may still be told
                try:
                    events.next(timeout=0.3)
                except TimeoutError:
                    break
            assert run_here(str(target), operations.clear) == 1  # as `mailsink clear` does
            assert isinstance(events.next(timeout=3), StoreChanged)


def test_a_running_sink_that_cannot_listen_leaves_nothing_running(tmp_path):
    from mailsink.errors import ListenError

    running = RunningSink(tmp_path / "mail.db", host="203.0.113.5")  # not this machine's
    with pytest.raises(ListenError, match=r"cannot listen on 203\.0\.113\.5"):
        running.start()
    assert not running._thread.is_alive()
    running.stop()  # and stopping it then, or twice, is no error
    running.stop()


def test_watching_the_store_logs_no_line_per_change(tmp_path, caplog):
    """A served store watched for other programs' changes (an HTTP wait, an event stream, a
    test's wait_for) says nothing per commit: watchfiles' own "1 change detected" lines would
    fill `mailsink serve`'s log."""
    import logging

    from mailsink.events import StoreChanged

    caplog.set_level(logging.INFO)
    with RunningSink(tmp_path / "mail.db") as running, running.events(StoreChanged) as events:
        for _ in range(3):
            with smtplib.SMTP(running.host, running.port) as client:
                client.sendmail("a@x.test", ["b@x.test"], message())
            assert isinstance(events.next(timeout=3), StoreChanged)
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("watchfiles")]
    assert noise == []
