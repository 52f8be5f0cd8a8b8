"""The sink service: the one object every face (the TUI, the CLI's server, the HTTP API, test
fixtures) talks to.

    async with Sink.serving(settings) as sink:      # the store, the SMTP server, the watcher
        stored = await sink.messages(limit=20)
        with sink.subscribe(MessageStored) as events:
            event = await events.get()

A serving sink owns the store (and through it the writer process), the SMTP listeners, the
config watcher and the fault controls, all on the running event loop. `Sink.attached(settings)`
is a view of a store that another process serves: the same reads and deletions, no SMTP, and
its events come from watching the store (`StoreChanged`). With `link=True` (the TUI) it also
follows the store's server over its HTTP API (mailsink.server_link.ServerLink): the server's
fault rules, switched there, and its live sessions and transcripts, as they happen. Faces use
`fault_rules`, `switch_fault`, `toggle_preset` and `live_sessions` on either kind of sink.

Reads run on one reader thread of the sink's own (SQLite and MIME parsing never run on the
loop); every change to the store is a writer operation (mailsink.store.operations), run by the
writer process when serving and in one transaction of its own when attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailsink import events as ev
from mailsink import relay as relaying
from mailsink.clock import now_ms
from mailsink.config import RelaySettings, Settings
from mailsink.errors import (
    ListenError,
    MailsinkError,
    NoSuchMessage,
    RecipientsRefused,
    RelayNotConfigured,
    ReleaseError,
    UpstreamError,
    WriterLost,
)
from mailsink.events import EventBus, LiveSession, Subscription, TranscriptEvent
from mailsink.faults.controls import FaultControls, RuleState
from mailsink.relay import (
    FAILED,
    PARTIAL,
    RETRYING,
    SENT,
    Delivery,
    ReleasePlan,
    ReleaseRecord,
    error_text,
    release_error,
    reply_with_code,
)
from mailsink.store import (
    MEMORY,
    MessageRecord,
    Reader,
    SessionRecord,
    Store,
    operations,
    resolve_path,
    run_here,
)

if TYPE_CHECKING:
    from mailsink.query import Query
    from mailsink.server_link import ServerLink

T = TypeVar("T")
log = logging.getLogger("mailsink")

# Attached: how often the store is looked at for another process's commits (PRAGMA data_version).
ATTACHED_POLL_SECONDS = 0.1
# Serving: another process's change to the store (`mailsink clear`, an attached TUI's deletion)
# is noticed through the file system; changes closer together than this are told once.
STORE_WATCH_DEBOUNCE_MS = 100


# An operation that may run twice is sent again to the next writer when one dies before it
# answers; a writer killed again and again (a test, a crash loop) gets this many tries.
WRITER_TRIES = 5


async def _again_if_lost(operation: Callable[[], Awaitable[T]]) -> T:
    for _ in range(WRITER_TRIES - 1):
        try:
            return await operation()
        except WriterLost:
            continue
    return await operation()


def _load_http() -> None:
    # Imported only when HTTP is served: the store commands do not pay for aiohttp.
    from mailsink.http.web_service import route_tables

    route_tables()
    global _http_loaded
    _http_loaded = True


_http_loaded = False  # (then a server's start needs no trip to a thread for it: issue 16)

NO_FAULTS = "this view of the store has no link to its server: its fault rules are read-only"


def _http_service(sink: Sink, settings: Settings) -> Any:
    from mailsink.http.web_service import HttpService

    return HttpService(sink, settings)


class Sink:
    """Use `Sink.serving(...)` or `Sink.attached(...)`; both are async context managers."""

    def __init__(
        self,
        settings: Settings,
        path: str,
        *,
        store: Store | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.path = path
        self.store = store
        self.overrides = dict(overrides or {})
        self.events = EventBus()
        self.faults: FaultControls | None = None
        self.server: Any = None  # mailsink.smtp.server.SmtpServer when serving
        self.watcher: Any = None  # mailsink.reload.ConfigWatcher with a config file
        self.http: Any = None  # mailsink.http.web_service.HttpService when HTTP is served
        self.link: ServerLink | None = None  # attached with link=True: the store's server
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mailsink-reader")
        self._executor_used = False  # (its thread starts with the first read)
        self._reader: Reader | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        # smtplib blocks: each release's conversation with the upstream runs on one of these
        # (made at the first release, shut with the sink).
        self._relay_pool: ThreadPoolExecutor | None = None
        self._releasing: set[asyncio.Future[Any]] = set()  # releases in flight
        self.auto_release: Any = None  # mailsink.auto_release.AutoRelease when serving

    # ---- starting and stopping

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(
        cls, settings: Settings, overrides: dict[str, Any] | None = None
    ) -> AsyncIterator[Sink]:
        """The store, the SMTP listeners and (with a config file) its watcher, on the running
        loop. Leaving stops the listeners and lets messages in flight finish (10 s at most).
        `overrides` (the command line's --host, --port, --db) win over the config file, also
        when it is reloaded."""
        from mailsink.reload import ConfigWatcher
        from mailsink.smtp.server import SmtpServer

        storage = settings.storage
        if settings.http.enabled and not _http_loaded:
            # aiohttp and the routes imported (a few hundred ms) off the loop, and before the
            # store is locked: from then on a viewer takes the store as served, and the
            # server's row, with its addresses, follows as soon as SMTP listens.
            await asyncio.to_thread(_load_http)
        store = await asyncio.to_thread(Store, storage.path, storage.max_messages)
        log.info(
            "store: %s", "in memory (nothing is kept)" if storage.path == MEMORY else store.path
        )
        sink = cls(settings, store.path, store=store, overrides=overrides)
        try:
            sink.faults = FaultControls(settings, sink.events)
            sink.server = SmtpServer(settings, store, sink.faults, sink.events)
            http = _http_service(sink, settings) if settings.http.enabled else None
            try:
                await sink.server.start()
            except OSError as error:
                smtp = settings.smtp
                raise ListenError(
                    f"cannot listen on {smtp.host}:{smtp.port}: {error.strerror or error}"
                ) from None
            if http is not None:
                try:
                    await http.start()
                except BaseException:
                    await sink._close_server()
                    raise
                sink.http = http
            if settings.source is not None:
                sink.watcher = ConfigWatcher(settings.source, sink, **sink.overrides)
                await sink.watcher.prepare()
                sink._tasks.append(asyncio.create_task(sink.watcher.run(sink._stop)))
                log.info("watching %s for changes", settings.source)
            from mailsink.auto_release import AutoRelease

            # Released after their commit, in the background ([relay] auto; off by default).
            sink.auto_release = AutoRelease(sink)
            sink.auto_release.apply_settings(settings)
            try:
                yield sink
            finally:
                log.info("shutting down: finishing messages in flight")
                await sink._close_server()
        finally:
            if sink.auto_release is not None:
                await sink.auto_release.stop()  # (what it had not released is logged)
            await sink._finish_releases()
            sink._close_relay_pool()
            await sink._close_reader()
            await asyncio.to_thread(store.close)

    @classmethod
    @contextlib.asynccontextmanager
    async def attached(cls, settings: Settings, *, link: bool = False) -> AsyncIterator[Sink]:
        """A view of the store (settings.storage.path) that another process serves. Fails at
        once, with a clear StoreError, when there is no store there. `link`: follow the store's
        server through its HTTP API too (found as mailsink.server_link.find_server finds it,
        again whenever it is lost), telling how that goes as ServerLinkChanged events."""
        path = resolve_path(settings.storage.path)
        await asyncio.to_thread(lambda: Reader(path).close())
        sink = cls(settings, path)
        sink._tasks.append(asyncio.create_task(sink._watch_data_version()))
        if link:
            from mailsink.server_link import ServerLink

            # aiohttp is imported off the loop (a few hundred ms the first time).
            await asyncio.to_thread(importlib.import_module, "aiohttp")
            sink.link = ServerLink(path, sink.events)
            sink.link.start()
        try:
            yield sink
        finally:
            sink._stop.set()
            if sink.link is not None:
                await sink.link.close()
            for task in sink._tasks:
                task.cancel()
            for task in sink._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await sink._finish_releases()
            sink._close_relay_pool()
            await sink._close_reader()

    @property
    def http_url(self) -> str | None:
        """Where the HTTP API listens (http://127.0.0.1:8025), None when it is not served."""
        return self.http.url if self.http is not None else None

    async def _close_server(self) -> None:
        self._stop.set()
        if self.http is not None:  # first: no request starts while the listener drains
            await self.http.stop()
            self.http = None
        if self.server is not None:
            await self.server.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _close_reader(self) -> None:
        def close() -> None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

        # A sink that never read has no reader, and no thread to start just to say so (a test
        # fixture's server often reads nothing itself: issue 16).
        if self._executor_used:
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)

    async def _finish_releases(self) -> None:
        """Wait for the releases in flight to end and be recorded: each ends within
        WHOLE_RELEASE_TIMEOUTS times its [relay] timeout (the deliver's own deadline), and a
        few seconds more let its row be written; what is left then is cancelled."""
        if not self._releasing:
            return
        log.info("finishing %d release(s) in flight", len(self._releasing))
        grace = self.settings.relay.timeout * relaying.WHOLE_RELEASE_TIMEOUTS + 5.0
        _done, left = await asyncio.wait(set(self._releasing), timeout=grace)
        if left:
            log.warning(
                "%d release(s) still talking to the upstream at the stop are not recorded",
                len(left),
            )
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=1.0)

    def _close_relay_pool(self) -> None:
        # Not waited for: a release still talking to its upstream ends by its [relay] timeout,
        # and nobody waits for its answer any more.
        if self._relay_pool is not None:
            self._relay_pool.shutdown(wait=False, cancel_futures=True)
            self._relay_pool = None

    def _on_reader_thread(self, job: Callable[[], T]) -> asyncio.Future[T]:
        self._executor_used = True
        return asyncio.get_running_loop().run_in_executor(self._executor, job)

    @property
    def is_attached(self) -> bool:
        """A view of another process's store: no SMTP server, no fault controls here."""
        return self.server is None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the SMTP server listens (empty when attached)."""
        return list(self.server.addresses) if self.server is not None else []

    @property
    def labels(self) -> list[str]:
        """What each address serves: "SMTP" or "SMTPS, implicit TLS"."""
        return list(self.server.labels) if self.server is not None else []

    # ---- fault rules, here or at the store's server

    @property
    def can_switch_faults(self) -> bool:
        """Serving, or attached and linked to the store's server: `switch_fault` and
        `toggle_preset` can work."""
        return self.faults is not None or (self.link is not None and self.link.live)

    def fault_rules(self) -> list[RuleState]:
        """The rules in force, in the order they are tried: this sink's own, or (attached) the
        server's as last heard; empty when there are none to know of."""
        if self.faults is not None:
            return self.faults.rules()
        return self.link.rules() if self.link is not None else []

    async def switch_fault(self, name: str, enabled: bool) -> None:
        """Switch a rule on or off from the next SMTP command on. KeyError: no such rule here;
        MailsinkError (mailsink.server_link.LinkError): the server could not be asked."""
        if self.faults is not None:
            self.faults.set_enabled(name, enabled)
            return
        if self.link is None:
            raise MailsinkError(NO_FAULTS)
        await self.link.switch_fault(name, enabled)

    async def toggle_fault(self, name: str) -> bool:
        """Switch a rule to the opposite of its state, read when the switch is made (after the
        ones asked for before it: two quick toggles are a toggle and back, not one switch
        twice); True when it is now on. Errors as `switch_fault`'s."""
        if self.faults is not None:
            enabled = not self.faults.rule(name).enabled
            self.faults.set_enabled(name, enabled)
            return enabled
        if self.link is None:
            raise MailsinkError(NO_FAULTS)
        return await self.link.toggle_fault(name)

    async def toggle_preset(self, key: str) -> bool:
        """Switch a preset (by its key, 1-5) on or off; True when it is now on. Errors as
        `switch_fault`'s."""
        if self.faults is not None:
            return self.faults.toggle_preset(key)
        if self.link is None:
            raise MailsinkError(NO_FAULTS)
        return await self.link.toggle_preset(key)

    # ---- configuration (the watcher calls this)

    def apply_settings(self, settings: Settings) -> None:
        """Swap in reloaded settings; they apply from each connection's next command."""
        self.settings = settings
        if self.faults is not None:
            self.faults.apply_settings(settings)
        if self.server is not None:
            self.server.apply_settings(settings)
        if self.http is not None:
            self.http.apply_settings(settings)
        if self.auto_release is not None:
            self.auto_release.apply_settings(settings)

    @property
    def config_error(self) -> str | None:
        """Why the last edit of the config file was not applied (None once one is)."""
        return self.watcher.error if self.watcher is not None else None

    # ---- reads, on the reader thread

    async def read(self, query: Callable[..., T], *args: Any) -> T:
        """Run `query(reader, *args)` on the reader thread (a Reader only reads): for the
        queries that the methods below do not cover."""
        return await self._on_reader_thread(partial(self._run, query, *args))

    def _run(self, query: Callable[..., T], *args: Any) -> T:
        if self._reader is None:
            self._reader = Reader(self.path)
        return query(self._reader, *args)

    async def messages(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        query: Query | None = None,
        findings_only: bool = False,
    ) -> list[MessageRecord]:
        """Newest first; `query` (mailsink.query.parse_query) as `mailsink list --search` and
        the TUI's `/` take it: without one, or without a status: term, accepted ones only."""
        return await self.read(
            lambda r: r.list_messages(
                limit=limit, offset=offset, query=query, findings_only=findings_only
            )
        )

    async def count_messages(
        self, *, query: Query | None = None, findings_only: bool = False
    ) -> int:
        return await self.read(lambda r: r.count_messages(query=query, findings_only=findings_only))

    async def unread_count(self) -> int:
        """Accepted messages not read yet (what the status line counts)."""
        return await self.read(lambda r: r.unread_count())

    async def message(self, message_id: int) -> MessageRecord | None:
        return await self.read(Reader.get_message, message_id)

    async def raw(self, message_id: int) -> bytes | None:
        """The message exactly as it was received."""
        return await self.read(Reader.get_raw, message_id)

    async def parsed(self, message_id: int) -> Any:
        """The parsed message (mailsink.mail.parse.ParsedMessage), parsed on the reader thread."""
        return await self.read(Reader.get_parsed, message_id)

    async def stored_sessions(
        self, *, limit: int = 50, offset: int = 0, with_refusals: bool = False
    ) -> list[SessionRecord]:
        """Sessions as the store has them, newest first (see `sessions` for the live view);
        `with_refusals`: only those in which the server refused something."""
        return await self.read(
            lambda r: r.list_sessions(limit=limit, offset=offset, with_refusals=with_refusals)
        )

    async def sessions(
        self, *, limit: int = 50, with_refusals: bool = False
    ) -> list[SessionRecord | LiveSession]:
        """The newest sessions, newest first: a live session (or one that has just ended and
        whose last row the store has not committed yet) as its connection knows it now, the
        others as stored. Nothing is missed between a session's end and its commit.
        `with_refusals`: only the sessions in which the server refused something (MAIL, a
        RCPT, DATA, ...)."""
        # Live ones first: one that ends between the two reads is then still live here or
        # already stored there (the server keeps it until its end has committed).
        live = {
            session.id: session
            for session in self.live_sessions()
            if session.refusals or not with_refusals
        }
        stored = await self.stored_sessions(limit=limit, with_refusals=with_refusals)
        merged: dict[int, SessionRecord | LiveSession] = {record.id: record for record in stored}
        floor = stored[-1].id if len(stored) >= limit else 0
        if self.link is not None:  # the ended ones the store has whole need no snapshot
            ended = {record.id for record in stored if record.end_reason is not None}
            # One whose end the link may have missed (events lost) and that is not listed:
            # looked up by itself, or it would stay live here for ever.
            unlisted = [i for i in self.link.stale_sessions() if i in live and i not in merged]
            if unlisted:
                ended.update(await self.read(_ended_of, unlisted))
            self.link.forget_ended(i for i in ended if i in live)
            live = {i: session for i, session in live.items() if i not in ended}
        for session_id, session in live.items():
            if session_id > floor:
                merged[session_id] = session
        return [merged[i] for i in sorted(merged, reverse=True)][:limit]

    async def session(
        self, session_id: int, *, with_transcript: bool = True
    ) -> SessionRecord | None:
        """One session as stored (with its transcript so far); see `live_session` for what its
        connection knows that the store does not yet."""
        return await self.read(lambda r: r.get_session(session_id, with_events=with_transcript))

    def live_sessions(self) -> list[LiveSession]:
        """Frozen snapshots of the sessions this sink's server is serving, and of those that
        have ended but whose last row has not committed yet. Attached: those the store's
        server told of over its event stream (empty without a link)."""
        if self.server is not None:
            return self.server.live_sessions()
        return self.link.live_sessions() if self.link is not None else []

    def live_session(self, session_id: int) -> LiveSession | None:
        if self.server is not None:
            return self.server.live_session(session_id)
        return self.link.live_session(session_id) if self.link is not None else None

    async def transcript(self, session_id: int, after_seq: int = 0) -> list[TranscriptEvent]:
        """The session's transcript lines after `after_seq`, in order: the stored ones and, for
        a live session, those its connection has not handed to the store yet."""
        # The connection's lines first, then the store's: a line taken from `unwritten` in
        # between is in the store by then, or still on its way to it (a gap, for a moment).
        live = self.live_session(session_id)
        stored = await self.read(Reader.session_events, session_id, after_seq)
        if live is None:
            return stored
        if stored and self.link is not None:  # what the store has, the link need not keep
            self.link.stored_through(session_id, stored[-1][0])
        lines = {line[0]: line for line in stored}
        lines.update((line[0], line) for line in live.unwritten if line[0] > after_seq)
        return [lines[seq] for seq in sorted(lines)]

    # ---- changes: every one a writer operation

    async def _here(self, operation: Callable[..., T], **arguments: Any) -> T:
        """Attached: the store's own operation, in one transaction of this process's, on the
        reader thread (so that a read asked for after it sees it), while another process's
        writer runs beside it (SQLite's lock orders them)."""
        return await self._on_reader_thread(partial(run_here, self.path, operation, **arguments))

    async def delete_messages(self, message_ids: Iterable[int]) -> int:
        """Delete these messages in one transaction; returns how many were still there."""
        ids = tuple(message_ids)
        if self.store is None:
            deleted = await self._here(operations.delete_messages, message_ids=list(ids))
        else:
            # The writer died before answering: the deletion may or may not have committed.
            # Deleting given ids is idempotent, so the next writer makes sure of it (a clear
            # is not: run again, it would take mail accepted since).
            store = self.store
            deleted = await _again_if_lost(lambda: store.delete_messages(ids))
        if ids and self.events.wants(ev.MessagesDeleted):
            self.events.publish(ev.MessagesDeleted(ids))
        return deleted

    async def delete_message(self, message_id: int) -> bool:
        return await self.delete_messages((message_id,)) > 0

    async def _write(self, operation: Callable[..., T], **arguments: Any) -> T:
        """An operation that may be run twice (each of these sets a state): through the writer
        when serving (sent again if the writer died before answering), else in a transaction
        of this process's."""
        if self.store is None:
            return await self._here(operation, **arguments)
        change = partial(operation, **arguments)
        store = self.store
        return await _again_if_lost(lambda: store.run(change))

    def _changed(self, message_ids: tuple[int, ...]) -> None:
        if self.events.wants(ev.MessagesChanged):
            self.events.publish(ev.MessagesChanged(message_ids))

    async def mark_read(self, message_ids: Iterable[int], read: bool = True) -> int:
        """Mark these messages read (`read=False`: unread); returns how many changed."""
        ids = tuple(message_ids)
        changed = await self._write(operations.mark_read, ids=list(ids), read=read) if ids else 0
        if changed:
            self._changed(ids)
        return changed

    async def mark_all_read(self) -> int:
        """Mark every message read; returns how many were unread."""
        changed = await self._write(operations.mark_all_read)
        if changed:
            self._changed(())
        return changed

    async def change_tags(
        self, message_ids: Iterable[int], add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> int:
        """Add and remove tags on these messages (removing ignores case); returns how many
        messages changed. ValueError, before anything is written, for a tag that is not one as
        given (mail/tags.py given_tag), more than MAX_TAGS of them, or one both added and
        removed; ValueError too, nothing written, when a message would hold more than
        MAX_TAGS."""
        ids, adding, removing = tuple(message_ids), list(add), list(remove)
        # Checked here too, so that a typo costs the writer no failed operation.
        operations.change_tags_check(adding, removing)
        if not ids or not (adding or removing):
            return 0
        changed = await self._write(
            operations.change_tags, ids=list(ids), add=adding, remove=removing
        )
        if changed:
            self._changed(ids)
        return changed

    # ---- releasing to the [relay] server (mailsink/relay.py)

    async def release(
        self, message_id: int, recipients: list[str] | None = None, *, trigger: str = "cli"
    ) -> ReleaseRecord:
        """Send the stored message to `recipients` (None: its envelope recipients that
        `[relay] allowed_recipients` allows) through the `[relay]` server, record the try in
        the store and publish MessageReleased. Serving: done here, on a relay thread (the loop
        stays free). Attached and linked to the store's server: the server does it (its
        `[relay]`, its event stream). Attached without a link: done here with this sink's
        settings, recorded in a transaction of this process's.

        Returns the record (outcome "sent", or "partial" with `refused` naming who the
        upstream refused). Raises, before anything is sent: RelayNotConfigured, NoSuchMessage,
        RecipientsRefused (naming them; also for none at all); after: UpstreamError quoting
        the upstream's reply (its `record` is the "failed" row written for it)."""
        if self.link is not None and self.link.live:
            return await self.link.release(message_id, recipients, trigger)
        # Read once: a reload in the middle of a release does not mix two configs.
        relay = self.settings.relay
        record, delivery = await self.release_try(relay, message_id, recipients, trigger)
        if record.outcome == FAILED:
            raise release_error(delivery, message_id, record=record)
        return record

    async def release_try(
        self,
        relay: RelaySettings,
        message_id: int,
        recipients: list[str] | None,
        trigger: str,
        *,
        attempt: int = 1,
        retry_if: Callable[[Delivery], bool] | None = None,
    ) -> tuple[ReleaseRecord, Delivery]:
        """One try of a release here, with these settings: the checks (RelayNotConfigured,
        NoSuchMessage, RecipientsRefused, raised before any connection), the delivery on a
        relay thread, its row, MessageReleased and the log line. Never raises for what the
        upstream did: the record says it (outcome "retrying" for a failure `retry_if` says
        will be tried again: auto release's)."""
        if not relay.configured:
            raise RelayNotConfigured(NOT_CONFIGURED)
        message = await self.read(Reader.get_message, message_id)
        if message is None:
            raise NoSuchMessage(f"no message {message_id}")
        envelope = message.envelope
        plan = relaying.plan(relay, message_id, envelope.mail_from, list(envelope.rcpt_to))
        chosen = _each_once(plan.recipients if recipients is None else recipients)
        _check_recipients(relay, message_id, chosen, plan, given=recipients is not None)
        raw = await self.read(Reader.get_raw, message_id)
        if raw is None:
            raise NoSuchMessage(f"no message {message_id}")
        at = now_ms()
        if self._relay_pool is None:
            self._relay_pool = ThreadPoolExecutor(
                RELAY_THREADS, thread_name_prefix="mailsink-relay"
            )
        # From here the release is one piece that a cancelled caller (an HTTP client gone, the
        # TUI's dialog closed, auto release stopping with the server) does not cut short: what
        # reached the upstream is recorded, and the server's stop waits for it (_finish_releases).
        work = self._deliver_and_record(
            relay, message_id, raw, plan, chosen, trigger, at, attempt, retry_if
        )
        task = asyncio.ensure_future(work)
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return await asyncio.shield(task)

    async def _deliver_and_record(
        self,
        relay: RelaySettings,
        message_id: int,
        raw: bytes,
        plan: ReleasePlan,
        chosen: list[str],
        trigger: str,
        at: int,
        attempt: int,
        retry_if: Callable[[Delivery], bool] | None,
    ) -> tuple[ReleaseRecord, Delivery]:
        send = partial(relaying.deliver, relay, raw, plan.mail_from, chosen, message_id=message_id)
        try:
            delivery = await asyncio.get_running_loop().run_in_executor(self._relay_pool, send)
        except (UpstreamError, RecipientsRefused, RelayNotConfigured, NoSuchMessage):
            raise
        except ReleaseError as error:  # e.g. password_env names no variable: nothing was sent
            delivery = Delivery(
                relay.upstream,
                plan.mail_from,
                tuple(chosen),
                FAILED,
                None,
                str(error),
                stage="auth",
            )
        outcome = delivery.outcome
        if outcome == FAILED and retry_if is not None and retry_if(delivery):
            outcome = RETRYING
        record = ReleaseRecord(
            id=0,  # (the row's, once written)
            message_id=message_id,
            at=at,
            trigger=trigger,
            upstream=delivery.upstream,
            mail_from=delivery.mail_from,
            recipients=tuple(delivery.recipients),
            outcome=outcome,
            code=delivery.code,
            reply=delivery.reply,
            refused=dict(delivery.refused),
            attempt=attempt,
        )
        record = dataclasses.replace(record, id=await self._record_release(record) or 0)
        if self.events.wants(ev.MessageReleased):
            self.events.publish(
                ev.MessageReleased(
                    message_id=message_id,
                    release_id=record.id,
                    outcome=outcome,
                    recipients=record.recipients,
                    upstream=record.upstream,
                    code=record.code,
                    reply=record.reply,
                    trigger=trigger,
                    attempt=attempt,
                )
            )
        _log_release(record, delivery, relay.timeout)
        return record, delivery

    async def _record_release(self, record: ReleaseRecord) -> int | None:
        """The try's row (through the writer, or in a transaction here); None when it could
        not be written (the message deleted meanwhile, an old store, a read-only one): the
        release happened all the same, and is reported."""
        message_id = record.message_id
        fields = dataclasses.asdict(record)
        del fields["id"]
        fields["recipients"] = list(record.recipients)
        try:
            release_id = await self._write(operations.record_release, **fields)
        except (MailsinkError, sqlite3.Error) as error:
            log.warning("release of message %s is not recorded: %s", message_id, error)
            return None
        if release_id is None:
            log.info("release of message %s is not recorded: the message is gone", message_id)
        return release_id

    async def release_plan(self, message_id: int) -> ReleasePlan:
        """What `release(message_id)` would do (upstream, MAIL FROM, default recipients): from
        this sink's settings, or (attached, linked) the server's. NoSuchMessage when it is
        gone."""
        if self.link is not None and self.link.live:
            return await self.link.release_plan(message_id)
        relay = self.settings.relay
        message = await self.read(Reader.get_message, message_id)
        if message is None:
            raise NoSuchMessage(f"no message {message_id}")
        envelope = message.envelope
        return relaying.plan(relay, message_id, envelope.mail_from, list(envelope.rcpt_to))

    async def releases(self, message_id: int) -> list[ReleaseRecord]:
        """The releases tried of this message, oldest first."""
        return await self.read(Reader.releases, message_id)

    async def delete_idle_sessions(self) -> int:
        """Delete the finished sessions that have no message left."""
        if self.store is None:
            return await self._here(operations.delete_idle_sessions)
        return await self.store.delete_idle_sessions()

    async def clear(self) -> int:
        """Delete every message and every finished session; returns how many messages went."""
        if self.store is None:
            count = await self._here(operations.clear)
        else:
            count = await self.store.clear()
        if self.events.wants(ev.MessagesDeleted):
            self.events.publish(ev.MessagesDeleted((), everything=True))
        return count

    async def flush(self) -> None:
        """Returns once everything this sink has handed the store so far has committed (session
        rows share the next commit, so they may still be queued); attached, once the changes
        asked for so far are done."""
        if self.store is not None:
            await self.store.flush()
        else:
            await self.read(lambda _reader: None)  # the reader thread runs them in order

    # ---- events

    def subscribe(self, *kinds: type, limit: int = ev.QUEUE_LIMIT) -> Subscription:
        """The sink's events of `kinds` (all when none is given), from now on; see
        mailsink.events. Asking for StoreChanged starts watching the store for other
        processes' changes."""
        subscription = self.events.subscribe(*kinds, limit=limit)
        if ev.StoreChanged in subscription.kinds and self.server is not None:
            self._watch_store_files()
        return subscription

    async def _watch_data_version(self) -> None:
        """Attached: another process commits; tell subscribers when it has."""
        version: int | None = None
        while not self._stop.is_set():
            try:
                now = await self.read(Reader.data_version)
            except Exception as error:  # e.g. a locked or vanished store: tried again
                log.debug("store not readable: %s", error)
                now = None
            if now is not None and now != version:
                if version is not None:
                    self.events.publish(ev.StoreChanged())
                version = now
            await asyncio.sleep(ATTACHED_POLL_SECONDS)

    def _watch_store_files(self) -> None:
        if any(task.get_name() == "mailsink-store-watch" for task in self._tasks):
            return
        task = asyncio.create_task(self._store_files_changed(), name="mailsink-store-watch")
        self._tasks.append(task)

    async def _store_files_changed(self) -> None:
        """Serving: other processes may change the store too (`mailsink clear`, an attached
        TUI's deletion). Its files are watched (inotify or the system's equivalent), not
        polled; this sink's own commits show up as well, and a StoreChanged costs a face one
        small read."""
        # Imported off the loop (about 100 ms the first time: SMTP and HTTP must not wait).
        watchfiles = await asyncio.to_thread(importlib.import_module, "watchfiles")
        awatch = watchfiles.awatch
        # watchfiles logs "1 change detected" at INFO for every event: each commit, here.
        logging.getLogger("watchfiles.main").setLevel(logging.WARNING)

        # Where SQLite writes: a symlinked store's files are its target's.
        real = Path(os.path.realpath(self.path))
        names = {real.name + suffix for suffix in ("", "-wal")}
        directory = str(real.parent)
        try:
            async for _changes in awatch(
                directory,
                watch_filter=lambda _change, changed: Path(changed).name in names,
                recursive=False,
                stop_event=self._stop,
                debounce=STORE_WATCH_DEBOUNCE_MS,
                step=50,
            ):
                self.events.publish(ev.StoreChanged())
        except Exception as error:  # no watch possible here: faces see this sink's own changes
            log.warning("cannot watch the store for other programs' changes: %s", error)


def _ended_of(reader: Reader, session_ids: list[int]) -> list[int]:
    """Those of these sessions whose end the store has."""
    return [
        session_id
        for session_id in session_ids
        if (record := reader.get_session(session_id, with_events=False)) is not None
        and record.end_reason is not None
    ]


def live_record(
    session: LiveSession, events: list[tuple[int, str, str]] | None = None
) -> SessionRecord:
    """A live session as a SessionRecord (without its transcript unless `events` are given), so
    that its JSON is the CLI's (end_reason null: still connected) and a test reads it as a
    stored row."""
    return SessionRecord(
        id=session.id,
        started_at=session.started_at,
        ended_at=session.ended_at,
        peer=session.peer,
        helo=session.helo,
        tls=session.tls,
        auth_user=session.auth_user,
        end_reason=session.end_reason,
        message_count=len(session.message_ids),
        last_reply=session.last_reply,
        faults=session.faults_fired,
        message_ids=list(session.message_ids),
        events=events or [],
        state=session.state,
        refusals=session.refusals,
        last_refusal=session.last_refusal,
    )


# ---- releases

NOT_CONFIGURED = "releasing is off: no [relay] host in the config"
RELAY_THREADS = 4  # releases talking to upstreams at once (each blocks a thread: smtplib)
MAX_RECIPIENTS = 100  # per release


def _each_once(recipients: Iterable[str]) -> list[str]:
    """Each recipient once (compared without regard to case), in the order given."""
    seen: dict[str, str] = {}
    for recipient in recipients:
        address = recipient.strip()
        seen.setdefault(address.lower(), address)
    return list(seen.values())


def _check_recipients(
    relay: RelaySettings, message_id: int, chosen: list[str], plan: ReleasePlan, *, given: bool
) -> None:
    """RecipientsRefused, naming them, unless every one may be released to."""
    if not chosen:
        if given:
            raise RecipientsRefused(f"release of message {message_id}: no recipients given")
        why = (
            f"none of its envelope recipients ({', '.join(plan.not_allowed)}) is allowed by"
            " [relay] allowed_recipients"
            if plan.not_allowed
            else "it has no envelope recipients"
        )
        raise RecipientsRefused(
            f"release of message {message_id}: no recipients: {why}", tuple(plan.not_allowed)
        )
    if len(chosen) > MAX_RECIPIENTS:
        raise RecipientsRefused(
            f"release of message {message_id}: {len(chosen)} recipients; a release goes to"
            f" {MAX_RECIPIENTS} at most"
        )
    refused = relaying.refused_recipients(relay, chosen)
    if refused:
        allowed = ", ".join(relay.allowed_recipients) or "none: the list is empty"
        raise RecipientsRefused(
            f"release of message {message_id}: not allowed by [relay] allowed_recipients"
            f" ({allowed}): {', '.join(refused)}; nothing was sent",
            tuple(refused),
        )


def _log_release(record: ReleaseRecord, delivery: Delivery, timeout: float) -> None:
    from mailsink.text import visible

    to = ", ".join(record.recipients)
    answer = visible(reply_with_code(record.code, record.reply))
    if record.outcome == SENT:
        log.info(
            "released message %s to %s via %s: %s",
            record.message_id,
            visible(to, emoji=False),
            record.upstream,
            answer,
        )
    elif record.outcome == PARTIAL:
        refused = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in record.refused.items())
        log.warning(
            "released message %s in part via %s: refused %s; sent to the others: %s",
            record.message_id,
            record.upstream,
            visible(refused, emoji=False),
            answer,
        )
    else:
        again = f" (try {record.attempt}, tried again later)" if record.outcome == RETRYING else ""
        log.warning("%s%s", error_text(delivery, record.message_id), again)
