"""Small modal screens: yes/no, a directory to write to, a line of text, the key reference."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from mailsink.query import PREFIXES


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


class TextPrompt(ModalScreen[str | None]):
    """One line of text (tags to add or remove, a tag to filter by): enter or the button
    answers it, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    input_id = "text"

    def __init__(self, question: Text, answer: str, *, default: str = "") -> None:
        super().__init__()
        self.question = question  # made safe by the caller: it may quote tags
        self.answer = answer
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            yield Input(self.default, id=self.input_id)
            with Horizontal(classes="buttons"):
                yield Button(self.answer, variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.dismiss(self.query_one(Input).value.strip() or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathPrompt(TextPrompt):
    """Where to save: a path, given as a default the user may edit."""

    input_id = "path"

    def __init__(self, question: str, default: str) -> None:
        super().__init__(Text(question), "Save", default=default)


KEYS = (
    ("Messages", ""),
    ("↑ ↓ j k, PgUp PgDn", "move through the list (mouse: click, wheel)"),
    ("Home End, g G", "the newest / the oldest message"),
    ("enter", "open the message full screen; escape goes back"),
    ("/", 'search: words, "phrases", from: rcpt: is:unread ... (/ here lists them all)'),
    ("!", "only messages with findings (on/off)"),
    ("U", "only unread messages (on/off)"),
    ("m", "mark the selected message read / unread (enter, or 3 s shown, reads it)"),
    ("M", "mark every message read"),
    ("t", "tags of the selected message: add, or -tag removes (ASCII letters, digits, - _ . @)"),
    ("d", "delete the selected message (u brings it back within 5 s)"),
    ("u", "undo the last d"),
    ("D", "delete the listed messages (all, without a filter); asks first"),
    ("e", "export the selected message as .eml into a directory (in a browser: a download)"),
    ("F", "follow the newest: select each new message as it arrives (on/off)"),
    ("Message", ""),
    ("1 - 7", "tabs: Overview, Text, HTML, Headers, Parts, Raw, Session (also from the list)"),
    ("[ ]", "previous / next tab"),
    ("tab / shift+tab, ← →", "move focus; switch tabs with the mouse or ← → on the tab bar"),
    ("o", "open the HTML part in the browser"),
    ("r", "headers: decoded / raw"),
    ("a", "save the part chosen in Parts into a directory (in a browser: a download)"),
    ("R", "full screen: release the message to a real mail server ([relay]), in a dialog"),
    ("Screens", ""),
    ("s", "sessions: live and finished, with transcripts (↑ ↓ j k Home End g G move)"),
    ("r (on Sessions)", "sessions: only those with refusals (on/off)"),
    ("f", "faults: switch rules on and off, presets 1-5"),
    ("ctrl+p", "command palette: every action by name; the theme (remembered)"),
    ("?", "this help; / in it: the search prefixes"),
    ("q", "quit (the listener closes, messages in flight finish)"),
)


def search_help() -> list[tuple[str, str | Text]]:
    """The search language's rows of the help: every prefix of mailsink.query.PREFIXES with
    its example, made from it (as README's table is)."""
    # No heading row: the key column is as wide as its widest cell, and the dialog's heading
    # says it already.
    rows: list[tuple[str, str | Text]] = [
        (
            "words",
            Text.assemble("subject, addresses, envelope, text  ", _e('zoe "track it"')),
        ),
        ("- or !", Text.assemble("before a term: not; all terms must match  ", _e("-tag:done"))),
    ]
    for prefix in PREFIXES.values():
        where = "" if prefix.mailpit else " (mailsink's)"
        rows.append(
            (f"{prefix.name}:", Text.assemble(prefix.meaning + where + "  ", _e(prefix.example)))
        )
    return rows


def _e(example: str) -> tuple[str, str]:
    return (example, "italic green")


def _table(rows: Iterable[tuple[str, str | Text]]) -> Table:
    # No padding at the edges: at 80x24 a key's meaning and its example fit on one line.
    table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, what in rows:
        if what:  # Text: a `[` in an example is not markup
            table.add_row(Text(key), Text(what) if isinstance(what, str) else what)
        else:
            table.add_row(Text(key, "bold underline"), "")
    return table


class Help(ModalScreen[None]):
    """The keys, and (`/` here) the search language: two pages of one dialog, so that the
    keys stay a page or two at 80x24."""

    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close"),
        Binding("slash", "switch", "Keys / search"),
    ]

    def __init__(self, *, search: bool = False) -> None:
        super().__init__()
        self.search = search  # the search language's page is shown

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Label(id="help-heading", classes="heading")
            with VerticalScroll():
                yield Static(id="help-body")
            yield Label(id="help-hint", classes="hint")

    def on_mount(self) -> None:
        self._show()
        # Focused, the list scrolls from the keyboard (its own bindings: ↑ ↓ PgUp PgDn Home End).
        self.query_one(VerticalScroll).focus()

    def _show(self) -> None:
        rows: Iterable[tuple[str, str | Text]]
        if self.search:
            heading, rows, other = "mailsink search (/ on the list)", search_help(), "the keys"
        else:
            heading, rows, other = "mailsink keys", KEYS, "search prefixes"
        self.query_one("#help-heading", Label).update(Text(heading, "bold"))
        self.query_one("#help-body", Static).update(_table(rows))
        hint = f"/ {other} · ↑ ↓ PgUp PgDn Home End scroll · escape closes"
        self.query_one("#help-hint", Label).update(Text(hint, "dim"))
        self.query_one(VerticalScroll).scroll_home(animate=False)

    def action_switch(self) -> None:
        self.search = not self.search
        self._show()

    def action_close(self) -> None:
        self.dismiss(None)
