"""A DataTable whose columns share out the width it has: every column stays on screen down to
80 terminal columns, and text that does not fit its column ends in `…`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable


@dataclass(frozen=True)
class Column:
    label: str
    minimum: int = 0  # cells it keeps however narrow the table is; 0: always its natural width
    right: bool = False


# Steps in which the room left after every column's minimum is handed out: (column index, the
# width it may grow to in this step, None for its natural width). Columns not named stay at their
# minimum, and no column grows past its natural width (its widest cell or its label).
Growth = Sequence[tuple[int, int | None]]


def fit(natural: Sequence[int], minimum: Sequence[int], growth: Growth, room: int) -> list[int]:
    """Content widths for columns of these natural widths in `room` cells (they may need more
    than `room` when even the minimums do not fit: the table then scrolls sideways)."""
    widths = [
        width if least == 0 else min(width, least)
        for width, least in zip(natural, minimum, strict=True)
    ]
    spare = room - sum(widths)
    for index, limit in growth:
        if spare <= 0:
            break
        target = natural[index] if limit is None else min(natural[index], limit)
        extra = min(spare, max(0, target - widths[index]))
        widths[index] += extra
        spare -= extra
    return widths


def _shown(cell: Text, column: Column) -> Text:
    # The leading space separates the columns (cell padding is 0): cut text keeps it, so a cut
    # column never runs into the next one, and the cut end shows as `…`.
    shown = Text(
        " ",
        justify="right" if column.right else "left",
        overflow="ellipsis",
        no_wrap=True,
        end="",
    )
    return shown.append_text(cell)


class FittedTable(DataTable[Text]):
    """Rows are given whole to `show`; the column widths follow the content and the table's own
    width (recomputed on resize), so a long cell takes room from nothing but its own column.

    A row given again as the same list object is taken as unchanged, without looking at it: a
    caller that keeps the lists of unchanged rows makes a refresh of 300 rows cost only what
    changed. Rows are added, removed and updated in place, never all built again: DataTable
    measures every cell it is given, 0.15 s for 300 rows of 9 cells."""

    def __init__(self, columns: Sequence[Column], growth: Growth, **kwargs: Any) -> None:
        super().__init__(cell_padding=0, **kwargs)
        self.fitted_columns = tuple(columns)
        self.growth = tuple(growth)
        self._labels = [Text(column.label).cell_len for column in self.fitted_columns]
        self._keys: list[str] = []
        self._given: list[Sequence[Text]] = []  # the rows as given to `show`
        self._cells: list[list[Text]] = []  # as shown
        self._lengths: list[list[int]] = []  # of the text in each cell
        self._widths: list[int] = []

    def on_mount(self) -> None:
        if not self.columns:
            self._add_columns(self._fitted_widths())

    def _add_columns(self, widths: list[int]) -> None:
        self._widths = widths
        for index, (column, width) in enumerate(zip(self.fitted_columns, widths, strict=True)):
            self.add_column(_shown(Text(column.label), column), width=width + 1, key=str(index))

    def on_resize(self) -> None:
        self._refit()

    def show(self, rows: Sequence[Sequence[Text]], keys: Sequence[str] | None = None) -> None:
        """The table's rows from now on (each a cell per column). The cursor stays on the row
        with the same key; without keys, rows are known by their place."""
        keys = list(keys) if keys is not None else [str(n) for n in range(len(rows))]
        if not self.columns:
            self._add_columns(self._fitted_widths())
        before = {key: n for n, key in enumerate(self._keys)}
        selected = self._selected_key()
        cells: list[list[Text]] = []
        lengths: list[list[int]] = []
        changed: list[tuple[str, int | None]] = []  # key, and its place before (None: new)
        for key, row in zip(keys, rows, strict=True):
            n = before.get(key)
            if n is not None and self._given[n] is row:
                cells.append(self._cells[n])
                lengths.append(self._lengths[n])
                continue
            shown = [_shown(cell, c) for cell, c in zip(row, self.fitted_columns, strict=True)]
            cells.append(shown)
            lengths.append([cell.cell_len - 1 for cell in shown])
            changed.append((key, n))
        old_cells = self._cells
        self._keys, self._given, self._cells, self._lengths = keys, list(rows), cells, lengths

        wanted = set(keys)
        for key in before:
            if key not in wanted:
                self.remove_row(key)
        place = {key: n for n, key in enumerate(keys)}
        for key, n in changed:
            new = cells[place[key]]
            if n is None:
                self.add_row(*new, key=key)
                continue
            for index, (old_cell, new_cell) in enumerate(zip(old_cells[n], new, strict=True)):
                if old_cell == new_cell:  # Text equality: the text and its spans (styles)
                    new[index] = old_cell  # what the table holds
                else:
                    self.update_cell(key, str(index), new_cell)
        if any(self.get_row_index(key) != n for n, key in enumerate(keys)):
            # Rows are added at the end: put them in their place (the first cell of each row
            # is a Text of its own, so it says which row it is).
            order = {id(row[0]): n for n, row in enumerate(cells)}
            self.sort(key=lambda row: order[id(row[0])])
        if selected in place:
            self.move_cursor(row=place[selected], animate=False)
        self._refit()

    def _selected_key(self) -> str | None:
        return self._keys[self.cursor_row] if 0 <= self.cursor_row < len(self._keys) else None

    def _fitted_widths(self) -> list[int]:
        natural = [max(column) for column in zip(self._labels, *self._lengths, strict=True)]
        # The vertical scrollbar's room is kept whether or not it shows: the widths do not
        # change as rows come and go.
        room = self.size.width - self.styles.scrollbar_size_vertical - len(natural)
        return fit(natural, [c.minimum for c in self.fitted_columns], self.growth, room)

    def _refit(self) -> None:
        widths = self._fitted_widths()
        if widths == self._widths or not self.columns:
            return
        if not self.row_count:
            self.clear(columns=True)
            self._add_columns(widths)
            return
        self._widths = widths
        for column, width in zip(self.ordered_columns, widths, strict=True):
            column.width = width + 1
        # DataTable has no call that sets a column's width; updating a cell with update_width
        # makes it size itself again and drop what it has drawn.
        origin = Coordinate(0, 0)
        self.update_cell_at(origin, self.get_cell_at(origin), update_width=True)
