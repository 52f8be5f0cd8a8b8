"""GET/PUT /api/v1/chaos: Mailpit's chaos triggers (Sender, Recipient, Authentication, each an
ErrorCode and a Probability in percent), kept as ordinary run-time fault rules named
`mailpit-chaos-sender`, `-recipient` and `-authentication`, so that the TUI's Faults screen and
/api/mailsink/faults show them and their hits.

As in Mailpit (server/apiv1/chaos.go, internal/smtpd/chaos/chaos.go): a PUT sets all three, an
omitted trigger goes back to its default code with probability 0 (off), an ErrorCode of 0 means
the default, errors are 400 text/plain with Mailpit's words, and the reply is "<code> Chaos
sender error" (recipient, authentication). Unlike Mailpit, chaos needs no start-up flag, and a
PUT that fails changes nothing (Mailpit may have set the triggers before the bad one).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailsink.faults.controls import FaultControls
from mailsink.http.native_faults import controls
from mailsink.http.request_params import ApiError
from mailsink.http.routing import ApiRoutes

routes = ApiRoutes("Mailpit")

# Mailpit's trigger -> (the fault stage, its default ErrorCode, the word in its reply).
TRIGGERS = {
    "Sender": ("mail", 451, "sender"),
    "Recipient": ("rcpt", 451, "recipient"),
    "Authentication": ("auth", 535, "authentication"),
}
RULE_PREFIX = "mailpit-chaos-"
_INT64 = 2**63 - 1

_TRIGGER_SCHEMA = {
    "type": "object",
    "properties": {
        "ErrorCode": {"type": "integer", "minimum": 400, "maximum": 599, "example": 451},
        "Probability": {"type": "integer", "minimum": 0, "maximum": 100, "example": 5},
    },
}
SCHEMA = {"type": "object", "properties": {name: _TRIGGER_SCHEMA for name in TRIGGERS}}


def rule_name(trigger: str) -> str:
    return RULE_PREFIX + trigger.lower()


def chaos_json(faults: FaultControls) -> dict[str, dict[str, int]]:
    """The triggers as Mailpit's GET answers them, read from the rules in force: a rule switched
    off (in the TUI, say) is a probability of 0."""
    rules = {rule.name: rule for rule in faults.policy.rules}
    answer = {}
    for trigger, (_stage, default, _word) in TRIGGERS.items():
        rule = rules.get(rule_name(trigger))
        code = rule.reply.code if rule is not None and rule.reply is not None else default
        chance = round(rule.probability * 100) if rule is not None and rule.enabled else 0
        answer[trigger] = {"ErrorCode": code, "Probability": chance}
    return answer


def _go_type(value: Any) -> str:
    """How Go's encoding/json names a JSON value it cannot put into a field."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _lookup(data: dict[str, Any], key: str) -> Any:
    """A key as Go's encoding/json finds it: exactly, else case-insensitively."""
    if key in data:
        return data[key]
    for name, value in data.items():
        if name.lower() == key.lower():
            return value
    return None


def parse_triggers(data: Any) -> dict[str, tuple[int, int]]:
    """The PUT body -> {trigger: (ErrorCode, Probability)}; ApiError (text) with the words
    Mailpit answers for a body its decoder or chaos.Set refuses."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ApiError(
            400,
            f"json: cannot unmarshal {_go_type(data).split()[0]} into Go value of type"
            " chaos.Triggers",
            text=True,
        )
    wanted: dict[str, tuple[int, int]] = {}
    for trigger, (_stage, default, _word) in TRIGGERS.items():
        given = _lookup(data, trigger)
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ApiError(
                400,
                f"json: cannot unmarshal {_go_type(given).split()[0]} into Go struct field"
                f" Triggers.{trigger} of type chaos.Trigger",
                text=True,
            )
        values = []
        for field in ("ErrorCode", "Probability"):
            value = _lookup(given, field)
            if value is None:
                value = 0
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) > _INT64:
                raise ApiError(
                    400,
                    f"json: cannot unmarshal {_go_type(value)} into Go struct field"
                    f" Triggers.{trigger}.{field} of type int",
                    text=True,
                )
            values.append(value)
        code, chance = values
        code = code or default
        if not 400 <= code <= 599:
            raise ApiError(400, "error code must be between 400 and 599", text=True)
        if not 0 <= chance <= 100:
            raise ApiError(400, "probability must be between 0 and 100", text=True)
        wanted[trigger] = (code, chance)
    return wanted


def apply_triggers(faults: FaultControls, wanted: dict[str, tuple[int, int]]) -> None:
    """Each trigger's rule replaced by one with the new code and chance (none at 0 %)."""
    states = faults.rules()
    in_force = {state.name for state in states}
    config = {state.name for state in states if state.origin == "config"}
    taken = [rule_name(t) for t in wanted if rule_name(t) in config]
    if taken:
        # The file's rule of that name is the user's: chaos does not replace it.
        raise ApiError(
            400,
            f"fault rule {taken[0]!r} comes from the config file: remove it there to use chaos",
            text=True,
        )
    for trigger, (code, chance) in wanted.items():
        stage, _default, word = TRIGGERS[trigger]
        name = rule_name(trigger)
        if name in in_force:
            faults.remove_rule(name)
        if chance:
            faults.add_rule(
                {
                    "name": name,
                    "stage": stage,
                    "reply": f"{code} Chaos {word} error",
                    "probability": chance / 100,
                }
            )


@routes.get("/api/v1/chaos", "Mailpit: the chaos triggers (read from the fault rules in force)")
async def get_chaos(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import json_response

    return json_response(chaos_json(controls(request)))


@routes.put(
    "/api/v1/chaos",
    "Mailpit: set the chaos triggers (an omitted one is switched off)",
    body=SCHEMA,
    responses={"400": "A bad ErrorCode or Probability (text, Mailpit's words)"},
)
async def set_chaos(request: web.Request) -> web.StreamResponse:
    import json

    from mailsink.http.web_service import json_response

    faults = controls(request)
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "EOF", text=True)  # Go's decoder on an empty body
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"invalid JSON: {error}"[:200], text=True) from None
    apply_triggers(faults, parse_triggers(data))
    return json_response(chaos_json(faults))
