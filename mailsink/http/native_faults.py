"""/api/mailsink/faults: the rules in force (presets, the config file's, run-time ones), their
hits, switching them, adding and removing run-time rules, zeroing the counters.

Every change goes through FaultControls, which publishes RulesChanged (the TUI's Faults screen
redraws) and applies from each SMTP client's next command. A rule is given and shown in the
shape of a [[fault]] table, and checked by the code that checks the config file, so an error
reads as `mailsink check-config` words it (without the file's name and line).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailsink.errors import RuleError
from mailsink.faults.controls import FaultControls, RuleState
from mailsink.faults.presets import PRESETS
from mailsink.faults.rules import Reply, Rule
from mailsink.http.request_params import ApiError, json_body
from mailsink.http.routing import ApiRoutes, Param

routes = ApiRoutes("mailsink")

RULE_LIMIT = 64 * 1024  # bytes of a rule as JSON: more is no rule anyone writes

_NAME = Param("name", where="path", required=True, description="the rule's name, URL-encoded")

# The [[fault]] table's shape, for OpenAPI (rules.parse_rule is what checks it).
RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stage"],
    "properties": {
        "name": {"type": "string"},
        "stage": {"type": "string", "enum": ["connect", "helo", "auth", "mail", "rcpt", "data"]},
        "action": {"type": "string", "enum": ["reply", "disconnect", "drop", "delay"]},
        "reply": {"type": "string", "example": "451 4.3.0 Try again later"},
        "delay": {"oneOf": [{"type": "number"}, {"type": "string", "example": "30s"}]},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
        "times": {"type": "integer", "minimum": 0},
        "rate": {"type": "string", "example": "10/1m"},
        "enabled": {"type": "boolean"},
        "match": {"type": "object"},
    },
}


def controls(request: web.Request) -> FaultControls:
    from mailsink.http.web_service import SINK

    faults = request.app[SINK].faults
    if faults is None:  # a view of another process's store has no SMTP server to fault
        raise ApiError(503, "no fault controls here: this mailsink does not serve SMTP")
    return faults


def reply_text(reply: Reply) -> str:
    """The reply as a [[fault]] table's `reply` gives it (lines joined by newlines)."""
    head = f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)
    return f"{head} {reply.text}".rstrip()


def rule_table(rule: Rule) -> dict[str, Any]:
    """The rule as a [[fault]] table: what POST takes gives the same rule back."""
    table: dict[str, Any] = {"name": rule.name, "stage": rule.stage, "action": rule.action}
    if rule.reply is not None:
        table["reply"] = reply_text(rule.reply)
    table["delay"] = rule.delay
    table["probability"] = rule.probability
    table["times"] = rule.times
    if rule.rate is not None:
        table["rate"] = f"{rule.rate.count}/{rule.rate.window:g}s"
    table["enabled"] = rule.enabled
    match = rule.match
    conditions: dict[str, Any] = {}
    for key in ("sender", "recipient", "helo", "authenticated", "recipients_over", "size_over"):
        value = getattr(match, key)
        if value is not None:
            conditions[key] = value
    if match.peer is not None:
        conditions["peer"] = str(match.peer)
    if match.header:
        conditions["header"] = {name: pattern.pattern for name, pattern in match.header}
    table["match"] = conditions
    return table


def rule_json(rule: Rule, state: RuleState) -> dict[str, Any]:
    return {
        **rule_table(rule),
        "source": state.origin,
        "preset_key": state.preset_key,
        "hits": state.hits,
        "last_fired_at": state.last_fired_at,
        "summary": state.summary,
        "describe": rule.describe(),
    }


def _rules(faults: FaultControls) -> list[dict[str, Any]]:
    by_name = {rule.name: rule for rule in faults.policy.rules}
    return [rule_json(by_name[state.name], state) for state in faults.rules()]


def one_rule(faults: FaultControls, name: str) -> dict[str, Any]:
    """The rule in force called `name`, as GET lists it; 404 when there is none."""
    for rule in _rules(faults):
        if rule["name"] == name:
            return rule
    raise ApiError(404, f"no fault rule {name[:200]!r}")


def rule_problem(error: RuleError) -> str:
    """A RuleError as `mailsink check-config` words it, less the file, line and fault[N]."""
    return f"{error.key}: {error.reason}" if error.key else error.reason


def faults_json(faults: FaultControls) -> dict[str, Any]:
    rules = _rules(faults)
    enabled = {rule["name"]: rule["enabled"] for rule in rules}
    return {
        "rules": rules,
        "presets": [
            {
                "key": preset.key,
                "name": preset.name,
                "title": preset.title,
                "enabled": enabled.get(preset.name, False),
            }
            for preset in PRESETS
        ],
        "seed": faults.policy.seed or None,
        "config": str(faults.source) if faults.source else None,
    }


def _name(request: web.Request) -> str:
    return request.match_info["name"]


@routes.get(
    "/api/mailsink/faults",
    "The fault rules in force (presets, config, run-time), with hits and last firing",
)
async def list_faults(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    return json_response(faults_json(controls(request)))


@routes.post(
    "/api/mailsink/faults",
    "Add a run-time fault rule, given as a [[fault]] table",
    body=RULE_SCHEMA,
    responses={
        "201": "Added: the rule as listed",
        "400": "A bad key (named, as check-config words it)",
        "409": "Another rule in force has that name",
    },
)
async def add_fault(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    faults = controls(request)
    table = await json_body(request, limit=RULE_LIMIT)
    if not isinstance(table, dict):
        raise ApiError(400, "expected a JSON object: a [[fault]] table")
    name = table.get("name")
    if isinstance(name, str) and name.strip() in {rule.name for rule in faults.policy.rules}:
        raise ApiError(409, f"name: another rule is already named {name.strip()!r}")
    try:
        state = faults.add_rule(table)
    except RuleError as error:
        raise ApiError(400, rule_problem(error)) from None
    return json_response(one_rule(faults, state.name), 201)


@routes.post(
    "/api/mailsink/faults/reset",
    "Zero every rule's hits, times budgets and rate windows; restart the seeded sequence",
)
async def reset_faults(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    faults = controls(request)
    faults.reset()
    return json_response(faults_json(faults))


@routes.get(
    "/api/mailsink/faults/{name:.+}",
    "One fault rule in force",
    params=[_NAME],
    responses={"404": "No rule of that name"},
)
async def get_fault(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    return json_response(one_rule(controls(request), _name(request)))


@routes.put(
    "/api/mailsink/faults/{name:.+}",
    "Switch a fault rule (a preset, a config or run-time rule) on or off",
    params=[_NAME],
    body={
        "type": "object",
        "required": ["enabled"],
        "properties": {"enabled": {"type": "boolean"}},
    },
    responses={"400": "enabled missing or not true/false", "404": "No rule of that name"},
)
async def switch_fault(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    faults = controls(request)
    body = await json_body(request, limit=RULE_LIMIT)
    enabled = body.get("enabled") if isinstance(body, dict) else None
    if not isinstance(enabled, bool):
        raise ApiError(400, "enabled: expected true or false")
    name = _name(request)
    try:
        faults.set_enabled(name, enabled)
    except KeyError:
        raise ApiError(404, f"no fault rule {name[:200]!r}") from None
    return json_response(one_rule(faults, name))


@routes.delete(
    "/api/mailsink/faults/{name:.+}",
    "Remove a run-time fault rule",
    params=[_NAME],
    responses={
        "404": "No rule of that name",
        "409": "A preset or a config file's rule: switch it off instead",
    },
)
async def remove_fault(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    faults = controls(request)
    name = _name(request)
    try:
        faults.remove_rule(name)
    except KeyError:
        raise ApiError(404, f"no fault rule {name[:200]!r}") from None
    except RuleError as error:
        raise ApiError(409, rule_problem(error)) from None
    return json_response({"removed": name})
