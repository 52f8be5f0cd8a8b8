"""Live events (Mailpit's WebSocket, mailsink's Server-Sent Events), the server-side wait."""

from __future__ import annotations

from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("mailsink")
