"""Faults: the rules in force, switched on and off here; presets for the usual rejections."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.events import Key
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from mailsink.clock import local_time
from mailsink.events import EventsLost, FaultFired, RulesChanged
from mailsink.faults.presets import BY_KEY
from mailsink.sink import Sink
from mailsink.text import visible
from mailsink.tui.widgets.fitted import Column, FittedTable

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
    "Attached to a store written by another process: its fault rules belong to that"
    " `mailsink serve`. Edit its --config file; it is reloaded while it runs."
)


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
        if self.sink.faults is None:
            self.query_one("#fault-note", Static).update(Text(ATTACHED, "yellow"))
            return
        self.redraw()
        self._follow_rules()

    @work(group="rules")
    async def _follow_rules(self) -> None:
        """Redrawn when a rule is switched, added, removed or reloaded, and when one fires
        (its hits and last firing): many at once are one redraw."""
        with self.sink.subscribe(RulesChanged, FaultFired, EventsLost) as changes:
            while True:
                await changes.get()
                changes.pending()
                try:
                    self.redraw()
                except NoMatches:
                    return  # the screen is being taken down: its widgets go before its workers
                await asyncio.sleep(REDRAW_SECONDS)  # a rule firing 10 000 times a second

    def redraw(self) -> None:
        faults = self.sink.faults
        if faults is None or not self.is_attached:
            return
        cells = []
        self.names = []
        for rule in faults.rules():
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
        settings = self.sink.settings
        note = f" {len(settings.rules)} rule(s) from " + (
            visible(str(settings.source)) if settings.source else "no config file"
        )
        self.query_one("#fault-note", Static).update(Text(note, "dim"))

    def action_noop(self) -> None:
        """The preset keys are handled in on_key; this binding only labels them in the footer."""

    def on_key(self, event: Key) -> None:
        if event.key in BY_KEY and self.sink.faults is not None:
            event.stop()
            self.toggle_preset(event.key)

    def toggle_preset(self, key: str) -> None:
        faults = self.sink.faults
        if faults is None:
            return
        now_on = faults.toggle_preset(key)
        self.notify(f"{BY_KEY[key].title}: {'on' if now_on else 'off'}", markup=False, timeout=3)

    def action_switch(self) -> None:
        faults = self.sink.faults
        table: DataTable[Text] = self.query_one("#rules", DataTable)
        if faults is None or not 0 <= table.cursor_row < len(self.names):
            return
        name = self.names[table.cursor_row]
        enabled = not next(r.enabled for r in faults.rules() if r.name == name)
        faults.set_enabled(name, enabled)
        self.notify(f"{name}: {'on' if enabled else 'off'}", markup=False, timeout=3)

    @on(DataTable.RowSelected, "#rules")
    def _selected(self) -> None:
        self.action_switch()
