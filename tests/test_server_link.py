"""An attached sink linked to the store's server (mailsink.server_link.ServerLink): a real
`mailsink serve` in a subprocess, found through its `.server` file or the environment, its
fault rules switched over HTTP (and seen refusing over real SMTP), its live sessions and
transcript lines followed through its event stream, a bad token, a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RawClient, free_port, mailsink_process, message, wait_for_port
from tui_support import settings_for

from mailsink import events as ev
from mailsink.errors import MailsinkError
from mailsink.server_link import (
    MAX_EVENT,
    MAX_LINE,
    TOKEN_ENV,
    URL_ENV,
    SseParser,
    find_server,
    server_file,
)
from mailsink.sink import Sink

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

    def port_text(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            _, err = self.process.communicate(timeout=15)
            self.stderr += err
            self.process = None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("link"), CONFIG)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # The token is in the file only: the server logged none of it.
        assert b"Bearer" not in server.stderr


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
                with pytest.raises(MailsinkError, match="no server reachable: HTTP 401"):
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
                await asyncio.to_thread(server.stop)
                await until(lambda: link.state == "unreachable")
                assert "no mailsink server" in (link.reason or "")
                await asyncio.to_thread(server.start)
                waited = await until(lambda: link.live)
                assert waited < 5
                assert link.address is not None and link.address != first  # new port, token
                assert await sink.toggle_preset("4") is True
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
