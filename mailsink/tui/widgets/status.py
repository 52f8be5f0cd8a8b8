"""The status line: where mail goes in, how much is stored, which faults are on, config state."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from mailsink.text import visible
from mailsink.tui.backend import Backend


class StatusLine(Static):
    def __init__(self, backend: Backend, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.backend = backend
        self.shown = 0
        self.total = 0
        self.filter_text = ""
        self.config_note = Text("")

    def config_reloaded(self, error: str | None) -> None:
        if error:
            self.config_note = Text.assemble(("config error: ", "bold red"), visible(error))
        else:
            self.config_note = Text(f"config reloaded {time.strftime('%H:%M:%S')}", "green")
        self.redraw()

    def redraw(self) -> None:
        backend = self.backend
        line = Text()
        line.append(" mailsink ", "bold reverse")
        line.append(" ")
        server = backend.server
        if server is None:
            line.append("attached to ", "dim")
            line.append(visible(backend.db_path))
        else:
            places = [
                f"{label.split(',')[0]} {host}:{port}"
                for (host, port), label in zip(server.addresses, server.labels, strict=True)
            ]
            line.append(" · ".join(places), "bold")
            if server.settings.tls.starttls or server.settings.tls.require:
                line.append(" +STARTTLS" + (" required" if server.settings.tls.require else ""))
        line.append("  │  ", "dim")
        line.append(f"{self.shown:,}", "bold")
        line.append(" message" + ("" if self.shown == 1 else "s"))
        if self.filter_text:
            line.append(f" {visible(self.filter_text)}", "cyan")
        if server is not None:
            active = [rule for rule in server.policy.rules if rule.enabled]
            line.append("  │  ", "dim")
            if active:
                line.append(f"faults: {len(active)} on", "bold yellow")
            else:
                line.append("faults: off", "dim")
        if self.config_note.plain:
            line.append("  │  ", "dim")
            line.append_text(self.config_note)
        elif backend.watcher is not None:
            line.append("  │  ", "dim")
            line.append("config: watching", "dim")
        self.update(line)
