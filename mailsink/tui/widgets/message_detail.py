"""The selected message, in tabs: Overview, Text, HTML, Headers, Parts, Raw, Session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import unicodedata
import webbrowser
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import RenderableType
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static, TabbedContent, TabPane, TextArea, Tree

from mailsink.errors import StoreError
from mailsink.mail.attachments import save_part
from mailsink.mail.html import html_to_text
from mailsink.mail.parse import MimePart, ParsedMessage, parse_message, part_payload
from mailsink.sink import Sink
from mailsink.store.reader import MessageRecord, Reader, SessionRecord
from mailsink.text import visible
from mailsink.tui import render
from mailsink.units import format_bytes

if TYPE_CHECKING:
    from mailsink.relay import ReleaseRecord
    from mailsink.tui.app import MailsinkApp

READ_AFTER = 3.0  # seconds a message is shown in the main screen's pane before it is read
SHOWN = 512 * 1024  # characters of a body or bytes of a message a tab shows; then a notice
PARTS_SHOWN = 500  # MIME tree nodes
TRANSCRIPT_SHOWN = 2000  # session events
SLICE_CHARS = 16 * 1024  # a longer text goes into its tab a slice at a time (see Document)
SLICE_PAUSE = 0.01  # seconds between slices: a key's few hops through the app all fit in one
DOCUMENTS = ("text", "html", "raw")  # the tabs whose body is a Document
CACHED_MESSAGES = 8  # parsed messages kept for going back and forth...
CACHED_BYTES = 16 * 1024 * 1024  # ... as long as their raw sizes add up to no more than this
TABS = ("overview", "text", "html", "headers", "parts", "raw", "session")  # ids, in order


@dataclass
class Loaded:
    """A message as the tabs show it, prepared on the reader thread: all that is proportional to
    the message's size happens there, and the loop only hands finished text to the widgets."""

    record: MessageRecord
    raw: bytes
    parsed: ParsedMessage
    overview: RenderableType
    text: str
    html: str
    headers: Text
    raw_headers: Text
    raw_shown: str
    transcript: Text
    releases: list[ReleaseRecord] = field(default_factory=list)  # tried, oldest first


def _cut_visible(text: str, notice: str) -> str:
    """`_cut` of `text` made visible; only the head that can be shown is made visible, since a
    20 MB body takes a few long calls in C that hold the GIL (and the UI's loop) for a second."""
    if len(text) <= SHOWN:
        return _cut(render.body(text, ""), notice)
    head = text[:SHOWN].removesuffix("\r")  # not half of a CRLF
    return _cut(render.body(head, ""), notice, len(text))


def _cut(text: str, notice: str, length: int | None = None) -> str:
    """At most SHOWN characters of `text`, then a notice if there was more (`length`: that of
    the whole, when `text` is only its head)."""
    length = len(text) if length is None else max(length, len(text))
    if length <= SHOWN:
        return text
    shown = f"showing {SHOWN // 1024} K of {length // 1024} K characters"
    return f"{text[:SHOWN]}\n\n[cut: {shown}; {notice}]"


Fetched = tuple[MessageRecord, bytes, SessionRecord | None]


def fetch(reader: Reader, message_id: int) -> Fetched | None:
    """What the tabs show, as stored (on the reader thread: SQL only); None if it is gone."""
    record = reader.get_message(message_id)
    raw = reader.get_raw(message_id)
    if record is None or raw is None:
        return None
    return record, raw, reader.get_session(record.session_id)


def load(reader: Reader, message_id: int) -> Loaded | None:
    """Everything the tabs show, read, parsed and made safe, in the calling thread."""
    fetched = fetch(reader, message_id)
    return None if fetched is None else prepare(*fetched)


def prepare(
    record: MessageRecord,
    raw: bytes,
    session: SessionRecord | None,
    releases: list[ReleaseRecord] | None = None,
) -> Loaded:
    """The message parsed and made safe, off the loop: all that grows with its size."""
    releases = releases or []
    message_id = record.id
    parsed = parse_message(raw)
    whole = f"`mailsink show {message_id}` has it all"
    text = _cut_visible(parsed.text, whole) if parsed.text is not None else "(no text/plain part)"
    html = "(no text/html part)"
    if parsed.html is not None:
        html = _cut_visible(html_to_text(parsed.html), "press o for the whole HTML")
        html += "\n(press o to open the HTML in a browser)"
    raw_shown = render.body(raw[:SHOWN].decode("utf-8", "replace"), "")
    if len(raw) > SHOWN:
        raw_shown += (
            f"\n\n[truncated: showing {format_bytes(SHOWN)} of {format_bytes(len(raw))};"
            f" `mailsink show {message_id} --raw` has it all]"
        )
    return Loaded(
        record=record,
        raw=raw,
        parsed=parsed,
        overview=render.overview(record, parsed, releases),
        text=text,
        html=html,
        headers=render.header_text(parsed),
        raw_headers=Text(_cut(render.raw_header_block(raw), "`mailsink show --headers`")),
        raw_shown=raw_shown,
        transcript=render.transcript(session, limit=TRANSCRIPT_SHOWN),
        releases=releases,
    )


class BrowserFiles:
    """The HTML written for the browser (`o`): in one private directory, removed when the app
    exits (a browser reads the file after `webbrowser.open` returns, so not before)."""

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._lock = threading.Lock()  # written from worker threads

    def write(self, message_id: int, html: str) -> Path:
        with self._lock:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="mailsink-html-"))
            directory = self._directory
        with tempfile.NamedTemporaryFile(
            "w",
            suffix=".html",
            prefix=f"message-{message_id}-",
            dir=directory,
            delete=False,
            encoding="utf-8",
        ) as file:
            file.write(html)
        return Path(file.name)

    def remove(self) -> None:
        with self._lock:
            directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


# Browsers that run in the terminal they are started from: mailsink's. Debian's `www-browser` is
# the text-mode alternative (`x-www-browser` the graphical one).
CONSOLE_BROWSERS = frozenset({"www-browser", "links", "links2", "elinks", "lynx", "w3m", "browsh"})


def is_console_browser(browser: webbrowser.BaseBrowser) -> bool:
    """Whether `browser` would run in the foreground in this terminal, as lynx or w3m do."""
    if isinstance(browser, webbrowser.UnixBrowser):
        return not browser.background  # elinks
    if type(browser) is webbrowser.GenericBrowser:  # waited for; BackgroundBrowser is not
        return browser.basename.removesuffix(".exe") in CONSOLE_BROWSERS
    return False


def open_in_browser(url: str) -> tuple[bool, str | None]:
    """As `webbrowser.open`, each browser in its order until one starts, but never one that
    would take this terminal from the UI. Returns whether one started, and the name of a
    console browser passed over (if any). Blocks: in a thread."""
    try:
        webbrowser.get()  # registers what is there (BROWSER included), once
    except webbrowser.Error:
        return False, None
    skipped = None
    # webbrowser's own order (private, not in typeshed): there is no public way to walk it.
    for name in list(webbrowser._tryorder or ()):  # type: ignore[attr-defined]
        try:
            browser = webbrowser.get(name)
        except webbrowser.Error:
            continue
        if is_console_browser(browser):
            skipped = skipped or getattr(browser, "basename", None) or name
            continue
        try:
            if browser.open(url):
                return True, None
        except (webbrowser.Error, OSError):
            pass
    return False, skipped


def _slice_end(text: str, at: int) -> int:
    """Where a slice that reaches `at` ends: after the newline of the line `at` is in, if that
    comes within SLICE_CHARS; else (one long line, as quoted-printable's soft breaks decode to)
    after a space just before `at`, or at `at` moved back so as not to split a character."""
    if at >= len(text):
        return len(text)
    end = text.find("\n", at, at + SLICE_CHARS)
    if end >= 0:
        return end + 1
    space = text.rfind(" ", at - 200, at)
    if space >= 0:
        return space + 1
    cut = at
    while cut > at - 32 and _joined(text, cut):  # (a run of 32 marks: cut anyway)
        cut -= 1
    return cut if cut > at - 32 else at


def _joined(text: str, cut: int) -> bool:
    """Whether cutting `text` before `cut` would split what shows as one character."""
    before, after = text[cut - 1], text[cut]
    return (
        "\ud800" <= before <= "\udbff"  # half of a surrogate pair
        or before == "\u200d"  # a zero width joiner and what it joins
        or after == "\u200d"
        or "\ufe00" <= after <= "\ufe0f"  # a variation selector
        or unicodedata.category(after).startswith("M")  # a combining mark
    )


def _whole_lines(text: str, start: int, end: int) -> str:
    """text[start:end], ending with a newline (one added inside a long line: see Document)."""
    piece = text[start:end]
    return piece if end >= len(text) or piece.endswith("\n") else piece + "\n"


class Document(TextArea):
    """Read-only, scrollable text: handles long bodies without rendering them all.

    TextArea wraps all the text it is given there and then, on the loop, and more than once
    (512 K characters: 0.3 s to 1 s), so a long text reaches it only when its tab is shown, and
    then a slice at a time, with the loop free in between for keys and repaints. It wraps the
    whole line an edit touches, so a line longer than a slice is shown broken after each slice
    (a line of 512 K characters would otherwise cost as much as all at once, at its last slice).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, soft_wrap=True, show_line_numbers=False, **kwargs)
        self.cursor_blink = False
        self._waiting: str | None = None  # a long text not given to the TextArea yet

    def set_text(self, text: str, *, shown: bool) -> None:
        """Show `text` (now if short, or if the tab is `shown`; otherwise when it is)."""
        self.workers.cancel_group(self, "slices")
        self._waiting = None
        if len(text) <= SLICE_CHARS:
            self.load_text(text)
            return
        self.load_text("")
        self._waiting = text
        if shown:
            self.reveal()

    def reveal(self) -> None:
        """The tab is shown: the long text that waits, if any, goes in."""
        if self._waiting is not None:
            text, self._waiting = self._waiting, None
            self._load_slices(text)

    @work(group="slices", exclusive=True)
    async def _load_slices(self, text: str) -> None:
        end = _slice_end(text, SLICE_CHARS)
        self.load_text(_whole_lines(text, 0, end))
        while end < len(text):
            await asyncio.sleep(SLICE_PAUSE)  # keys, repaints, the next message: in between
            start, end = end, _slice_end(text, end + SLICE_CHARS)
            self.insert(_whole_lines(text, start, end), self.document.end)
        self.history.clear()  # read-only: nothing to undo, and no second copy to keep


class MessageDetail(Vertical):
    class Filled(Message):
        """The tabs now show `loaded` (None: no message, or it is gone)."""

    BINDINGS = [
        Binding("o", "open_html", "Open HTML"),
        Binding("r", "toggle_raw_headers", "Raw headers", show=False),
        Binding("a", "save_attachment", "Save part", show=False),
        *(
            Binding(str(number), f"show_tab('{tab}')", f"Tab {number}: {tab}", show=False)
            for number, tab in enumerate(TABS, 1)
        ),
        Binding("left_square_bracket", "show_tab('previous')", "Previous tab", show=False),
        Binding("right_square_bracket", "show_tab('next')", "Next tab", show=False),
    ]

    def __init__(self, sink: Sink, *, read_after: float = READ_AFTER, **kwargs: Any) -> None:
        """`read_after`: seconds a message is shown here before it counts as read (0: at once,
        as the full screen opened with enter does)."""
        super().__init__(**kwargs)
        self.sink = sink
        self.message_id: int | None = None
        self.loaded: Loaded | None = None
        self.raw_headers = False
        self._cache: OrderedDict[int, Loaded] = OrderedDict()
        self.read_after = read_after
        self._read_timer: Timer | None = None
        self._read_for: int | None = None  # the message this showing marks (or marked) read
        self.read_state = True  # False: the store is older than read state (nothing to mark)

    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabs"):
            with TabPane("Overview", id="overview"), VerticalScroll():
                yield Static(Text("No message selected.", "dim"), id="overview-body")
            with TabPane("Text", id="text"):
                yield Document(id="text-body")
            with TabPane("HTML", id="html"):
                yield Document(id="html-body")
            with TabPane("Headers", id="headers"), VerticalScroll():
                yield Static(id="headers-body")
            with TabPane("Parts", id="parts"):
                tree: Tree[MimePart] = Tree(Text("MIME parts"), id="parts-tree")
                tree.show_root = False
                yield tree
            with TabPane("Raw", id="raw"):
                yield Document(id="raw-body")
            with TabPane("Session", id="session"), VerticalScroll():
                yield Static(id="session-body")

    def show(self, message_id: int | None) -> None:
        if message_id != self.message_id:
            self._read_for = None  # shown again later, it is read again
            if self._read_timer is not None:
                self._read_timer.stop()  # passed over: not read
                self._read_timer = None
        self.message_id = message_id
        self._load(message_id)

    @work(exclusive=True, group="state")
    async def refresh_state(self) -> None:
        """The read state or tags may have changed: the record is read again (one row, not
        the message: a 20 MB one is not parsed again for a tag) and the Overview drawn again
        if they did."""
        loaded, message_id = self.loaded, self.message_id
        if loaded is None or loaded.record.id != message_id:
            return  # being loaded: it reads the record anyway
        try:
            record = await self.sink.read(Reader.get_message, message_id)
        except (sqlite3.Error, StoreError):
            return  # the list says what is wrong
        if record is None or (record.seen, record.tags) == (loaded.record.seen, loaded.record.tags):
            return
        loaded.record = record  # the cached one too
        await self._redraw_overview(loaded)

    @work(exclusive=True, group="releases")
    async def refresh_releases(self) -> None:
        """A release of this message may have been tried (here, at the store's server, by
        `mailsink release`): the Overview's releases read again and drawn if they changed."""
        loaded, message_id = self.loaded, self.message_id
        if loaded is None or loaded.record.id != message_id:
            return  # being loaded: it reads them anyway
        releases = await self._releases(loaded.record.id)
        if releases is None or releases == loaded.releases:
            return
        loaded.releases = releases
        await self._redraw_overview(loaded)

    async def _releases(self, message_id: int) -> list[ReleaseRecord] | None:
        """None when the store would not say (the list says what is wrong)."""
        try:
            return await self.sink.releases(message_id)
        except (sqlite3.Error, StoreError):
            return None

    async def _redraw_overview(self, loaded: Loaded) -> None:
        """The Overview drawn (off the loop: a message may name thousands of addresses) from
        what `loaded` holds now; again if its record or releases changed meanwhile (the state
        and release refreshes run apart), so that the last drawing is never a stale one."""
        while True:
            record, releases = loaded.record, loaded.releases
            overview = await asyncio.to_thread(render.overview, record, loaded.parsed, releases)
            if loaded.record is record and loaded.releases is releases:
                break
        loaded.overview = overview
        if self.loaded is loaded:
            with contextlib.suppress(NoMatches):
                self.query_one("#overview-body", Static).update(overview)

    def reload(self) -> None:
        if self.message_id is not None:
            self._cache.pop(self.message_id, None)
        self._load(self.message_id)

    @work(exclusive=True, group="detail")
    async def _load(self, message_id: int | None) -> None:
        if message_id is None:
            self._fill(None)
            return
        loaded = self._cache.get(message_id)
        cached = loaded is not None
        if loaded is None:
            await asyncio.sleep(0.03)  # holding a key down: only the row it stops on is read
            try:
                fetched = await self.sink.read(fetch, message_id)
                releases = None if fetched is None else await self._releases(message_id)
                # Parsed in a thread of its own: a 20 MB message takes a second or so, and the
                # reader's queue (the next message, the list's pages) must not wait behind it.
                loaded = (
                    None
                    if fetched is None
                    else await asyncio.to_thread(prepare, *fetched, releases)
                )
            except Exception as error:  # a message that breaks the parser must not break the UI
                if message_id == self.message_id:
                    with contextlib.suppress(NoMatches):
                        self._fill(None)
                        problem = (
                            f"This message could not be shown: {type(error).__name__}: {error}"
                        )
                        self.query_one("#overview-body", Static).update(
                            Text(visible(problem), "red")
                        )
                return
            if loaded is not None and len(loaded.raw) <= CACHED_BYTES:
                self._cache[message_id] = loaded
                while len(self._cache) > CACHED_MESSAGES or (
                    sum(len(c.raw) for c in self._cache.values()) > CACHED_BYTES
                ):
                    self._cache.popitem(last=False)
        if message_id == self.message_id:
            with contextlib.suppress(NoMatches):  # the app is closing: the tabs are gone
                self._fill(loaded)
            if cached:  # its tags, read state or releases may have changed since
                self.refresh_state()
                self.refresh_releases()

    def _fill(self, loaded: Loaded | None) -> None:
        self.loaded = loaded
        self.post_message(self.Filled())
        overview = self.query_one("#overview-body", Static)
        if loaded is None:
            gone = "No message selected." if self.message_id is None else "This message is gone."
            overview.update(Text(gone, "dim"))
            for name in DOCUMENTS:
                self.query_one(f"#{name}-body", Document).set_text("", shown=False)
            self.query_one("#headers-body", Static).update("")
            self.query_one("#session-body", Static).update("")
            self.query_one("#parts-tree", Tree).clear()
            return
        overview.update(loaded.overview)
        if self.read_state and not loaded.record.seen and self._read_for != loaded.record.id:
            # Once per showing: reloaded after `m` marked it unread, it stays unread.
            self._read_for = loaded.record.id
            if self.read_after:
                self._read_timer = self.set_timer(self.read_after, self._mark_read)
            else:
                self._mark_read()
        shown = self.query_one(TabbedContent).active
        texts = {"text": loaded.text, "html": loaded.html, "raw": loaded.raw_shown}
        for name, text in texts.items():
            self.query_one(f"#{name}-body", Document).set_text(text, shown=name == shown)
        self._fill_headers()
        self._fill_parts(loaded.parsed.mime)
        self.query_one("#session-body", Static).update(loaded.transcript)

    @work(group="read")
    async def _mark_read(self) -> None:
        """A worker: the write goes through the writer, off the UI's way."""
        self._read_timer = None
        message_id = self._read_for
        if message_id is None or message_id != self.message_id:
            return
        try:
            await self.sink.mark_read([message_id])
        except (sqlite3.Error, StoreError) as error:
            self.notify(f"Not marked read: {error}", severity="error", markup=False)

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id in DOCUMENTS:
            self.query_one(f"#{event.pane.id}-body", Document).reveal()

    def _fill_headers(self) -> None:
        if self.loaded is None:
            return
        body = self.query_one("#headers-body", Static)
        body.update(self.loaded.raw_headers if self.raw_headers else self.loaded.headers)

    def _fill_parts(self, mime: MimePart) -> None:
        tree: Tree[MimePart] = self.query_one("#parts-tree", Tree)
        tree.clear()

        # Iterative, in document order: the tree is as deep as the message made it.
        stack = [(tree.root, mime)]
        added = 0
        while stack:
            node, part = stack.pop()
            added += 1
            if added > PARTS_SHOWN:
                continue
            if part.children:
                branch = node.add(render.mime_label(part), data=part, expand=True)
                stack.extend((branch, child) for child in reversed(part.children))
            else:
                node.add_leaf(render.mime_label(part), data=part)
        if added > PARTS_SHOWN:
            tree.root.add_leaf(
                Text(f"… {added - PARTS_SHOWN} more parts not shown (mailsink show --json)", "dim")
            )

    # ---- actions

    def action_show_tab(self, tab: str) -> None:
        """`tab`: a tab's id (keys 1-7), or `previous` / `next` (keys [ and ])."""
        tabs = self.query_one(TabbedContent)
        if tab in TABS:
            tabs.active = tab
        else:
            step = -1 if tab == "previous" else 1
            tabs.active = TABS[(TABS.index(tabs.active) + step) % len(TABS)]

    def action_toggle_raw_headers(self) -> None:
        self.raw_headers = not self.raw_headers
        self._fill_headers()
        self.query_one(TabbedContent).active = "headers"
        self.notify("raw header block" if self.raw_headers else "decoded headers", timeout=2)

    async def action_open_html(self) -> None:
        loaded = self.loaded
        if loaded is None or loaded.parsed.html is None:
            self.notify("This message has no HTML part.", severity="warning")
            return
        if os.environ.get("MAILSINK_WEB_UI") == "1":
            # In a browser tab: the server's own view of the HTML (under its strict policy),
            # in a new tab; the tab's server is the one that serves it.
            self.app.open_url(f"/view/{loaded.record.id}.html", new_tab=True)
            self.notify("Opened the HTML in a new browser tab", timeout=3)
            return
        files = cast("MailsinkApp", self.app).browser_files

        def write_and_open() -> tuple[Path, bool, str | None]:
            path = files.write(loaded.record.id, loaded.parsed.html or "")
            return path, *open_in_browser(path.as_uri())

        try:
            path, opened, console = await asyncio.to_thread(write_and_open)
        except OSError as error:
            self.notify(f"HTML not written: {error}", severity="error", markup=False)
            return
        if opened:
            self.notify(f"Opened {visible(str(path))} in the browser", markup=False)
        elif console is not None:
            self.notify(
                f"No graphical browser ({visible(console)} would take over this terminal):"
                f" open {visible(str(path))} ({visible(path.as_uri())}); it stays there until"
                " mailsink exits.",
                severity="warning",
                markup=False,
                timeout=30,
            )
        else:
            self.notify(
                f"No browser could be started. The HTML is in {visible(str(path))}"
                f" ({visible(path.as_uri())}) until mailsink exits.",
                severity="warning",
                markup=False,
                timeout=30,
            )

    def selected_part(self) -> MimePart | None:
        node = self.query_one("#parts-tree", Tree).cursor_node
        part = node.data if node is not None else None
        return part if isinstance(part, MimePart) and not part.children else None

    def action_save_attachment(self) -> None:
        from mailsink.tui.widgets.dialogs import PathPrompt

        part = self.selected_part()
        if self.loaded is None or part is None:
            self.notify("Choose a part in the Parts tab first.", severity="warning")
            self.query_one(TabbedContent).active = "parts"
            return
        loaded = self.loaded
        if os.environ.get("MAILSINK_WEB_UI") == "1":
            # In a browser tab: a download to the browser's machine. Nothing a tab does may
            # write a path on the server's (a file saved into site-packages runs code there).
            self.app.open_url(f"/ui/part/{loaded.record.id}/{part.index}", new_tab=True)
            self.notify(f"Downloading {visible(part.filename or 'the part')}", markup=False)
            return

        async def save(directory: str | None) -> None:
            if not directory:
                return
            fallback = f"message-{loaded.record.id}-part-{part.index}.bin"
            target = Path(directory).expanduser()

            def extract_and_save() -> Path | None:
                payload = part_payload(loaded.raw, part.index)
                return (
                    None if payload is None else save_part(payload, part.filename, target, fallback)
                )

            try:
                path = await asyncio.to_thread(extract_and_save)
            except OSError as error:
                self.notify(f"Not saved: {error}", severity="error", markup=False)
                return
            if path is None:
                self.notify("That part has no content.", severity="warning")
            else:
                self.notify(f"Saved {visible(str(path))}", markup=False)

        self.app.push_screen(
            PathPrompt(
                f"Save {visible(part.filename or 'the part')} into directory:", str(Path.cwd())
            ),
            save,
        )

    @on(Tree.NodeSelected, "#parts-tree")
    def _part_chosen(self) -> None:
        if self.selected_part() is not None:
            self.action_save_attachment()
