"""Mailpit's chaos triggers, mapped onto mailsink fault rules (to be filled)."""

from __future__ import annotations

from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("Mailpit")
