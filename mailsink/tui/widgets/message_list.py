"""The message list: a virtual view over any number of stored messages (the toolong way).

Only an index of ids (8 bytes per message) is held; rows are loaded a page at a time on the reader
thread when they come into view, and kept in a small LRU cache. Rendering a line never waits.
"""

from __future__ import annotations

import sqlite3
from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events, on, work
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mailsink.query import FLAG, Query, Term
from mailsink.sink import Sink
from mailsink.store.reader import Reader
from mailsink.store.schema import SEARCH_SINCE
from mailsink.tui.rows import Row, cut, fit_addresses, gone, row_of, tag_text

PAGE = 100  # rows fetched together
CACHE_ROWS = 2000


@dataclass(frozen=True)
class ListFilter:
    """What the list shows: the query as typed (`search`), parsed (`query`), and the toggles.
    Two filters are the same when they were typed the same: a reparse (`after:2h` resolved a
    moment later) is not a new filter."""

    search: str = ""
    findings_only: bool = False
    unread_only: bool = False
    query: Query | None = field(default=None, compare=False)

    def reader_query(self) -> Query | None:
        """The query the Reader runs: the typed one, and `is:unread` for "unread only"."""
        terms = self.query.terms if self.query is not None else ()
        if self.unread_only:
            terms = (*terms, UNREAD)
        return Query(terms, self.search) if terms else None

    def describe(self) -> str:
        parts = []
        if self.search:
            parts.append(f"matching {self.search!r}")
        if self.unread_only:
            parts.append("unread only")
        if self.findings_only:
            parts.append("with findings")
        return " ".join(parts)


UNREAD = Term("is", FLAG, "unread", False, "is:unread")
BADGES = 5  # the last column, untitled: •!9@✗ (• unread, in a cell of its own)


@dataclass(frozen=True)
class Spec:
    """A column of one layout: a fixed `width`, or flexible with a `least` width, a `weight` for
    sharing out the room left and a `most` width (0: no limit)."""

    key: str  # the field shown: time, sender, mark (≠: the envelope sender is not From), ...
    width: int = 0
    least: int = 0
    weight: float = 0.0
    most: int = 0


def _flexible(key: str, least: int, weight: float, most: int = 0) -> Spec:
    return Spec(key, least=least, weight=weight, most=most)


# From the richest down: the first layout whose columns fit at their least widths is used. The
# envelope sender gives way first (to the ≠ marker), then Size's long form, the seconds, Size,
# To and From; the Subject and the badges stay to the end.
_LAYOUTS: tuple[tuple[Spec, ...], ...] = (
    (
        Spec("time", 8),
        _flexible("sender", 20, 0.5, 40),
        _flexible("from", 28, 2, 60),
        _flexible("to", 28, 2, 60),
        _flexible("subject", 46, 1),
        Spec("size", 10),
    ),
    (
        Spec("time", 8),
        Spec("mark", 1),
        _flexible("from", 20, 1, 60),
        _flexible("to", 18, 1, 60),
        _flexible("subject", 40, 2),
        Spec("size", 10),
    ),
    (
        Spec("time", 8),
        Spec("mark", 1),
        _flexible("from", 14, 1, 60),
        _flexible("to", 11, 1, 60),  # (`a@x.test +2`) so that at 80 columns the subject has 27
        _flexible("subject", 25, 2),
        Spec("size", 5),
    ),
    (
        Spec("time", 5),
        Spec("mark", 1),
        _flexible("from", 12, 1, 60),
        _flexible("to", 10, 1, 60),
        _flexible("subject", 20, 2),
        Spec("size", 5),
    ),
    (
        Spec("time", 5),
        Spec("mark", 1),
        _flexible("from", 12, 1, 60),
        _flexible("to", 9, 1, 60),  # so that at 60 columns the subject has 22
        _flexible("subject", 21, 2),
    ),
    (Spec("time", 5), Spec("mark", 1), _flexible("from", 12, 1, 60), _flexible("subject", 16, 2)),
    (Spec("time", 5), _flexible("subject", 8, 1)),
    (_flexible("subject", 1, 1),),
)
_TITLES = {
    "time": "Time",
    "sender": "Envelope sender",
    "mark": "",
    "from": "From",
    "to": "To",
    "subject": "Subject",
    "size": "Size",
}


def _share(specs: tuple[Spec, ...], room: int) -> list[int]:
    """The flexible columns' least widths, and `room` shared out by weight; a column at its most
    passes the rest on to the others."""
    widths = [spec.width or spec.least for spec in specs]
    room -= sum(widths)
    growing = [i for i, spec in enumerate(specs) if spec.weight]
    while room > 0 and growing:
        total = sum(specs[i].weight for i in growing)
        given = 0
        for i in growing:
            extra = int(room * specs[i].weight / total)
            if specs[i].most:
                extra = min(extra, specs[i].most - widths[i])
            widths[i] += extra
            given += extra
        growing = [i for i in growing if not specs[i].most or widths[i] < specs[i].most]
        if given == 0:  # rounding left a few cells: to the last that grows (the Subject)
            if growing:
                widths[growing[-1]] += room - given
            break
        room -= given
    return widths


class Layout:
    """The columns at one width: every line is exactly `width` cells, the badges last."""

    def __init__(self, width: int) -> None:
        self.width = width
        # Too narrow for a subject beside all the badges (6 cells): no unread mark.
        self.badges = badges = BADGES if width > BADGES + 1 else BADGES - 1
        for specs in _LAYOUTS:
            room = width - badges - len(specs)  # one space after each column
            if room >= sum(spec.width or spec.least for spec in specs):
                break
        self.columns = tuple(
            (spec.key, cells) for spec, cells in zip(specs, _share(specs, room), strict=True)
        )
        # A terminal too narrow even for the last layout: lines are cut to its width.
        self.exact = sum(cells + 1 for _, cells in self.columns) + badges == width

    def heading(self) -> str:
        cells = [
            _TITLES[key].rjust(width) if key == "size" else cut(_TITLES[key], width)
            for key, width in self.columns
        ]
        return " ".join(cells) + " " + " " * self.badges

    def text(self, row: Row) -> list[tuple[str, bool]]:
        """Every column but the badges, each followed by its space, as pieces of text and
        whether each is a row's tags (shown dim, after the subject)."""
        pieces: list[tuple[str, bool]] = []
        plain = ""
        for key, width in self.columns:
            if key == "subject" and row.tags and width >= TAGS_LEAST:
                subject, tags = _subject_and_tags(row, width)
                pieces += [(plain + subject, False), (tags, True)]
                plain = " "
            else:
                plain += self._cell(row, key, width) + " "
        pieces.append((plain, False))
        # Measured again joined: a cell measured alone may count differently beside the next
        # one (a mark that joins across the space), and the strip is trusted to be this wide.
        joined = cell_len("".join(text for text, _ in pieces))
        wanted = self.width - self.badges if self.exact else joined
        if joined != wanted:
            last, dim = pieces[-1]
            pieces[-1] = (set_cell_size(last, max(0, cell_len(last) + wanted - joined)), dim)
        return [(text, dim) for text, dim in pieces if text]

    @staticmethod
    def _cell(row: Row, key: str, width: int) -> str:
        if key == "time":
            return cut(row.time[:width], width)
        if key == "sender":
            return cut(row.sender, width)
        if key == "mark":
            return "≠" if row.sender_differs and row.sender else " "
        if key == "from":
            return fit_addresses(row.from_, width)
        if key == "to":
            return fit_addresses(row.to, width)
        if key == "size":
            size = row.size if width >= 10 else row.size_short
            return size.rjust(width) if len(size) <= width else cut(size, width)
        return cut(row.subject, width)


TAGS_LEAST = 16  # a narrower subject column shows no tags


def _subject_and_tags(row: Row, width: int) -> tuple[str, str]:
    """The subject, then the tags in what is left of `width` (the subject keeps at least half
    of it): together exactly `width` cells."""
    room = max(width - 1 - cell_len(row.tags), width // 2)
    subject = row.subject if cell_len(row.subject) <= room else cut(row.subject, room)
    return subject + " ", cut(row.tags, width - cell_len(subject) - 1)


def _rows(reader: Reader, ids: list[int]) -> dict[int, Row]:
    records = reader.messages_by_id(ids)
    return {i: row_of(records[i]) if i in records else gone(i) for i in ids}


# Read state and tags of some messages, in one small query: what another process's commit may
# have changed (a row's other fields never change).
_STATE_SQL = (
    "SELECT id, seen, status = 'accepted', (SELECT group_concat(tag, char(31))"
    " FROM message_tags WHERE message_id = messages.id) FROM messages WHERE id IN ({})"
)


@dataclass(frozen=True)
class State:
    """What may change of a stored message: its read state and its tags."""

    seen: bool
    accepted: bool
    tags: list[str]

    @property
    def unread(self) -> bool:
        return not self.seen and self.accepted  # as row_of has it


def states(reader: Reader, ids: list[int]) -> dict[int, State]:
    """Message id: its State, for those of `ids` still stored (none before SEARCH_SINCE)."""
    if reader.version < SEARCH_SINCE or not ids:
        return {}
    rows = reader.conn.execute(_STATE_SQL.format(",".join("?" * len(ids))), ids).fetchall()
    return {
        message_id: State(
            bool(seen), bool(accepted), sorted(tags.split("\x1f"), key=str.casefold) if tags else []
        )
        for message_id, seen, accepted, tags in rows
    }


class Cancel:
    """Set `cancelled` (from the loop) and the read it was given to stops where it is, on the
    reader thread: SQLite's progress handler asks it, so only that read is stopped, never
    another one that happens to run on the connection when the user types on."""

    PROGRESS_STEPS = 1_000  # SQLite VM steps between two looks (some call back into Python)

    def __init__(self) -> None:
        self.cancelled = False

    def run(self, reader: Reader, read: Any) -> Any:
        if self.cancelled:
            raise sqlite3.OperationalError("interrupted")
        reader.conn.set_progress_handler(lambda: self.cancelled, self.PROGRESS_STEPS)
        try:
            return read(reader)
        finally:
            reader.conn.set_progress_handler(None, 0)


def interrupted(error: BaseException) -> bool:
    """A read stopped by its Cancel (it was overtaken): nothing to tell anyone."""
    return isinstance(error, sqlite3.OperationalError) and str(error) == "interrupted"


@lru_cache(maxsize=8)
def layout_for(width: int) -> Layout:
    return Layout(width)


def heading_line(width: int) -> str:
    """The list's heading for a list `width` cells wide (without its scrollbar)."""
    return layout_for(width).heading()


class MessageList(ScrollView, can_focus=True):
    """Newest first. The selection follows a message, not a row: new mail arriving above it
    moves neither the selection nor what is on screen (unless the view is at the very top), but
    when following the newest (`follow`) each new message is selected as it arrives."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First", show=False),
        Binding("end,G", "last", "Last", show=False),
    ]
    # Every line is as wide as the list: never a horizontal scrollbar (it would take a row).
    DEFAULT_CSS = """
    MessageList {
        overflow-x: hidden;
    }
    """
    COMPONENT_CLASSES = {
        "message-list--cursor",
        "message-list--dim",
        "message-list--rejected",
        "message-list--error",
        "message-list--warning",
        "message-list--info",
        "message-list--attachment",
        "message-list--unread",
        "message-list--tags",
    }

    cursor: reactive[int] = reactive(0, always_update=True, init=False)

    class Selected(Message):
        """The selection moved to another message (None: the list is empty)."""

        def __init__(self, message_id: int | None) -> None:
            self.message_id = message_id
            super().__init__()

    class Opened(Message):
        def __init__(self, message_id: int) -> None:
            self.message_id = message_id
            super().__init__()

    class Changed(Message):
        """The index was reloaded or grew: counts may differ."""

    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sink = sink
        self.filter = ListFilter()
        self.ids: array[int] = array("q")  # ascending; row r is ids[-1 - r]
        self.loaded = False
        self._rows: LRUCache[int, Row] = LRUCache(CACHE_ROWS)
        self._texts: dict[int, tuple[Row, Layout, list[tuple[str, bool]]]] = {}  # see _segments
        self._paint_width: int | None = None  # see render_lines
        self._pending_pages: set[int] = set()
        self._selected_id: int | None = None
        self._announced: int | bool | None = False  # last id posted with Selected
        self._generation = 0  # counts full reloads
        self._deletions = -1  # the store's deletion count when the index was read
        self._released = 0  # deletions counted by release(): a catch-up read before is stale
        self.hidden: set[int] = set()  # deleted here, not yet in the store: see `hide`
        # The newest id in the store when the index was last read, matching the filter or not:
        # a catch-up reads only above it, even when nothing matched (an empty list).
        self._seen = 0
        self.follow = False  # the selection jumps to each new message (toggled by `F`)
        # The store keeps read state (schema SEARCH_SINCE on): else no unread marks.
        self.read_state = True

    # ---- the index

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def store_mark(self) -> tuple[int, int]:
        """The newest id and the deletion count of the store when the list last looked: the
        same, and no message came or went."""
        return self._seen, self._deletions

    @property
    def selected_id(self) -> int | None:
        return self._selected_id

    def row(self, message_id: int) -> Row | None:
        """The row of `message_id` as last loaded (None: not loaded)."""
        return self._rows.get(message_id)

    def id_at(self, row: int) -> int | None:
        return self.ids[-1 - row] if 0 <= row < len(self.ids) else None

    def row_of_id(self, message_id: int) -> int | None:
        position = bisect_left(self.ids, message_id)
        if position < len(self.ids) and self.ids[position] == message_id:
            return len(self.ids) - 1 - position
        return None

    async def reload(
        self, new_filter: ListFilter | None = None, *, cancel: Cancel | None = None
    ) -> None:
        """Read the whole index again (a new filter, or rows deleted elsewhere). If the store
        fails (or `cancel` stops the read: sqlite3.OperationalError 'interrupted'), the error
        comes out and the list and its filter stay as they were."""
        before = self.filter
        if new_filter is not None:
            self.filter = new_filter
        f = self.filter
        query = f.reader_query()

        def read(r: Reader) -> tuple[int, int | None, array[int], int]:
            # Each read sees the store as it is then, so the order matters: the deletion count
            # and the newest id before the index, so that a deletion or a message committed in
            # between is not taken as already in it.
            return (
                Reader.deletions(r),
                Reader.latest_id(r),
                Reader.message_index(r, query=query, findings_only=f.findings_only),
                r.version,
            )

        try:
            if cancel is None:
                deletions, latest, ids, version = await self.sink.read(read)
            else:
                deletions, latest, ids, version = await self.sink.read(cancel.run, read)
        except BaseException:
            if self.filter is f:  # not overtaken: the list shown is the old filter's still
                self.filter = before
            raise
        if f != self.filter:
            return  # a newer filter is being loaded
        self.read_state = version >= SEARCH_SINCE
        if self.hidden:
            ids = array("q", [i for i in ids if i not in self.hidden])
        self._deletions = deletions
        self._seen = latest or 0
        self._generation += 1  # what catch_up read before this is stale
        keep = self._selected_id
        newest = self.ids[-1] if self.ids else 0
        self.ids = ids
        self.loaded = True
        self._rows.clear()
        self._pending_pages.clear()
        row = self.row_of_id(keep) if keep is not None else None
        if self.follow and ids and ids[-1] > newest:
            # New mail came with the reload (a deletion elsewhere in the same poll, an undo).
            row = 0
        elif row is None:
            row = min(self.cursor, max(0, len(ids) - 1)) if new_filter is None else 0
        self._resize()
        self.cursor = row
        self.scroll_to_cursor()
        self.refresh()
        self.post_message(self.Changed())

    async def catch_up(self) -> bool:
        """Take in messages stored since the last look and drop pruned ones (a deletion in the
        middle means a full reload). False when a reload overtook it: look again."""
        f, generation, released = self.filter, self._generation, self._released
        query = f.reader_query()
        above = max(self.ids[-1] if self.ids else 0, self._seen)
        latest, new, first, deletions = await self.sink.read(
            lambda r: (
                Reader.latest_id(r),  # before the index: see reload
                Reader.message_index(r, query=query, findings_only=f.findings_only, above=above),
                Reader.first_id(r),
                Reader.deletions(r),
            )
        )
        if f != self.filter or generation != self._generation:
            return False
        if released != self._released:
            # This UI's own deletion committed and was counted while the read was under way:
            # its count may be from before (a full reload for nothing). Look again.
            return False
        if deletions != self._deletions:
            await self.reload()
            return True
        self._seen = max(self._seen, latest or 0)
        changed = False
        if first is None:
            if self.ids:
                self.ids = array("q")
                changed = True
        elif self.ids and self.ids[0] < first:
            del self.ids[: bisect_left(self.ids, first)]
            changed = True
        if new:
            self.ids.extend(new)
            changed = True
        if not changed:
            return True
        at_top = self.scroll_y == 0
        self._resize()
        if self.follow and new:
            self.cursor = 0
            self.scroll_to(y=0, animate=False, immediate=True)
        elif (
            self._selected_id is not None and (row := self.row_of_id(self._selected_id)) is not None
        ):
            if not at_top:
                self.scroll_to(y=self.scroll_y + (row - self.cursor), animate=False, immediate=True)
            self.cursor = row
        else:
            self.cursor = min(self.cursor, max(0, len(self.ids) - 1))
        self.refresh()
        self.post_message(self.Changed())
        return True

    async def rows_changed(
        self, message_ids: Collection[int], also: int | None = None
    ) -> dict[int, State]:
        """The read state or tags of these messages may have changed (empty: of any): those
        on screen (and `also`, the detail's) are looked at in one small read, and only the
        rows that differ are drawn again. Rows cached off screen are dropped (read again when
        they come into view). The index is not read again: a row that no longer matches the
        filter (read, under "unread only") stays until the filter changes, so that the
        selection never jumps from under the user. Returns the states read."""
        if message_ids:
            wanted = {i for i in message_ids if i in self._rows}
        else:
            top = int(self.scroll_y)
            height = self.scrollable_content_region.height
            shown = {self.id_at(row) for row in range(top, top + height)}
            wanted = {i for i in shown if i is not None and i in self._rows}
            kept = {i: self._rows[i] for i in wanted}
            self._rows.clear()
            for message_id, row in kept.items():
                self._rows[message_id] = row
        if also is not None and (not message_ids or also in message_ids):
            wanted.add(also)
        if not wanted:
            return {}
        found = await self.sink.read(states, sorted(wanted))
        changed = False
        for message_id, state in found.items():
            cached = self._rows.get(message_id)
            tags = tag_text(state.tags)
            if cached is not None and (cached.unread, cached.tags) != (state.unread, tags):
                self._rows.discard(message_id)  # LRUCache.set keeps a key's old value
                self._rows[message_id] = replace(cached, unread=state.unread, tags=tags)
                changed = True
        if changed:
            self.refresh()
        return found

    def hide(self, message_ids: Collection[int]) -> None:
        """Messages deleted here, before the store deletes them (that waits for undo, or goes a
        chunk at a time): their rows go now, and stay out of any reload until `release`. The
        row that takes the selected one's place is selected."""
        self.hidden.update(message_ids)
        row = self.cursor
        if len(message_ids) == 1:
            (message_id,) = message_ids
            if (at := self.row_of_id(message_id)) is not None:
                del self.ids[len(self.ids) - 1 - at]
        else:
            self.ids = array("q", [i for i in self.ids if i not in self.hidden])
        self._selected_id = None
        self._resize()
        self.cursor = min(row, max(0, len(self.ids) - 1))
        self.refresh()
        self.post_message(self.Changed())

    def release(self, message_ids: Iterable[int], *, deletions: int = 0) -> None:
        """Hidden messages that the store has deleted, counting `deletions` deletions (a reload
        shows them no more), or that come back (the caller reloads). Counting the store's
        deletions here tells the next catch-up that no other deletion happened, so it needs no
        full reload."""
        self.hidden.difference_update(message_ids)
        if self._deletions >= 0:
            self._deletions += deletions
        if deletions:
            self._released += 1

    def _resize(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.ids))

    def on_resize(self) -> None:
        self._resize()

    # ---- selection

    def watch_cursor(self, row: int) -> None:
        self._selected_id = self.id_at(row)
        if self._selected_id != self._announced:
            self._announced = self._selected_id
            self.post_message(self.Selected(self._selected_id))
        self.refresh()

    def scroll_to_cursor(self) -> None:
        height = self.scrollable_content_region.height or 1
        if self.cursor < self.scroll_y:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= self.scroll_y + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def _move_to(self, row: int) -> None:
        if not self.ids:
            return
        self.cursor = max(0, min(row, len(self.ids) - 1))
        self.scroll_to_cursor()

    def action_move(self, delta: int) -> None:
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        height = max(1, self.scrollable_content_region.height - 1)
        self._move_to(self.cursor + direction * height)

    def action_first(self) -> None:
        self._move_to(0)

    def action_last(self) -> None:
        self._move_to(len(self.ids) - 1)

    def toggle_follow(self) -> bool:
        """Follow the newest message (it is selected now, and each new one as it arrives), or
        stop following. Returns whether it follows now."""
        self.follow = not self.follow
        if self.follow:
            self.action_first()
            self.notify("Following new mail: each new message is selected as it arrives (F stops)")
        else:
            self.notify("No longer following new mail", timeout=3)
        return self.follow

    def select_id(self, message_id: int) -> bool:
        row = self.row_of_id(message_id)
        if row is not None:
            self._move_to(row)
        return row is not None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        row = int(self.scroll_y) + offset.y
        if 0 <= row < len(self.ids):
            if event.chain >= 2 and row == self.cursor:
                self.post_message(self.Opened(self.ids[-1 - row]))
            self._move_to(row)

    def key_enter(self) -> None:
        if self._selected_id is not None:
            self.post_message(self.Opened(self._selected_id))

    # ---- rendering

    def _style(self, name: str) -> Style:
        # partial: without the widget's background, so the cursor's shows through
        return self.get_component_rich_style(f"message-list--{name}", partial=True)

    def render_lines(self, crop: Region) -> list[Strip]:
        # The width once per paint rather than once per line (it costs as much as a line).
        self._paint_width = self.scrollable_content_region.width
        try:
            return super().render_lines(crop)
        finally:
            self._paint_width = None

    def render_line(self, y: int) -> Strip:
        row = int(self.scroll_y) + y
        width = self._paint_width
        if width is None:
            width = self.scrollable_content_region.width
        message_id = self.id_at(row)
        if message_id is None:
            if row == 0 and self.loaded:
                text = "No messages yet." if not self.filter.describe() else "No messages match."
                style = self._style("dim")
                return Strip([Segment(cut(f"  {text}", width), style)], width)
            return Strip.blank(width, self.rich_style)
        cached = self._rows.get(message_id)
        if cached is None:
            self._want(row)
            segments = [Segment(cut(f"  … message {message_id}", width), self._style("dim"))]
            strip = Strip(segments, width)
        else:
            layout = layout_for(width)
            strip = Strip(self._segments(cached, layout), width if layout.exact else None)
            if not layout.exact:
                strip = strip.crop_extend(0, width, self.rich_style)
        if row == self.cursor:
            strip = strip.apply_style(self._style("cursor"))
        return strip

    def _segments(self, row: Row, layout: Layout) -> list[Segment]:
        # The text of the columns is made once per row and width: a line costs a few segments.
        known = self._texts.get(row.id)
        if known is not None and known[0] is row and known[1] is layout:
            pieces = known[2]
        else:
            if len(self._texts) >= CACHE_ROWS:
                self._texts.clear()
            pieces = layout.text(row)
            self._texts[row.id] = (row, layout, pieces)
        style = self._style("rejected") if row.rejected else Style()
        dim = self._style("tags") + style
        segments = [Segment(text, dim if tags else style or None) for text, tags in pieces]
        used = 0
        if layout.badges == BADGES:  # the first cell: • (unread), a column of its own
            unread = row.unread and self.read_state  # (an older store has no read state)
            segments.append(Segment("•", self._style("unread")) if unread else Segment(" "))
            used = 1
        if row.findings:
            segments.append(Segment(f"!{min(row.findings, 9)}", self._style(row.worst or "info")))
            used += 2
        if row.attachments:
            segments.append(Segment("@", self._style("attachment")))
            used += 1
        if row.rejected:
            segments.append(Segment("✗", self._style("error")))
            used += 1
        segments.append(Segment(" " * (layout.badges - used)))
        return segments

    # ---- paging

    def _want(self, row: int) -> None:
        page = row // PAGE
        if page not in self._pending_pages:
            self._pending_pages.add(page)
            self._load_page(page)

    @work(group="pages")
    async def _load_page(self, page: int) -> None:
        ids = [self.ids[-1 - r] for r in range(page * PAGE, min((page + 1) * PAGE, len(self.ids)))]
        try:
            loaded = await self.sink.read(_rows, ids)
        finally:
            self._pending_pages.discard(page)
        for message_id, row in loaded.items():
            self._rows[message_id] = row
        self.refresh()

    @on(events.Focus)
    @on(events.Blur)
    def _restyle(self) -> None:
        self.refresh()
