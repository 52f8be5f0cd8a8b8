"""MailHog routes (to be filled)."""

from __future__ import annotations

from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("MailHog")
