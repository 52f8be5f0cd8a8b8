"""How a view of a store finds the server that serves it, and (ServerLink) talks to it over its
HTTP API: the fault rules switched there, live sessions and transcripts followed through its
event stream. An attached TUI (`mailsink tui --attach`, each browser tab's UI) is then as
capable as the one in the server's own process; a release asked of it is the server's too
(`ServerLink.release`: its `[relay]`, its records, its event stream).

A serving sink's HTTP service writes `<store>.server` beside the store once it listens: its
URL (an address this machine can connect to) and a token that authenticates as `[http] users`
would, readable by the store's owner only (0600: whoever can read it can read the store's mail
anyway). It is removed when the service stops; one left by a server that died is ignored (its
lock is free, or its pid is gone). A UI process the server starts itself is given both in its
environment (URL_ENV, TOKEN_ENV) instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mailsink.errors import MailsinkError
from mailsink.events import (
    ConfigRejected,
    ConfigReloaded,
    EventBus,
    EventsLost,
    FaultFired,
    LiveSession,
    RulesChanged,
    ServerLinkChanged,
    SessionChanged,
    SessionEnded,
    SessionStarted,
    TranscriptEvent,
    TranscriptLine,
)
from mailsink.faults.controls import RuleState
from mailsink.faults.presets import BY_KEY
from mailsink.relay import ReleasePlan, ReleaseRecord
from mailsink.text import visible

log = logging.getLogger("mailsink")

URL_ENV = "MAILSINK_SERVER_URL"
TOKEN_ENV = "MAILSINK_SERVER_TOKEN"
SUFFIX = ".server"


@dataclass(frozen=True)
class ServerAddress:
    """Where a store's server answers HTTP, and the token it takes (Authorization: Bearer)."""

    url: str
    token: str


def new_token() -> str:
    return secrets.token_urlsafe(32)


def server_file(store_path: str) -> Path:
    """The file beside the store (its real path, as the lock is) naming its server."""
    return Path(os.path.realpath(store_path) + SUFFIX)


def write_server_file(store_path: str, address: ServerAddress) -> None:
    """Written whole or not at all (a temporary file renamed over it), mode 0600. The store's
    directory may be shared (/tmp): the temporary file is a fresh one (mkstemp: O_EXCL, a
    random name), so a name planted there (a symlink to another file) is never written
    through, and the rename replaces whatever entry has the file's name, never its target."""
    target = server_file(store_path)
    data = json.dumps({"pid": os.getpid(), "url": address.url, "token": address.token})
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
        with os.fdopen(fd, "w") as file:
            file.write(data)
        os.replace(temporary, target)
    except OSError as error:  # a viewer then finds no server: said, not fatal
        log.warning("cannot write %s (attached UIs will not find the HTTP API): %s", target, error)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


SERVER_FILE_LIMIT = 64 * 1024  # bytes: a pid, a URL and a token are a few hundred


def _read_server_file(target: Path) -> dict[str, Any] | None:
    """The file's JSON object, only if it is a regular file of this user's (not a symlink,
    not a FIFO that would block the read, not a file another user put there)."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # absent, or a symlink (ELOOP)
        return None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid():
            log.debug("%s is not a regular file of this user's: ignored", target)
            return None
        try:
            data = json.loads(file.read(SERVER_FILE_LIMIT + 1)[:SERVER_FILE_LIMIT])
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def remove_server_file(store_path: str) -> None:
    """Removed only if it is this process's (a newer server's is left alone); a symlink in its
    place is neither read through nor removed."""
    target = server_file(store_path)
    data = _read_server_file(target)
    if data is not None and data.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            target.unlink()


def find_server(store_path: str) -> ServerAddress | None:
    """The server of the store at `store_path`: from the environment when this process was
    started by it (a browser tab's UI), else from its file when the server that wrote it still
    holds the store's lock. None when no server is to be found."""
    url, token = os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV)
    if url and token:
        return ServerAddress(url, token)
    from mailsink.store.schema import server_running

    data = _read_server_file(server_file(store_path))
    if data is None:
        return None
    try:
        pid, url, token = int(data["pid"]), str(data["url"]), str(data["token"])
    except (ValueError, KeyError, TypeError):
        return None
    if server_running(store_path) is False:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: it exists
    return ServerAddress(url, token)


# ---- the link: an attached sink as a client of the store's server

# Waits between attempts to reach the server: from the first, doubled up to the last.
RETRY_FIRST_SECONDS = 0.1
RETRY_MOST_SECONDS = 2.0
CONNECT_SECONDS = 3.0
# The server sends a comment every 15 s on an idle stream (live_api.HEARTBEAT_SECONDS): this
# long without a byte, it is taken for gone.
SILENCE_SECONDS = 45.0
# The event stream is the server's, but a bug or another program on the port must not make
# this process hold a line or an event without bound: longer ones are skipped (told as lost).
MAX_LINE = 1024 * 1024
MAX_EVENT = 1024 * 1024
MAX_RULES_BODY = 4 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024  # of a refusal, only its first line is shown
# A release's answer: the server bounds its talk with the upstream by its [relay] timeout
# (the connection and each reply), so this is only for a server that stopped answering.
RELEASE_SECONDS = 300.0
# Per live session, the newest transcript lines received and not yet seen in the store (its
# progress commits within LAZY_COMMIT, and Sink.transcript drops what it finds there). A tail:
# each attached process (each browser tab) keeps this for up to LIVE_KEPT sessions.
LINES_KEPT = 200
LIVE_KEPT = 1000  # live sessions followed at once; past this the oldest is forgotten
# An ended session is shown as its snapshot until the store has its end row, or this long.
ENDED_KEPT_SECONDS = 5.0
# Changes and firings this close together are one fetch of the rules (a rule firing thousands
# of times a second costs the server a few GETs a second).
RULES_FETCH_GAP = 0.05

CONNECTING, LIVE, UNREACHABLE = "connecting", "live", "unreachable"


class LinkError(MailsinkError):
    """The store's server could not be asked (not reachable, refused, answered nonsense)."""


class SseParser:
    """Server-Sent Events (the WHATWG event-stream format) from bytes as they come: `feed`
    returns each complete event's (id, data). A line over MAX_LINE or an event whose data passes
    MAX_EVENT is skipped whole and counted in `skipped`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._size = 0
        self._oversized = False  # the event being read is skipped
        self._line_cut = False  # inside a line that is being skipped
        self.last_id: str | None = None
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        events: list[tuple[str | None, str]] = []
        self._buffer += chunk
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end])
            start = end + 1
            if self._line_cut:
                self._line_cut = False
                continue
            event = self._line(line.removesuffix(b"\r").decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            self._buffer.clear()
            self._line_cut = self._oversized = True
        return events

    def _line(self, line: str) -> tuple[str | None, str] | None:
        if not line:  # an event ends
            data, self._data, self._size = self._data, [], 0
            if self._oversized:
                self._oversized = False
                self.skipped += 1
                return None
            return (self.last_id, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data" and not self._oversized:
            self._size += len(value) + 1
            if self._size > MAX_EVENT:
                self._oversized = True
                self._data = []
            else:
                self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def _ms(value: Any) -> int | None:
    """An ISO time of the server's JSON (clock.iso_ms) as ms since the epoch."""
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return round(moment.timestamp() * 1000)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def live_session_of(data: dict[str, Any]) -> LiveSession:
    """A session as the event stream gives it (live_api.session_json), without its lines.
    KeyError, TypeError or ValueError for one that is not."""
    return LiveSession(
        id=int(data["id"]),
        peer=str(data["peer"]),
        started_at=_ms(data["started_at"]) or 0,
        helo=_text(data.get("helo")),
        state=str(data.get("state") or "connected"),
        tls=bool(data.get("tls")),
        auth_user=_text(data.get("auth_user")),
        last_reply=_text(data.get("last_reply")),
        faults_fired=int(data.get("faults") or 0),
        message_ids=tuple(int(i) for i in data.get("messages") or ()),
        transcript_lines=int(data.get("transcript_lines") or 0),
        unwritten=(),
        end_reason=_text(data.get("end_reason")),
        ended_at=_ms(data.get("ended_at")),
        refusals=int(data.get("refusals") or 0),
        last_refusal=_text(data.get("last_refusal")),
    )


def rule_state_of(data: dict[str, Any]) -> RuleState:
    """A rule as GET /api/mailsink/faults lists it (native_faults.rule_json)."""
    origin = str(data.get("source"))
    if origin not in ("preset", "config", "runtime"):
        raise ValueError(f"a rule's source {origin[:40]!r}")
    reply = data.get("reply")
    last = data.get("last_fired_at")
    return RuleState(
        name=str(data["name"]),
        stage=str(data["stage"]),
        action=str(data["action"]),
        # As FaultControls.rules() gives it: the lines of a multi-line reply joined by " | ".
        reply=None if reply is None else " | ".join(str(reply).split("\n")),
        delay=float(data.get("delay") or 0),
        enabled=bool(data["enabled"]),
        origin=origin,  # type: ignore[arg-type]
        preset_key=_text(data.get("preset_key")),
        hits=int(data.get("hits") or 0),
        last_fired_at=None if last is None else int(last),
        summary=str(data.get("summary") or ""),
    )


def _why(error: BaseException) -> str:
    """One line for the status line and the Faults screen: never the token (it is not in any
    of these), never a traceback."""
    if isinstance(error, LinkError):
        return str(error)
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200] if text else type(error).__name__


class ServerLink:
    """An attached sink's client of the store's server: its fault rules (cached, switched
    through PUT), and its event stream turned back into mailsink.events records on `bus`
    (sessions, transcript lines, firings, rule and config changes). Lives on the sink's loop;
    `start()` once, `await close()` at the end (no task or connection is left)."""

    def __init__(
        self,
        store_path: str,
        bus: EventBus,
        *,
        find: Callable[[str], ServerAddress | None] = find_server,
    ) -> None:
        self.store_path = store_path
        self.bus = bus
        self._find = find
        self.state = CONNECTING
        self.reason: str | None = None
        self.address: ServerAddress | None = None
        self._rules: list[RuleState] = []
        self._sessions: dict[int, LiveSession] = {}  # without their lines
        self._lines: dict[int, collections.deque[TranscriptEvent]] = {}
        self._built: dict[int, LiveSession] = {}  # with their lines, until either changes
        self._expiry: dict[int, asyncio.TimerHandle] = {}
        # Snapshots that may have missed their end (events were lost): kept until the store
        # says they ended, or the server tells of them again (Sink.sessions asks the store).
        self._stale: set[int] = set()
        self._last_id: str | None = None
        self._client: Any = None  # aiohttp.ClientSession, made on the loop by `run`
        self._task: asyncio.Task[None] | None = None
        self._rules_task: asyncio.Task[None] | None = None
        self._rules_wanted = asyncio.Event()
        self._rules_changes: list[RulesChanged] = []
        self._switching = asyncio.Lock()  # one switch at a time: a toggle reads the last one's

    @property
    def url(self) -> str | None:
        return self.address.url if self.address is not None else None

    @property
    def live(self) -> bool:
        return self.state == LIVE

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mailsink-server-link")

    async def close(self) -> None:
        for task in (self._task, self._rules_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._rules_task = None
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- what faces read

    def rules(self) -> list[RuleState]:
        """The server's rules as last fetched (hits counted from its firings since); empty
        while unreachable."""
        return list(self._rules)

    def live_sessions(self) -> list[LiveSession]:
        return [self.live_session(i) for i in list(self._sessions)]  # type: ignore[misc]

    def live_session(self, session_id: int) -> LiveSession | None:
        built = self._built.get(session_id)
        if built is None:
            base = self._sessions.get(session_id)
            if base is None:
                return None
            lines = self._lines.get(session_id)
            built = dataclasses.replace(base, unwritten=tuple(lines)) if lines else base
            self._built[session_id] = built
        return built

    def forget_ended(self, session_ids: Iterable[int]) -> None:
        """The store has these sessions' end rows: their snapshots are not needed any more,
        also one that still says live (its end was told while the stream was down)."""
        for session_id in session_ids:
            self._forget(session_id)

    def stale_sessions(self) -> list[int]:
        """Live snapshots that may have missed their end: to be looked up in the store."""
        return [i for i in self._stale if i in self._sessions]

    def stored_through(self, session_id: int, seq: int) -> None:
        """The store has the session's transcript up to `seq`: those lines need not be kept."""
        lines = self._lines.get(session_id)
        if not lines or lines[0][0] > seq:
            return
        while lines and lines[0][0] <= seq:
            lines.popleft()
        self._built.pop(session_id, None)

    # ---- changing the server's rules

    async def switch_fault(self, name: str, enabled: bool) -> RuleState:
        async with self._switching:
            return await self._put(name, enabled)

    async def toggle_fault(self, name: str) -> bool:
        """Switch a rule to the opposite of its state after the switches asked for before this
        one (two quick toggles are a toggle and back); True when it is now on. KeyError for a
        rule the server does not list."""
        async with self._switching:
            self._check_live()
            current = next((rule for rule in self._rules if rule.name == name), None)
            if current is None:
                raise KeyError(name)
            return (await self._put(name, not current.enabled)).enabled

    async def toggle_preset(self, key: str) -> bool:
        """KeyError for a key that is no preset's (as FaultControls.toggle_preset)."""
        name = BY_KEY[key].name
        async with self._switching:
            self._check_live()
            current = next((rule for rule in self._rules if rule.name == name), None)
            if current is None:
                raise LinkError(f"the server lists no rule {name!r}")
            return (await self._put(name, not current.enabled)).enabled

    def _check_live(self) -> ServerAddress:
        if not self.live or self.address is None or self._client is None:
            raise LinkError(f"no link to the store's server: {self.reason or 'not connected yet'}")
        return self.address

    async def _put(self, name: str, enabled: bool) -> RuleState:
        address = self._check_live()
        url = f"{address.url}/api/mailsink/faults/{urllib.parse.quote(name, safe='')}"
        data = await self._request("PUT", url, address, {"enabled": enabled})
        try:
            state = rule_state_of(data)
        except (KeyError, TypeError, ValueError) as error:
            raise LinkError(f"the server's answer is not a rule ({error})") from None
        self._rules = [state if rule.name == name else rule for rule in self._rules]
        # Told here at once; the server's own RulesChanged follows on the stream.
        self.bus.publish(RulesChanged("enabled" if enabled else "disabled", name))
        return state

    async def _request(
        self, method: str, url: str, address: ServerAddress, body: Any = None
    ) -> Any:
        import aiohttp

        try:
            async with self._client.request(
                method,
                url,
                json=body,
                headers=_auth(address),
                timeout=aiohttp.ClientTimeout(total=10, connect=CONNECT_SECONDS),
            ) as response:
                if response.status >= 400:
                    refusal = await _body_start(response, MAX_ERROR_BODY)
                    raise LinkError(_refusal(response.status, refusal, address))
                raw = await _body(response, MAX_RULES_BODY)
                if raw is None:
                    raise LinkError(f"{method} {url}: an answer over {MAX_RULES_BODY} bytes")
                try:
                    return json.loads(raw)
                except ValueError:
                    raise LinkError(f"{method} {url}: the answer is not JSON") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise LinkError(f"{address.url}: {_why(error)}") from None

    # ---- releasing through the server (its [relay], its records, its event stream)

    async def release(
        self, message_id: int, recipients: list[str] | None, trigger: str
    ) -> ReleaseRecord:
        """`POST /api/mailsink/messages/{id}/release` (native_release): the server releases the
        message and answers its record (outcome "sent" or "partial"). Its refusals come back
        as Sink.release raises them: RelayNotConfigured, NoSuchMessage, RecipientsRefused
        (naming the recipients), UpstreamError (code, stage, timed_out, the record); a server
        that cannot be asked is a LinkError."""
        body: dict[str, Any] = {"trigger": trigger}
        if recipients is not None:
            body["to"] = list(recipients)
        data = await self._release_request("POST", message_id, "release", body)
        try:
            return ReleaseRecord.from_json(data["release"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise LinkError(f"the server's answer is not a release record ({error})") from None

    async def release_plan(self, message_id: int) -> ReleasePlan:
        """`GET /api/mailsink/messages/{id}/release`: what the server would do (its [relay]).
        NoSuchMessage when the message is gone."""
        data = await self._release_request("GET", message_id, "release")
        try:
            return ReleasePlan.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise LinkError(f"the server's answer is not a release plan ({error})") from None

    async def _release_request(
        self, method: str, message_id: int, route: str, body: Any = None
    ) -> Any:
        """The JSON of a 2xx answer; an error answer raised as the release error it says."""
        import aiohttp

        address = self._check_live()
        url = f"{address.url}/api/mailsink/messages/{int(message_id)}/{route}"
        try:
            async with self._client.request(
                method,
                url,
                json=body,
                headers=_auth(address),
                timeout=aiohttp.ClientTimeout(total=RELEASE_SECONDS, connect=CONNECT_SECONDS),
            ) as response:
                raw = await _body(response, MAX_RULES_BODY)
                status = response.status
        except TimeoutError as error:
            if method == "POST" and not isinstance(
                error, aiohttp.ConnectionTimeoutError
            ):  # the request went: the server may well be sending it still
                from mailsink.errors import ReleaseError

                raise ReleaseError(
                    f"no answer from the server at {address.url} in {RELEASE_SECONDS:g} s: the"
                    f" release of message {int(message_id)} may still be under way (see the"
                    " message's releases before trying again)"
                ) from None
            raise LinkError(f"{address.url}: no answer in time") from None
        except (aiohttp.ClientError, OSError) as error:
            raise LinkError(f"{address.url}: {_why(error)}") from None
        if raw is None:
            raise LinkError(f"{method} {url}: an answer over {MAX_RULES_BODY} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status < 400 and isinstance(data, dict):
            return data
        raise _release_error(status, data, raw, address)

    # ---- following the server

    def _set(self, state: str, reason: str | None = None) -> None:
        if (state, reason) == (self.state, self.reason):
            return
        before = self.state
        self.state, self.reason = state, reason
        if state == LIVE:
            log.info("linked to the store's server at %s", self.url)
        elif state == UNREACHABLE and before != UNREACHABLE:
            log.info("no link to the store's server: %s", reason)
        if state == UNREACHABLE:
            # What it said is not known to be true any more: the store's rows stand alone.
            self._rules = []
            for session_id in list(self._sessions):
                self._forget(session_id)
        self.bus.publish(ServerLinkChanged(state, self.url, reason))

    async def _run(self) -> None:
        import aiohttp

        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_SECONDS, sock_read=SILENCE_SECONDS
            ),
            # Never a proxy from the environment: the server is on this machine.
            trust_env=False,
        )
        self._rules_task = asyncio.create_task(self._refresh_rules(), name="mailsink-link-rules")
        wait = RETRY_FIRST_SECONDS
        while True:
            address = await asyncio.to_thread(self._find, self.store_path)
            if address is None:
                self.address = None
                self._set(UNREACHABLE, "no mailsink server with HTTP serves this store")
            else:
                if address != self.address:  # another server (or its restart): start afresh
                    self.address, self._last_id = address, None
                if self.state != LIVE:
                    self._set(CONNECTING, None)
                was_live = False
                try:
                    was_live = await self._follow(address)
                    reason = "the server ended its event stream"
                except (aiohttp.ClientError, OSError, TimeoutError, LinkError) as error:
                    reason = _why(error)
                if was_live:  # it was there a moment ago: look again at once
                    wait = RETRY_FIRST_SECONDS
                    self._set(CONNECTING, reason)
                else:
                    self._set(UNREACHABLE, reason)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MOST_SECONDS)

    async def _follow(self, address: ServerAddress) -> bool:
        """The event stream until it ends; True if it was live (its first bytes came)."""
        headers = _auth(address)
        if self._last_id is not None:  # the server sends what was missed, or says it is lost
            headers["Last-Event-ID"] = str(self._last_id)
        url = f"{address.url}/api/mailsink/events"
        async with self._client.get(url, headers=headers) as response:
            if response.status != 200:
                raw = await _body_start(response, MAX_ERROR_BODY)
                raise LinkError(_refusal(response.status, raw, address))
            parser = SseParser()
            linked = False
            async for chunk in response.content.iter_any():
                events = parser.feed(chunk)
                if not linked:
                    # The server's stream has its place in the log once its first bytes are
                    # written: the rules read now miss no change.
                    self._rules = await self._fetch_rules(address)
                    linked = True
                    self._set(LIVE, None)
                for event_id, data in events:
                    if event_id is not None:
                        self._last_id = event_id
                    self._dispatch(data)
                if parser.skipped:
                    self._lost(parser.skipped)
                    parser.skipped = 0
            return linked

    async def _fetch_rules(self, address: ServerAddress) -> list[RuleState]:
        data = await self._request("GET", f"{address.url}/api/mailsink/faults", address)
        try:
            return [rule_state_of(rule) for rule in data["rules"]]
        except (KeyError, TypeError, ValueError) as error:
            raise LinkError(
                f"{address.url}: its fault rules are not as expected ({error})"
            ) from None

    async def _refresh_rules(self) -> None:
        """The rules fetched again after the server says they changed or one fired: what the
        server answers is its count (a firing counted here as well as in an answer served
        after it would count twice); many changes and firings close together are one fetch,
        and the changes are told once the rules are here."""
        while True:
            await self._rules_wanted.wait()
            await asyncio.sleep(RULES_FETCH_GAP)
            self._rules_wanted.clear()
            changes, self._rules_changes = self._rules_changes, []
            address = self.address
            if address is None or not self.live:
                continue
            try:
                self._rules = await self._fetch_rules(address)
            except LinkError as error:
                log.debug("fault rules not fetched: %s", error)
            for change in changes or [RulesChanged("refreshed")]:
                self.bus.publish(change)

    def _dispatch(self, data: str) -> None:
        try:
            event = json.loads(data)
            kind = event["type"]
            self._apply(kind, event)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            log.debug("an event of the server's not understood: %s", error)
            self._lost(1)

    def _apply(self, kind: str, event: dict[str, Any]) -> None:
        bus = self.bus
        if kind in ("session-started", "session-changed", "session-ended"):
            session = live_session_of(event["session"])
            self._keep(session)
            record = {
                "session-started": SessionStarted,
                "session-changed": SessionChanged,
                "session-ended": SessionEnded,
            }[kind]
            bus.publish(record(self.live_session(session.id)))  # type: ignore[arg-type]
        elif kind == "transcript-line":
            session_id = int(event["session_id"])
            line = (
                int(event["seq"]),
                _ms(event["at"]) or 0,
                str(event["direction"]),
                str(event["text"]),
            )
            if session_id in self._sessions:
                self._lines.setdefault(session_id, collections.deque(maxlen=LINES_KEPT)).append(
                    line
                )
                self._built.pop(session_id, None)
            bus.publish(TranscriptLine(session_id, line))
        elif kind == "fault-fired":
            fired = FaultFired(
                session_id=int(event["session_id"]),
                rule=str(event["rule"]),
                stage=str(event["stage"]),
                action=str(event["action"]),
                reply=_text(event.get("reply")),
                at=_ms(event["at"]) or 0,
            )
            # Shown at once; the fetch it asks for puts the server's own count in its place.
            self._rules_wanted.set()
            self._rules = [
                dataclasses.replace(rule, hits=rule.hits + 1, last_fired_at=fired.at)
                if rule.name == fired.rule
                else rule
                for rule in self._rules
            ]
            bus.publish(fired)
        elif kind == "rules-changed":
            self._rules_changes.append(RulesChanged(str(event["why"]), _text(event.get("rule"))))
            self._rules_wanted.set()
        elif kind == "config-reloaded":
            bus.publish(
                ConfigReloaded(
                    path=str(event["path"]),
                    applied=tuple(str(name) for name in event.get("applied") or ()),
                    restart=tuple(str(name) for name in event.get("restart") or ()),
                )
            )
        elif kind == "config-rejected":
            bus.publish(ConfigRejected(path=str(event["path"]), error=str(event["error"])))
        elif kind == "events-lost":
            # The server's count is null when it cannot tell how many (the id is from another
            # log); EventsLost.count is an int, and no face reads it: 0 says "some".
            self._lost(int(event.get("count") or 0))
        # Messages and the store's changes are seen in the store itself (Sink._watch_data_version):
        # a message-stored told before its commit is visible here would find nothing to read.

    def _lost(self, count: int) -> None:
        """What the server said was missed: a snapshot may now be live here and ended there."""
        self._stale.update(self._sessions)
        self.bus.publish(EventsLost(count))

    def _keep(self, session: LiveSession) -> None:
        self._stale.discard(session.id)  # told of afresh
        known = self._sessions.get(session.id)
        if known is None and len(self._sessions) >= LIVE_KEPT:
            self._forget(min(self._sessions))
        self._sessions[session.id] = session
        self._built.pop(session.id, None)
        if not session.live and session.id not in self._expiry:
            loop = asyncio.get_running_loop()
            self._expiry[session.id] = loop.call_later(ENDED_KEPT_SECONDS, self._forget, session.id)

    def _forget(self, session_id: int) -> None:
        self._sessions.pop(session_id, None)
        self._lines.pop(session_id, None)
        self._built.pop(session_id, None)
        self._stale.discard(session_id)
        handle = self._expiry.pop(session_id, None)
        if handle is not None:
            handle.cancel()


async def _body(response: Any, limit: int) -> bytes | None:
    """The whole body of an aiohttp response, read as it arrives (a large one comes in
    pieces); None when it is over `limit` bytes (said by its Content-Length, or found while
    reading a chunked one: no more than `limit` and a piece is held)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        return None
    body = bytearray()
    while chunk := await response.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _body_start(response: Any, limit: int) -> bytes:
    """The first `limit` bytes of a body (a refusal's: only its first line is shown)."""
    body = bytearray()
    while len(body) < limit and (chunk := await response.content.readany()):
        body += chunk
    return bytes(body[:limit])


def _auth(address: ServerAddress) -> dict[str, str]:
    return {"Authorization": f"Bearer {address.token}"}


def _release_error(status: int, data: Any, raw: bytes, address: ServerAddress) -> Exception:
    """The server's refusal of a release (native_release's statuses) as the sink's own error:
    409 RelayNotConfigured, 404 NoSuchMessage, 400 with `refused` RecipientsRefused, 502 and
    504 UpstreamError with the record; anything else (401, 403, 503, not JSON) a LinkError."""
    from mailsink.errors import (
        NoSuchMessage,
        RecipientsRefused,
        RelayNotConfigured,
        ReleaseError,
        UpstreamError,
    )

    said = data.get("error") if isinstance(data, dict) else None
    if not isinstance(said, str) or status < 400:
        return LinkError(_refusal(status, raw[:MAX_ERROR_BODY], address))
    if status == 409:
        return RelayNotConfigured(said)
    if status == 404 and said.startswith("no message"):
        return NoSuchMessage(said)
    if status in (404, 405):  # the route itself is unknown there: a mailsink from before it
        return LinkError(f"the server at {address.url} cannot release messages (an older mailsink)")
    if status == 400 and isinstance(data.get("refused"), list):
        return RecipientsRefused(said, tuple(str(rcpt) for rcpt in data["refused"]))
    if status in (502, 504):
        record: ReleaseRecord | None = None
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            record = ReleaseRecord.from_json(data["release"]) if data.get("release") else None
        code = data.get("code")
        return UpstreamError(
            said,
            code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            stage=str(data.get("stage") or ""),
            timed_out=status == 504 or data.get("timed_out") is True,
            record=record,
        )
    if status == 400:  # the body was refused: not a recipient, a bad trigger
        return ReleaseError(said)
    return LinkError(_refusal(status, raw[:MAX_ERROR_BODY], address))


def _refusal(status: int, raw: bytes, address: ServerAddress) -> str:
    """`HTTP 401 from http://…: authentication required` (the server's JSON error, cut)."""
    try:
        said = str(json.loads(raw).get("error", ""))
    except (ValueError, AttributeError):
        said = ""
    said = visible(said.splitlines()[0][:160]) if said else ""
    return f"HTTP {status} from {address.url}" + (f": {said}" if said else "")
