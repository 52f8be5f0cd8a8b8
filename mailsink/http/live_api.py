"""Live events (Mailpit's WebSocket, mailsink's Server-Sent Events) and the server-side wait (to be filled)."""

from __future__ import annotations

from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("mailsink")
