"""Sessions: every SMTP conversation, live ones marked, with a transcript that streams."""

from __future__ import annotations

import operator
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static

from mailsink.store.db import StoreError
from mailsink.store.reader import Reader, SessionRecord
from mailsink.text import visible
from mailsink.tui import render
from mailsink.tui.backend import Backend
from mailsink.tui.widgets.fitted import Column, FittedTable

if TYPE_CHECKING:
    from mailsink.smtp.protocol import SmtpConnection

SHOWN_LINES = 2000  # transcript lines shown at first; more stream in
# Transcript lines written per refresh: a busy session's thousands of new lines go in batches,
# with the loop free (keys, the table, the status line) between them.
STREAMED_PER_REFRESH = 200
LISTED = 300  # newest sessions shown; `mailsink sessions -n N` reaches further back
# A store operation that writes nothing, to wait on the writer's queue with. A stdlib callable:
# operations are pickled by name for the store's writer, which should not import the TUI.
_NOTHING = operator.attrgetter("total_changes")


@dataclass
class SessionRow:
    id: int
    active: bool
    started: str
    peer: str
    helo: str
    state: str
    messages: int
    last_reply: str
    faults: int

    def cells(self) -> list[Text]:
        return [
            Text("●" if self.active else " ", "bold green"),
            Text(str(self.id)),
            Text(self.started),
            Text(visible(self.peer)),
            Text(visible(self.helo)),
            Text(visible(self.state), "bold green" if self.active else self._ending_style()),
            Text(str(self.messages)),
            Text(visible(self.last_reply)),
            Text(str(self.faults) if self.faults else "", "bold yellow"),
        ]

    def _ending_style(self) -> str:
        return "" if self.state in ("quit", "client_closed") else "yellow"


COLUMNS = (
    Column(""),
    Column("Id"),
    Column("Started"),
    Column("Peer", minimum=9),
    Column("HELO", minimum=8),
    Column("State", minimum=8),
    Column("Msgs", right=True),
    Column("Last reply", minimum=10),
    Column("Faults", right=True),
)
PEER, HELO, STATE, LAST_REPLY = 3, 4, 5, 7
# At 80 columns State and the usual IPv4 peer fit whole; what is left goes to Last reply and
# HELO in turns. HELO never takes more than 24 cells: a 300-character EHLO name costs nothing
# but its own column.
GROWTH = (
    (STATE, None),
    (PEER, 21),
    (LAST_REPLY, 16),
    (HELO, 16),
    (LAST_REPLY, None),
    (HELO, 24),
    (PEER, None),
)


class SessionTable(FittedTable):
    """Moves like the message list: j k, Home End, g G."""

    BINDINGS = [
        Binding("k", "cursor_up", "Up", show=False),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("home,g", "scroll_top", "First", show=False),
        Binding("end,G", "scroll_bottom", "Last", show=False),
    ]


class SessionsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,s", "app.pop_screen", "Back"),
        Binding("f", "app.faults", "Faults"),
    ]

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.rows: dict[int, SessionRow] = {}
        self._cells: dict[int, list[Text]] = {}  # as given to the table, for each row
        self.order: list[int] = []
        self.shown_session: int | None = None
        self.last_seq = 0  # the transcript shows events 1..last_seq of shown_session
        self._header_shown = False
        # Sessions seen live, kept until the store has their end: between the server letting go
        # of a session and the store's commit of its last row, this is all that knows it ended.
        self._recent: dict[int, SmtpConnection] = {}
        # Ended sessions whose last row the store has committed (see _flush): if the store does
        # not list one of them, `mailsink clear` or pruning removed it, and the table drops it.
        self._written: set[int] = set()
        self._flushing = False

    def compose(self) -> ComposeResult:
        yield Static(
            Text(" Sessions  (● live; select one for its transcript below)", "bold"),
            classes="title",
        )
        with Vertical():
            yield SessionTable(
                COLUMNS, GROWTH, id="sessions", cursor_type="row", zebra_stripes=True
            )
            yield RichLog(id="transcript", wrap=True, markup=False, highlight=False)
        yield Footer()

    async def on_mount(self) -> None:
        # Sessions that ended just before the screen opened may still be queued in the store's
        # writer (a session's rows wait to share the next message's commit): commit them, so
        # that the first listing has them and the newest is selected.
        await self._queued_writes_committed()
        self.refresh_sessions()
        self.set_interval(0.25, self.refresh_sessions)

    async def _queued_writes_committed(self) -> bool:
        """The store's writer commits in the order writes were queued: once a write queued now
        has committed, so has everything queued before it. False if the store is closing."""
        server = self.backend.server
        if server is None:
            return True  # attached: another process writes, and it commits promptly
        try:
            await server.store.run(_NOTHING)
        except (StoreError, sqlite3.Error):
            return False
        return True

    def _live(self) -> dict[int, SmtpConnection]:
        server = self.backend.server
        if server is None:
            return {}
        for protocol in list(server.sessions):
            self._recent[protocol.session_id] = protocol
        return dict(self._recent)

    @work(exclusive=True, group="sessions")
    async def refresh_sessions(self) -> None:
        """The table, then the selected session's new transcript lines; one at a time (a newer
        call cancels an older one while it waits for the store, before it changed anything)."""
        written = set(self._written)  # known before the read starts: the read shows their rows
        stored = await self.backend.read(lambda r: Reader.list_sessions(r, limit=LISTED))
        if not self.is_attached:
            return  # closed while reading
        self._drop_removed({record.id for record in stored}, written)
        known = self._live()
        stopped = self._server_stopped()
        rows: dict[int, SessionRow] = {}
        for record in stored:
            protocol = known.pop(record.id, None)
            if record.end_reason is not None:
                self._recent.pop(record.id, None)
                self._written.discard(record.id)
                rows[record.id] = _stored_row(record)
            else:
                rows[record.id] = _live_row(protocol) if protocol else _stored_row(record, stopped)
        rows.update((i, _live_row(p)) for i, p in known.items())  # not in the store yet
        self._show_rows(rows)
        await self._stream_transcript()

    def _server_stopped(self) -> bool:
        """Attached: the status line found the store's server gone, so an open session in the
        store is not live (the next server ends it: server_lost)."""
        if self.backend.server is not None:
            return False
        main = getattr(self.app, "main", None)
        serving = getattr(getattr(main, "status", None), "serving", None)
        return serving is not None and serving.running is False

    def _drop_removed(self, stored: set[int], written: set[int]) -> None:
        """Forget ended sessions that the store does not list. Not listed may also mean not
        written yet, so only those whose last row is known to be committed go; for the others,
        _flush finds that out."""
        ended = [
            session_id
            for session_id, protocol in self._recent.items()
            if protocol not in protocol.server.sessions and session_id not in stored
        ]
        for session_id in ended:
            if session_id in written:
                del self._recent[session_id]
                self._written.discard(session_id)
        unsure = [session_id for session_id in ended if session_id not in written]
        if unsure and not self._flushing:
            self._flushing = True
            self._flush(unsure)

    @work(group="flush")
    async def _flush(self, session_ids: list[int]) -> None:
        """Once the writes queued so far have committed, so have these sessions' last rows."""
        try:
            committed = await self._queued_writes_committed()
        finally:
            self._flushing = False
        if committed:
            self._written.update(session_ids)

    def _show_rows(self, rows: dict[int, SessionRow]) -> None:
        order = sorted(rows, reverse=True)
        if order != self.order or any(rows[i] != self.rows.get(i) for i in order):
            # The cells of a row that did not change are handed over again as the same list:
            # the table looks only at the others.
            cells = {
                i: self._cells[i] if rows[i] == self.rows.get(i) else rows[i].cells() for i in order
            }
            table = self.query_one("#sessions", SessionTable)
            table.show([cells[i] for i in order], keys=[str(i) for i in order])
            self._cells = cells
        self.rows, self.order = rows, order

    def selected_id(self) -> int | None:
        table: DataTable[Text] = self.query_one("#sessions", DataTable)
        if not self.order or table.cursor_row < 0 or table.cursor_row >= len(self.order):
            return None
        return self.order[table.cursor_row]

    @on(DataTable.RowHighlighted, "#sessions")
    def _highlighted(self) -> None:
        self.refresh_sessions()

    async def _stream_transcript(self) -> None:
        """Append the selected session's events after `last_seq`, in sequence order. They come
        from the store and, for a live session, from the server's not yet written ones; while a
        message commits the two can briefly miss a stretch, so a live transcript waits at a gap
        instead of skipping it."""
        session_id = self.selected_id()
        log = self.query_one("#transcript", RichLog)
        if session_id is None:
            if self.shown_session is not None:  # its session was cleared: so is the table
                log.clear()
                self.shown_session = None
            return
        if session_id != self.shown_session:
            log.clear()
            self.shown_session, self.last_seq, self._header_shown = session_id, 0, False
        after = self.last_seq
        record, stored = await self.backend.read(
            lambda r: (
                Reader.get_session(r, session_id, with_events=False),
                Reader.session_events(r, session_id, after),
            )
        )
        if not self.is_attached or session_id != self.shown_session or after != self.last_seq:
            return  # closed, or moved on while reading
        if record is not None and not self._header_shown:
            log.write(render.transcript(record).split("\n")[0])
            self._header_shown = True
        events = {seq: (at, direction, text) for seq, at, direction, text in stored}
        protocol = self._recent.get(session_id)
        live = protocol is not None and (record is None or record.end_reason is None)
        if protocol is not None:
            for seq, at, direction, text in protocol.transcript.pending():
                if seq > after:
                    events[seq] = (at, direction, text)
        following = [seq for seq in sorted(events) if seq > after]
        if after == 0 and len(following) > SHOWN_LINES:  # the latest lines; the CLI has all
            skipped = len(following) - SHOWN_LINES
            log.write(Text(f"… {skipped} earlier lines: mailsink session {session_id}", "dim"))
            following = following[skipped:]
            self.last_seq = following[0] - 1
        for seq in following[:STREAMED_PER_REFRESH]:
            if live and seq != self.last_seq + 1:
                return
            log.write(render.transcript_line(events[seq]))
            self.last_seq = seq
        if len(following) > STREAMED_PER_REFRESH:  # the next batch once this one is drawn
            self.call_after_refresh(self.refresh_sessions)


def _live_row(protocol: SmtpConnection) -> SessionRow:
    session = protocol.session
    ended = protocol.end_reason if protocol not in protocol.server.sessions else None
    return SessionRow(
        id=protocol.session_id,
        active=ended is None,
        started=render.local_time(protocol.started_at)[11:],
        peer=protocol.peer,
        helo=(session.host_name or "") if session else "",
        state=ended or protocol.state,
        messages=len(protocol.message_ids),
        last_reply=protocol.last_reply or "",
        faults=protocol.faults_fired,
    )


def _stored_row(record: SessionRecord, server_stopped: bool = False) -> SessionRow:
    if record.end_reason is None and server_stopped:
        state = "server stopped"
    else:  # state: its server's last write
        state = record.end_reason or record.state or "open"
    return SessionRow(
        id=record.id,
        active=record.end_reason is None and not server_stopped,
        started=render.local_time(record.started_at)[11:],
        peer=record.peer,
        helo=record.helo or "",
        state=state,
        messages=record.message_count,
        last_reply=record.last_reply or "",
        faults=record.faults,
    )
