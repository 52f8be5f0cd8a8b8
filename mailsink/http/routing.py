"""A route table that remembers what each route is for, so that the OpenAPI document
(openapi.py) is made from the same declarations aiohttp serves and cannot drift from them.

    routes = ApiRoutes("Mailpit")

    @routes.get("/api/v1/messages", "List messages", params=[Param("start", "integer")])
    async def list_messages(request: web.Request) -> web.StreamResponse: ...

`install(app, *tables)` adds every table's routes to an aiohttp application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Param:
    """One query (or path) parameter, as OpenAPI describes it."""

    name: str
    type: str = "string"  # OpenAPI schema type: string | integer | boolean
    description: str = ""
    where: str = "query"  # query | path | header
    required: bool = False


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # aiohttp's syntax: /api/v1/message/{id}
    handler: Handler
    summary: str
    family: str  # the OpenAPI tag: Mailpit, MailHog, mailsink
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None  # a JSON schema for the request body
    responses: dict[str, str] = field(default_factory=dict)  # status -> description
    content_type: str = "application/json"  # of the 200 answer


class ApiRoutes:
    """The routes of one family."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.routes: list[ApiRoute] = []

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        params: list[Param] | tuple[Param, ...] = (),
        body: dict[str, Any] | None = None,
        responses: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                ApiRoute(
                    method.upper(),
                    path,
                    handler,
                    summary,
                    self.family,
                    tuple(params),
                    body,
                    dict(responses or {}),
                    content_type,
                )
            )
            return handler

        return register

    def get(self, path: str, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, summary, **options)

    def put(self, path: str, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, summary, **options)

    def post(self, path: str, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, summary, **options)

    def delete(self, path: str, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, summary, **options)


def install(app: web.Application, *tables: ApiRoutes) -> list[ApiRoute]:
    """Add the tables' routes to `app` (GET also answers HEAD); returns them all."""
    every: list[ApiRoute] = []
    for table in tables:
        for route in table.routes:
            if route.method == "GET":
                app.router.add_get(route.path, route.handler, allow_head=True)
            else:
                app.router.add_route(route.method, route.path, route.handler)
            every.append(route)
    return every
