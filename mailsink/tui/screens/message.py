"""One message full screen (enter on the list; escape goes back)."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent

from mailsink.sink import Sink
from mailsink.text import visible
from mailsink.tui.rows import cut
from mailsink.tui.widgets.message_detail import MessageDetail


class MessageTitle(Static):
    """`Message N  <subject>  from <sender>` on one line: a long subject is cut (with `…`) so
    that the sender stays in sight; only a very narrow terminal cuts the sender too."""

    SUBJECT_LEAST = 12  # cells the subject keeps before the sender gives way

    def __init__(self, message_id: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.message_id = message_id
        self._shown: tuple[str, str] | None = None

    def show(self, subject: str, sender: str) -> None:
        """Both already through `visible`."""
        self._shown = (subject, sender)
        self.refresh()

    def render(self) -> Text:
        head = f" Message {self.message_id}"
        title = Text(head, "bold", no_wrap=True, overflow="ellipsis", end="")
        if self._shown is None:
            return title
        subject, sender = self._shown
        tail = f"  from {sender}"
        room = self.size.width - cell_len(head) - 2 - cell_len(tail)
        if cell_len(subject) > room:
            subject = cut(subject, max(room, min(cell_len(subject), self.SUBJECT_LEAST)))
        title.append("  " + subject)
        title.append(tail, "dim")
        return title


class MessageScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, sink: Sink, message_id: int, *, read_state: bool = True) -> None:
        """`read_state`: False for a store older than read state (opening reads nothing)."""
        super().__init__()
        self.sink = sink
        self.message_id = message_id
        self.read_state = read_state

    def compose(self) -> ComposeResult:
        yield MessageTitle(self.message_id, id="message-title", classes="title")
        detail = MessageDetail(self.sink, read_after=0, id="full-detail")  # opened: read
        detail.read_state = self.read_state
        yield detail
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MessageDetail).show(self.message_id)

    @on(TabbedContent.TabActivated)
    @on(MessageDetail.Filled)
    def _title(self) -> None:
        loaded = self.query_one(MessageDetail).loaded
        if loaded is not None:
            self.query_one("#message-title", MessageTitle).show(
                visible(loaded.record.headers.get("subject") or "(no subject)"),
                visible(loaded.record.envelope.mail_from or "<>", emoji=False),
            )
