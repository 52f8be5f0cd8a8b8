"""An attached sink linked to the store's server (mailsink.server_link.ServerLink): a real
`mailsink serve` in a subprocess, found through its `.server` file or the environment, its
fault rules switched over HTTP (and seen refusing over real SMTP), its live sessions and
transcript lines followed through its event stream, a bad token, a restart."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import smtplib
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RawClient, free_port, mailsink_process, message, wait_for_port
from tui_support import settings_for

from mailsink import events as ev
from mailsink import server_link
from mailsink.errors import MailsinkError
from mailsink.server_link import (
    LINES_KEPT,
    MAX_EVENT,
    MAX_LINE,
    TOKEN_ENV,
    URL_ENV,
    ServerAddress,
    ServerLink,
    SseParser,
    find_server,
    server_file,
)
from mailsink.sink import Sink
from mailsink.store import Reader
from mailsink.testing import RunningSink

CONFIG = """
[http]
users = { tester = "s3cret" }

[[fault]]
name = "no marketing"
stage = "mail"
reply = "550 5.7.1 Sender not permitted"
match = { sender = "*@marketing.test" }
"""
PRESET_2 = "preset: 550 5.7.1 not permitted"
MANY_RULES = 400  # their list is over 200 KB: it comes over loopback in pieces


def many_rules_config(user: str) -> str:
    rules = "".join(
        f"""
[[fault]]
name = "rule {i} with a name long enough to make the list of rules large"
stage = "rcpt"
reply = "550 5.7.1 recipient {i} refused by a rule whose reply is long on purpose"
match = {{ recipient = "*@r{i}.test" }}
"""
        for i in range(MANY_RULES)
    )
    return f'[http]\nusers = {{ {user} = "s3cret" }}\n{rules}'


class Server:
    """A `mailsink serve` on a store of its own; `start()` again after `stop()` (a restart)."""

    def __init__(self, directory: Path, config: str | None = None) -> None:
        self.db = directory / "served.db"
        self.config = directory / "mailsink.toml"
        self.args: list[str] = []
        if config is not None:
            self.config.write_text(config)
            self.args = ["--config", str(self.config)]
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.stderr = b""
        self.tokens: list[str] = []  # each start's, as its .server file has it

    def start(self) -> None:
        self.port = free_port()
        self.process = mailsink_process(
            "serve", "--port", str(self.port), "--db", str(self.db), *self.args
        )
        wait_for_port(self.port)
        deadline = time.monotonic() + 10
        while find_server(str(self.db)) is None:  # written once HTTP listens
            assert time.monotonic() < deadline, "no .server file"
            time.sleep(0.02)
        self.tokens.append(json.loads(server_file(str(self.db)).read_text())["token"])

    def assert_no_token_logged(self) -> None:
        assert self.tokens and self.stderr
        assert not [token for token in self.tokens if token.encode() in self.stderr]

    def port_text(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            _, err = self.process.communicate(timeout=15)
            self.stderr += err
            self.process = None


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with many rules, whose config file the tests rewrite (a reload of [http] users
    ends its event streams)."""
    server = Server(tmp_path_factory.mktemp("crowded"), many_rules_config("tester"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.assert_no_token_logged()


_users = itertools.count(1)


def reload_users(server: Server) -> None:
    """Another [http] users (the rules stay): the server ends its open event streams."""
    server.config.write_text(many_rules_config(f"user{next(_users)}"))


def server_rules(found: ServerAddress) -> tuple[int, dict[str, bool]]:
    """The size of GET /api/mailsink/faults's answer, and each rule's state, as the server says."""
    request = urllib.request.Request(
        found.url + "/api/mailsink/faults", headers={"Authorization": f"Bearer {found.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return len(body), {rule["name"]: rule["enabled"] for rule in json.loads(body)["rules"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("link"), CONFIG)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # The token is in the file only: the server logged none of it.
        server.assert_no_token_logged()


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[Logged]:
    handler = Logged()
    logger = logging.getLogger("mailsink")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(scenario())


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout}s: {condition}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def sendmail(port: int, sender: str, recipient: str = "b@x.test") -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, [recipient], message())


def test_the_server_is_found_from_its_file_and_from_the_environment(served, monkeypatch):
    found = find_server(str(served.db))
    assert found is not None and found.url.startswith("http://127.0.0.1:")
    path = server_file(str(served.db))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == found.token
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    from_env = find_server(str(served.db))
    assert from_env is not None
    assert (from_env.url, from_env.token) == ("http://127.0.0.1:9", "from-the-environment")


def test_the_server_file_is_never_written_or_read_through_a_planted_name(
    served, tmp_path, monkeypatch
):
    """The store's directory may be shared (/tmp): names another user planted there beside
    the store (symlinks to a file they can read, at the temporary file's name or the server
    file's own) leak no token, clobber nothing and name no server."""
    import os

    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    store = tmp_path / "mail.db"
    target = server_file(str(store))
    victim = tmp_path / "theirs.txt"
    victim.write_text("")
    # Every name a pid-based temporary file could have had.
    for pid in (os.getpid(), *range(os.getpid() + 1, os.getpid() + 50)):
        (tmp_path / f"{target.name}.{pid}.tmp").symlink_to(victim)
    address = ServerAddress("http://127.0.0.1:9", "the-token")
    server_link.write_server_file(str(store), address)
    assert victim.read_text() == ""
    assert not target.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["token"] == "the-token"
    assert not list(tmp_path.glob(f".{target.name}.*"))  # no temporary file left
    # A symlink in the server file's place: not removed (nor its target) by the stop...
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"pid": os.getpid(), "url": address.url, "token": "x"}))
    target.unlink()
    target.symlink_to(elsewhere)
    server_link.remove_server_file(str(store))
    assert target.is_symlink() and elsewhere.exists()
    # ... and not followed to a server: here, one that runs and holds its store's lock.
    served_file = server_file(str(served.db))
    kept = served_file.read_bytes()
    copy = tmp_path / "copy.json"
    copy.write_bytes(kept)
    try:
        served_file.unlink()
        served_file.symlink_to(copy)
        assert find_server(str(served.db)) is None
        served_file.unlink()
        served_file.write_bytes(kept)
        served_file.chmod(0o600)
        assert find_server(str(served.db)) is not None
        if os.getuid() == 0:  # a regular file, but another user's: not this user's server
            os.chown(served_file, 65534, 65534)
            assert find_server(str(served.db)) is None
            os.chown(served_file, 0, 0)
    finally:
        if served_file.is_symlink() or not served_file.exists():
            served_file.unlink(missing_ok=True)
            served_file.write_bytes(kept)
        os.chown(served_file, os.getuid(), os.getgid())
        served_file.chmod(0o600)


def test_a_fault_switched_over_http_refuses_over_smtp(served, logged):
    async def scenario() -> None:
        async with Sink.attached(settings_for(served.db), link=True) as sink:
            assert sink.link is not None
            await until(lambda: sink.link.live)
            assert sink.can_switch_faults
            names = [rule.name for rule in sink.fault_rules()]
            assert PRESET_2 in names and "no marketing" in names
            with sink.subscribe(ev.RulesChanged) as changes:
                assert await sink.toggle_preset("2") is True
                assert next(r for r in sink.fault_rules() if r.name == PRESET_2).enabled
                try:
                    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                        await asyncio.to_thread(sendmail, served.port, "a@x.test")
                    (code, _), *_ = refused.value.recipients.values()
                    assert code == 550
                    # Told at once, then again as the server's own change comes back on its
                    # event stream (with the rules fetched afresh).
                    told = [await asyncio.wait_for(changes.get(), 5) for _ in range(2)]
                    assert {(c.why, c.rule) for c in told} == {("enabled", PRESET_2)}
                    # Its hit, counted from the stream's FaultFired.
                    await until(
                        lambda: next(r for r in sink.fault_rules() if r.name == PRESET_2).hits == 1
                    )
                finally:
                    assert await sink.toggle_preset("2") is False
            # A config file's rule, switched off and on again by name.
            with pytest.raises(smtplib.SMTPSenderRefused):
                await asyncio.to_thread(sendmail, served.port, "x@marketing.test")
            await sink.switch_fault("no marketing", False)
            try:
                assert await asyncio.to_thread(sendmail, served.port, "x@marketing.test") == {}
            finally:
                await sink.switch_fault("no marketing", True)
            with pytest.raises(MailsinkError, match="HTTP 404"):
                await sink.switch_fault("no such rule", True)
            link = sink.link
        # Closing the sink closed the link: no task, no connection.
        assert link._task is None and link._client is None
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mailsink-")]

    run(scenario)
    token = find_server(str(served.db)).token  # type: ignore[union-attr]
    assert logged.lines and not any(token in line for line in logged.lines)


def test_a_live_sessions_helo_and_lines_arrive_before_anything_commits(served):
    async def scenario() -> None:
        async with Sink.attached(settings_for(served.db), link=True) as sink:
            await until(lambda: sink.link is not None and sink.link.live)
            with sink.subscribe(ev.SessionStarted, ev.SessionChanged, ev.TranscriptLine) as seen:
                raw = await asyncio.to_thread(RawClient, "127.0.0.1", served.port)
                try:
                    await asyncio.to_thread(raw.command, "EHLO live-probe.test")
                    lines: list[ev.TranscriptLine] = []
                    session_id = None
                    deadline = time.monotonic() + 5
                    while not any(line.line[3] == "EHLO live-probe.test" for line in lines):
                        assert time.monotonic() < deadline
                        event = await asyncio.wait_for(seen.get(), 5)
                        if isinstance(event, ev.SessionStarted):
                            session_id = event.session.id
                        elif isinstance(event, ev.TranscriptLine):
                            lines.append(event)
                    assert session_id is not None
                    await until(lambda: (sink.live_session(session_id) or _none).helo)
                    live = sink.live_session(session_id)
                    assert live is not None and live.live
                    assert live.helo == "live-probe.test" and live.message_ids == ()
                    # Sink.sessions gives the live one, whatever the store has yet.
                    listed = await sink.sessions(limit=5)
                    assert any(s is live for s in listed)
                    transcript = await sink.transcript(session_id)
                    assert ("C", "EHLO live-probe.test") in [(d, t) for _, _, d, t in transcript]
                    await asyncio.to_thread(raw.command, "QUIT")
                finally:
                    raw.close()
                await until(lambda: not (sink.live_session(session_id) or _none).live)

    run(scenario)


class _NoSession:
    helo = None
    live = True


_none = _NoSession()


def test_a_refused_token_is_unreachable_with_the_reason(served, monkeypatch, logged):
    found = find_server(str(served.db))
    assert found is not None
    monkeypatch.setenv(URL_ENV, found.url)
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")

    async def scenario() -> None:
        async with Sink.attached(settings_for(served.db), link=True) as sink:
            with sink.subscribe(ev.ServerLinkChanged) as changes:
                assert sink.link is not None
                await until(lambda: sink.link.state == "unreachable")
                assert sink.link.reason == f"HTTP 401 from {found.url}: authentication required"
                assert not sink.can_switch_faults and sink.fault_rules() == []
                with pytest.raises(MailsinkError, match="no link to the store's server: HTTP 401"):
                    await sink.toggle_preset("1")
                told = [e for e in changes.pending() if e.state == "unreachable"]
                assert told and told[0].reason == sink.link.reason

    run(scenario)
    assert not any("not-the-token" in line or found.token in line for line in logged.lines)


def test_a_stopped_server_is_unreachable_and_a_restarted_one_is_found(tmp_path):
    server = Server(tmp_path)
    server.start()
    try:

        async def scenario() -> None:
            async with Sink.attached(settings_for(server.db), link=True) as sink:
                link = sink.link
                assert link is not None
                await until(lambda: link.live)
                first = link.address
                raw = await asyncio.to_thread(RawClient, "127.0.0.1", server.port)
                try:
                    await asyncio.to_thread(raw.command, "EHLO going.test")
                    await until(lambda: [s.helo for s in sink.live_sessions()] == ["going.test"])
                    assert sink.fault_rules() != []
                    await asyncio.to_thread(server.stop)
                finally:
                    raw.close()
                await until(lambda: link.state == "unreachable")
                assert "no mailsink server" in (link.reason or "")
                # What the server said is not known to be true any more: the store stands alone.
                assert sink.live_sessions() == [] and sink.fault_rules() == []
                with sink.subscribe(ev.EventsLost, ev.RulesChanged) as seen:
                    await asyncio.to_thread(server.start)
                    waited = await until(lambda: link.live)
                    assert waited < 5
                    assert link.address is not None and link.address != first  # new port, token
                    assert await sink.toggle_preset("4") is True
                    # The server's own change, back on its stream: what came before it on the
                    # stream has been read. The new server's stream is followed from its start,
                    # not from the old one's last event id (which it would say is lost).
                    told = [await asyncio.wait_for(seen.get(), 5) for _ in range(2)]
                    assert [type(e) for e in told] == [ev.RulesChanged] * 2
                    assert not [e for e in seen.pending() if isinstance(e, ev.EventsLost)]
                assert await sink.toggle_preset("4") is False

        run(scenario)
    finally:
        server.stop()


def test_a_store_nobody_serves_is_read_only(tmp_path):
    server = Server(tmp_path)
    server.start()
    server.stop()

    async def scenario() -> None:
        async with Sink.attached(settings_for(server.db), link=True) as sink:
            await until(lambda: sink.link is not None and sink.link.state == "unreachable")
            assert not sink.can_switch_faults
            assert await sink.sessions() != [] and sink.live_sessions() == []

    run(scenario)


# ---- the event-stream parser: what the server sends, and what it must never make us hold


def test_sse_events_ids_comments_and_crlf():
    parser = SseParser()
    assert parser.feed(b"retry: 2000\n\n: keep-alive\n\nid: 7\nda") == []
    assert parser.feed(b'ta: {"a":1}\r\ndata: x\n\n') == [("7", '{"a":1}\nx')]
    assert parser.feed(b"data: y\n\n") == [("7", "y")]  # the last id stands


def test_sse_an_oversized_line_or_event_is_skipped_and_counted():
    parser = SseParser()
    assert parser.feed(b"data: " + b"x" * (MAX_LINE + 10)) == []
    assert len(parser._buffer) == 0  # not held
    assert parser.feed(b"x" * 1000 + b"\n\nid: 2\ndata: next\n\n") == [("2", "next")]
    assert parser.skipped == 1
    line = b"data: " + b"y" * (MAX_EVENT // 4) + b"\n"
    assert parser.feed(line * 5 + b"\ndata: after\n\n") == [("2", "after")]
    assert parser.skipped == 2


# ---- what the reviewers found


def test_a_rules_list_of_hundreds_of_kilobytes_is_read_whole(crowded):
    found = find_server(str(crowded.db))
    assert found is not None
    size, states = server_rules(found)
    assert size > 200_000 and len(states) == MANY_RULES + 5  # and the 5 presets

    async def scenario() -> None:
        async with Sink.attached(settings_for(crowded.db), link=True) as sink:
            await until(lambda: sink.link is not None and sink.link.live)
            assert {rule.name: rule.enabled for rule in sink.fault_rules()} == states

    run(scenario)


async def _collect(subscription: Any, into: list[Any]) -> None:
    async for event in subscription:
        into.append(event)


def test_streams_ended_by_a_reload_resume_with_nothing_lost_or_twice(crowded):
    async def scenario() -> None:
        async with Sink.attached(settings_for(crowded.db), link=True) as sink:
            link = sink.link
            assert link is not None
            await until(lambda: link.live)
            seen: list[Any] = []
            kinds = (ev.SessionStarted, ev.TranscriptLine, ev.EventsLost, ev.ServerLinkChanged)
            with sink.subscribe(*kinds) as subscription:
                collector = asyncio.create_task(_collect(subscription, seen))
                raw = await asyncio.to_thread(RawClient, "127.0.0.1", crowded.port)
                talking = threading.Event()
                talking.set()

                def chatter() -> None:  # lines all along, also while the link reconnects
                    while talking.is_set():
                        raw.command("NOOP")
                        time.sleep(0.005)

                thread = threading.Thread(target=chatter)
                thread.start()
                try:
                    await asyncio.sleep(0.1)
                    reload_users(crowded)

                    def ended() -> bool:
                        return any(
                            isinstance(e, ev.ServerLinkChanged)
                            and e.reason == "the server ended its event stream"
                            for e in seen
                        )

                    await until(ended)
                    await until(lambda: link.live)
                    await asyncio.sleep(0.1)
                finally:
                    talking.clear()
                    await asyncio.to_thread(thread.join)
                await asyncio.to_thread(raw.command, "QUIT")
                raw.close()
                session_id = next(e.session.id for e in seen if isinstance(e, ev.SessionStarted))

                async def stored_ended() -> bool:
                    record = await sink.session(session_id, with_transcript=False)
                    return record is not None and record.end_reason is not None

                deadline = time.monotonic() + 5
                while not await stored_ended():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                stored = await sink.read(Reader.session_events, session_id, 0)
                await until(lambda: len(seen) and _seqs(seen, session_id)[-1:] == [len(stored)])
                collector.cancel()
            assert not [e for e in seen if isinstance(e, ev.EventsLost)]
            # Every line once, in order, as the store has them: those spoken while the stream
            # was down came when it resumed.
            assert _seqs(seen, session_id) == [seq for seq, *_ in stored]
            assert len(stored) > 20

    run(scenario)


def _seqs(seen: list[Any], session_id: int) -> list[int]:
    return [
        e.line[0] for e in seen if isinstance(e, ev.TranscriptLine) and e.session_id == session_id
    ]


def test_a_session_that_ended_unseen_is_not_live_for_ever(crowded, monkeypatch):
    # The link waits a second before it reconnects: the session ends meanwhile.
    monkeypatch.setattr(server_link, "RETRY_FIRST_SECONDS", 1.0)

    async def scenario() -> None:
        async with Sink.attached(settings_for(crowded.db), link=True) as sink:
            link = sink.link
            assert link is not None
            await until(lambda: link.live)
            with sink.subscribe(ev.ServerLinkChanged, ev.EventsLost) as changes:
                raw = await asyncio.to_thread(RawClient, "127.0.0.1", crowded.port)
                await asyncio.to_thread(raw.command, "EHLO unseen-end.test")
                await until(lambda: [s.helo for s in sink.live_sessions()] == ["unseen-end.test"])
                (session_id,) = [s.id for s in sink.live_sessions()]
                reload_users(crowded)
                await until(lambda: link.state == "connecting")
                # As if the server's log had been replaced while the stream was down (it is,
                # after a minute without clients): it cannot resume, and says events are lost.
                link._last_id = "1"
                await asyncio.to_thread(raw.command, "QUIT")
                raw.close()
                deadline = time.monotonic() + 5
                while (await sink.session(session_id, with_transcript=False)).end_reason is None:  # type: ignore[union-attr]
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                # Linked again, and told that events were lost (the server's count is null).
                while not isinstance(await asyncio.wait_for(changes.get(), 5), ev.EventsLost):
                    pass
                assert link.live
            snapshot = sink.live_session(session_id)
            assert snapshot is not None and snapshot.live  # its end was never told
            # A newer session, so that the stale one is not among those listed.
            newer = await asyncio.to_thread(RawClient, "127.0.0.1", crowded.port)
            await asyncio.to_thread(newer.command, "QUIT")
            newer.close()
            deadline = time.monotonic() + 5
            while (await sink.stored_sessions(limit=1))[0].id == session_id:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            listed = await sink.sessions(limit=1)
            assert session_id not in [s.id for s in listed]
            assert sink.live_session(session_id) is None
            assert session_id not in [s.id for s in sink.live_sessions()]

    run(scenario)


def test_a_live_session_keeps_a_short_tail_of_lines_and_drops_what_the_store_has(served):
    noops = 300

    async def scenario() -> None:
        async with Sink.attached(settings_for(served.db), link=True) as sink:
            await until(lambda: sink.link is not None and sink.link.live)
            with sink.subscribe(ev.SessionStarted, ev.TranscriptLine) as seen:
                raw = await asyncio.to_thread(RawClient, "127.0.0.1", served.port)
                try:

                    def talk() -> None:
                        raw.send(b"NOOP\r\n" * noops)
                        for _ in range(noops):
                            raw.reply()

                    await asyncio.to_thread(talk)
                    session_id = None
                    last = 0
                    while last < 1 + 2 * noops:  # the greeting, then each NOOP and its reply
                        event = await asyncio.wait_for(seen.get(), 5)
                        if isinstance(event, ev.SessionStarted):
                            session_id = event.session.id
                        elif event.session_id == session_id:
                            last = event.line[0]
                    assert session_id is not None
                    live = sink.live_session(session_id)
                    assert live is not None and live.live
                    assert 0 < len(live.unwritten) <= LINES_KEPT
                    assert live.unwritten[-1][0] == last
                    # Once the store has them all, the link keeps none of them.
                    deadline = time.monotonic() + 5
                    while len(lines := await sink.transcript(session_id)) < last:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.02)
                    assert [line[0] for line in lines] == list(range(1, last + 1))
                    await sink.transcript(session_id)
                    live = sink.live_session(session_id)
                    assert live is not None and live.live and live.unwritten == ()
                    await asyncio.to_thread(raw.command, "QUIT")
                finally:
                    raw.close()

    run(scenario)


def test_two_quick_toggles_are_a_toggle_and_back(served):
    found = find_server(str(served.db))
    assert found is not None

    async def scenario() -> None:
        async with Sink.attached(settings_for(served.db), link=True) as sink:
            await until(lambda: sink.link is not None and sink.link.live)
            _, before = await asyncio.to_thread(server_rules, found)
            # Both asked for before either is answered: the second sees the first's result.
            results = await asyncio.gather(
                sink.toggle_fault("no marketing"), sink.toggle_fault("no marketing")
            )
            assert results == [not before["no marketing"], before["no marketing"]]
            # A preset, by its key, likewise.
            presets = await asyncio.gather(sink.toggle_preset("2"), sink.toggle_preset("2"))
            assert presets == [not before[PRESET_2], before[PRESET_2]]
            _, after = await asyncio.to_thread(server_rules, found)
            assert after == before
            with pytest.raises(KeyError):
                await sink.toggle_fault("no such rule")

    run(scenario)


def test_a_server_that_hangs_up_is_asked_less_and_less_often():
    async def scenario() -> tuple[list[float], str]:
        loop = asyncio.get_running_loop()
        accepted: list[float] = []

        def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(loop.time())
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        address = ServerAddress(f"http://127.0.0.1:{port}", "a-token")
        link = ServerLink("unused.db", ev.EventBus(), find=lambda _path: address)
        link.start()
        try:
            await asyncio.sleep(1.6)
        finally:
            await link.close()
            server.close()
            await server.wait_closed()
        return accepted, link.state

    accepted, state = run(scenario)
    assert state == "unreachable"
    # An attempt is a connection and aiohttp's one retry of a request its server hung up on.
    attempts = [t for i, t in enumerate(accepted) if i == 0 or t - accepted[i - 1] > 0.05]
    assert len(accepted) <= 2 * len(attempts)
    # 0.1, 0.2, 0.4, 0.8 s apart: 4 or 5 attempts in 1.6 s (without the backoff, 16).
    assert 3 <= len(attempts) <= 6
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[-1] > 0.3 and gaps[-1] > 2 * gaps[0]


def test_a_serving_sinks_toggle_reads_the_rule_when_it_switches(tmp_path):
    config = tmp_path / "mailsink.toml"
    config.write_text(CONFIG)
    with RunningSink(tmp_path / "own.db", config=config) as running:

        async def twice() -> list[bool]:
            sink = running.sink
            assert sink is not None
            return list(
                await asyncio.gather(
                    sink.toggle_fault("no marketing"), sink.toggle_fault("no marketing")
                )
            )

        assert running.run(twice()) == [False, True]
        assert running.call(lambda: running.faults.rule("no marketing").enabled)
        with pytest.raises(KeyError):
            running.run(running.sink.toggle_fault("no such rule"))  # type: ignore[union-attr]
