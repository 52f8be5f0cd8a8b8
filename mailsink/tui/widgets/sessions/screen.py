"""Sessions: every SMTP conversation, live ones marked, with a transcript that streams."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static

from mailsink.store.queries import Reader, SessionRecord
from mailsink.text import visible
from mailsink.tui import render
from mailsink.tui.backend import Backend

LISTED = 300  # newest sessions shown; `mailsink sessions -n N` reaches further back


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
            Text(str(self.messages), justify="right"),
            Text(visible(self.last_reply)),
            Text(str(self.faults) if self.faults else "", "bold yellow", justify="right"),
        ]

    def _ending_style(self) -> str:
        return "" if self.state in ("quit", "client_closed") else "yellow"


COLUMNS = ("", "Id", "Started", "Peer", "HELO", "State", "Msgs", "Last reply", "Faults")


class SessionsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,s", "app.pop_screen", "Back"),
        Binding("f", "app.faults", "Faults"),
    ]

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.rows: dict[int, SessionRow] = {}
        self.order: list[int] = []
        self.shown_session: int | None = None
        self.shown_events = 0

    def compose(self) -> ComposeResult:
        yield Static(
            Text(" Sessions  (● live; select one for its transcript below)", "bold"),
            classes="title",
        )
        with Vertical():
            table: DataTable[Text] = DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
            table.add_columns(*COLUMNS)
            yield table
            yield RichLog(id="transcript", wrap=True, markup=False, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_sessions()
        self.set_interval(0.25, self.refresh_sessions)

    def _live(self) -> dict[int, SessionRow]:
        server = self.backend.server
        if server is None:
            return {}
        live = {}
        for protocol in list(server.sessions):
            session = protocol.session
            live[protocol.session_id] = SessionRow(
                id=protocol.session_id,
                active=True,
                started=render.local_time(protocol.started_at)[11:],
                peer=protocol.peer,
                helo=(session.host_name or "") if session else "",
                state=protocol.state,
                messages=len(protocol.message_ids),
                last_reply=protocol.last_reply or "",
                faults=protocol.faults_fired,
            )
        return live

    @work(exclusive=True, group="sessions")
    async def refresh_sessions(self) -> None:
        stored = await self.backend.read(lambda r: Reader.list_sessions(r, limit=LISTED))
        if not self.is_attached:
            return  # closed while reading
        live = self._live()
        rows: dict[int, SessionRow] = {}
        for record in stored:
            rows[record.id] = live.pop(record.id, None) or _stored_row(record)
        rows.update(live)  # live ones the store has not seen yet
        self._show_rows(rows)
        await self._stream_transcript()

    def _show_rows(self, rows: dict[int, SessionRow]) -> None:
        table: DataTable[Text] = self.query_one("#sessions", DataTable)
        order = sorted(rows, reverse=True)
        if order != self.order:
            selected = self.selected_id()
            table.clear()
            for session_id in order:
                table.add_row(*rows[session_id].cells(), key=str(session_id))
            if selected is not None and selected in rows:
                table.move_cursor(row=table.get_row_index(str(selected)), animate=False)
        else:
            for session_id in order:
                if rows[session_id] != self.rows.get(session_id):
                    for column, cell in enumerate(rows[session_id].cells()):
                        table.update_cell_at((order.index(session_id), column), cell)
        self.rows, self.order = rows, order

    def selected_id(self) -> int | None:
        table: DataTable[Text] = self.query_one("#sessions", DataTable)
        if not self.order or table.cursor_row < 0 or table.cursor_row >= len(self.order):
            return None
        return self.order[table.cursor_row]

    @on(DataTable.RowHighlighted, "#sessions")
    def _highlighted(self) -> None:
        self.run_worker(self._stream_transcript(), group="transcript", exclusive=True)

    async def _stream_transcript(self) -> None:
        session_id = self.selected_id()
        log = self.query_one("#transcript", RichLog)
        if session_id is None:
            return
        record = await self.backend.read(Reader.get_session, session_id)
        if not self.is_attached or session_id != self.selected_id():
            return  # closed, or another session was chosen while reading
        events = list(record.events) if record else []
        protocol = self._protocol(session_id)
        if protocol is not None:
            events += [
                (at, direction, text) for _, at, direction, text in protocol.transcript.pending()
            ]
        if session_id != self.shown_session:
            log.clear()
            self.shown_session, self.shown_events = session_id, 0
            if record is not None:
                log.write(render.transcript(record).split("\n")[0])
        # The store and the live session can briefly disagree while a message commits:
        # only ever append, so lines never jump.
        for event in events[self.shown_events :]:
            log.write(render.transcript_line(event))
        self.shown_events = max(self.shown_events, len(events))

    def _protocol(self, session_id: int):  # type: ignore[no-untyped-def]
        server = self.backend.server
        if server is None:
            return None
        return next((p for p in list(server.sessions) if p.session_id == session_id), None)


def _stored_row(record: SessionRecord) -> SessionRow:
    return SessionRow(
        id=record.id,
        active=record.end_reason is None,
        started=render.local_time(record.started_at)[11:],
        peer=record.peer,
        helo=record.helo or "",
        state=record.end_reason or "open",
        messages=record.message_count,
        last_reply=record.last_reply or "",
        faults=record.faults,
    )
