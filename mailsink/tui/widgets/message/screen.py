"""One message full screen (enter on the list; escape goes back)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from mailsink.tui.backend import Backend
from mailsink.tui.widgets.message.detail import MessageDetail


class MessageScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, backend: Backend, message_id: int) -> None:
        super().__init__()
        self.backend = backend
        self.message_id = message_id

    def compose(self) -> ComposeResult:
        yield MessageDetail(self.backend, id="full-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MessageDetail).show(self.message_id)
