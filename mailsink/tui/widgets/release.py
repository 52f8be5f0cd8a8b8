"""The release dialog (key R on the message screen, or the palette's "Release this message…"):
what a release of the message would do, the recipients to edit, and the upstream's answer.

Everything in it that came from outside (addresses, the upstream's replies, the error texts
that quote them) goes in as plain rich Text after `visible`: never as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Sequence

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from mailsink.errors import MailsinkError, RecipientsRefused
from mailsink.relay import PARTIAL, ReleasePlan, ReleaseRecord
from mailsink.sink import NOT_CONFIGURED, Sink
from mailsink.text import visible
from mailsink.tui.render import reply_of

NOT_CONFIGURED_HINT = (
    'add a [relay] table to the config (see README: "Releasing to a real mail server")'
)
NAMES_SHOWN = 5  # addresses a line of the dialog names before "and N more"
SENT_STYLE, PARTIAL_STYLE, FAILED_STYLE = "bold green", "bold yellow", "bold red"

# Releases still talking to their upstream after their dialog was closed: held here so that
# they finish (and are recorded) rather than being collected half way.
_unfinished: set[asyncio.Future[ReleaseRecord]] = set()


def addresses(values: Iterable[str], shown: int = NAMES_SHOWN) -> str:
    """`a@x, b@x, … and 3 more`, made visible (addresses: no emoji sequences kept)."""
    values = list(values)
    text = ", ".join(visible(value, emoji=False) for value in values[:shown])
    if len(values) > shown:
        text += f", … and {len(values) - shown} more"
    return text


def recipients_of(answer: str) -> list[str]:
    """The Input's comma-separated recipients, each stripped, empty ones dropped. A comma
    inside a quoted local part (`"a,b"@example.test`, an address the prefill may hold) is the
    address's own, not a separator."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in answer:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def sent_text(record: ReleaseRecord) -> Text:
    """A release the upstream took, for all its recipients or (partial) some of them."""
    answer = reply_of(record.code, record.reply)
    if record.outcome != PARTIAL:
        return Text.assemble(
            (f"Sent to {addresses(record.recipients)}", SENT_STYLE),
            f"\n{visible(record.upstream)} answered ",
            answer,
        )
    took = [r for r in record.recipients if r not in record.refused]
    text = Text(f"Sent in part: {visible(record.upstream)} refused", PARTIAL_STYLE)
    for recipient, reply in record.refused.items():
        text.append("\n ✗ ", FAILED_STYLE)
        text.append(visible(recipient, emoji=False), "bold")
        text.append(f"  {visible(reply)}")
    text.append(f"\nand took it for {addresses(took) or 'nobody else'}: {answer}")
    return text


def error_text(error: BaseException) -> Text:
    """A release that failed, in its own words (they quote the upstream)."""
    if isinstance(error, RecipientsRefused):
        text = Text("Not sent: ", FAILED_STYLE)
        text.append(visible(str(error)))
        if error.recipients:
            text.append("\nRefused: ", "bold")
            text.append(addresses(error.recipients, shown=20), FAILED_STYLE)
        text.append("\nEdit the recipients and send again.", "dim")
        return text
    if isinstance(error, MailsinkError | OSError | sqlite3.Error):
        return Text.assemble(("Failed: ", FAILED_STYLE), visible(str(error)))
    # A bug somewhere below: said here, rather than ending the UI with a traceback.
    return Text.assemble(("Failed: ", FAILED_STYLE), visible(f"{type(error).__name__}: {error}"))


def plan_text(plan: ReleasePlan) -> Text:
    """Where it would go and as whom: the settings' (or the store's server's), not the user's."""
    text = Text.assemble(("Upstream:  ", "bold"), visible(plan.upstream))
    text.append("\n")
    text.append("MAIL FROM: ", "bold")
    text.append(f"<{visible(plan.mail_from, emoji=False)}>")
    text.append("\n")
    text.append("Allowed:   ", "bold")
    if plan.allowed_recipients:
        text.append(", ".join(visible(glob, emoji=False) for glob in plan.allowed_recipients))
    else:
        text.append("nobody ([relay] allowed_recipients is empty)", FAILED_STYLE)
    return text


def left_out_text(plan: ReleasePlan) -> Text:
    """The envelope recipients the prefill leaves out, or why there are none."""
    if plan.not_allowed:
        return Text.assemble(
            ("Left out (not allowed): ", PARTIAL_STYLE), addresses(plan.not_allowed)
        )
    if not plan.recipients:
        return Text("The message has no envelope recipients.", "dim")
    return Text("Every envelope recipient is allowed.", "dim")


class ReleaseDialog(ModalScreen[None]):
    """`plan`: from Sink.release_plan; not configured (or None: the store's server said so),
    the dialog says that releasing is off and offers only Close."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, sink: Sink, message_id: int, plan: ReleasePlan | None) -> None:
        super().__init__()
        self.sink = sink
        self.message_id = message_id
        self.plan = plan if plan is not None and plan.configured else None
        self.sending = False
        self.closed = False
        self.result: ReleaseRecord | Exception | None = None  # the last send's (tests read it)

    def compose(self) -> ComposeResult:
        dialog = Vertical(classes="dialog release")
        dialog.border_title = Text(f"Release message {self.message_id}", "bold")
        with dialog:
            # Buttons first, docked at the bottom: on a short terminal the body scrolls and
            # they stay in sight.
            with Horizontal(classes="buttons"):
                if self.plan is not None:
                    yield Button("Send", variant="primary", id="send")
                    yield Button("Cancel", id="close")
                else:
                    yield Button("Close", variant="primary", id="close")
            with VerticalScroll(id="release-body"):
                if self.plan is None:
                    yield Static(
                        Text.assemble(NOT_CONFIGURED, "\n", (NOT_CONFIGURED_HINT, "dim")),
                        id="release-off",
                    )
                    return
                yield Static(plan_text(self.plan), id="release-plan")
                yield Label(Text("To (comma-separated):", "bold"), id="release-to-label")
                yield Input(
                    ", ".join(self.plan.recipients),
                    placeholder="ann@example.test",
                    id="release-to",
                )
                yield Static(left_out_text(self.plan), id="release-left-out")
                yield Static(id="release-result")

    def on_mount(self) -> None:
        if self.plan is None:
            self.query_one("#close", Button).focus()
        else:
            self.query_one("#release-to", Input).focus()

    @property
    def recipients(self) -> list[str]:
        return recipients_of(self.query_one("#release-to", Input).value)

    def action_close(self) -> None:
        self.closed = True  # a release still under way ends in a notice
        self.dismiss(None)

    @on(Button.Pressed, "#close")
    def _close_pressed(self) -> None:
        self.action_close()

    @on(Button.Pressed, "#send")
    @on(Input.Submitted, "#release-to")
    def action_send(self) -> None:
        if self.plan is None or self.sending:
            return
        self.sending = True
        self.query_one("#send", Button).disabled = True
        self.query_one("#close", Button).label = "Close"
        self._show(Text(f"sending… (to {visible(self.plan.upstream)})", "italic"))
        self._send(self.recipients)

    def _show(self, text: Text) -> None:
        self.query_one("#release-result", Static).update(text)
        # The answer is what the user waits for: in sight, even where the body has to scroll.
        self.call_after_refresh(self._answer_in_sight)

    def _answer_in_sight(self) -> None:
        with contextlib.suppress(NoMatches):
            self.query_one("#release-body", VerticalScroll).scroll_end(animate=False)

    @work(group="release", exclusive=True)
    async def _send(self, recipients: Sequence[str]) -> None:
        """Sink.release awaits its relay thread (smtplib), so the loop stays free; shielded,
        so that closing the dialog meanwhile does not cut a release off between the upstream's
        answer and its record."""
        release = asyncio.ensure_future(
            self.sink.release(self.message_id, list(recipients), trigger="tui")
        )
        _unfinished.add(release)
        app = self.app
        release.add_done_callback(lambda done: self._finished(app, done))
        try:
            record = await asyncio.shield(release)
        except Exception as error:  # shown in the dialog: see error_text
            self.result = error
            self._show(error_text(error))
            if isinstance(error, RecipientsRefused):
                self.query_one("#release-to", Input).focus()
        else:
            self.result = record
            self._show(sent_text(record))
            self.query_one("#send", Button).label = "Send again"
        finally:
            self.sending = False
            with contextlib.suppress(NoMatches):  # (closed meanwhile: nothing to enable)
                self.query_one("#send", Button).disabled = False

    def _finished(self, app: App[object], release: asyncio.Future[ReleaseRecord]) -> None:
        """A release that ends after its dialog was closed says how it went in a notice."""
        _unfinished.discard(release)
        if not self.closed or release.cancelled():
            return
        error = release.exception()
        if error is None:
            record = release.result()
            what = "partial" if record.outcome == PARTIAL else "sent"
            app.notify(
                f"release of message {self.message_id}: {what}:"
                f" {reply_of(record.code, record.reply)}",
                markup=False,
                timeout=8,
            )
        else:
            shown = str(error) if isinstance(error, MailsinkError) else error_text(error).plain
            app.notify(visible(shown), severity="error", markup=False, timeout=10)
