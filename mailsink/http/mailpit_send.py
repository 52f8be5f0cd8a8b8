"""POST /api/v1/send: a message given as JSON, stored as SMTP stores one (to be filled)."""

from __future__ import annotations

from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("Mailpit")
