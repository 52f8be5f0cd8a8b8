"""Read state and tags: writer operations through a real served sink (and an attached one),
kept across restarts, told as MessagesChanged; tags from X-Tags and plus-addresses at ingest."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import sqlite3
from collections.abc import Iterator

import pytest
from conftest import message

from mailsink.config import Settings, TagSettings
from mailsink.events import MessagesChanged
from mailsink.sink import Sink
from mailsink.testing import RunningSink


def _tags(running: RunningSink, message_id: int) -> list[str]:
    with running.reader() as reader:
        record = reader.get_message(message_id)
    assert record is not None
    return record.tags


def _seen(running: RunningSink) -> dict[int, bool]:
    with running.reader() as reader:
        return {r.id: r.seen for r in reader.messages_by_id(reader.message_ids()).values()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    """Default settings (plus-addressing off); messages 1-4, message 2 with X-Tags."""
    with RunningSink(tmp_path_factory.mktemp("tags") / "mail.db") as running:
        with smtplib.SMTP(running.host, running.port) as client:
            client.sendmail("a@x.test", ["a@x.test"], message(subject="one"))
            tagged = message(to="user+signup@x.test", extra="X-Tags: a, b,  a, Signup\r\n")
            client.sendmail("a@x.test", ["user+signup@x.test"], tagged)
            for subject in ("three", "four"):
                client.sendmail("a@x.test", ["a@x.test"], message(subject=subject))
        running._call(running.sink.flush())  # the sessions' rows too: commits counted below
        yield running


def test_x_tags_are_tags_and_plus_addresses_are_not_unless_asked(served):
    assert _tags(served, 2) == ["a", "b", "Signup"]  # from X-Tags, each once, as first spelt
    assert _tags(served, 1) == []


def test_read_state_is_a_writer_operation_told_to_subscribers(served):
    sink = served.sink
    assert sink is not None and sink.store is not None
    assert _seen(served) == {1: False, 2: False, 3: False, 4: False}  # new mail is unread
    with served.events(MessagesChanged) as events:
        commits = sink.store.commits
        assert served._call(sink.mark_read([1, 2, 999])) == 2  # 999: no such message
        assert sink.store.commits == commits + 1
        assert events.next() == MessagesChanged((1, 2, 999))
        assert served._call(sink.mark_read([1])) == 0  # already read: nothing told
        assert served._call(sink.mark_read([2], read=False)) == 1
        assert events.next() == MessagesChanged((2,))
        assert _seen(served) == {1: True, 2: False, 3: False, 4: False}
        assert served._call(sink.unread_count()) == 3
        assert served._call(sink.mark_all_read()) == 3
        assert events.next() == MessagesChanged(())  # () = any message
        assert served._call(sink.unread_count()) == 0
        assert served._call(sink.mark_read([3], read=False)) == 1
        assert events.next() == MessagesChanged((3,))


def test_tags_are_compared_without_regard_to_case_and_never_rewritten(served):
    sink = served.sink
    assert sink is not None
    with served.events(MessagesChanged) as events:
        assert served._call(sink.change_tags([4], add=["Invoice", " q4  2026", "Invoice"])) == 1
        assert events.next() == MessagesChanged((4,))
        assert _tags(served, 4) == ["Invoice", "q4 2026"]
        assert served._call(sink.change_tags([4, 1], add=["INVOICE"])) == 1  # only 1 changed
        assert _tags(served, 4) == ["Invoice", "q4 2026"]  # the first spelling stays
        assert served._call(sink.change_tags([1, 4], remove=["invoice"])) == 2
        assert _tags(served, 4) == ["q4 2026"] and _tags(served, 1) == []
        assert events.next() == MessagesChanged((4, 1))
        assert events.next() == MessagesChanged((1, 4))
        assert served._call(sink.change_tags([4], remove=["nope"])) == 0
        with pytest.raises(ValueError, match="'!!!' is not a tag"):
            served._call(sink.change_tags([4], add=["ok", "!!!"]))
        with pytest.raises(ValueError, match="'ok' is both added and removed"):
            served._call(sink.change_tags([4], add=["ok"], remove=["OK"]))
        assert served._call(sink.change_tags([999], add=["ghost"])) == 0
        with pytest.raises(ValueError, match="'Straße' is not a tag: tags hold ASCII letters"):
            served._call(sink.change_tags([4], add=["Straße"]))  # not silently "Stra e"
        many = [f"t{number}" for number in range(50)]
        # In the writer process: a message that would hold 51 tags takes none of them.
        with pytest.raises(ValueError, match=r"message 4 would have 51 tags: .* at most 50"):
            served._call(sink.change_tags([1, 4], add=many))
        assert _tags(served, 1) == []
        with pytest.raises(TimeoutError):
            events.next(timeout=0.05)  # nothing changed since: nothing told
    assert _tags(served, 4) == ["q4 2026"]  # a refused change wrote nothing
    with sqlite3.connect(served.db) as conn:  # no tag for a message that is not there
        ghosts = conn.execute("SELECT count(*) FROM message_tags WHERE message_id = 999")
        assert ghosts.fetchone() == (0,)


def test_an_attached_sink_changes_read_state_and_tags_with_the_same_operations(served):
    async def attached() -> tuple[int, int, int]:
        async with Sink.attached(served.settings) as view:
            assert view.is_attached
            await view.mark_read([3], read=False)
            with view.subscribe(MessagesChanged) as events:
                read = await view.mark_read([3])
                tagged = await view.change_tags([3], add=["seen elsewhere"])
                assert [await events.get(), await events.get()] == [MessagesChanged((3,))] * 2
                return read, tagged, await view.unread_count()

    read, tagged, unread = asyncio.run(attached())
    assert (read, tagged) == (1, 1)
    assert _tags(served, 3) == ["seen elsewhere"]
    seen = _seen(served)
    assert seen[3] is True and unread == list(seen.values()).count(False)


def test_read_state_and_tags_survive_a_restart_and_plus_addresses_tag_when_asked(tmp_path):
    db = tmp_path / "mail.db"
    with RunningSink(db) as first:
        with smtplib.SMTP(first.host, first.port) as client:
            for subject in ("one", "two", "three"):
                client.sendmail("a@x.test", ["a@x.test"], message(subject=subject))
        assert first._call(first.sink.mark_read([1])) == 1
        assert first._call(first.sink.change_tags([2], add=["keep"])) == 1
    plus = dataclasses.replace(Settings(), tags=TagSettings(plus_addresses=True))
    with RunningSink(db, plus) as again:
        assert _seen(again) == {1: True, 2: False, 3: False}
        assert _tags(again, 2) == ["keep"]
        with smtplib.SMTP(again.host, again.port) as client:
            # To: in the header; hidden+secret only in the envelope (a Bcc recipient).
            recipients = ["user+signup@x.test", "hidden+secret@y.test"]
            client.sendmail("a@x.test", recipients, message(to="user+signup@x.test"))
        assert _tags(again, 4) == ["secret", "signup"]
        assert again._call(again.sink.mark_all_read()) == 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE seen = 0").fetchone() == (0,)


def test_the_kept_counts_follow_every_change(tmp_path):
    """The store's triggers keep (accepted, unread) whatever writes: new mail, a rejection,
    marks, a deletion, retention and clear; always what counting the rows says."""
    from conftest import REFUSAL_RULES

    from mailsink.store import run_here
    from mailsink.store.operations import clear, mark_read

    config = tmp_path / "mailsink.toml"
    config.write_text("[storage]\nmax_messages = 6\n" + REFUSAL_RULES)

    def agree(running: RunningSink) -> tuple[int, int]:
        with running.reader() as reader:
            kept = reader.message_counts()
            counted = reader.conn.execute(
                "SELECT count(*), coalesce(sum(seen = 0), 0) FROM messages"
                " WHERE status = 'accepted'"
            ).fetchone()
        assert kept == tuple(counted)
        return kept

    with RunningSink(tmp_path / "mail.db", config=config) as running:
        with smtplib.SMTP(running.host, running.port) as client:
            for n in range(4):
                client.sendmail("a@x.test", ["b@x.test"], message(subject=f"m{n}"))
            with pytest.raises(smtplib.SMTPDataError):  # kept, as rejected: not counted
                client.sendmail("a@x.test", ["b@x.test"], message(subject="reject me"))
        assert agree(running) == (4, 4)
        sink = running.sink
        assert sink is not None
        running._call(sink.mark_read([1, 2]))
        assert agree(running) == (4, 2)
        running._call(sink.mark_read([2], read=False))
        running._call(sink.delete_messages([1]))
        assert agree(running) == (3, 3)
        with smtplib.SMTP(running.host, running.port) as client:  # retention takes the oldest
            for n in range(4, 9):
                client.sendmail("a@x.test", ["b@x.test"], message(subject=f"m{n}"))
        running._call(sink.flush())
        assert agree(running)[0] <= 6
        running._call(sink.mark_all_read())
        assert agree(running)[1] == 0
        # Another program's transaction (`mailsink mark`, `clear`): the same triggers.
        assert run_here(running.db, mark_read, ids=[9], read=False) == 1
        assert agree(running)[1] == 1
        run_here(running.db, clear)
        assert agree(running) == (0, 0)
