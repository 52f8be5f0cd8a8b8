"""The main screen: status line, filter, message list and the selected message's detail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, Static

from mailsink.store.queries import Reader
from mailsink.text import visible
from mailsink.tui.backend import Backend
from mailsink.tui.widgets.dialogs import Confirm, PathPrompt
from mailsink.tui.widgets.message.detail import MessageDetail
from mailsink.tui.widgets.messages.message_list import ListFilter, MessageList, heading_line
from mailsink.tui.widgets.status import StatusLine


class ListHeading(Static):
    def on_resize(self) -> None:
        self.update(Text(heading_line(self.size.width - 1), "bold"))


class MainScreen(Screen[None]):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("exclamation_mark", "findings_only", "Findings only"),
        Binding("d", "delete", "Delete"),
        Binding("D", "clear", "Clear all"),
        Binding("e", "export", "Export .eml"),
        Binding("escape", "leave_filter", "Back", show=False),
        # The detail's own keys, for when the list has the focus.
        Binding("o", "detail('open_html')", "Open HTML", show=False),
        Binding("r", "detail('toggle_raw_headers')", "Raw headers", show=False),
        Binding("a", "detail('save_attachment')", "Save part", show=False),
    ]

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusLine(self.backend, id="status")
        yield Input(placeholder="filter: sender, recipient or subject", id="filter")
        yield ListHeading(id="heading")
        yield MessageList(self.backend, id="messages")
        yield MessageDetail(self.backend, id="detail")
        yield Footer()

    @property
    def message_list(self) -> MessageList:
        return self.query_one("#messages", MessageList)

    @property
    def detail(self) -> MessageDetail:
        return self.query_one("#detail", MessageDetail)

    @property
    def status(self) -> StatusLine:
        return self.query_one("#status", StatusLine)

    def on_mount(self) -> None:
        self.message_list.focus()
        self.status.redraw()
        if self.backend.server is not None:  # faults switched on or off change the status line
            self.backend.server.policy_listeners.append(self.status.redraw)
        self.run_worker(self.message_list.reload(), group="index")

    @on(MessageList.Selected)
    def _selected(self, event: MessageList.Selected) -> None:
        self.detail.show(event.message_id)

    @on(MessageList.Opened)
    def _opened(self, event: MessageList.Opened) -> None:
        from mailsink.tui.widgets.message.screen import MessageScreen

        self.app.push_screen(MessageScreen(self.backend, event.message_id))

    @on(MessageList.Changed)
    def _counts(self) -> None:
        self.status.shown = self.message_list.count
        self.status.filter_text = self.message_list.filter.describe()
        self.status.redraw()

    async def action_detail(self, action: str) -> None:
        await self.detail.run_action(action)

    # ---- filter

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("open")
        box.focus()

    def action_leave_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus:
            if not box.value:
                box.remove_class("open")
            self.message_list.focus()

    @on(Input.Changed, "#filter")
    def _filter_typed(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.15, self._apply_filter)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._apply_filter()
        self.message_list.focus()

    def _apply_filter(self) -> None:
        current = self.message_list.filter
        wanted = ListFilter(self.query_one("#filter", Input).value.strip(), current.findings_only)
        if wanted != current:
            self.run_worker(self.message_list.reload(wanted), group="index")

    def action_findings_only(self) -> None:
        current = self.message_list.filter
        wanted = ListFilter(current.search, not current.findings_only)
        self.run_worker(self.message_list.reload(wanted), group="index")
        self.notify(
            "only messages with findings" if wanted.findings_only else "all messages", timeout=2
        )

    # ---- acting on messages

    @work(group="actions")
    async def action_delete(self) -> None:
        message_id = self.message_list.selected_id
        if message_id is None:
            return
        try:
            await self.backend.read(Reader.delete_message, message_id)
        except sqlite3.Error as error:
            self.notify(f"Not deleted: {error}", severity="error", markup=False)
            return
        self.message_list.forget(message_id)
        self.notify(f"deleted message {message_id}", timeout=2)

    def action_clear(self) -> None:
        count = self.message_list.count

        async def answered(yes: bool | None) -> None:
            if yes:
                try:
                    deleted = await self.backend.read(Reader.clear)
                except sqlite3.Error as error:
                    self.notify(f"Not deleted: {error}", severity="error", markup=False)
                    return
                await self.message_list.reload()
                self.notify(f"deleted {deleted:,} message(s)")

        self.app.push_screen(
            Confirm(f"Delete all messages ({count:,} listed)?", "Delete all"), answered
        )

    def action_export(self) -> None:
        from mailsink.export import ExportError, export_messages

        message_id = self.message_list.selected_id
        if message_id is None:
            return

        async def chosen(directory: str | None) -> None:
            if not directory:
                return
            target = Path(directory).expanduser()
            try:
                await self.backend.read(lambda r: export_messages(r, [message_id], "eml", target))
            except (ExportError, OSError, sqlite3.Error) as error:
                self.notify(f"Not exported: {error}", severity="error", markup=False)
                return
            self.notify(f"Exported {visible(str(target / f'{message_id}.eml'))}", markup=False)

        self.app.push_screen(
            PathPrompt(f"Export message {message_id} as .eml into:", str(Path.cwd())), chosen
        )
