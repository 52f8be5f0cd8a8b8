"""Sessions: every SMTP conversation, live ones marked, with a transcript that streams."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static

from mailsink.clock import local_time
from mailsink.events import (
    EventsLost,
    LiveSession,
    MessagesDeleted,
    MessageStored,
    ServerLinkChanged,
    SessionChanged,
    SessionEnded,
    SessionStarted,
    StoreChanged,
    TranscriptLine,
)
from mailsink.sink import Sink
from mailsink.store.reader import SessionRecord
from mailsink.text import visible
from mailsink.tui import render
from mailsink.tui.widgets.fitted import Column, FittedTable

SHOWN_LINES = 2000  # transcript lines shown at first; more stream in
# Transcript lines written per refresh: a busy session's thousands of new lines go in batches,
# with the loop free (keys, the table, the status line) between them.
STREAMED_PER_REFRESH = 200
LISTED = 300  # newest sessions shown; `mailsink sessions -n N` reaches further back
REDRAW_SECONDS = 0.1  # at most this often while sessions are busy
ATTACHED_REFRESH_SECONDS = 0.25  # attached: how often the store is read again
_REDRAWN_ON = (
    SessionStarted,
    SessionChanged,
    SessionEnded,
    TranscriptLine,
    MessageStored,
    MessagesDeleted,
    StoreChanged,
    EventsLost,
    ServerLinkChanged,  # attached: the link's live sessions came or went
)


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
    refusals: int = 0
    last_refusal: str = ""

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
            Text(str(self.refusals) if self.refusals else "", render.REFUSED),
            Text(str(self.faults) if self.faults else "", "bold yellow"),
        ]

    def _ending_style(self) -> str:
        return "" if self.state in ("quit", "client_closed", "api") else "yellow"


COLUMNS = (
    Column(""),
    Column("Id"),
    Column("Started"),
    Column("Peer", minimum=9),
    Column("HELO", minimum=8),
    Column("State", minimum=8),
    Column("Msgs", right=True),
    Column("Last reply", minimum=10),
    # How many times the server refused the client something; a label of one cell, so that at
    # 80 columns the usual IPv4 peer still fits whole (the title says what it is).
    Column("✗", right=True),
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


TITLE = " Sessions  (● live, ✗ refusals; select one for its transcript below)"
TITLE_REFUSALS = " Sessions with refusals  (● live, ✗ refusals; r lists them all)"
NO_REFUSALS = "No sessions with refusals (r lists them all)."


class SessionsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,s", "app.pop_screen", "Back"),
        Binding("f", "app.faults", "Faults"),
        # One key, two bindings: check_action shows the one that says what r does now.
        Binding("r", "refusals_only", "With refusals"),
        Binding("r", "all_sessions", "All sessions"),
    ]

    def __init__(self, sink: Sink, *, refusals_only: bool = False) -> None:
        super().__init__()
        self.sink = sink
        self.refusals_only = refusals_only  # only the sessions with refusals
        self.rows: dict[int, SessionRow] = {}
        self._cells: dict[int, list[Text]] = {}  # as given to the table, for each row
        self.order: list[int] = []
        self.shown_session: int | None = None
        self.last_seq = 0  # the transcript shows events 1..last_seq of shown_session
        self._header_shown = False

    def compose(self) -> ComposeResult:
        yield Static(self._title(), classes="title", id="sessions-title")
        with Vertical():
            yield SessionTable(
                COLUMNS, GROWTH, id="sessions", cursor_type="row", zebra_stripes=True
            )
            with Vertical(id="session-detail"):
                # The selected session's last refusal, kept up to date while it lives (the
                # transcript below only grows); with the r filter and no match, a line saying so.
                yield Static(id="refusal")
                yield RichLog(id="transcript", wrap=True, markup=False, highlight=False)
        yield Footer()

    def _title(self) -> Text:
        return Text(TITLE_REFUSALS if self.refusals_only else TITLE, "bold")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "refusals_only":
            return not self.refusals_only
        if action == "all_sessions":
            return self.refusals_only
        return True

    def action_refusals_only(self) -> None:
        """`r`: only the sessions with refusals."""
        self._filter(refusals_only=True)

    def action_all_sessions(self) -> None:
        """`r` again: all of them."""
        self._filter(refusals_only=False)

    def _filter(self, *, refusals_only: bool) -> None:
        self.refusals_only = refusals_only
        self.query_one("#sessions-title", Static).update(self._title())
        self.refresh_bindings()
        self.refresh_sessions()
        self.notify("only sessions with refusals" if refusals_only else "all sessions", timeout=2)

    def on_mount(self) -> None:
        self.refresh_sessions()
        if self.sink.is_attached:
            # Another process serves the store: what it commits, and whether it still runs
            # (the status line's check), are seen by looking; what its connections do now
            # comes as events while the sink is linked to it (Sink.link).
            self.set_interval(ATTACHED_REFRESH_SECONDS, self.refresh_sessions)
        self._follow_sessions()

    @work(group="session-events")
    async def _follow_sessions(self) -> None:
        """Redrawn as sessions start, change and end and as their lines arrive; many events at
        once are one redraw, and redraws are at least REDRAW_SECONDS apart."""
        with self.sink.subscribe(*_REDRAWN_ON) as events:
            while True:
                await events.get()
                events.pending()
                self.refresh_sessions()
                await asyncio.sleep(REDRAW_SECONDS)

    @work(exclusive=True, group="sessions")
    async def refresh_sessions(self) -> None:
        """The table, then the selected session's new transcript lines; one at a time (a newer
        call cancels an older one while it waits for the store, before it changed anything)."""
        refusals_only = self.refusals_only
        sessions = await self.sink.sessions(limit=LISTED, with_refusals=refusals_only)
        if not self.is_attached or refusals_only != self.refusals_only:
            return  # closed, or the filter changed, while reading
        try:
            self._show(sessions)
            await self._stream_transcript()
        except NoMatches:
            return  # the screen is being taken down: its widgets go before its workers

    def _show(self, sessions: list[SessionRecord | LiveSession]) -> None:
        stopped = self._server_stopped()
        rows = {
            session.id: (
                _live_row(session)
                if isinstance(session, LiveSession)
                else _stored_row(session, stopped)
            )
            for session in sessions
        }
        self._show_rows(rows)

    def _server_stopped(self) -> bool:
        """Attached: the status line found the store's server gone, so an open session in the
        store is not live (the next server ends it: server_lost)."""
        if not self.sink.is_attached:
            return False
        main = getattr(self.app, "main", None)
        serving = getattr(getattr(main, "status", None), "serving", None)
        return serving is not None and serving.running is False

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

    def _show_refusal(self, session_id: int | None) -> None:
        row = self.rows.get(session_id) if session_id is not None else None
        refusal = self.query_one("#refusal", Static)
        if self.refusals_only and not self.order:  # else an empty table says nothing
            refusal.set_class(True, "shown")
            refusal.update(Text(NO_REFUSALS, "dim"))
            return
        refusal.set_class(row is not None and row.refusals > 0, "shown")
        if row is not None and row.refusals:
            refusal.update(render.refusal_text(row.refusals, row.last_refusal or None))

    async def _stream_transcript(self) -> None:
        """Append the selected session's events after `last_seq`, in sequence order. They come
        from the store and, for a live session, from the server's not yet written ones; while a
        message commits the two can briefly miss a stretch, so a live transcript waits at a gap
        instead of skipping it."""
        session_id = self.selected_id()
        self._show_refusal(session_id)
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
        record = await self.sink.session(session_id, with_transcript=False)
        lines = await self.sink.transcript(session_id, after)
        if not self.is_attached or session_id != self.shown_session or after != self.last_seq:
            return  # closed, or moved on while reading
        if record is not None and not self._header_shown:
            log.write(render.transcript(record).split("\n")[0])
            self._header_shown = True
        events = {seq: (at, direction, text) for seq, at, direction, text in lines}
        # Served here and not yet ended in the store: lines handed to the store's writer but not
        # yet committed are in neither place for a moment, so a gap is waited at, not skipped.
        live = self.sink.live_session(session_id) is not None and (
            record is None or record.end_reason is None
        )
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


def _live_row(session: LiveSession) -> SessionRow:
    return SessionRow(
        id=session.id,
        active=session.live,
        started=local_time(session.started_at)[11:],
        peer=session.peer,
        helo=session.helo or "",
        state=session.end_reason or session.state,
        messages=len(session.message_ids),
        last_reply=session.last_reply or "",
        faults=session.faults_fired,
        refusals=session.refusals,
        last_refusal=session.last_refusal or "",
    )


def _stored_row(record: SessionRecord, server_stopped: bool = False) -> SessionRow:
    if record.end_reason is None and server_stopped:
        state = "server stopped"
    else:  # state: its server's last write
        state = record.end_reason or record.state or "open"
    return SessionRow(
        id=record.id,
        active=record.end_reason is None and not server_stopped,
        started=local_time(record.started_at)[11:],
        peer=record.peer,
        helo=record.helo or "",
        state=state,
        messages=record.message_count,
        last_reply=record.last_reply or "",
        faults=record.faults,
        refusals=record.refusals,
        last_refusal=record.last_refusal or "",
    )
