"""The main screen: status line, filter, message list and the selected message's detail."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from array import array
from dataclasses import replace
from functools import partial
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, Static
from textual.worker import Worker

from mailsink.errors import QueryError, StoreError
from mailsink.events import RulesChanged
from mailsink.query import Query, parse_query
from mailsink.sink import Sink
from mailsink.store.reader import Reader
from mailsink.store.schema import SEARCH_SINCE
from mailsink.text import visible
from mailsink.tui.widgets.dialogs import Confirm, PathPrompt, TextPrompt
from mailsink.tui.widgets.message_detail import MessageDetail
from mailsink.tui.widgets.message_list import (
    Cancel,
    ListFilter,
    MessageList,
    heading_line,
    interrupted,
)
from mailsink.tui.widgets.status import StatusLine

UNDO_SECONDS = 5.0  # how long `u` can bring a deleted message back
# Seconds from the last key in the search box to the search: one read per pause in typing,
# not per key (a body search on a big store takes tens of ms on the reader thread).
FILTER_DEBOUNCE = 0.2
INDEX_BACKLOG = 500  # unindexed messages the status line tells of whatever the query
INDEX_POLL_SECONDS = 1.0  # how often the index's progress is looked at while it grows
# The counts at most this often: while a backlog is indexed the writer commits several times a
# second (each a StoreChanged), and counting 100 000 messages takes ~90 ms of the reader thread.
COUNTS_SECONDS = 1.0
NO_READ_STATE = (
    "This store has no read state or tags: it was written by an older mailsink"
    " (a mailsink server of this version adds them when it opens the store)."
)
# What a store that refuses a change raises: SQLite's own errors read here (attached), the
# writer's as StoreError.
STORE_FAILURES = (sqlite3.Error, StoreError)

log = logging.getLogger("mailsink")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def tag_changes(answer: str) -> tuple[list[str], list[str]]:
    """`urgent, -old, !new user` -> (["urgent"], ["old", "new user"]): what the tag dialog
    asks for (a tag may hold spaces, so commas part them)."""
    add: list[str] = []
    remove: list[str] = []
    for part in answer.split(","):
        part = part.strip()
        if part[:1] in ("-", "!") and part[1:].strip():
            remove.append(part[1:].strip())
        elif part:
            add.append(part)
    return add, remove


class ListHeading(Static):
    """The list's column titles, as wide as the list's lines: they follow its scrollbar too."""

    def on_mount(self) -> None:
        self.watch(self._list, "show_vertical_scrollbar", self._scrollbar_changed, init=False)

    def _scrollbar_changed(self) -> None:
        self.refresh()

    @property
    def _list(self) -> MessageList:
        return self.screen.query_one("#messages", MessageList)

    def render(self) -> Text:
        listing = self._list
        width = self.size.width - listing.scrollbar_size_vertical
        return Text(heading_line(width), "bold", no_wrap=True, overflow="crop")


class MainScreen(Screen[None]):
    DELETE_CHUNK = 500  # messages per transaction when deleting many (tests make it smaller)
    BINDINGS = [
        # A priority binding runs when the key arrives, before the keys behind it are handed
        # to the focused widget (the Input would take `/` itself: Input.check_consume_key);
        # in the box, check_action declines it, so that `/` is typed.
        Binding("slash", "filter", "Filter", priority=True),
        # Off the footer, so that at 80 columns it keeps / s f ? q (these are in Help and ctrl+p).
        Binding("exclamation_mark", "findings_only", "Findings only", show=False),
        Binding("U", "unread_only", "Unread only", show=False),
        Binding("m", "toggle_read", "Read/unread", show=False),
        Binding("M", "mark_all_read", "All read", show=False),
        Binding("t", "tags", "Tags", show=False),
        Binding("d", "delete", "Delete", show=False),
        Binding("u", "undo", "Undo delete", show=False),
        Binding("D", "clear", "Clear all", show=False),
        Binding("e", "export", "Export .eml", show=False),
        Binding("F", "app.follow_newest", "Follow newest", show=False),
        Binding("escape", "leave_filter", "Back", show=False),
        # The detail's own keys, for when the list has the focus.
        Binding("o", "detail('open_html')", "Open HTML", show=False),
        Binding("r", "detail('toggle_raw_headers')", "Raw headers", show=False),
        Binding("a", "detail('save_attachment')", "Save part", show=False),
        *(  # 1-7, [ and ]: the detail's tabs
            Binding(tab.key, f'detail("{tab.action}")', tab.description, show=False)
            for tab in MessageDetail.BINDINGS
            if isinstance(tab, Binding) and tab.action.startswith("show_tab(")
        ),
    ]

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self.sink = sink
        self._filter_timer: Timer | None = None
        self._undoable: dict[int, Timer] = {}  # message id: when its deletion is carried out
        self._deleting = False  # a `D` under way
        self._bulk: tuple[array[int], int] | None = None  # its ids not known deleted, and total
        self._index_told = False  # "index N/M" said once for a query that needs the body
        self._index_timer: Timer | None = None  # polls the index's progress while it grows
        self._asked_unsearched = ""  # the query the Reader was last asked `unsearched` for
        # The last counts read (unread or None, index progress), and the list's store_mark
        # then: a new filter needs no new count.
        self._last_counts: tuple[int | None, tuple[int, int]] | None = None
        self._counted: tuple[int, int] | None = None
        self.counts_every = COUNTS_SECONDS
        self.counts_read = 0  # how many times the counts were read (the tests look)
        self._counts_at = -COUNTS_SECONDS  # time.monotonic() of the last
        self._counts_timer: Timer | None = None  # a count asked for within the second
        # The list's filter loads: the one being read, and the newest asked for meanwhile
        # (typing on overtakes both: the running read is stopped, the waiting one replaced).
        self._loading: tuple[ListFilter, Cancel] | None = None
        self._wanted: ListFilter | None = None
        self._loader: Worker[None] | None = None  # the worker that loads them, while it runs
        self._store_error = False  # what #filter-error shows is the store's failure

    def compose(self) -> ComposeResult:
        yield StatusLine(self.sink, id="status")
        yield Input(
            placeholder='search: words, "phrases", from: rcpt: is:unread … (? then / lists all)',
            id="filter",
        )
        yield Static(id="filter-error")
        yield ListHeading(id="heading")
        yield MessageList(self.sink, id="messages")
        yield MessageDetail(self.sink, id="detail")
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
        if self.sink.faults is not None:  # faults switched on or off change the status line
            self._follow_rules()
        self._wanted = self.message_list.filter
        self._loader = self._load_filters()
        self.request_counts()

    @work(group="rules")
    async def _follow_rules(self) -> None:
        with self.sink.subscribe(RulesChanged) as changes:
            async for _change in changes:
                self.status.redraw()

    @on(MessageList.Selected)
    def _selected(self, event: MessageList.Selected) -> None:
        self.detail.show(event.message_id)

    @on(MessageList.Opened)
    def _opened(self, event: MessageList.Opened) -> None:
        from mailsink.tui.screens.message import MessageScreen

        read_state = self.message_list.read_state
        self.app.push_screen(MessageScreen(self.sink, event.message_id, read_state=read_state))

    @on(MessageList.Changed)
    def _counts(self) -> None:
        listing = self.message_list
        self.status.shown = listing.count
        self.status.filter_text = listing.filter.describe()
        with contextlib.suppress(NoMatches):  # (closing)
            self.detail.read_state = listing.read_state
        if listing.store_mark != self._counted:
            self.request_counts()  # mail came or went
        else:  # a new filter: the counts stand, and the rows' page goes first on the reader
            self._show_counts()
        self.status.redraw()

    def request_counts(self) -> None:
        """The counts read again: now, or a second after the last read (mail arriving fast,
        or another process committing, asks many times a second)."""
        if self._counts_timer is not None:
            return  # one is due
        wait = max(0.01, self._counts_at + self.counts_every - time.monotonic())  # (0: refused)
        self._counts_timer = self.set_timer(wait, self._counts_due)

    def _counts_due(self) -> None:
        self._counts_timer = None
        self._counts_at = time.monotonic()
        self.refresh_counts()

    @work(group="counts", exclusive=True)
    async def refresh_counts(self) -> None:
        """The unread count and how far the search index is, for the status line, in one read
        on the reader thread."""

        def counts(reader: Reader) -> tuple[int | None, tuple[int, int]]:
            progress = reader.index_progress()
            unread = reader.unread_count() if reader.version >= SEARCH_SINCE else None
            return unread, progress

        try:
            mark = self.message_list.store_mark
        except NoMatches:
            return  # the app is closing
        self.counts_read += 1
        try:
            self._last_counts = await self.sink.read(counts)
        except STORE_FAILURES:
            return  # the list's own read says what is wrong
        self._counted = mark
        with contextlib.suppress(NoMatches):  # the app is closing
            self._show_counts()

    def _show_counts(self) -> None:
        if self._last_counts is None:
            return
        unread, (indexed, total) = self._last_counts
        status = self.status
        status.unread = unread
        note = ""
        if indexed < total:
            query = self.message_list.filter.query
            needs_body = query is not None and query.needs_body
            # While a migrated store is indexed, always; new mail waiting for its turn only
            # matters to a query that looks into the body.
            if total - indexed >= INDEX_BACKLOG or needs_body:
                note = f"index {indexed:,}/{total:,}"
            search = self.message_list.filter.search
            if query and not self._index_told and search != self._asked_unsearched:
                self._asked_unsearched = search  # once per query, not once a second
                self._tell_unsearched(query, indexed, total)
            if self._index_timer is None:  # the progress moves without an event to say so
                self._index_timer = self.set_interval(INDEX_POLL_SECONDS, self.request_counts)
        elif self._index_timer is not None:
            self._index_timer.stop()
            self._index_timer = None
        status.index_note = note
        status.redraw()

    @work(group="unsearched", exclusive=True)
    async def _tell_unsearched(self, query: Query, indexed: int, total: int) -> None:
        """Once: that some messages could not be searched (not indexed yet) for `query`."""
        try:
            unsearched = await self.sink.read(lambda r: r.unsearched(query))
        except STORE_FAILURES:
            return
        if unsearched and not self._index_told:
            self._index_told = True
            self.notify(
                f"The search index has {indexed:,} of {total:,} messages so far: {unsearched:,}"
                " older ones were not searched for every term until it has them.",
                timeout=6,
            )

    def messages_changed(self, message_ids: tuple[int, ...]) -> None:
        """Read state or tags changed (here, or in another process: `message_ids` empty)."""
        self._refresh_states(message_ids)
        self.request_counts()

    @work(group="row-state")
    async def _refresh_states(self, message_ids: tuple[int, ...]) -> None:
        """The rows on screen that changed, and the detail if its message did."""
        try:
            detail = self.detail
            shown = detail.message_id
            found = await self.message_list.rows_changed(message_ids, also=shown)
        except STORE_FAILURES:
            return  # the list's own reads say what is wrong
        except NoMatches:
            return  # the app is closing
        loaded = detail.loaded
        if shown is None or shown != detail.message_id or loaded is None:
            return  # (one being loaded reads its record anyway)
        state = found.get(shown)
        record = loaded.record
        if state is not None and (state.seen, state.tags) != (record.seen, record.tags):
            detail.refresh_state()

    async def action_detail(self, action: str) -> None:
        await self.detail.run_action(action)

    # ---- filter

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # In the filter box `/` is a character like any other: declined (None: the footer still
        # lists it, dimmed), the priority binding lets the key go on to the Input.
        if action == "filter" and self.focused is not None and self.focused.id == "filter":
            return None
        return True

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("open")
        # At once, not as Widget.focus does (after the messages already queued): keys that
        # came in the same read as `/` (a paste, a slow link) must reach the box, not the list.
        self.set_focus(box)

    def action_leave_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus:
            if not box.value:
                box.remove_class("open")
            self.message_list.focus()

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        # The box draws what it holds as it is: a pasted ESC or NUL would reach the terminal.
        # No query needs one (a tab is a space).
        cleaned = _CONTROLS.sub("", event.value.replace("\t", " "))
        if cleaned != event.value:
            event.input.value = cleaned  # (another Changed follows)
            self.notify("Control characters were left out of the search.", timeout=3)
            return
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DEBOUNCE, self._apply_filter)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._apply_filter()
        self.message_list.focus()

    def _apply_filter(self) -> None:
        """The query in the box, if it parses; else what is wrong with it, under the box, and
        the list keeps the last filter that did."""
        text = self.query_one("#filter", Input).value.strip()
        error = self.query_one("#filter-error", Static)
        try:
            query = parse_query(text) if text else None
        except QueryError as problem:
            # The list of prefixes would take the list's rows at 80x24: the help has them.
            said = str(problem).split("; the prefixes are ")[0]
            if said != str(problem):
                said += " (? then / lists the prefixes)"
            error.update(Text(visible(said)))  # a Text: not read as markup
            error.add_class("shown")
            return
        if query is not None and not query.terms:  # a lone `"`, `-` or `!`: nothing asked
            text, query = "", None
        self._store_error = False
        error.remove_class("shown")
        error.update("")
        self._set_filter(replace(self.message_list.filter, search=text, query=query))

    def _set_filter(self, wanted: ListFilter) -> None:
        """At most one list read at a time, and one waiting: a newer filter replaces the one
        waiting and stops the one being read (one search per pause in typing, not a queue of
        them on the reader thread, each as slow as the last)."""
        loading = self._loading
        if loading is not None:
            if wanted == loading[0]:
                # Back to what is being read (A, B, A): let it go on; if it was stopped already,
                # it is read again (a read that ends is not read twice: _load_wanted).
                loading[1].cancelled = False
                self._wanted = wanted
            else:
                self._wanted = wanted
                loading[1].cancelled = True
        elif self._loader is not None:  # started, not reading yet: it takes this one
            self._wanted = wanted
        elif wanted != self.message_list.filter:
            self._wanted = wanted
            self._loader = self._load_filters()

    @work(group="filter")
    async def _load_filters(self) -> None:
        listing = self.message_list
        try:
            await self._load_wanted(listing)
        finally:
            self._loader = None

    async def _load_wanted(self, listing: MessageList) -> None:
        while (wanted := self._wanted) is not None:
            self._wanted = None
            if listing.loaded and wanted == listing.filter:
                continue  # back to what is shown (the read that was to change it stopped)
            cancel = Cancel()
            self._loading = (wanted, cancel)
            try:
                await listing.reload(wanted, cancel=cancel)
            except STORE_FAILURES as error:
                if not interrupted(error):  # (else overtaken: the next one is on its way)
                    self._show_store_error(error)
            else:
                if self._store_error:
                    self._clear_store_error()
            finally:
                self._loading = None

    async def reload_list(self) -> None:
        """The list read again (after an undo or a deletion); a store failure is said under
        the filter box and the list stays as it was."""
        try:
            await self.message_list.reload()
        except STORE_FAILURES as error:
            self._show_store_error(error)

    def _show_store_error(self, error: Exception) -> None:
        with contextlib.suppress(NoMatches):
            shown = self.query_one("#filter-error", Static)
            self._store_error = True
            shown.update(Text(visible(f"The store failed to list the messages: {error}")))
            shown.add_class("shown")

    def _clear_store_error(self) -> None:
        self._store_error = False
        with contextlib.suppress(NoMatches):
            shown = self.query_one("#filter-error", Static)
            shown.remove_class("shown")
            shown.update("")

    def action_findings_only(self) -> None:
        current = self.message_list.filter
        wanted = replace(current, findings_only=not current.findings_only)
        self._set_filter(wanted)
        self.notify(
            "only messages with findings" if wanted.findings_only else "all messages", timeout=2
        )

    def action_unread_only(self) -> None:
        current = self.message_list.filter
        wanted = replace(current, unread_only=not current.unread_only)
        self._set_filter(wanted)
        self.notify("only unread messages" if wanted.unread_only else "read and unread", timeout=2)

    def filter_by(self, term: str) -> None:
        """Add `term` (tag:x, finding:KIND) to the query in the box, and apply it."""
        box = self.query_one("#filter", Input)
        box.value = f"{box.value.strip()} {term}".strip()
        box.add_class("open")
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._apply_filter()

    def action_filter_by_tag(self) -> None:
        def chosen(tag: str | None) -> None:
            if tag:
                self.filter_by(f'tag:"{tag}"' if " " in tag else f"tag:{tag}")

        self.app.push_screen(TextPrompt(Text("Only messages with the tag:"), "Filter"), chosen)

    # ---- read state and tags

    def _no_read_state(self) -> bool:
        """An older store (attached, no server has migrated it): said, rather than tried."""
        if self.message_list.read_state:
            return False
        self.notify(NO_READ_STATE, severity="warning", timeout=5)
        return True

    def action_toggle_read(self) -> None:
        """`m`: the selected message read if unread, else unread."""
        if self._no_read_state():
            return
        listing = self.message_list
        message_id = listing.selected_id
        row = listing.row(message_id) if message_id is not None else None
        if message_id is None:
            return
        self._mark([message_id], read=row.unread if row is not None else True)

    @work(group="actions")
    async def _mark(self, message_ids: list[int], *, read: bool) -> None:
        try:
            await self.sink.mark_read(message_ids, read)
        except STORE_FAILURES as error:
            self.notify(f"Not marked: {error}", severity="error", markup=False)

    @work(group="actions")
    async def action_mark_all_read(self) -> None:
        if self._no_read_state():
            return
        try:
            changed = await self.sink.mark_all_read()
        except STORE_FAILURES as error:
            self.notify(f"Not marked: {error}", severity="error", markup=False)
            return
        self.notify(f"Marked {changed:,} message{'' if changed == 1 else 's'} read", timeout=3)

    def action_tags(self) -> None:
        """`t`: tags to add, and `-tag` to remove, comma-separated."""
        if self._no_read_state():
            return
        listing = self.message_list
        message_id = listing.selected_id
        if message_id is None:
            return
        row = listing.row(message_id)
        question = Text(f"Tags of message {message_id}: ")
        question.append(row.tags if row is not None and row.tags else "(none)", "bold")
        question.append(
            "\nAdd tags, or remove them with -tag (comma-separated; ASCII letters, digits,"
            " spaces and - _ . @, as Mailpit's):"
        )

        async def chosen(answer: str | None) -> None:
            if not answer:
                return
            add, remove = tag_changes(answer)
            try:
                await self.sink.change_tags([message_id], add=add, remove=remove)
            except ValueError as error:
                self.notify(visible(str(error)), severity="error", markup=False)
            except STORE_FAILURES as error:
                self.notify(f"Tags not changed: {error}", severity="error", markup=False)

        self.app.push_screen(TextPrompt(question, "Change"), chosen)

    # ---- acting on messages

    def action_delete(self) -> None:
        """`d`: the row goes at once; the store deletes the message UNDO_SECONDS later (or when
        the app quits), unless `u` brings it back first."""
        listing = self.message_list
        message_id = listing.selected_id
        if message_id is None:
            return
        listing.hide([message_id])
        self._undoable[message_id] = self.set_timer(
            UNDO_SECONDS, partial(self._delete_stored, message_id)
        )
        self.notify(f"Deleted message {message_id} — u to undo", timeout=UNDO_SECONDS)

    @work(group="actions")
    async def action_undo(self) -> None:
        if not self._undoable:
            self.notify("Nothing to undo.", timeout=2)
            return
        message_id, timer = self._undoable.popitem()  # the latest deletion
        timer.stop()
        listing = self.message_list
        listing.release([message_id])
        await self.reload_list()
        if listing.select_id(message_id):
            self.notify(f"Message {message_id} is back", timeout=2)
        else:
            self.notify(
                f"Message {message_id} is back (not shown by the current filter)", timeout=4
            )

    async def _delete_stored(self, message_id: int) -> None:
        if self._undoable.pop(message_id, None) is None:
            return  # undone, or carried out on quit
        listing = self.message_list
        try:
            await self.sink.delete_message(message_id)
        except STORE_FAILURES as error:
            self.notify(
                f"Message {message_id} not deleted: {error}", severity="error", markup=False
            )
            listing.release([message_id])
            await self.reload_list()
            return
        listing.release([message_id], deletions=1)

    async def carry_out_deletions(self) -> list[str]:
        """The app is quitting: delete what is still undoable now rather than never. Returns
        what was asked for and did not happen, for the terminal once the UI has left it."""
        problems = []
        pending = list(self._undoable)
        for timer in self._undoable.values():
            timer.stop()
        self._undoable.clear()
        if pending:
            try:
                await self.sink.delete_messages(pending)
            except STORE_FAILURES as error:
                log.error("messages %s not deleted: %s", pending, error)
                listed = ", ".join(map(str, pending))
                problems.append(
                    f"message{'s' if len(pending) > 1 else ''} {listed} not deleted: {error}"
                )
        if self._bulk is not None:  # the app quit in the middle of a `D`
            ids, total = self._bulk
            self._bulk = None
            try:
                await self.sink.flush()  # the chunk that was in flight has committed (or not)
                left = len(set(ids).intersection(await self.sink.read(Reader.message_ids)))
            except STORE_FAILURES as error:
                problems.append(f"quit during D: not known how many were deleted: {error}")
            else:
                if left:
                    problems.append(
                        f"quit during D: {left:,} of {total:,} messages were not deleted"
                    )
        return problems

    def clear_label(self) -> str:
        """What `D` deletes, in words: the listed messages with a filter, else all."""
        listing = self.message_list
        count = listing.count
        if listing.filter.describe():
            return f"Delete the {count:,} listed message{'' if count == 1 else 's'}"
        return "Delete the only message" if count == 1 else f"Delete all {count:,} messages"

    def action_clear(self) -> None:
        """`D`: with a filter, exactly the listed messages; without, all of them. Either way the
        ones counted in the question (mail arriving before the answer stays)."""
        if self._deleting:
            self.notify("Still deleting: see the status line.", severity="warning", timeout=3)
            return
        listing = self.message_list
        ids = array("q", listing.ids)  # a copy: what the question counts is what goes
        count = len(ids)
        if not count:
            self.notify("No messages to delete.", timeout=2)
            return
        filtered = bool(listing.filter.describe())
        question = self.clear_label() + "?"
        if not filtered:  # as `mailsink clear` does
            question += "\nFinished sessions without messages go too."

        def answered(yes: bool | None) -> None:
            if yes:
                self._deleting = True
                self._delete_many(ids, sessions=not filtered)

        self.app.push_screen(Confirm(question, f"Delete {count:,}"), answered)

    @work(group="bulk-delete")
    async def _delete_many(self, ids: array[int], *, sessions: bool) -> None:
        """A chunk per transaction, newest first, with the loop free between chunks: the UI
        answers keys and the server commits meanwhile. The rows go at once; the list is read
        again at the end."""
        listing, status = self.message_list, self.status
        listing.hide(ids)
        total, done, deleted, chunk = len(ids), 0, 0, self.DELETE_CHUNK
        error: Exception | None = None
        try:
            for end in range(total, 0, -chunk):
                status.progress(f"deleting {done:,} of {total:,}…")
                start = max(0, end - chunk)
                self._bulk = (ids[:end], total)  # what is left if the app quits meanwhile
                part = ids[start:end]
                # Those still there: another program may have deleted some since the question.
                deleted += await self.sink.delete_messages(part)
                listing.release(part, deletions=1)  # the store counts one deletion per chunk
                done += len(part)
            self._bulk = None
            if sessions:
                status.progress("deleting sessions…")
                await self.sink.delete_idle_sessions()
        except STORE_FAILURES as failed:
            error = failed
        finally:
            self._deleting = False
            status.progress("")
        self._bulk = None
        listing.release(ids)  # those not deleted come back with the reload
        await self.reload_list()
        if error is not None:
            self.notify(
                f"Deleted {deleted:,} of {total:,} messages, then: {error}",
                severity="error",
                markup=False,
            )
        elif deleted < total:
            others = total - deleted
            self.notify(
                f"Deleted {deleted:,} message{'' if deleted == 1 else 's'}"
                f" ({others:,} of the {total:,} were already gone)"
            )
        else:
            self.notify(f"Deleted {deleted:,} message{'' if deleted == 1 else 's'}")

    def action_export(self) -> None:
        from mailsink.export import ExportError, export_eml

        message_id = self.message_list.selected_id
        if message_id is None:
            return
        if os.environ.get("MAILSINK_WEB_UI") == "1":
            # In a browser tab: the .eml is downloaded to the browser's machine (Mailpit's
            # raw as an attachment); a tab writes nothing on the server's.
            self.app.open_url(f"/api/v1/message/{message_id}/raw?dl=1", new_tab=True)
            self.notify(f"Downloading message {message_id} as {message_id}.eml")
            return

        async def chosen(directory: str | None) -> None:
            if not directory:
                return
            target = Path(directory).expanduser()
            try:
                path = await self.sink.read(export_eml, message_id, target)
            except (ExportError, OSError, sqlite3.Error) as error:
                self.notify(f"Not exported: {error}", severity="error", markup=False)
                return
            self.notify(f"Exported {visible(str(path))}", markup=False)

        self.app.push_screen(
            PathPrompt(f"Export message {message_id} as .eml into:", str(Path.cwd())), chosen
        )
