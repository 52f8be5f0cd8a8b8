"""/api/mailsink/faults: the rules in force, run-time rules, counters (to be filled)."""

from __future__ import annotations

from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("mailsink")
