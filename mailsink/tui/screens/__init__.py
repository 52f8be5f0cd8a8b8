"""The TUI's screens, one module each; their widgets live in mailsink.tui.widgets."""
