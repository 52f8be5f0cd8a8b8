"""Live events and the server-side wait, over real HTTP on loopback: GET /api/mailsink/wait,
the Server-Sent Events of /api/mailsink/events, and Mailpit's WebSocket at /api/events."""

from __future__ import annotations

import asyncio
import http.client
import json
import smtplib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from mailsink import events as ev
from mailsink.http import live_api
from mailsink.testing import RunningSink

# The keys of Mailpit's MessageSummary, the payload of its "new" event: server/ui/api/v1/
# swagger.json (definitions.MessageSummary) in axllent/mailpit, broadcast by
# internal/storage/messages.go (`websockets.Broadcast("new", c)`).
MAILPIT_SUMMARY_KEYS = {
    "Attachments",
    "Bcc",
    "Cc",
    "Created",
    "From",
    "ID",
    "MessageID",
    "Read",
    "ReplyTo",
    "Size",
    "Snippet",
    "Subject",
    "Tags",
    "To",
    "Username",
}
# internal/storage/notifications.go: BroadcastMailboxStats
MAILPIT_STATS_KEYS = {"Total", "Unread", "Version"}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with RunningSink(tmp_path_factory.mktemp("live") / "mail.db") as sink:
        yield sink


def send(running: RunningSink, subject: str, helo: str = "app.test", body: str = "hello") -> None:
    mail = EmailMessage()
    mail["From"] = "app@x.test"
    mail["To"] = "user@x.test"
    mail["Subject"] = subject
    mail.set_content(body)
    with smtplib.SMTP(running.host, running.port, local_hostname=helo) as client:
        client.send_message(mail)


def get(running: RunningSink, path: str, **params: str) -> tuple[int, Any]:
    url = f"{running.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def subscribers(running: RunningSink, kind: type) -> int:
    """How many subscriptions the sink's bus holds for `kind` (a wait holds one)."""
    bus = running.sink.events  # type: ignore[union-attr]
    return running._call(_count(lambda: len(bus._by_kind.get(kind, ()))))


async def _count(function: Any) -> int:
    return function()


def test_wait_answers_at_once_wakes_on_a_commit_and_times_out_with_what_it_found(running):
    send(running, "wait first")
    status, found = get(running, "/api/mailsink/wait", query="subject:wait", timeout="2s")
    assert status == 200 and [m["subject"] for m in found] == ["wait first"]
    since = found[0]["id"]
    assert set(found[0]) >= {"id", "received_at", "mail_from", "rcpt_to", "subject", "status"}

    waiting_before = subscribers(running, ev.MessagesChanged)

    sent: list[float] = []

    def sender(*subjects: str) -> None:  # once the request waits: it is woken, not finds them
        deadline = time.monotonic() + 5
        while subscribers(running, ev.MessagesChanged) == waiting_before:
            assert time.monotonic() < deadline
        for subject in subjects:
            send(running, subject)
        sent.append(time.monotonic())  # the last 250: committed

    thread = threading.Thread(target=sender, args=("wait second", "unrelated", "wait third"))
    thread.start()
    status, found = get(
        running, "/api/mailsink/wait", query="subject:wait", count="2", since=str(since),
        timeout="5s",
    )  # fmt: skip
    thread.join()
    assert status == 200, found
    assert [m["subject"] for m in found] == ["wait third", "wait second"]  # newest first
    assert all(m["id"] > since for m in found)
    delays = [time.monotonic() - sent[-1]]

    status, body = get(
        running, "/api/mailsink/wait", query="subject:wait", count="5", since=str(since),
        timeout="100ms",
    )  # fmt: skip
    assert status == 408 and "2 of 5" in body["error"]
    assert [m["subject"] for m in body["messages"]] == ["wait third", "wait second"]
    assert subscribers(running, ev.MessagesChanged) == waiting_before  # each wait let go
    since = found[0]["id"]
    # Woken by the commit, not by a poll: each answer within 0.3 s of the 250 (a 1 s poll
    # would miss that in most of three tries; the later ones match nothing above).
    for n in range(2):
        thread = threading.Thread(target=sender, args=(f"wait again {n}",))
        thread.start()
        status, again = get(
            running, "/api/mailsink/wait", query="subject:again", since=str(since),
            timeout="5s",
        )  # fmt: skip
        thread.join()
        assert status == 200 and again[0]["subject"] == f"wait again {n}"
        delays.append(time.monotonic() - sent[-1])
        since = again[0]["id"]
    assert max(delays) < 0.3, delays

    for params, named in (
        ({"count": "0"}, "count"),
        ({"count": "x"}, "count"),
        ({"since": "-1"}, "since"),
        ({"timeout": "soon"}, "timeout"),
        ({"query": "nosuch:thing"}, "query"),
    ):
        status, body = get(running, "/api/mailsink/wait", **params)
        assert status == 400 and body["error"].startswith(f"{named}:"), (params, body)


class EventStream:
    """The raw text/event-stream, read with http.client."""

    def __init__(self, running: RunningSink, last_event_id: str | None = None):
        self.connection = http.client.HTTPConnection(running.host, running.http_port, timeout=5)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", "/api/mailsink/events", headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")

    def frame(self) -> tuple[int | None, dict[str, Any] | None]:
        """The next event: (its id or None, its JSON); (None, None) for retry and comments."""
        event_id, data = None, None
        while (line := self.response.readline().decode()) not in ("\n", ""):
            field, _, value = line.rstrip("\n").partition(": ")
            if field == "id":
                event_id = int(value)
            elif field == "data":
                data = json.loads(value)
        return event_id, data

    def until_ended(self, helo: str) -> list[tuple[int | None, dict[str, Any]]]:
        """Every event up to the end of the session that said `helo`."""
        seen = []
        while True:
            event_id, data = self.frame()
            if data is not None:
                seen.append((event_id, data))
                if data["type"] == "session-ended" and data["session"]["helo"] == helo:
                    return seen

    def close(self) -> None:
        self.connection.close()


def test_sse_sends_events_in_order_and_resumes_after_last_event_id(running, monkeypatch):
    monkeypatch.setattr(live_api, "DISCONNECT_POLL", 0.02)  # 1 s, shortened
    stream = EventStream(running)
    try:
        assert stream.frame() == (None, None)  # retry: 2000
        send(running, "sse <one>", helo="helo.<b>x</b>")
        seen = stream.until_ended("helo.<b>x</b>")
    finally:
        stream.close()
    ids = [event_id for event_id, _ in seen]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # numbered, nothing skipped
    session_id = seen[-1][1]["session"]["id"]
    mine = [  # the previous test's sessions may still be ending
        data
        for _, data in seen
        if session_id in (data.get("session_id"), data.get("session", {}).get("id"))
    ]
    types = [data["type"] for data in mine]
    assert types[0] == "session-started" and types.index("message-stored") < len(types) - 1
    lines = [data for data in mine if data["type"] == "transcript-line"]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert any(line["text"].lower() == "ehlo helo.<b>x</b>" for line in lines), lines
    assert lines[0]["direction"] in "CSDI" and lines[0]["at"].endswith("Z")
    stored = next(data for data in mine if data["type"] == "message-stored")
    assert stored["rejected"] is False and isinstance(stored["message_id"], int)
    assert mine[-1]["session"]["live"] is False

    resumed = EventStream(running, last_event_id=str(ids[2]))
    try:
        again = [resumed.frame() for _ in range(len(ids) - 2)]
    finally:
        resumed.close()
    assert again[0] == (None, None)  # retry
    assert again[1:] == seen[3:]  # exactly what followed, byte for byte the same JSON

    monkeypatch.setattr(live_api, "LOG_GRACE_SECONDS", 0.05)  # 60 s, shortened
    stale = EventStream(running, last_event_id="99999999")  # from before a restart
    try:
        assert stale.frame() == (None, None)
        assert stale.frame() == (None, {"type": "events-lost", "count": None})
    finally:
        stale.close()
    # The last client gone, the log lets go of everything (TranscriptLine too) after its
    # grace; a resume from before that is told its events are lost.
    deadline = time.monotonic() + 2
    while running.sink.events.wants(ev.TranscriptLine):  # type: ignore[union-attr]
        assert time.monotonic() < deadline
    later = EventStream(running, last_event_id=str(ids[-1]))
    try:
        assert later.frame() == (None, None)
        assert later.frame() == (None, {"type": "events-lost", "count": None})
    finally:
        later.close()


def test_mailpit_websocket_tells_new_delete_and_stats_as_mailpit_does(running, monkeypatch):
    monkeypatch.setattr(live_api, "STATS_DELAY", 0.01)  # Mailpit's 0.25 s, shortened
    sink = running.sink
    assert sink is not None

    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{running.url}/api/events") as ws,
        ):
            await asyncio.to_thread(send, running, "ws new", body="Hello From The Socket")

            async def next_of(kind: str) -> Any:
                while True:
                    message = json.loads((await ws.receive(timeout=5)).data)
                    assert set(message) == {"Type", "Data"}
                    if message["Type"] == kind:
                        return message["Data"]

            new = await next_of("new")
            assert set(new) >= MAILPIT_SUMMARY_KEYS, MAILPIT_SUMMARY_KEYS - set(new)
            assert new["Subject"] == "ws new" and isinstance(new["ID"], str)
            assert new["From"]["Address"] == "app@x.test" and new["Read"] is False
            # The snippet as the lists make it (not the search index's case-folded text).
            assert new["Snippet"] == "Hello From The Socket"
            stats = await next_of("stats")
            assert set(stats) == MAILPIT_STATS_KEYS and stats["Total"] >= 1
            deleting = asyncio.run_coroutine_threadsafe(
                sink.delete_messages([int(new["ID"])]), running.loop
            )
            await asyncio.wrap_future(deleting)
            assert await next_of("delete") == {"ID": new["ID"]}
            after = await next_of("stats")
            assert after["Total"] == stats["Total"] - 1

    asyncio.run(scenario())
    try:  # a plain GET is not an upgrade: a 400 in JSON, not a 500
        urllib.request.urlopen(f"{running.url}/api/events", timeout=5)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as error:
        assert error.code == 400 and "WebSocket" in json.loads(error.read())["error"]


def test_the_status_line_gives_the_http_url_and_drops_it_before_the_smtp_address():
    """The status line's layout alone (a TUI start-up is seconds): the URL when it fits; at 80
    columns with 10 messages or more, `HTTP :8025`; narrower, nothing, and SMTP stays."""
    from textual.geometry import Size

    from mailsink.config import Settings
    from mailsink.tui.widgets.status import StatusLine

    class Measured(StatusLine):
        width = 80

        @property
        def size(self) -> Size:  # type: ignore[override]
            return Size(self.width, 1)

        def update(self, content: Any = "", **_: Any) -> None:
            self.line = content.plain

    http = SimpleNamespace(url="http://127.0.0.1:8025", port=8025)
    sink = SimpleNamespace(
        is_attached=False, faults=None, watcher=None, settings=Settings(), http=http,
        addresses=[("127.0.0.1", 1025)], labels=["SMTP"],
    )  # fmt: skip
    status = Measured(sink)  # type: ignore[arg-type]
    status.shown, status.unread = 12, 3
    smtp, tail = "SMTP 127.0.0.1:1025", "  │  12 messages · 3 unread"
    for width, place in (
        (100, f"{smtp} · http://127.0.0.1:8025"),
        (80, f"{smtp} · HTTP :8025"),  # "12 messages" is one cell too many for the URL
        (69, smtp),
    ):
        status.width = width
        status.redraw()
        assert status.line.startswith(f" mailsink  {place}{tail}"), (width, status.line)
        assert len(status.line) <= width


def test_a_wait_whose_client_left_lets_go_without_any_mail(running, monkeypatch):
    import socket

    monkeypatch.setattr(live_api, "DISCONNECT_POLL", 0.05)  # 1 s, shortened
    woken: list[float] = []  # when an event that wakes a wait came (the store's watch sends
    # StoreChanged after earlier tests' commits): none may have let these waits go

    async def watch() -> Any:
        subscription = running.sink.subscribe(*live_api.WAKING_KINDS)  # type: ignore[union-attr]

        async def record() -> None:
            async for _event in subscription:
                woken.append(time.monotonic())

        return subscription, asyncio.ensure_future(record())

    subscription, _task = running._call(watch())
    try:
        # Let the store's watch go quiet first (earlier tests' commits still being told).
        quiet = time.monotonic()
        while time.monotonic() - max([quiet, *woken]) < 0.5:
            time.sleep(0.02)
        base = subscribers(running, ev.MessagesChanged)
        request = (
            b"GET /api/mailsink/wait?query=subject:never&timeout=300s HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n\r\n"
        )
        clients = [socket.create_connection((running.host, running.http_port)) for _ in range(20)]
        for client in clients:
            client.sendall(request)
        deadline = time.monotonic() + 5
        while subscribers(running, ev.MessagesChanged) < base + 20:
            assert time.monotonic() < deadline
        closed = time.monotonic()
        for client in clients:
            client.close()
        while subscribers(running, ev.MessagesChanged) > base:
            assert time.monotonic() - closed < 2, subscribers(running, ev.MessagesChanged) - base
        gone = time.monotonic()
        assert not [at for at in woken if closed <= at <= gone]  # noticed, not woken
    finally:
        running.loop.call_soon_threadsafe(subscription.close)


def test_a_bulk_delete_is_one_prune_and_keeps_the_websocket_client(running, monkeypatch):
    # Mailpit's numbers (a 256-message client buffer, prune past 200), scaled down.
    monkeypatch.setattr(live_api, "CLIENT_BUFFER", 8)
    monkeypatch.setattr(live_api, "PRUNE_OVER", 6)
    monkeypatch.setattr(live_api, "STATS_DELAY", 0.01)
    sink = running.sink
    assert sink is not None
    with smtplib.SMTP(running.host, running.port) as client:
        for n in range(10):
            client.sendmail("app@x.test", ["user@x.test"], f"Subject: bulk {n}\r\n\r\nx".encode())
    with running.reader() as reader:
        ids = [record.id for record in reader.list_messages(limit=10)]

    async def scenario() -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{running.url}/api/events") as ws,
        ):
            await asyncio.sleep(0.05)  # (the hub's subscription begins with the first client)
            deleting = asyncio.run_coroutine_threadsafe(sink.delete_messages(ids), running.loop)
            await asyncio.wrap_future(deleting)
            kinds: list[str] = []  # (the last of the new ones may come first)
            while "prune" not in kinds or kinds[-1] != "stats":
                message = await ws.receive(timeout=5)
                assert message.type == aiohttp.WSMsgType.TEXT, (message, ws.close_code)
                kinds.append(json.loads(message.data)["Type"])
            return kinds

    kinds = asyncio.run(scenario())
    assert kinds[-2:] == ["prune", "stats"] and "delete" not in kinds, kinds


def test_stop_ends_open_streams_at_once_and_ids_are_not_reused_after_a_restart(tmp_path):
    db = tmp_path / "mail.db"
    first = RunningSink(db).start()
    try:

        async def scenario() -> tuple[int, float]:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"{first.url}/api/events")
                sse = await session.get(f"{first.url}/api/mailsink/events")
                await asyncio.to_thread(send, first, "before the restart")
                while not (line := await sse.content.readline()).startswith(b"id: "):
                    pass
                seen = int(line[4:])
                waits = subscribers(first, ev.MessagesChanged)
                wait = asyncio.ensure_future(
                    session.get(f"{first.url}/api/mailsink/wait?query=subject:never&timeout=300s")
                )
                while subscribers(first, ev.MessagesChanged) == waits:
                    await asyncio.sleep(0.005)

                async def reading() -> Any:  # as a client does (and answers the close)
                    while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                        pass  # the events before the stop
                    return message

                closing = asyncio.ensure_future(reading())
                started = time.monotonic()
                await asyncio.to_thread(first.stop)
                took = time.monotonic() - started
                assert (await asyncio.wait_for(closing, 2)).type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 1001  # going away
                assert (await asyncio.wait_for(wait, 2)).status == 503
                await asyncio.wait_for(sse.content.read(), 2)  # the stream ended
                return seen, took

        seen, took = asyncio.run(scenario())
        assert took < 1.5, took
    finally:
        first.stop()
    with RunningSink(db) as second:
        busy = EventStream(second)  # the new log, with more events than `seen` was
        try:
            busy.frame()
            send(second, "after", helo="after.test")
            busy.until_ended("after.test")
        finally:
            busy.close()
        stale = EventStream(second, last_event_id=str(seen))
        try:
            assert stale.frame() == (None, None)
            assert stale.frame() == (None, {"type": "events-lost", "count": None})
        finally:
            stale.close()
