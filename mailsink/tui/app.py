"""The Textual app: one loop for the SMTP server and the UI (or a view of another's store).

`create_app` is the factory the CLI and the tests share; `run` is `mailsink` / `mailsink tui`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import select
import signal
import sqlite3
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen

from mailsink.config import Settings
from mailsink.errors import MailsinkError, StoreError
from mailsink.events import (
    ConfigRejected,
    ConfigReloaded,
    EventsLost,
    MessageReleased,
    MessagesChanged,
    MessagesDeleted,
    MessageStored,
    StoreChanged,
)
from mailsink.faults.presets import PRESETS
from mailsink.mail.findings import KINDS
from mailsink.sink import Sink
from mailsink.text import visible
from mailsink.tui.screens.faults import FaultsScreen
from mailsink.tui.screens.main import MainScreen
from mailsink.tui.screens.message import MessageScreen
from mailsink.tui.screens.sessions import SessionsScreen
from mailsink.tui.state import UiState, default_state_dir
from mailsink.tui.widgets.dialogs import Help
from mailsink.tui.widgets.message_detail import BrowserFiles, MessageDetail

SIGNAL_GRACE_SECONDS = 5  # see MailsinkApp._end_soon_after_a_signal
TERMINAL_CHECK_SECONDS = 1.0  # see MailsinkApp._check_terminal
STUCK_SECONDS = 2  # a shutdown not at on_unmount by then waits on the dead terminal
# (Not POLLNVAL: some systems' poll() reports it for any terminal.)
_HUNG_UP = select.POLLHUP | select.POLLERR
CATCH_UP_RETRY_SECONDS = 0.5  # after the store refused the list's read
LOG_NOTICE_DELAY = 0.1  # seconds from a logged warning to its notice (see RecentLog.wake)


class RecentLog(logging.Handler):
    """Keeps what the server logs while the UI owns the terminal; warnings become notices."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: deque[logging.LogRecord] = deque(maxlen=1000)
        self.unseen: deque[logging.LogRecord] = deque(maxlen=50)
        # Called (from any thread) when a warning arrives: the app shows it a moment later,
        # after the event that may say the same thing (see `seen`).
        self.wake: Callable[[], object] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.levelno >= logging.WARNING:
            self.unseen.append(record)
            if self.wake is not None:
                self.wake()

    def seen(self, text: str) -> None:
        """Warnings not yet shown that say `text` need no notice of their own: one says it."""
        assert self.lock is not None  # Handler.__init__ made it
        with self.lock:  # emit may run on another thread meanwhile
            kept = [record for record in self.unseen if text not in record.getMessage()]
            self.unseen.clear()
            self.unseen.extend(kept)


class MailsinkApp(App[None]):
    sink: Sink
    main: MainScreen
    CSS_PATH = "mailsink.tcss"
    TITLE = "mailsink"
    # The footer lists the focused widget's keys, then the screen's, then these, and cuts what
    # does not fit: screens keep theirs few, so that these stay visible at 80 columns.
    BINDINGS = [
        Binding("s", "sessions", "Sessions"),
        Binding("f", "faults", "Faults"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        settings: Settings,
        *,
        attach: bool = False,
        overrides: dict[str, Any] | None = None,
        log_handler: RecentLog | None = None,
        state_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.attach = attach
        self.overrides = overrides
        self.log_handler = log_handler
        self.ui_state = UiState(state_dir) if state_dir is not None else None
        self._saved_theme: str | None = None
        self.startup_error: Exception | None = None
        self._resources = contextlib.AsyncExitStack()
        self.browser_files = BrowserFiles()  # the HTML `o` wrote, removed on exit
        self._catching_up = asyncio.Lock()
        self._retrying = False  # a catch-up the store refused is tried again once, soon
        # What the user asked for and did not happen (a `d` the store refused on quit, a `D`
        # cut short): the in-memory log dies with the app, so `run` says it on stderr.
        self.exit_problems: list[str] = []
        self.signalled: int | None = None  # the signal that ended the app, if one did
        self._stuck: threading.Timer | None = None  # see _terminal_gone

    async def on_load(self) -> None:
        """Start the store and the server before the UI takes the terminal, so that a port in
        use or a missing store is one line on stderr (see `run`)."""
        if self.ui_state is not None:
            saved = (await asyncio.to_thread(self.ui_state.load)).get("theme")
            if isinstance(saved, str) and saved in self.available_themes:
                self._saved_theme = self.theme = saved
            elif saved is not None:
                logging.getLogger(__name__).warning(
                    "ignoring the theme %r saved in %s: no such theme", saved, self.ui_state.path
                )
        try:
            starting = (
                Sink.attached(self.settings, link=True)
                if self.attach
                else Sink.serving(self.settings, self.overrides)
            )
            self.sink = await self._resources.enter_async_context(starting)
        except Exception as error:  # shown by the CLI as one line once the terminal is back
            self.startup_error = error
            self.exit(return_code=1)
            return
        self.main = MainScreen(self.sink)

    def stop_by_signal(self, signum: int) -> None:
        """SIGTERM, or SIGHUP (the terminal went away): quit as `q` does, so that on_unmount
        still carries out the pending deletions and removes the browser's files; the exit
        status says a signal ended it, as the shell's 128 + N."""
        self.signalled = signum
        self.exit(return_code=128 + signum)

    def _end_soon_after_a_signal(self, after: float = SIGNAL_GRACE_SECONDS) -> threading.Timer:
        """With the terminal gone, Textual's last writes to it can fail and leave its shutdown
        waiting for a writer thread that has stopped. Everything mailsink itself had to finish
        (deletions, files, the server's messages in flight) is done by now, so if the process
        has not ended some seconds later it says what went wrong and ends itself, rather than
        holding the port and the store."""

        def end() -> None:
            if self.exit_problems:
                with contextlib.suppress(OSError):
                    print(f"mailsink: {visible('; '.join(self.exit_problems))}", file=sys.stderr)
            os._exit(self.return_code or 1)

        watchdog = threading.Timer(after, end)
        watchdog.daemon = True  # a clean exit does not wait for it
        watchdog.start()
        return watchdog

    async def on_unmount(self) -> None:
        if self._stuck is not None:  # Textual's shutdown came this far: it is not stuck
            self._stuck.cancel()
        if self.log_handler is not None:
            self.log_handler.wake = None
        if hasattr(self, "main"):
            # Those still undoable when the user quit, and what a `D` cut short left.
            self.exit_problems += await self.main.carry_out_deletions()
        self.browser_files.remove()
        await self._resources.aclose()  # the listener closes; messages in flight finish
        if self.signalled is not None:
            self._end_soon_after_a_signal()

    def _check_terminal(self) -> None:
        """With SIGHUP ignored (inherited so from whatever started mailsink; `nohup` itself
        also takes the terminal away, which `mailsink tui` refuses), closing the terminal
        window sends nothing: Textual then reads the terminal's end over and over (a core's
        worth of CPU) and the app would hold the port and the store for ever. Seen here, it
        quits as on SIGHUP."""
        if self.signalled is not None:
            return
        poller = select.poll()
        poller.register(self._terminal, 0)  # (hang-ups are always reported)
        if any(flags & _HUNG_UP for _, flags in poller.poll(0)):
            self.signalled = signal.SIGHUP
            self._terminal_gone()

    @work(group="terminal")
    async def _terminal_gone(self) -> None:
        logging.getLogger("mailsink").warning("the terminal went away: quitting")
        # Done here first: Textual's shutdown may never come as far as on_unmount, its writes
        # to the dead terminal having stopped its writer thread (the signal's watchdog then
        # ends the process).
        if hasattr(self, "main"):
            self.exit_problems += await self.main.carry_out_deletions()
        self.browser_files.remove()
        # Cancelled if the shutdown reaches on_unmount, which lets the server finish what is
        # in flight and arms the usual watchdog.
        self._stuck = self._end_soon_after_a_signal(STUCK_SECONDS)
        self.exit(return_code=128 + signal.SIGHUP)

    def on_mount(self) -> None:
        self.push_screen(self.main)
        stdin = sys.__stdin__
        if not self.is_headless and stdin is not None and stdin.isatty():
            self._terminal = stdin.fileno()
            self.set_interval(TERMINAL_CHECK_SECONDS, self._check_terminal)
        # Everything imported and built so far lives as long as the app: out of the collector's
        # sight, a full collection scans only what came after (22 ms pauses every ~50 pages of a
        # 100 000-message list otherwise).
        gc.freeze()
        self._follow_events()
        self._follow_changes()
        self._follow_releases()
        self._follow_config()
        if self.log_handler is not None:
            loop = asyncio.get_running_loop()
            self.log_handler.wake = lambda: loop.call_soon_threadsafe(
                loop.call_later, LOG_NOTICE_DELAY, self.show_log_warnings
            )
            self.show_log_warnings()

    @work(group="events")
    async def _follow_events(self) -> None:
        """New and deleted mail, as it happens, goes to the list: many events at once are one
        catch-up."""
        with self.sink.subscribe(
            MessageStored, MessagesDeleted, StoreChanged, EventsLost
        ) as events:
            while True:
                await events.get()
                events.pending()
                await self._catch_up()

    @work(group="change-events")
    async def _follow_changes(self) -> None:
        """Read state and tags changed: the rows and the detail shown afresh. Another process's
        writes (StoreChanged) may have changed any message's; many events at once are one
        refresh."""
        with self.sink.subscribe(MessagesChanged, StoreChanged, EventsLost) as events:
            while True:
                changed: set[int] = set()
                every = False
                for event in [await events.get(), *events.pending()]:
                    if isinstance(event, MessagesChanged) and event.message_ids:
                        changed.update(event.message_ids)
                    else:
                        every = True
                ids = () if every else tuple(sorted(changed))
                # Not composed yet, or shutting down (the screen stack already emptied).
                with contextlib.suppress(NoMatches, ScreenStackError):
                    self.main.messages_changed(ids)
                    screen = self.screen
                    if isinstance(screen, MessageScreen) and (not ids or screen.message_id in ids):
                        screen.query_one(MessageDetail).refresh_state()

    @work(group="release-events")
    async def _follow_releases(self) -> None:
        """A release tried (here: MessageReleased; by another process, attached or not:
        StoreChanged): the Overview of the message shown, on the main screen and full screen,
        lists it."""
        with self.sink.subscribe(MessageReleased, StoreChanged, EventsLost) as events:
            while True:
                released: set[int] = set()
                every = False
                for event in [await events.get(), *events.pending()]:
                    if isinstance(event, MessageReleased):
                        released.add(event.message_id)
                    else:
                        every = True
                for detail in self._details():
                    if detail.message_id is not None and (every or detail.message_id in released):
                        detail.refresh_releases()

    def _details(self) -> list[MessageDetail]:
        """The message details open: the main screen's, and a full screen's."""
        found: list[MessageDetail] = []
        with contextlib.suppress(NoMatches, ScreenStackError):  # not composed yet, or closing
            for screen in self.screen_stack:
                if screen is self.main or isinstance(screen, MessageScreen):
                    found += screen.query(MessageDetail)
        return found

    @work(group="config-events")
    async def _follow_config(self) -> None:
        """Config reloads, to the status line and a notice; apart from the list's catch-up, so
        that the notice comes at once (and the logged line that says the same is not shown
        again, see RecentLog.seen)."""
        with self.sink.subscribe(ConfigReloaded, ConfigRejected) as events:
            async for event in events:
                self._config_changed(event)

    async def _catch_up(self) -> None:
        """One at a time (the event worker's and a retry's would both add the same new ids)."""
        async with self._catching_up:
            try:
                listing = self.main.message_list
            except NoMatches:
                return  # not composed yet, or already shutting down
            try:
                while not await listing.catch_up():
                    pass  # overtaken by a reload: look again
            except (sqlite3.Error, StoreError) as error:  # e.g. locked: say so, look again soon
                self.notify(f"store: {error}", severity="error", markup=False, timeout=3)
                if not self._retrying:
                    self._retrying = True
                    self.set_timer(CATCH_UP_RETRY_SECONDS, self._retry_catch_up)

    async def _retry_catch_up(self) -> None:
        self._retrying = False
        await self._catch_up()

    def show_log_warnings(self) -> None:
        """Warnings the server logged while the UI owns the terminal, as notices."""
        while self.log_handler is not None and self.log_handler.unseen:
            record = self.log_handler.unseen.popleft()
            self.notify(record.getMessage(), severity="warning", markup=False, timeout=6)

    def watch_theme(self, theme: str) -> None:
        if self.ui_state is not None and theme != self._saved_theme:
            self._saved_theme = theme
            self.ui_state.remember(theme=theme)
            self.run_worker(self.ui_state.write, thread=True, group="state")

    def _config_changed(self, event: ConfigReloaded | ConfigRejected) -> None:
        error = event.error if isinstance(event, ConfigRejected) else None
        self.main.status.config_reloaded(error)
        if error:
            if self.log_handler is not None:
                self.log_handler.seen(error)  # the watcher logged it as well
            self.notify(f"config not applied: {error}", severity="error", markup=False, timeout=8)
        else:
            self.notify("config reloaded", timeout=3)

    # ---- screens

    def _show(self, screen_type: type[SessionsScreen | FaultsScreen], **options: Any) -> None:
        if isinstance(self.screen, screen_type):
            return
        if len(self.screen_stack) > 2:  # one of the others is open: replace it
            self.pop_screen()
        self.push_screen(screen_type(self.sink, **options))

    def action_sessions(self) -> None:
        self._show(SessionsScreen)

    def action_faults(self) -> None:
        self._show(FaultsScreen)

    def action_sessions_with_refusals(self) -> None:
        """The Sessions screen with only the sessions in which the server refused something."""
        screen = self.screen
        if not isinstance(screen, SessionsScreen):
            self._show(SessionsScreen, refusals_only=True)
        elif not screen.refusals_only:
            screen.action_refusals_only()

    def action_help(self) -> None:
        self.push_screen(Help())

    def action_follow_newest(self) -> None:
        self.main.message_list.toggle_follow()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, MessageScreen):
            yield SystemCommand(
                "Release this message…",
                "Send it to a real mail server, to allowed recipients (key R)",
                screen.action_release,
            )
        main = self.main
        yield SystemCommand("Sessions", "Live and finished SMTP sessions", self.action_sessions)
        yield SystemCommand(
            "Sessions with refusals",
            "Only sessions in which the server refused something (key r on Sessions)",
            self.action_sessions_with_refusals,
        )
        yield SystemCommand("Faults", "Switch fault rules on and off", self.action_faults)
        yield SystemCommand(
            "Search messages",
            "Words, phrases, from: rcpt: tag: is:unread ... (key /; ? lists the prefixes)",
            main.action_filter,
        )
        yield SystemCommand(
            "Findings only",
            "Only messages with findings (toggle, key !)",
            main.action_findings_only,
        )
        yield SystemCommand(
            "Unread only", "Only messages not read yet (toggle, key U)", main.action_unread_only
        )
        yield SystemCommand(
            "Filter by tag…",
            "Only messages with a tag (adds tag: to the search)",
            main.action_filter_by_tag,
        )
        for kind, (severity, meaning) in KINDS.items():
            yield SystemCommand(
                f"Filter by finding: {kind}",
                f"{severity}: {meaning} (adds finding:{kind} to the search)",
                partial(main.filter_by, f"finding:{kind}"),
            )
        yield SystemCommand("Mark all read", "Every message (key M)", main.action_mark_all_read)
        yield SystemCommand(
            "Mark read / unread", "The selected message (key m)", main.action_toggle_read
        )
        yield SystemCommand(
            "Tags…", "Add or remove tags of the selected message (key t)", main.action_tags
        )
        yield SystemCommand(
            "Delete message", "Delete the selected message (u undoes it)", main.action_delete
        )
        yield SystemCommand("Undo delete", "Bring back the message just deleted", main.action_undo)
        yield SystemCommand(main.clear_label(), "Asks first (key D)", main.action_clear)
        yield SystemCommand(
            "Export message", "Save the selected message as .eml", main.action_export
        )
        yield SystemCommand(
            "Follow newest",
            "Select each new message as it arrives (toggle, key F)",
            self.action_follow_newest,
        )
        yield SystemCommand("Help", "Keys and what they do", self.action_help)
        if self.sink.can_switch_faults:  # attached: through the store's server, when linked
            for preset in PRESETS:
                yield SystemCommand(
                    f"Fault preset: {preset.title}",
                    f"Switch it on or off (key {preset.key} on the Faults screen)",
                    partial(self.toggle_preset, preset.key),
                )

    @work(group="switch")
    async def toggle_preset(self, key: str) -> None:
        """A preset switched from the palette, here or at the store's server."""
        try:
            now_on = await self.sink.toggle_preset(key)
        except MailsinkError as error:
            self.notify(
                f"not switched: {visible(str(error))}", severity="error", markup=False, timeout=6
            )
            return
        title = next(preset.title for preset in PRESETS if preset.key == key)
        self.notify(f"{title}: {'on' if now_on else 'off'}", markup=False, timeout=3)


def create_app(
    settings: Settings,
    *,
    attach: bool = False,
    overrides: dict[str, Any] | None = None,
    log_handler: RecentLog | None = None,
    state_dir: Path | None = None,
) -> MailsinkApp:
    """The app the CLI runs and the tests drive: it starts (or attaches to) everything itself.
    `state_dir`: where the theme is remembered between runs (None: nowhere)."""
    return MailsinkApp(
        settings,
        attach=attach,
        overrides=overrides,
        log_handler=log_handler,
        state_dir=state_dir,
    )


def run(
    settings: Settings, overrides: dict[str, Any] | None = None, *, attach: bool = False
) -> None:
    """`mailsink` / `mailsink tui`: until the user quits; then in-flight messages finish."""
    from mailsink.run import loop_factory

    handler = RecentLog()
    logger = logging.getLogger("mailsink")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the terminal belongs to the UI
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # As in `serve`; here the reader and parse threads share the GIL with the UI's loop too.
    sys.setswitchinterval(0.001)

    app = create_app(
        settings,
        attach=attach,
        overrides=overrides,
        log_handler=handler,
        state_dir=default_state_dir(),
    )

    async def run_app() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) != signal.SIG_IGN:  # as under `nohup`: stays ignored
                loop.add_signal_handler(signum, app.stop_by_signal, signum)
        await app.run_async()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run_app())
    finish(app)


def finish(app: MailsinkApp) -> None:
    """Once the terminal is back: what went wrong, on stderr, and the exit status (1 when what
    the user asked for did not happen; 128 + N after signal N)."""
    if app.startup_error is not None:
        raise app.startup_error
    if app.exit_problems:
        from mailsink.text import visible

        with contextlib.suppress(OSError):  # after a SIGHUP there may be no terminal left
            print(f"mailsink: {visible('; '.join(app.exit_problems))}", file=sys.stderr)
        raise SystemExit(app.return_code or 1)
    if app.return_code:  # Textual has shown what went wrong, or a signal ended it
        raise SystemExit(app.return_code)
