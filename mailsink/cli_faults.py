"""`mailsink faults …`: a running mailsink's fault rules, through its HTTP API
(`/api/mailsink/faults`), so that a CI script can switch failures on and off between steps.

The server checks every rule with the code that checks a config file, so its words (a 400
naming the key, a 404, a 409) are what the user reads: one line, exit 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from mailsink.cli_http import ApiTarget, Check

F = TypeVar("F", bound=Callable[..., Any])

URL_VARIABLE = "MAILSINK_URL"
ROUTE = "/api/mailsink/faults"
# How long a command waits for the server's whole answer (a mailsink answers at once).
ANSWER_SECONDS = 10.0
# Where a server listening on every address is reached from this machine.
_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def api_options(function: F) -> F:
    """--url, --config and --json, taken by the group and by each command (a command's own win)."""
    function = click.option(
        "--json", "as_json", is_flag=True, default=None, help="The API's JSON answer."
    )(function)
    function = click.option(
        "--config",
        "-c",
        type=click.Path(dir_okay=False),
        help="TOML config file: its [http] host and port (and first user) say where.",
    )(function)
    return click.option(
        "--url",
        metavar="URL",
        help="The server's HTTP API: http://HOST:PORT, http://USER:PASSWORD@HOST:PORT for Basic"
        " auth (@ : / ? # % and spaces in them percent-encoded)"
        f" [env: {URL_VARIABLE}; default: the config's [http], else"
        " http://127.0.0.1:8025].",
    )(function)


class Api:
    """Where the commands send their requests, and how they print: worked out from the command's
    options, then the group's."""

    def __init__(self, ctx: click.Context, command: str) -> None:
        self.command = f"faults {command}".rstrip()  # as typed, for error lines
        given = {**_group_params(ctx), **{k: v for k, v in ctx.params.items() if v is not None}}
        # --json anywhere: `faults --json` and `faults add … --json` alike.
        self.as_json = bool(ctx.params.get("as_json") or _group_params(ctx).get("as_json"))
        self.target = _target(given.get("url"), given.get("config"))

    def call(self, method: str, path: str = "", body: Any = None) -> Any:
        import time

        from mailsink.cli import CliError
        from mailsink.cli_http import ApiFailure, NoAnswer, Unreachable

        deadline = time.monotonic() + ANSWER_SECONDS
        try:
            return self.target.request(method, ROUTE + path, body=body, deadline=deadline)[1]
        except Unreachable as error:
            raise CliError(
                f"{self.command}: cannot reach {self.target.base}: {error} (is `mailsink"
                f" serve` running? --url or {URL_VARIABLE} say where)"
            ) from None
        except NoAnswer as failure:
            raise CliError(f"{self.command}: {failure} within {ANSWER_SECONDS:g}s") from None
        except ApiFailure as failure:
            raise CliError(f"{self.command}: {failure}") from None

    def not_mailsink(self, why: str) -> Exception:
        from mailsink.cli import CliError

        return CliError(f"{self.command}: not a mailsink answer: {why}")

    def print(self, data: Any, text: str) -> None:
        from mailsink.output import to_json

        click.echo(to_json(data) if self.as_json else text)


def _group_params(ctx: click.Context) -> dict[str, Any]:
    parent = ctx.parent
    if parent is None or parent.command.name != "faults":
        return {}
    return {key: value for key, value in parent.params.items() if value is not None}


def _target(url: str | None, config: str | None) -> ApiTarget:
    """--url, else --config's [http] host and port (with its first user's credentials, as a
    server of that config asks for them), else MAILSINK_URL, else Mailpit's port on loopback:
    what is given on the command line before what the environment says."""
    from mailsink.cli_http import ApiTarget

    authorization = None
    source = "--url"
    if url is None and config is None and os.environ.get(URL_VARIABLE):
        url, source = os.environ[URL_VARIABLE], f"${URL_VARIABLE}"
    if url is None:
        url, authorization = _configured(config)
        source = "--config" if config else "the default URL"
    try:
        target = ApiTarget.parse(url)
    except ValueError as error:
        raise click.UsageError(f"faults: {source}: {error}") from None
    if authorization is not None and target.authorization is None:
        return ApiTarget(target.base, authorization, target.loopback)
    return target


def _configured(config: str | None) -> tuple[str, str | None]:
    """The URL of the HTTP API a server of this config (or of none) serves, and the
    Authorization its first [http] user would send."""
    from mailsink.cli_http import basic_authorization
    from mailsink.config import Settings, load

    http = (load(config) if config else Settings()).http
    host = _ANY_ADDRESS.get(http.host, http.host)
    netloc = f"[{host}]" if ":" in host else host
    authorization = None
    if http.users:
        authorization = basic_authorization(*next(iter(http.users.items())))
    return f"http://{netloc}:{http.port}", authorization


def _quoted(name: str) -> str:
    import urllib.parse

    return "/" + urllib.parse.quote(name, safe="")


# ---- printing


def rule_does(rule: dict[str, Any]) -> str:
    """What a rule (the API's JSON of it) does and when: `451 4.3.0 Try again later, 2 times,
    when recipient=full@*` (made visible)."""
    import json

    from mailsink.text import visible

    parts = [str(rule.get("summary") or rule.get("action") or "")]
    probability = rule.get("probability")
    if isinstance(probability, int | float) and probability < 1:
        parts.append(f"p={probability:g}")
    times = rule.get("times")
    if isinstance(times, int) and times:
        parts.append(f"{times} time{'s' * (times != 1)}")
    if rule.get("rate"):
        parts.append(f"over {rule['rate']} per peer")
    match = rule.get("match")
    if isinstance(match, dict) and match:
        conditions = []
        for key, value in match.items():
            if isinstance(value, dict):
                conditions += [f"{key}.{name}~/{pattern}/" for name, pattern in value.items()]
            else:
                shown = json.dumps(value) if isinstance(value, bool) else str(value)
                conditions.append(f"{key}={shown}")
        parts.append("when " + " ".join(conditions))
    return visible(", ".join(part for part in parts if part))


def rules_table(rules: list[dict[str, Any]]) -> str:
    """NAME, STAGE, DOES, ON, HITS, LAST FIRED, SOURCE: each rule in force, in the order tried."""
    from mailsink.clock import local_time
    from mailsink.text import visible

    if not rules:
        return "no fault rules: every command is accepted"
    headings = ["NAME", "STAGE", "DOES", "ON", "HITS", "LAST FIRED", "SOURCE"]
    rows = []
    for rule in rules:
        fired = rule.get("last_fired_at")
        rows.append(
            [
                visible(str(rule.get("name"))),
                visible(str(rule.get("stage"))),
                rule_does(rule),
                "on" if rule.get("enabled") else "off",
                str(rule.get("hits", 0)),
                local_time(fired if isinstance(fired, int) else None, missing="-"),
                visible(str(rule.get("source"))),
            ]
        )
    limits = [32, 7, 60, 3, 6, 19, 8]
    widths = [
        min(limit, max(len(row[column]) for row in [headings, *rows]))
        for column, limit in enumerate(limits)
    ]
    lines = []
    for row in [headings, *rows]:
        cells = []
        for column, (cell, width) in enumerate(zip(row, widths, strict=True)):
            cell = cell if len(cell) <= width else cell[: width - 1] + "…"
            right = column == 4 and row is not headings  # HITS, a number
            cells.append(cell.rjust(width) if right else cell.ljust(width))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _rule_checks() -> dict[str, Check]:
    """What the commands print of a rule (the API's JSON of it), as a mailsink gives it."""
    from mailsink.cli_http import FLAG, NUMBER, TABLE, TEXT, TEXT_OR_NULL, WHOLE, WHOLE_OR_NULL

    return {
        "name": TEXT,
        "stage": TEXT,
        "enabled": FLAG,
        "hits": WHOLE,
        "last_fired_at": WHOLE_OR_NULL,
        "source": TEXT,
        "summary": TEXT_OR_NULL,
        "action": TEXT,
        "probability": NUMBER,
        "times": WHOLE,
        "rate": TEXT_OR_NULL,
        "match": TABLE,
    }


# The last millisecond of the year 9999: a firing time past it is no time a clock tells.
_LAST_TIME_MS = 253_402_300_799_999


def _rule_problem(rule: Any) -> str | None:
    from mailsink.cli_http import shape_problem

    checks = _rule_checks()
    problem = shape_problem(rule, checks, optional=set(checks) - {"name", "stage"})
    if problem is None and (rule.get("last_fired_at") or 0) > _LAST_TIME_MS:
        problem = f"'last_fired_at' is {rule['last_fired_at']}, not a time"
    return problem


def _listing(api: Api, data: Any) -> str:
    from mailsink.text import visible

    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        raise api.not_mailsink("no list of rules")
    for number, rule in enumerate(rules, 1):
        problem = _rule_problem(rule)
        if problem is not None:
            raise api.not_mailsink(f"rule {number}: {problem}")
    text = rules_table(rules)
    notes = []
    if data.get("config"):
        notes.append(f"config: {visible(str(data['config']))}")
    if data.get("seed"):
        notes.append(f"seed: {visible(str(data['seed']))}")
    return text + ("\n" + "; ".join(notes) if notes else "")


def _one_line(api: Api, rule: Any) -> str:
    from mailsink.text import visible

    problem = _rule_problem(rule)
    if problem is not None:
        raise api.not_mailsink(f"the rule: {problem}")
    state = "on" if rule.get("enabled") else "off"
    hits = rule.get("hits", 0)
    return (
        f"'{visible(str(rule.get('name')))}' ({visible(str(rule.get('stage')))}, {state},"
        f" {hits} hit{'s' * (hits != 1)}): {rule_does(rule)}"
    )


# ---- the commands


@click.group("faults", invoke_without_command=True)
@api_options
@click.pass_context
def faults(ctx: click.Context, url: str | None, config: str | None, as_json: bool | None) -> None:
    """The fault rules of a running mailsink, through its HTTP API: without a command, lists
    them (presets, the config's, run-time ones) with their hits, in the order they are tried.

    Changes apply from each SMTP client's next command and last until the server stops. A
    server's refusal (a bad key, no such rule) is one line, exit 1."""
    if ctx.invoked_subcommand is None:
        api = Api(ctx, "")
        data = api.call("GET")
        api.print(data, _listing(api, data))


@faults.command("list")
@api_options
@click.pass_context
def list_faults(ctx: click.Context, **_options: Any) -> None:
    """The rules in force with their hits (what bare `mailsink faults` prints)."""
    api = Api(ctx, "list")
    data = api.call("GET")
    api.print(data, _listing(api, data))


def match_value(text: str) -> Any:
    """A --match value: a TOML value when it is one (`1`, `true`, `{ Subject = "x" }`), else the
    text itself (`full@*`, `1MiB`, `127.0.0.0/8`)."""
    import tomllib

    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(parsed) != {"value"} or not _plain(parsed["value"]):
        return text  # more than a value (a newline and another key), or a date
    return parsed["value"]


def _plain(value: Any) -> bool:
    """What JSON carries as it is: no dates, times, infinities."""
    import math

    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(item) for item in value.values())
    return isinstance(value, str | int | bool)


def _add_match(table: dict[str, Any], given: str) -> None:
    key, equals, value = given.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not equals or not all(path):
        raise click.UsageError(
            f"faults add: --match {given!r}: expected KEY=VALUE (recipient=full@*,"
            " recipients_over=1, header.Subject=reset)"
        )
    match = table.setdefault("match", {})
    if not isinstance(match, dict):
        raise click.UsageError("faults add: --match: the --rule's match is not a table")
    for part in path[:-1]:
        inner = match.setdefault(part, {})
        if not isinstance(inner, dict):
            raise click.UsageError(f"faults add: --match {given!r}: {part} is not a table")
        match = inner
    # A header condition's value is a regular expression: text, even when it reads as a number.
    match[path[-1]] = value if path[0] == "header" else match_value(value)


@faults.command("add")
@click.option("--name", help='Unique; shown in transcripts [default: "run-time rule N"].')
@click.option(
    "--stage",
    help="connect | helo | auth | mail | rcpt | data (the end of DATA); required unless --rule"
    " has it.",
)
@click.option("--action", help="reply | disconnect | drop | delay [default: reply].")
@click.option("--reply", help='The reply, e.g. "452 4.2.2 Mailbox full" (code 400-599).')
@click.option("--delay", help="Wait before acting: 500ms, 2s.")
@click.option("--probability", type=float, help="Chance of firing when it matches, 0 to 1.")
@click.option("--times", type=int, help="Fire this many times, then let traffic through.")
@click.option("--rate", help='Fire only past this many events per client address: "10/1m".')
@click.option("--disabled", is_flag=True, help="Add it switched off.")
@click.option(
    "--match",
    "matches",
    multiple=True,
    metavar="KEY=VALUE",
    help="A condition (repeatable): recipient=full@*, recipients_over=1, header.Subject=reset;"
    " the value as TOML when it is one, else as text (header.NAME's always as text: a regex).",
)
@click.option(
    "--rule",
    "rule_json",
    metavar="JSON",
    help="A whole [[fault]] table as JSON; the options above set keys in it.",
)
@api_options
@click.pass_context
def add(
    ctx: click.Context,
    name: str | None,
    stage: str | None,
    action: str | None,
    reply: str | None,
    delay: str | None,
    probability: float | None,
    times: int | None,
    rate: str | None,
    disabled: bool,
    matches: tuple[str, ...],
    rule_json: str | None,
    **_options: Any,
) -> None:
    """Add a run-time rule, tried after all others, given as the keys of a [[fault]] table
    (README, Fault rules); prints it as added."""
    import math

    from mailsink.cli_http import strict_json

    table: dict[str, Any] = {}
    if rule_json is not None:
        try:
            table = strict_json(rule_json)  # (no NaN, no infinity, no nesting past the parser)
        except ValueError as error:
            raise click.UsageError(f"faults add: --rule: {error}") from None
        if not isinstance(table, dict):
            raise click.UsageError("faults add: --rule: expected a JSON object: a [[fault]] table")
    if probability is not None and not math.isfinite(probability):
        raise click.UsageError(
            f"faults add: --probability: {probability} is not a number from 0 to 1"
        )
    keys = {
        "name": name,
        "stage": stage,
        "action": action,
        "reply": reply,
        "delay": delay,
        "probability": probability,
        "times": times,
        "rate": rate,
    }
    table.update({key: value for key, value in keys.items() if value is not None})
    if disabled:
        table["enabled"] = False
    for given in matches:
        _add_match(table, given)
    if "stage" not in table:
        raise click.UsageError(
            "faults add: --stage is required (connect, helo, auth, mail, rcpt or data),"
            ' unless --rule has a "stage"'
        )
    api = Api(ctx, "add")
    rule = api.call("POST", body=table)
    api.print(rule, f"added {_one_line(api, rule)}")


@faults.command("enable")
@click.argument("name")
@api_options
@click.pass_context
def enable(ctx: click.Context, name: str, **_options: Any) -> None:
    """Switch a rule on (a preset, a config file's or a run-time rule)."""
    _switch(ctx, "enable", name, True)


@faults.command("disable")
@click.argument("name")
@api_options
@click.pass_context
def disable(ctx: click.Context, name: str, **_options: Any) -> None:
    """Switch a rule off (a preset, a config file's or a run-time rule)."""
    _switch(ctx, "disable", name, False)


def _switch(ctx: click.Context, command: str, name: str, enabled: bool) -> None:
    api = Api(ctx, command)
    rule = api.call("PUT", _quoted(name), {"enabled": enabled})
    api.print(rule, _one_line(api, rule))


@faults.command("remove")
@click.argument("name")
@api_options
@click.pass_context
def remove(ctx: click.Context, name: str, **_options: Any) -> None:
    """Remove a run-time rule (a preset or a config file's rule: switch it off instead)."""
    from mailsink.text import visible

    api = Api(ctx, "remove")
    answer = api.call("DELETE", _quoted(name))
    api.print(answer, f"removed '{visible(name)}'")


@faults.command("reset")
@api_options
@click.pass_context
def reset(ctx: click.Context, **_options: Any) -> None:
    """Zero every rule's hits, times budgets and rate windows, and restart a seeded sequence."""
    api = Api(ctx, "reset")
    data = api.call("POST", "/reset")
    rules = data.get("rules") if isinstance(data, dict) else None
    count = len(rules) if isinstance(rules, list) else 0
    rules_ = f"{count} fault rule{'s' * (count != 1)}"
    api.print(data, f"reset {rules_}: hits, times budgets and rate windows are zero again")
