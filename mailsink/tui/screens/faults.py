"""Faults: the rules in force, switched on and off here; presets for the usual rejections."""

from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from mailsink.faults.policy import Rule
from mailsink.faults.presets import BY_KEY, PRESETS
from mailsink.text import visible
from mailsink.tui.backend import Backend
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


def _does(rule: Rule) -> str:
    text = rule.action
    if rule.reply:
        text = str(rule.reply).replace("\r\n", " / ")
        if rule.action == "disconnect":
            text += ", then disconnect"
    if rule.delay:
        text += f" after {rule.delay:g}s"
    return text


class FaultsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,f", "app.pop_screen", "Back"),
        Binding("space", "toggle", "On/off"),
        Binding("1,2,3,4,5", "noop", "Presets"),
        Binding("s", "app.sessions", "Sessions"),
    ]

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.names: list[str] = []  # rule name of each row

    def compose(self) -> ComposeResult:
        yield Static(Text(EXPLAIN, "bold"), classes="title")
        yield FittedTable(COLUMNS, GROWTH, id="rules", cursor_type="row")
        yield Static(id="fault-note")
        yield Footer()

    def on_mount(self) -> None:
        server = self.backend.server
        if server is None:
            self.query_one("#fault-note", Static).update(Text(ATTACHED, "yellow"))
            return
        server.policy_listeners.append(self.redraw)
        self.redraw()
        self.set_interval(0.5, self.redraw)  # hit counters move on their own

    def on_unmount(self) -> None:
        server = self.backend.server
        if server is not None and self.redraw in server.policy_listeners:
            server.policy_listeners.remove(self.redraw)

    def redraw(self) -> None:
        server = self.backend.server
        if server is None or not self.is_attached:
            return
        policy = server.policy
        keys = {preset.name: preset.key for preset in PRESETS}
        rows = [(keys.get(rule.name, ""), rule, rule.enabled) for rule in policy.rules]
        cells = []
        self.names = []
        for key, rule, on_ in rows:
            stats = policy.stats.get(rule.name)
            hits = stats.hits if stats else 0
            last = stats.last_fired if stats else None
            cells.append(
                [
                    Text(key, "bold cyan"),
                    Text("● on" if on_ else "○ off", "bold green" if on_ else "dim"),
                    Text(visible(rule.name)),
                    Text(rule.stage),
                    Text(visible(_does(rule))),
                    Text(str(hits)),
                    Text(time.strftime("%H:%M:%S", time.localtime(last)) if last else ""),
                ]
            )
            self.names.append(rule.name)
        self.query_one("#rules", FittedTable).show(cells)
        configured = len(server.settings.rules)
        note = f" {configured} rule(s) from " + (
            visible(str(server.settings.source)) if server.settings.source else "no config file"
        )
        self.query_one("#fault-note", Static).update(Text(note, "dim"))

    def action_noop(self) -> None:
        """The preset keys are handled in on_key; this binding only labels them in the footer."""

    def on_key(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.key in BY_KEY and self.backend.server is not None:
            event.stop()
            self.toggle_preset(event.key)

    def toggle_preset(self, key: str) -> None:
        server = self.backend.server
        if server is None:
            return
        now_on = server.toggle_preset(key)
        self.notify(f"{BY_KEY[key].title}: {'on' if now_on else 'off'}", markup=False, timeout=3)

    def action_toggle(self) -> None:
        server = self.backend.server
        table: DataTable[Text] = self.query_one("#rules", DataTable)
        if server is None or not 0 <= table.cursor_row < len(self.names):
            return
        name = self.names[table.cursor_row]
        enabled = not next(r.enabled for r in server.policy.rules if r.name == name)
        server.set_rule_enabled(name, enabled)
        self.notify(f"{name}: {'on' if enabled else 'off'}", markup=False, timeout=3)

    @on(DataTable.RowSelected, "#rules")
    def _selected(self) -> None:
        self.action_toggle()
