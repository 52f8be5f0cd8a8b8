"""One message full screen (enter on the list; escape goes back; R releases it)."""

from __future__ import annotations

import sqlite3

from rich.cells import cell_len
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent

from mailsink.errors import MailsinkError, NoSuchMessage, RelayNotConfigured
from mailsink.relay import ReleasePlan
from mailsink.sink import Sink
from mailsink.text import visible
from mailsink.tui.rows import cut
from mailsink.tui.widgets.message_detail import MessageDetail
from mailsink.tui.widgets.release import ReleaseDialog


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
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        # Capital, as the main screen's keys that do more than `m` or `d` (`M`, `D`): `r` is
        # the raw headers here. Not in the footer: at 80 columns it would push out `q Quit`
        # (help and the palette have it).
        Binding("R", "release", "Release", show=False),
    ]

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

    def action_release(self) -> None:
        """The release dialog (also the palette's "Release this message…")."""
        self._open_release()

    @work(group="release-plan", exclusive=True)
    async def _open_release(self) -> None:
        """The plan first (the settings', or the store's server's when attached and linked),
        so that the dialog opens whole."""
        plan: ReleasePlan | None
        try:
            plan = await self.sink.release_plan(self.message_id)
        except RelayNotConfigured:
            plan = None  # (the store's server has no [relay]): the dialog says releasing is off
        except NoSuchMessage:
            self.notify("This message is gone.", severity="warning")
            return
        except (MailsinkError, OSError, sqlite3.Error) as error:
            self.notify(
                f"Cannot release: {visible(str(error))}", severity="error", markup=False, timeout=8
            )
            return
        if self.is_current:  # (not if the user went back meanwhile)
            self.app.push_screen(ReleaseDialog(self.sink, self.message_id, plan))
