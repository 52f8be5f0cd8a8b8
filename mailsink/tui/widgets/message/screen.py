"""One message full screen (enter on the list; escape goes back)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent

from mailsink.text import visible
from mailsink.tui.backend import Backend
from mailsink.tui.widgets.message.detail import MessageDetail


class MessageScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, backend: Backend, message_id: int) -> None:
        super().__init__()
        self.backend = backend
        self.message_id = message_id

    def compose(self) -> ComposeResult:
        yield Static(
            Text(f" Message {self.message_id}", "bold"), id="message-title", classes="title"
        )
        yield MessageDetail(self.backend, id="full-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MessageDetail).show(self.message_id)

    @on(TabbedContent.TabActivated)
    @on(MessageDetail.Filled)
    def _title(self) -> None:
        loaded = self.query_one(MessageDetail).loaded
        title = Text(f" Message {self.message_id}", "bold")
        if loaded is not None:
            title.append("  ")
            title.append(visible(loaded.record.headers.get("subject") or "(no subject)"))
            title.append(f"  from {visible(loaded.record.envelope.mail_from or '<>')}", "dim")
        self.query_one("#message-title", Static).update(title)
