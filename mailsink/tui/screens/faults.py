"""Faults: the rules in force, switched on and off here; presets for the usual rejections.

Attached to another process's store, the rules are that server's, switched through its HTTP
API (Sink.switch_fault): in a worker, a failure as a notice, the table redrawn from the events
the server sends back. Without a link to it, a note says why and nothing can be switched."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.events import Key
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from mailsink.clock import local_time
from mailsink.errors import MailsinkError
from mailsink.events import EventsLost, FaultFired, RulesChanged, ServerLinkChanged
from mailsink.faults.presets import BY_KEY
from mailsink.sink import Sink
from mailsink.text import visible
from mailsink.tui.widgets.fitted import Column, FittedTable

if TYPE_CHECKING:
    from mailsink.tui.app import MailsinkApp

COLUMNS = (
    Column("Key"),
    Column("On"),
    Column("Rule", minimum=12),
    Column("Stage"),
    Column("Does", minimum=12),
    Column("Hits", right=True),
    Column("Last fired"),
)
RULE, DOES = 2, 4
REDRAW_SECONDS = 0.1  # at most this often, however often rules fire
# At 80 columns both the rule's name and what it does are cut short; from about 110 the presets'
# names fit whole, then what the rule does gets its whole width, and only what is left goes to a
# longer (custom) name.
GROWTH = ((RULE, 20), (DOES, 30), (RULE, 40), (DOES, None), (RULE, None))

EXPLAIN = (
    " Faults  space or enter: switch the selected rule on or off · 1-5: presets ·"
    " changes apply from the next SMTP command"
)
ATTACHED = (
    "No link to the store's server: the fault rules of the `mailsink serve` that writes this"
    " store are switched through its HTTP API, and none answers"
)
ATTACHED_HINT = (
    " Serve it with HTTP on (the default), or edit its --config file: it is reloaded while it runs."
)
CONNECTING = "Connecting to the store's server…"


class FaultsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,f", "app.pop_screen", "Back"),
        Binding("space", "switch", "On/off"),
        Binding("1,2,3,4,5", "noop", "Presets"),
        Binding("s", "app.sessions", "Sessions"),
    ]

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self.sink = sink
        self.names: list[str] = []  # rule name of each row

    def compose(self) -> ComposeResult:
        yield Static(Text(EXPLAIN, "bold"), classes="title")
        yield FittedTable(COLUMNS, GROWTH, id="rules", cursor_type="row")
        yield Static(id="fault-note")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self._follow_rules()

    @work(group="rules")
    async def _follow_rules(self) -> None:
        """Redrawn when a rule is switched, added, removed or reloaded, and when one fires
        (its hits and last firing), and (attached) as the link to the server comes and goes:
        many at once are one redraw."""
        kinds = (RulesChanged, FaultFired, EventsLost, ServerLinkChanged)
        with self.sink.subscribe(*kinds) as changes:
            while True:
                await changes.get()
                changes.pending()
                try:
                    self.redraw()
                except NoMatches:
                    return  # the screen is being taken down: its widgets go before its workers
                await asyncio.sleep(REDRAW_SECONDS)  # a rule firing 10 000 times a second

    def redraw(self) -> None:
        if not self.is_attached:
            return
        cells = []
        self.names = []
        for rule in self.sink.fault_rules():
            on_ = rule.enabled
            cells.append(
                [
                    Text(rule.preset_key or "", "bold cyan"),
                    Text("● on" if on_ else "○ off", "bold green" if on_ else "dim"),
                    Text(visible(rule.name)),
                    Text(rule.stage),
                    Text(visible(rule.summary)),
                    Text(str(rule.hits)),
                    Text(local_time(rule.last_fired_at)[11:]),
                ]
            )
            self.names.append(rule.name)
        self.query_one("#rules", FittedTable).show(cells)
        self.query_one("#fault-note", Static).update(self._note())

    def _note(self) -> Text:
        sink = self.sink
        link = sink.link
        if sink.faults is not None:
            settings = sink.settings
            note = f" {len(settings.rules)} rule(s) from " + (
                visible(str(settings.source)) if settings.source else "no config file"
            )
            return Text(note, "dim")
        if link is not None and link.live:
            return Text(f" The rules of the server at {visible(link.url or '')}", "dim")
        if link is not None and link.state == "connecting" and not link.reason:
            return Text(CONNECTING, "dim")
        why = f" ({visible(link.reason)})" if link is not None and link.reason else ""
        return Text(f"{ATTACHED}{why}.{ATTACHED_HINT}", "yellow")

    def action_noop(self) -> None:
        """The preset keys are handled in on_key; this binding only labels them in the footer."""

    def on_key(self, event: Key) -> None:
        if event.key in BY_KEY:
            event.stop()
            self.toggle_preset(event.key)

    def _read_only(self) -> bool:
        """Says so (once per key press) when nothing can be switched from here."""
        if self.sink.can_switch_faults:
            return False
        self.notify(
            "faults are read-only: no link to the store's server", severity="warning", timeout=3
        )
        return True

    def toggle_preset(self, key: str) -> None:
        if not self._read_only():
            app = cast("MailsinkApp", self.app)
            app.toggle_preset(key)  # the palette's worker: here or at the store's server

    def action_switch(self) -> None:
        table: DataTable[Text] = self.query_one("#rules", DataTable)
        if not 0 <= table.cursor_row < len(self.names) or self._read_only():
            return
        self._switch(self.names[table.cursor_row])

    @work(group="switch")
    async def _switch(self, name: str) -> None:
        # The rule's state is read by the switch itself, after the ones asked for before it:
        # read here, two quick presses would both ask for the same state.
        try:
            enabled = await self.sink.toggle_fault(name)
        except KeyError:  # removed since the table was drawn
            self.notify(f"no rule {visible(name)!r} any more", severity="warning", markup=False)
            return
        except MailsinkError as error:
            self.notify(
                f"not switched: {visible(str(error))}", severity="error", markup=False, timeout=6
            )
            return
        self.notify(f"{visible(name)}: {'on' if enabled else 'off'}", markup=False, timeout=3)

    @on(DataTable.RowSelected, "#rules")
    def _selected(self) -> None:
        self.action_switch()
