"""Releasing a message to the `[relay]` server over HTTP, mailsink's own routes (under
/api/mailsink/): what a release would do (the plan), the release itself, and the releases
recorded. An attached sink (the TUI, a browser tab's UI) and `mailsink release` ask the
store's server here (mailsink.server_link.ServerLink.release, cli_release).

The server releases through its own `[relay]` only: no request names a host, a port or a
login. Errors are JSON with a status a client can act on, shared with MailHog's route
(mailhog_api): 409 releasing is off, 404 no such message, 400 a bad body or recipients refused
(`refused` names them; nothing was sent), 502 the upstream refused or failed, 504 it timed out
(both with the `release` recorded for it). A partial release (the upstream took some
recipients) is a 200 whose record says `"outcome": "partial"`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailsink.errors import (
    NoSuchMessage,
    RecipientsRefused,
    RelayNotConfigured,
    ReleaseError,
    UpstreamError,
)
from mailsink.http.native_api import known_message
from mailsink.http.request_params import ApiError, bad, json_body, path_id
from mailsink.http.routing import ApiRoutes, Param
from mailsink.http.web_service import SINK, json_response
from mailsink.relay import ReleaseRecord
from mailsink.sink import MAX_RECIPIENTS

routes = ApiRoutes("mailsink")

# Who may ask through this route: "auto" is the server's own automatic release, never a client.
CLIENT_TRIGGERS = ("cli", "tui", "http")
BODY_LIMIT = 256 * 1024  # bytes: 100 addresses are a few KiB
POST_KEYS = ("to", "trigger")

_ID = Param("id", "integer", "the message's id", where="path", required=True)
RELEASE_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "to": {
            "type": "array",
            "items": {"type": "string"},
            "maxItems": MAX_RECIPIENTS,
            "description": "the recipients (absent: the envelope's that allowed_recipients allows)",
        },
        "trigger": {"type": "string", "enum": list(CLIENT_TRIGGERS), "default": "http"},
    },
}
FAILURES = {
    "400": "a bad body, or recipients refused by [relay] allowed_recipients (`refused`)",
    "404": "no such message",
    "409": "releasing is off: no [relay] host in the config",
    "502": "the upstream refused or failed (`release`: the record)",
    "504": "the upstream did not answer in time (`release`: the record)",
}


def recipients_of(value: Any, name: str, *, text: bool = False) -> list[str]:
    """A body's list of recipients: strings, at most MAX_RECIPIENTS (a 400 naming `name`)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad(name, "expected a list of addresses (strings)", text=text)
    if len(value) > MAX_RECIPIENTS:
        raise bad(
            name, f"{len(value)} recipients; a release goes to {MAX_RECIPIENTS} at most", text=text
        )
    return list(value)


def upstream_failure(error: UpstreamError) -> web.Response:
    """502 (504: timed out) with the error line quoting the upstream, and the record."""
    record = error.record
    return json_response(
        {
            "error": str(error),
            "code": error.code,
            "stage": error.stage,
            "timed_out": error.timed_out,
            "release": record.as_json() if isinstance(record, ReleaseRecord) else None,
        },
        504 if error.timed_out else 502,
    )


def release_refusal(error: ReleaseError) -> web.Response:
    """A release that did not happen (or failed), as the JSON routes answer it."""
    if isinstance(error, UpstreamError):
        return upstream_failure(error)
    if isinstance(error, RelayNotConfigured):
        return json_response({"error": str(error)}, 409)
    if isinstance(error, NoSuchMessage):
        return json_response({"error": str(error)}, 404)
    if isinstance(error, RecipientsRefused):
        return json_response({"error": str(error), "refused": list(error.recipients)}, 400)
    return json_response({"error": str(error)}, 502)


@routes.get(
    "/api/mailsink/messages/{id}/release",
    "What releasing the message would do: upstream, MAIL FROM, default recipients (no release)",
    params=[_ID],
    responses={"404": "no such message"},
)
async def release_plan(request: web.Request) -> web.StreamResponse:
    message_id = path_id(request)
    try:
        plan = await request.app[SINK].release_plan(message_id)
    except NoSuchMessage as error:
        raise ApiError(404, str(error)) from None
    return json_response(plan.as_json())


@routes.post(
    "/api/mailsink/messages/{id}/release",
    "Release the message to the [relay] server (the stored bytes, to allowed recipients only)",
    params=[_ID],
    body=RELEASE_BODY,
    responses=FAILURES,
)
async def release(request: web.Request) -> web.StreamResponse:
    message_id = path_id(request)
    body = await json_body(request, required=False, limit=BODY_LIMIT)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with to and trigger (both optional)")
    for key in body:
        if key not in POST_KEYS:
            raise bad(str(key)[:40], f"unknown key; the keys are {', '.join(POST_KEYS)}")
    given = body.get("to")
    recipients = None if given is None else recipients_of(given, "to")
    trigger = body.get("trigger", "http")
    if trigger == "auto":
        raise bad(
            "trigger", "'auto' is the server's own automatic release; expected cli, tui or http"
        )
    if trigger not in CLIENT_TRIGGERS:
        shown = trigger[:40] if isinstance(trigger, str) else type(trigger).__name__
        raise bad("trigger", f"expected {', '.join(CLIENT_TRIGGERS)}; got {shown!r}")
    try:
        record = await request.app[SINK].release(message_id, recipients, trigger=trigger)
    except ReleaseError as error:
        return release_refusal(error)
    return json_response({"release": record.as_json()})


@routes.get(
    "/api/mailsink/messages/{id}/releases",
    "The releases tried of the message, oldest first (as `show --json`'s `releases`)",
    params=[_ID],
    responses={"404": "no such message"},
)
async def releases(request: web.Request) -> web.StreamResponse:
    message_id = await known_message(request)
    records = await request.app[SINK].releases(message_id)
    return json_response({"releases": [record.as_json() for record in records]})
