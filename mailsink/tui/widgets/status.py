"""The status line: where mail goes in, how much is stored, which faults are on, config state."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Static

from mailsink.sink import Sink
from mailsink.store import Reader, Serving, StoreError, over_limit
from mailsink.text import visible
from mailsink.tui.rows import cut

SERVER_CHECK_SECONDS = 1.0  # attached: how often the store's server is looked for
_PATH_LEAST = 12  # cells the attached store's path keeps before the addresses give way
_PATH_SHORTEST = 8  # and at the narrowest, rather than cutting the server's address
FILTER_SHOWN = 40  # cells of the filter in force (the box above the list has it whole)


class StatusLine(Static):
    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sink = sink
        self.shown = 0
        self.filter_text = ""
        self.config_note = Text("")
        self.serving: Serving | None = None  # attached: the store's server, once looked for
        self.progress_text = ""  # what a long action is doing; see `progress`
        self.unread: int | None = None  # None: not counted yet
        self.index_note = ""  # `index 40,000/100,000` while the search index is incomplete

    def on_mount(self) -> None:
        if self.sink.is_attached:
            self.check_server()
            self.set_interval(SERVER_CHECK_SECONDS, self.check_server)

    def on_resize(self) -> None:
        self.redraw()

    @work(exclusive=True, group="serving")
    async def check_server(self) -> None:
        """Attached: whether the store's server still runs (it holds the store's lock), told
        once as a notice when that changes."""
        try:
            serving = await self.sink.read(Reader.serving)
        except (sqlite3.Error, StoreError):
            return  # the store itself is in trouble: the app's poll says so
        before, self.serving = self.serving, serving
        if before is None or before.running != serving.running:
            self._tell(before, serving)
        self.redraw()

    def _tell(self, before: Serving | None, now: Serving) -> None:
        where = f" ({_addresses(now)})" if now.addresses else ""
        if now.running is False:
            if before is None:
                text = "no mailsink server is running on this store: nothing new will arrive"
            else:
                text = f"the mailsink server{where} has stopped: nothing new will arrive"
            self.app.notify(text, severity="warning", markup=False, timeout=8)
        elif now.running and before is not None:
            self.app.notify(f"the mailsink server{where} is running again", markup=False)

    def _limit(self) -> int | None:
        """The configured max_messages of the store's server, if known."""
        if not self.sink.is_attached:
            return self.sink.settings.storage.max_messages
        return self.serving.max_messages if self.serving is not None else None

    def progress(self, text: str) -> None:
        """Show how far a long action is (`deleting 12,000 of 77,000…`); "" when it is done."""
        self.progress_text = text
        self.redraw()

    def config_reloaded(self, error: str | None) -> None:
        if error:
            self.config_note = Text.assemble(("config error: ", "bold red"), visible(error))
        else:
            self.config_note = Text(f"config reloaded {time.strftime('%H:%M:%S')}", "green")
        self.redraw()

    def redraw(self) -> None:
        """One line, whatever the width: the message count, the limit and a long action's
        progress come first; the store's path and the addresses give way to them (the path is
        cut at its start, a list of addresses becomes its first one and `+N`), and what still
        does not fit is cut at the end with `…`."""
        sink = self.sink
        width = self.size.width or 80
        head = Text()
        head.append(" mailsink ", "bold reverse")
        head.append(" ")
        counts = Text()
        counts.append("  │  ", "dim")
        counts.append(f"{self.shown:,}", "bold")
        counts.append(" message" + ("" if self.shown == 1 else "s"))
        if self.filter_text:
            # Cut, so that the counts after it stay in sight at 80 columns.
            counts.append(f" {cut(visible(self.filter_text), FILTER_SHOWN).rstrip()}", "cyan")
        elif (limit := self._limit()) is not None and over_limit(self.shown, limit):
            # A store over its limit when opened is kept as it is (see store.writer._Retention).
            counts.append(f" (limit {limit:,})", "yellow")
        if self.unread is not None:
            counts.append(" · ", "dim")
            counts.append(f"{self.unread:,} unread", "bold" if self.unread else "dim")
        if self.index_note:
            counts.append(f" · {self.index_note}", "dim")
        if self.progress_text:
            counts.append(f"  {self.progress_text}", "bold yellow")
        # A cell kept for the `…` that cuts what follows the counts, if anything does.
        after = sink.faults is not None or bool(self.config_note.plain) or sink.watcher is not None
        room = width - head.cell_len - counts.cell_len - after
        place = self._attached_place(room) if sink.is_attached else self._places(room)
        if place.cell_len > room:
            place.truncate(max(room, 1), overflow="ellipsis")
        line = Text.assemble(head, place, counts)
        if sink.faults is not None:
            active = [rule for rule in sink.faults.rules() if rule.enabled]
            line.append("  │  ", "dim")
            if active:
                line.append(f"faults: {len(active)} on", "bold yellow")
            else:
                line.append("faults: off", "dim")
        if self.config_note.plain:
            line.append("  │  ", "dim")
            line.append_text(self.config_note)
        elif sink.watcher is not None:
            line.append("  │  ", "dim")
            line.append("config: watching", "dim")
        line.truncate(width, overflow="ellipsis")
        self.update(line)

    def _attached_place(self, room: int) -> Text:
        """`attached to <path> · served by <addresses>`: the path gets what is left of `room`
        (at least _PATH_LEAST cells), after the addresses, shortened first if need be."""
        path = visible(self.sink.path)
        attached, short = Text("attached to ", "dim"), self._served(short=True)
        # The words "attached to" go last: "served by" says much the same.
        for prefix, served in ((attached, self._served()), (attached, short), (Text(""), short)):
            if prefix.cell_len + served.cell_len + min(len(path), _PATH_LEAST) <= room:
                break
        left = max(_PATH_SHORTEST, room - prefix.cell_len - served.cell_len)
        return Text.assemble(prefix, _left_cut(path, left), served)

    def _places(self, room: int) -> Text:
        """Own server: where it listens; its first address and `+N` when all do not fit."""
        sink = self.sink
        places = [
            f"{label.split(',')[0]} {host}:{port}"
            for (host, port), label in zip(sink.addresses, sink.labels, strict=True)
        ]
        tls = sink.settings.tls
        starttls = (
            " +STARTTLS" + (" required" if tls.require else "")
            if tls.starttls or tls.require
            else ""
        )
        whole = Text.assemble((" · ".join(places), "bold"), starttls)
        if whole.cell_len <= room or len(places) < 2:
            return whole
        return Text.assemble((places[0], "bold"), f" +{len(places) - 1}", starttls)

    def _served(self, short: bool = False) -> Text:
        """Attached: the store's server, where it listens and whether it still runs."""
        serving = self.serving
        if serving is None or serving.running is None:
            return Text("")
        if not serving.running:
            return Text.assemble(" · ", ("server stopped", "bold yellow"))
        if not serving.addresses:
            return Text.assemble(" · ", ("served", "bold"))
        return Text.assemble(" · served by ", (_addresses(serving, short), "bold"))


def _addresses(serving: Serving, short: bool = False) -> str:
    """`127.0.0.1:1025, SMTPS 127.0.0.1:1465`: where a server listens (from the store, so
    made visible like anything else read from it); `short`: the first and `+N`."""
    shown = [
        visible(f"{host}:{port}" if label == "SMTP" else f"{label} {host}:{port}")
        for label, host, port in serving.addresses
    ]
    if short and len(shown) > 1:
        return f"{shown[0]} +{len(shown) - 1}"
    return ", ".join(shown)


def _left_cut(text: str, width: int) -> str:
    """The end of a path is the part that tells it apart."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]
