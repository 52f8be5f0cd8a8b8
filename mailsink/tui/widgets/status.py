"""The status line: where mail goes in, how much is stored, which faults are on, config state;
attached, whether the store's server is linked (`live via URL`) or not (faults read-only)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Static

from mailsink.events import RulesChanged, ServerLinkChanged
from mailsink.server_link import LIVE, UNREACHABLE
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
        self._link_state: str | None = None  # attached: the link's, as last told

    def on_mount(self) -> None:
        if self.sink.is_attached:
            self.check_server()
            self.set_interval(SERVER_CHECK_SECONDS, self.check_server)
            if self.sink.link is not None:
                self._follow_link()

    @work(group="link")
    async def _follow_link(self) -> None:
        """The link to the store's server, and (through it) its rules switched on and off."""
        with self.sink.subscribe(ServerLinkChanged, RulesChanged) as changes:
            async for change in changes:
                if isinstance(change, ServerLinkChanged):
                    self._link_changed(change)
                self.redraw()

    def _link_changed(self, change: ServerLinkChanged) -> None:
        """A notice when the link is lost, or cannot be made, while the store's server runs
        (a server that stopped has the notice of `check_server`), and when it is back."""
        before, self._link_state = self._link_state, change.state
        running = self.serving is not None and self.serving.running
        if change.state == UNREACHABLE and before != UNREACHABLE and running:
            self.app.notify(
                f"no link to the store's server (faults read-only): {visible(change.reason or '')}",
                severity="warning",
                markup=False,
                timeout=8,
            )
        elif change.state == LIVE and before == UNREACHABLE:
            self.app.notify(f"live via {visible(change.url or '')}", markup=False, timeout=3)

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
        if (
            self.serving is not None
            and self.serving.running is False
            and serving.running
            and serving.started_at == self.serving.started_at
        ):
            return  # a new server has the store, its row (where it listens) is on its way
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
        """One line, whatever the width. Never cut: `mailsink`, the message count, the limit or
        the filter in force, a long action's progress (and faults, when some are on). Then, as
        room allows: the unread count, the index's progress, where mail goes in (whole or not at
        all: the attached store's path is cut at its start, a list of addresses becomes its
        first and `+N`, the words go first), the HTTP API's URL (then `HTTP :port`); what
        follows (faults off, config) is cut at the end with `…`, or left out."""
        sink = self.sink
        width = self.size.width or 80
        head = Text(" mailsink ", "bold reverse")
        core = Text()
        core.append("  │  ", "dim")
        core.append(f"{self.shown:,}", "bold")
        core.append(" message" + ("" if self.shown == 1 else "s"))
        if self.filter_text:
            # Cut, so that the counts after it stay in sight at 80 columns.
            core.append(f" {cut(visible(self.filter_text), FILTER_SHOWN).rstrip()}", "cyan")
        elif (limit := self._limit()) is not None and over_limit(self.shown, limit):
            # A store over its limit when opened is kept as it is (see store.writer._Retention).
            core.append(f" (limit {limit:,})", "yellow")
        progress = Text(f"  {self.progress_text}", "bold yellow") if self.progress_text else Text()
        faults_on = Text()
        trail: list[Text] = []
        if sink.faults is not None or (
            sink.is_attached and sink.link is not None and sink.link.live
        ):
            active = [rule for rule in sink.fault_rules() if rule.enabled]
            if active:  # the server does not behave as usual: always in sight
                faults_on = Text.assemble(
                    ("  │  ", "dim"), (f"faults: {len(active)} on", "bold yellow")
                )
            else:
                trail.append(Text.assemble(("  │  ", "dim"), ("faults: off", "dim")))
        if self.config_note.plain:
            trail.append(Text.assemble(("  │  ", "dim"), self.config_note))
        elif sink.watcher is not None:
            trail.append(Text.assemble(("  │  ", "dim"), ("config: watching", "dim")))

        room = width - head.cell_len - core.cell_len - progress.cell_len - faults_on.cell_len
        unread = Text()
        if self.unread is not None:
            unread = Text.assemble(
                (" · ", "dim"), (f"{self.unread:,} unread", "bold" if self.unread else "dim")
            )
            if unread.cell_len <= room:
                room -= unread.cell_len
            else:
                unread = Text()
        index = Text(f" · {self.index_note}", "dim") if self.index_note else Text()
        if index.cell_len > room:
            index = Text()
        else:
            room -= index.cell_len
        if sink.is_attached:
            place, web = self._attached_places(room - 1)
        else:
            place = self._places(room - 1)
            # After where SMTP listens, and before it in giving way: mail comes in by SMTP.
            web = self._http_place(room - 1 - place.cell_len) if place.cell_len else Text("")
        if place.cell_len:
            room -= place.cell_len + 1
        room -= web.cell_len
        line = Text.assemble(head, " " if place.cell_len else "", place, web, core, unread, index)
        line.append_text(progress)
        line.append_text(faults_on)
        for section in trail:
            if section.cell_len <= room:
                line.append_text(section)
                room -= section.cell_len
                continue
            if room >= 5 + 4:  # a separator and a few cells of it, else nothing
                section.truncate(room, overflow="ellipsis")
                line.append_text(section)
            break
        if line.cell_len > width:  # narrower than what is never cut: cut at the end, once
            line.truncate(max(width - 1, 0), overflow="crop")
            if width and not line.plain.endswith("…"):
                line.append("…")
        self.update(line)

    def _attached_places(self, room: int) -> tuple[Text, Text]:
        """Attached: where the store is and who serves it, then the link to its server: the
        path is cut first, then the link is shortened, then left out; only then does the place
        give way (its shorter forms, with the link's again). The faults count says a link is
        there when it is left out; the Faults screen says why there is none."""
        links = [*self._link_forms(), Text("")]
        for whole in (True, False):
            for link in links:
                place = self._attached_place(room - link.cell_len, whole_only=whole)
                if place.cell_len:
                    return place, link
        return Text(""), Text("")

    def _link_forms(self) -> list[Text]:
        link = self.sink.link
        if link is None:
            return []
        if link.live:
            port = (link.url or "").rpartition(":")[2]
            return [
                Text.assemble((" · ", "dim"), "live via ", (link.url or "", "bold")),
                Text.assemble((" · ", "dim"), "live ", (f":{port}", "bold")),
                Text.assemble((" · ", "dim"), ("live", "bold")),
            ]
        if link.state == UNREACHABLE:
            # Beside "served by …" too (a server without HTTP, or refusing the token): what is
            # missing is the HTTP link, not the server; what it costs is kept when cut.
            return [
                Text.assemble((" · ", "dim"), ("no HTTP link (faults read-only)", "yellow")),
                Text.assemble((" · ", "dim"), ("faults read-only", "yellow")),
                Text.assemble((" · ", "dim"), ("read-only", "yellow")),
            ]
        return [Text.assemble((" · ", "dim"), ("connecting…", "dim"))]

    def _attached_place(self, room: int, *, whole_only: bool = False) -> Text:
        """`attached to <path> · served by <addresses>`, or shorter forms of it (the addresses
        as the first and `+N`, then without "attached to", then without "served by"), with the
        path cut at its start; empty when none fits in `room` (`whole_only`: the first form, or
        nothing)."""
        path = visible(self.sink.path)
        attached, nothing = Text("attached to ", "dim"), Text("")
        forms = (
            (attached, self._served()),
            (attached, self._served(short=True)),
            (nothing, self._served(short=True)),
            (nothing, self._served(short=True, words=False)),
        )[: 1 if whole_only else None]
        for least in (_PATH_LEAST, _PATH_SHORTEST):
            for prefix, served in forms:
                fixed = prefix.cell_len + served.cell_len
                if fixed + min(len(path), least) <= room:
                    return Text.assemble(prefix, _left_cut(path, room - fixed), served)
        return Text("")

    def _places(self, room: int) -> Text:
        """Own server: where it listens; its first address and `+N` when all do not fit (then
        without STARTTLS); empty when even that does not fit in `room`."""
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
        more = f" +{len(places) - 1}" if len(places) > 1 else ""
        for form in (
            Text.assemble((" · ".join(places), "bold"), starttls),
            Text.assemble((places[0], "bold"), more, starttls),
            Text.assemble((places[0], "bold"), more),
        ):
            if form.cell_len <= room:
                return form
        return Text("")  # whole or not at all: a cut address could be taken for another

    def _http_place(self, room: int) -> Text:
        """Own server: where the HTTP API listens, as its URL (to copy), else `HTTP :port`;
        empty when neither fits in `room` or HTTP is not served."""
        http = self.sink.http
        if http is None:
            return Text("")
        for form in (
            Text.assemble((" · ", "dim"), (http.url, "bold")),
            Text.assemble((" · ", "dim"), "HTTP ", (f":{http.port}", "bold")),
        ):
            if form.cell_len <= room:
                return form
        return Text("")

    def _served(self, short: bool = False, words: bool = True) -> Text:
        """Attached: the store's server, where it listens and whether it still runs."""
        serving = self.serving
        if serving is None or serving.running is None:
            return Text("")
        if not serving.running:
            return Text.assemble(" · ", ("server stopped", "bold yellow"))
        if not serving.addresses:
            return Text.assemble(" · ", ("served", "bold"))
        lead = " · served by " if words else " · "
        return Text.assemble(lead, (_addresses(serving, short), "bold"))


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
