"""Small modal screens: yes/no, a directory to write to, the key reference."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class Confirm(ModalScreen[bool]):
    BINDINGS = [
        Binding("escape,n", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.question))
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PathPrompt(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, default: str) -> None:
        super().__init__()
        self.question = question
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.question))
            yield Input(self.default, id="path")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.dismiss(self.query_one(Input).value.strip() or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


KEYS = (
    ("Messages", ""),
    ("↑ ↓ j k, PgUp PgDn", "move through the list (mouse: click, wheel)"),
    ("Home End, g G", "the newest / the oldest message"),
    ("enter", "open the message full screen; escape goes back"),
    ("/", "filter by sender, recipient or subject (envelope and headers)"),
    ("!", "only messages with findings (on/off)"),
    ("d", "delete the selected message (u brings it back within 5 s)"),
    ("u", "undo the last d"),
    ("D", "delete the listed messages (all, without a filter); asks first"),
    ("e", "export the selected message as .eml into a directory (a free name)"),
    ("F", "follow the newest: select each new message as it arrives (on/off)"),
    ("Message", ""),
    ("1 - 7", "tabs: Overview, Text, HTML, Headers, Parts, Raw, Session (also from the list)"),
    ("[ ]", "previous / next tab"),
    ("tab / shift+tab, ← →", "move focus; switch tabs with the mouse or ← → on the tab bar"),
    ("o", "open the HTML part in the browser"),
    ("r", "headers: decoded / raw"),
    ("a", "save the part chosen in Parts into a directory (name sanitised)"),
    ("Screens", ""),
    ("s", "sessions: live and finished, with transcripts (↑ ↓ j k Home End g G move)"),
    ("r (on Sessions)", "sessions: only those with refusals (on/off)"),
    ("f", "faults: switch rules on and off, presets 1-5"),
    ("ctrl+p", "command palette: every action by name; the theme (remembered)"),
    ("?", "this help"),
    ("q", "quit (the listener closes, messages in flight finish)"),
)


class Help(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            if what:
                table.add_row(key, what)
            else:
                table.add_row(Text(key, "bold underline"), "")
        with Vertical(classes="dialog help"):
            yield Label(Text("mailsink keys", "bold"), classes="heading")
            with VerticalScroll():
                yield Static(table)
            yield Label(
                Text("↑ ↓ PgUp PgDn Home End scroll · escape closes", "dim"), classes="hint"
            )

    def on_mount(self) -> None:
        # Focused, the list scrolls from the keyboard (its own bindings: ↑ ↓ PgUp PgDn Home End).
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
