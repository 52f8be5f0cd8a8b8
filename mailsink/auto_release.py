"""Automatic release (`[relay] auto = true`): each accepted message whose envelope recipients
`auto_recipients` names (and `allowed_recipients` allows) is released to the `[relay]` server
by itself, after it is stored.

    auto = AutoRelease(sink)            # a serving sink makes one (Sink.serving)
    auto.apply_settings(settings)       # at start and at each reload: on or off
    await auto.stop()                   # with the sink: what was not released is logged

It never delays a client's 250: it hears of a message from its MessageStored, which is
published once the message has committed, and does everything after that in tasks of its own
(the delivery itself on the sink's relay threads). At most QUEUE_LIMIT messages wait or are
being released at once; beyond that a message is skipped (logged, counted in `skipped`).

A try that failed for now (a 4xx reply, a timeout, a connection that could not be made or was
lost) is tried again after 1 s, 2 s, 4 s, ... (60 s at most between two) up to `[relay]
auto_retries` tries; each try is recorded (outcome "retrying" until the last, which is
"failed"). A 5xx reply, a TLS or login failure, a refused recipient are not tried again. The
settings are read afresh at each try: a reload that turns auto off (or the relay) ends the
retries too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from mailsink import events as ev
from mailsink.config import RelaySettings, Settings
from mailsink.errors import ReleaseError
from mailsink.relay import RETRYING, Delivery, ReleaseRecord, auto_recipients
from mailsink.store import Reader
from mailsink.text import visible

if TYPE_CHECKING:
    from mailsink.sink import Sink

log = logging.getLogger("mailsink")

QUEUE_LIMIT = 1000  # messages waiting for, or in, their auto release at once
RETRY_FIRST_SECONDS = 1.0  # the wait before the second try; doubled each time after
RETRY_MOST_SECONDS = 60.0
SENDING_AT_ONCE = 4  # as many as the sink has relay threads: the rest wait their turn
TRIGGER = "auto"
# Auto release gives way to incoming mail: a release starts once no message has been stored
# for QUIET_SECONDS, or once its message has waited DEFER_MOST_SECONDS. On a machine whose
# cores the SMTP server keeps busy, a release's CPU (smtplib holds the GIL the loop needs, and
# the upstream may be on the same machine) would otherwise come out of ingest: 0.7 of the
# throughput at ~200 releases/s on 2 cores (bench/ingest.py --auto-release, PERFORMANCE.md).
QUIET_SECONDS = 0.25
DEFER_MOST_SECONDS = 10.0


# Failures without a reply code at these stages are the setup's (a certificate, STARTTLS not
# offered, no AUTH or no password, SMTPUTF8 needed and not offered): another try fails the same.
SETUP_STAGES = frozenset({"tls", "auth", "mail"})


def temporary(delivery: Delivery) -> bool:
    """Whether a failed delivery is worth another try: the upstream answered 4xx, did not
    answer in time, could not be reached or dropped the connection. A 5xx is final, and so is
    a failure of the setup (SETUP_STAGES)."""
    if delivery.timed_out:
        return True
    if delivery.code is not None:
        return 400 <= delivery.code < 500
    return delivery.stage not in SETUP_STAGES


def backoff(attempt: int) -> float:
    """Seconds to wait after try `attempt` (1, 2, ...) before the next one."""
    return min(RETRY_MOST_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempt - 1))


def _on(relay: RelaySettings) -> bool:
    return relay.configured and relay.auto


class AutoRelease:
    """A serving sink's automatic releases. Runs on the sink's loop."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.skipped = 0  # messages not released because QUEUE_LIMIT were in hand already
        self._subscription: ev.Subscription | None = None
        self._listener: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Task[None]] = {}  # message id -> its releasing task
        self._sending = asyncio.Semaphore(SENDING_AT_ONCE)
        self._full = False  # skipping (logged once until there is room again)
        self._last_stored = 0.0  # loop.time() of the newest MessageStored
        self._taken: dict[int, float] = {}  # message id -> loop.time() it was taken
        self._stopped = False

    @property
    def pending(self) -> list[int]:
        """The messages waiting for, or in, their release (ids, oldest first)."""
        return sorted(self._pending)

    def apply_settings(self, settings: Settings) -> None:
        """Listen for stored messages while `[relay] auto` is on; stop listening when a reload
        turns it off (tries already in hand end at their next try, which reads it again)."""
        if self._stopped:
            return
        if _on(settings.relay) and self._listener is None:
            # Only while on: with auto off a message costs the SMTP path no event at all.
            self._subscription = self.sink.subscribe(ev.MessageStored)
            self._listener = asyncio.create_task(
                self._listen(self._subscription), name="mailsink-auto-release"
            )
            log.info(
                "auto release on: messages to %s go to %s",
                ", ".join(settings.relay.auto_recipients),
                settings.relay.upstream,
            )
        elif not _on(settings.relay) and self._listener is not None:
            self._end_listening()
            log.info("auto release off")

    def _end_listening(self) -> None:
        if self._subscription is not None:
            self._subscription.close()  # the listener's `async for` ends
        self._subscription = None
        self._listener = None

    async def stop(self) -> None:
        """With the sink: no more releases; those in hand are dropped (and logged)."""
        self._stopped = True
        listener = self._listener
        self._end_listening()
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        tasks = list(self._pending.values())
        if tasks:
            ids = ", ".join(map(str, self.pending[:20])) + (" …" if len(tasks) > 20 else "")
            log.warning(
                "auto release: stopped with %d message(s) not released yet: %s (a try already"
                " talking to the upstream ends and is recorded)",
                len(tasks),
                ids,
            )
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _listen(self, subscription: ev.Subscription) -> None:
        async for event in subscription:
            if isinstance(event, ev.EventsLost):  # (cannot tell which: none of them is sent)
                self.skipped += event.count
                log.warning(
                    "auto release: fell behind; %d stored message(s) are not released",
                    event.count,
                )
                continue
            if isinstance(event, ev.MessageStored):
                self._last_stored = asyncio.get_running_loop().time()
            if not isinstance(event, ev.MessageStored) or event.rejected:
                continue
            if not _on(self.sink.settings.relay):
                continue
            self._take(event.message_id)

    def _take(self, message_id: int) -> None:
        if message_id in self._pending:
            return
        if len(self._pending) >= QUEUE_LIMIT:
            self.skipped += 1
            if not self._full:
                log.warning(
                    "auto release: %d messages are waiting already; message %s (and any"
                    " more until there is room) is not released",
                    QUEUE_LIMIT,
                    message_id,
                )
            self._full = True
            return
        if self._full:
            log.info("auto release: room again; %d message(s) skipped so far", self.skipped)
            self._full = False
        self._taken[message_id] = asyncio.get_running_loop().time()
        task = asyncio.create_task(self._release(message_id))
        self._pending[message_id] = task
        task.add_done_callback(lambda _task: self._forget(message_id))

    def _forget(self, message_id: int) -> None:
        self._pending.pop(message_id, None)
        self._taken.pop(message_id, None)

    async def _quiet(self, message_id: int) -> None:
        """Until no mail has come for QUIET_SECONDS, or this message has waited
        DEFER_MOST_SECONDS (only the few tasks holding a sending turn wait here)."""
        loop = asyncio.get_running_loop()
        deadline = self._taken.get(message_id, 0.0) + DEFER_MOST_SECONDS
        while True:
            now = loop.time()
            quiet_at = self._last_stored + QUIET_SECONDS
            if now >= quiet_at or now >= deadline:
                return
            await asyncio.sleep(min(quiet_at, deadline) - now)

    async def _release(self, message_id: int) -> None:
        attempt = 1
        while True:
            relay = self.sink.settings.relay  # afresh at each try: a reload applies
            if not _on(relay):
                if attempt > 1:
                    log.info(
                        "auto release of message %s: auto release is off now; not tried again",
                        message_id,
                    )
                return
            # Read only once its turn comes: a burst of mail costs the reader thread (and the
            # GIL the SMTP server needs) nothing until then (bench/ingest.py --auto-release).
            async with self._sending:
                await self._quiet(message_id)
                message = await self.sink.read(Reader.get_message, message_id)
                if message is None:
                    return  # deleted meanwhile
                recipients = auto_recipients(relay, list(message.envelope.rcpt_to))
                if not recipients:
                    return  # not for auto release: nothing to say
                record = await self._try(relay, message_id, recipients, attempt)
            if record is None or record.outcome != RETRYING:
                return
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _try(
        self, relay: RelaySettings, message_id: int, recipients: list[str], attempt: int
    ) -> ReleaseRecord | None:
        last = attempt >= relay.auto_retries
        try:
            record, _ = await self.sink.release_try(
                relay,
                message_id,
                recipients,
                TRIGGER,
                attempt=attempt,
                retry_if=None if last else temporary,
            )
        except ReleaseError as error:  # deleted meanwhile, a recipient not allowed, ...
            log.warning("auto release of message %s: %s", message_id, visible(str(error)))
            return None
        return record
