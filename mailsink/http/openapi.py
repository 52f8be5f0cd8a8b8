"""The OpenAPI 3 document of every route, made from the route tables (routing.ApiRoutes), so
that it lists exactly what is served; served at /api/openapi.json."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from mailsink import __version__
from mailsink.http.routing import ApiRoute, ApiRoutes

routes = ApiRoutes("mailsink")

_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def _responses(route: ApiRoute) -> dict[str, str]:
    """The declared answers; "200" unless the route declares its success (201, 101, ...)."""
    if any(status[0] in "12" for status in route.responses):
        return dict(sorted(route.responses.items()))
    return {"200": "OK", **route.responses}


def document(every: list[ApiRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in every:
        path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.family],
            "operationId": f"{route.family}_{route.method}_{path}",
            "responses": {
                status: {"description": text} for status, text in _responses(route).items()
            },
        }
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            }
            for name in _PATH_PARAM.findall(path)
        ]
        parameters += [
            {
                "name": param.name,
                "in": param.where,
                "required": param.required,
                "description": param.description,
                "schema": {"type": param.type},
            }
            for param in route.params
            if param.where != "path"
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {"content": {"application/json": {"schema": route.body}}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "mailsink", "version": __version__},
        "paths": paths,
    }


@routes.get("/api/openapi.json", "This document")
async def openapi_document(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import ROUTES, json_response

    return json_response(document(request.app[ROUTES]))
