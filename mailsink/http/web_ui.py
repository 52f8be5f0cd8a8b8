"""The terminal UI in a browser, at `/` of the HTTP API's port: the page, textual-serve's
client (textual.js, xterm.js) and fonts served locally, and a WebSocket per tab driving one
`mailsink tui --attach` process (mailsink.http.ui_process).

(Being written: issue 17.)
"""

from __future__ import annotations

from aiohttp import web


def install(app: web.Application) -> None:
    """Add the UI's routes to the service's app."""
