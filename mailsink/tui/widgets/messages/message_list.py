"""The message list: a virtual view over any number of stored messages (the toolong way).

Only an index of ids (8 bytes per message) is held; rows are loaded a page at a time on the reader
thread when they come into view, and kept in a small LRU cache. Rendering a line never waits.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events, on, work
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mailsink.store.queries import Reader
from mailsink.tui.backend import Backend
from mailsink.tui.rows import Row, gone, row_of

PAGE = 100  # rows fetched together
CACHE_ROWS = 2000


@dataclass(frozen=True)
class ListFilter:
    search: str = ""
    findings_only: bool = False

    def describe(self) -> str:
        parts = []
        if self.search:
            parts.append(f"matching {self.search!r}")
        if self.findings_only:
            parts.append("with findings")
        return " ".join(parts)


# (title, width or 0 for the flexible column)
COLUMNS = (
    ("Time", 8),
    ("Envelope sender", 24),
    ("From", 22),
    ("To", 22),
    ("Subject", 0),
    ("Size", 9),
    ("", 6),
)


def _widths(total: int) -> list[int]:
    fixed = sum(width + 1 for _, width in COLUMNS if width) + 1
    flexible = max(10, total - fixed)
    return [width or flexible for _, width in COLUMNS]


def _cell(text: str, width: int) -> str:
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width)


def heading_line(width: int) -> str:
    return " ".join(_cell(title, w) for (title, _), w in zip(COLUMNS, _widths(width), strict=True))


class MessageList(ScrollView, can_focus=True):
    """Newest first. The selection follows a message, not a row: new mail arriving above it
    moves neither the selection nor what is on screen (unless the view is at the very top)."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First", show=False),
        Binding("end,G", "last", "Last", show=False),
    ]
    COMPONENT_CLASSES = {
        "message-list--cursor",
        "message-list--dim",
        "message-list--rejected",
        "message-list--error",
        "message-list--warning",
        "message-list--info",
        "message-list--attachment",
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

    def __init__(self, backend: Backend, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.backend = backend
        self.filter = ListFilter()
        self.ids: array[int] = array("q")  # ascending; row r is ids[-1 - r]
        self.loaded = False
        self._rows: OrderedDict[int, Row] = OrderedDict()
        self._pending_pages: set[int] = set()
        self._selected_id: int | None = None
        self._announced: int | bool | None = False  # last id posted with Selected
        self._generation = 0  # counts full reloads
        self._deletions = -1  # the store's deletion count when the index was read
        # The newest id in the store when the index was last read, matching the filter or not:
        # a catch-up reads only above it, even when nothing matched (an empty list).
        self._seen = 0

    # ---- the index

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def selected_id(self) -> int | None:
        return self._selected_id

    def id_at(self, row: int) -> int | None:
        return self.ids[-1 - row] if 0 <= row < len(self.ids) else None

    def row_of_id(self, message_id: int) -> int | None:
        position = bisect_left(self.ids, message_id)
        if position < len(self.ids) and self.ids[position] == message_id:
            return len(self.ids) - 1 - position
        return None

    async def reload(self, new_filter: ListFilter | None = None) -> None:
        """Read the whole index again (a new filter, or rows deleted elsewhere)."""
        if new_filter is not None:
            self.filter = new_filter
        f = self.filter
        # Each read sees the store as it is then, so the order matters: the deletion count and
        # the newest id before the index, so that a deletion or a message committed in between
        # is not taken as already in it.
        deletions, latest, ids = await self.backend.read(
            lambda r: (
                Reader.deletions(r),
                Reader.latest_id(r),
                Reader.message_index(r, search=f.search or None, findings_only=f.findings_only),
            )
        )
        if f != self.filter:
            return  # a newer filter is being loaded
        self._deletions = deletions
        self._seen = latest or 0
        self._generation += 1  # what catch_up read before this is stale
        keep = self._selected_id
        self.ids = ids
        self.loaded = True
        self._rows.clear()
        self._pending_pages.clear()
        row = self.row_of_id(keep) if keep is not None else None
        if row is None:
            row = min(self.cursor, max(0, len(ids) - 1)) if new_filter is None else 0
        self._resize()
        self.cursor = row
        self.scroll_to_cursor()
        self.refresh()
        self.post_message(self.Changed())

    async def catch_up(self) -> bool:
        """Take in messages stored since the last look and drop pruned ones (a deletion in the
        middle means a full reload). False when a reload overtook it: look again."""
        f, generation = self.filter, self._generation
        above = max(self.ids[-1] if self.ids else 0, self._seen)
        latest, new, first, deletions = await self.backend.read(
            lambda r: (
                Reader.latest_id(r),  # before the index: see reload
                Reader.message_index(
                    r, search=f.search or None, findings_only=f.findings_only, above=above
                ),
                Reader.first_id(r),
                Reader.deletions(r),
            )
        )
        if f != self.filter or generation != self._generation:
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
        if self._selected_id is not None and (row := self.row_of_id(self._selected_id)) is not None:
            if not at_top:
                self.scroll_to(y=self.scroll_y + (row - self.cursor), animate=False, immediate=True)
            self.cursor = row
        else:
            self.cursor = min(self.cursor, max(0, len(self.ids) - 1))
        self.refresh()
        self.post_message(self.Changed())
        return True

    def forget(self, message_id: int) -> None:
        """A message deleted from here: drop its row, select the one that takes its place.

        The store counted the deletion; counting it here too tells the next catch-up that no
        other deletion happened, so it needs no full reload."""
        if self._deletions >= 0:
            self._deletions += 1
        row = self.row_of_id(message_id)
        if row is None:
            return
        del self.ids[len(self.ids) - 1 - row]
        self._rows.pop(message_id, None)
        self._selected_id = None
        self._resize()
        self.cursor = min(row, max(0, len(self.ids) - 1))
        self.refresh()
        self.post_message(self.Changed())

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

    def render_line(self, y: int) -> Strip:
        row = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        message_id = self.id_at(row)
        if message_id is None:
            if row == 0 and self.loaded:
                text = "No messages yet." if not self.filter.describe() else "No messages match."
                style = self._style("dim")
                return Strip([Segment(_cell(f"  {text}", width), style)], width)
            return Strip.blank(width, self.rich_style)
        cached = self._rows.get(message_id)
        if cached is None:
            self._want(row)
            style = self._style("dim")
            segments = [Segment(_cell(f"  … message {message_id}", width), style)]
        else:
            self._rows.move_to_end(message_id)
            segments = self._segments(cached, width)
        strip = Strip(segments)
        if row == self.cursor:
            strip = strip.apply_style(self._style("cursor"))
        return strip.adjust_cell_length(width, self.rich_style).crop(0, width)

    def _segments(self, row: Row, width: int) -> list[Segment]:
        widths = _widths(width)
        base = self._style("rejected") if row.rejected else Style()
        texts = (row.time, row.sender, row.from_, row.to, row.subject, row.size)
        segments: list[Segment] = []
        for text, cells in zip(texts, widths, strict=False):
            if text is row.size:
                segments.append(Segment(text.rjust(cells)[-cells:] + " ", base))
            else:
                segments.append(Segment(_cell(text, cells) + " ", base))
        badges: list[Segment] = []
        if row.findings:
            kind = row.worst or "info"
            badges.append(Segment(f"!{min(row.findings, 9)}", self._style(kind)))
        if row.attachments:
            badges.append(Segment("@", self._style("attachment")))
        if row.rejected:
            badges.append(Segment("✗", self._style("error")))
        used = sum(cell_len(b.text) for b in badges)
        segments += badges
        segments.append(Segment(" " * max(0, widths[-1] - used)))
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

        def rows(reader: Reader) -> dict[int, Row]:
            records = reader.messages_by_id(ids)
            return {i: row_of(records[i]) if i in records else gone(i) for i in ids}

        try:
            loaded = await self.backend.read(rows)
        finally:
            self._pending_pages.discard(page)
        self._rows.update(loaded)
        while len(self._rows) > CACHE_ROWS:
            self._rows.popitem(last=False)
        self.refresh()

    @on(events.Focus)
    @on(events.Blur)
    def _restyle(self) -> None:
        self.refresh()
