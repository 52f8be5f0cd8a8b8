"""Fault rules: what a [[fault]] table (or a run-time rule) says, parsed with the key named in
every error.

Pure: no I/O, no state. Sizes and durations are read as everywhere else (mailsink.units).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailsink.errors import RuleError
from mailsink.units import parse_duration, parse_size

STAGES = ("connect", "helo", "auth", "mail", "rcpt", "data")
ACTIONS = ("reply", "disconnect", "drop", "delay")

# The presets' names (mailsink.faults.presets) start with this; no other rule's may.
PRESET_PREFIX = "preset:"

# Which stages each match condition can be evaluated at.
_CONDITION_STAGES = {
    "sender": ("mail", "rcpt", "data"),
    "recipient": ("rcpt", "data"),
    "helo": ("helo", "auth", "mail", "rcpt", "data"),
    "peer": STAGES,
    "authenticated": ("mail", "rcpt", "data"),
    "recipients_over": ("rcpt",),
    "size_over": ("mail", "data"),
    "header": ("data",),
}
_REPLY = re.compile(r"^([2-5]\d\d)(?:\s+([245]\.\d{1,3}\.\d{1,3}))?(?:\s+(.*))?$", re.DOTALL)
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str | None
    text: str

    def lines(self) -> list[str]:
        """The reply as SMTP lines: '550-5.7.1 first', '550 5.7.1 last'."""
        texts = self.text.splitlines() or [""]
        last = len(texts) - 1
        out = []
        for index, text in enumerate(texts):
            head = f"{self.code}{' ' if index == last else '-'}"
            if self.enhanced:
                head += f"{self.enhanced} "
            out.append((head + text).rstrip())
        return out

    def __str__(self) -> str:
        return " | ".join(self.lines())


def parse_reply(value: Any) -> Reply:
    """'550 5.7.1 Sender not permitted' -> Reply; the code must be a failure (400-599)."""
    if not isinstance(value, str) or not value.strip():
        raise RuleError("reply", 'expected a reply such as "550 5.7.1 Sender not permitted"')
    match = _REPLY.match(value.strip())
    if not match:
        raise RuleError("reply", f"{value!r} does not start with a three-digit SMTP code")
    code = int(match.group(1))
    if not 400 <= code <= 599:
        raise RuleError("reply", f"code {code} is not a failure; use 400-599")
    enhanced = match.group(2)
    if enhanced and enhanced[0] != str(code)[0]:
        raise RuleError("reply", f"enhanced code {enhanced} does not agree with {code}")
    return Reply(code, enhanced, (match.group(3) or "").strip())


@dataclass(frozen=True)
class Rate:
    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}s"


def parse_rate(value: Any) -> Rate | None:
    """'10/1m' -> Rate(10, 60.0); the window's number may be left out ('10/m')."""
    if value in ("", None):
        return None
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise RuleError("rate", f'{value!r} is not a rate; use COUNT/WINDOW such as "10/1m"')
    window = float(match.group(2) or 1) * parse_duration(f"1{match.group(3)}")
    if window <= 0:
        raise RuleError("rate", "the window must be longer than zero")
    return Rate(int(match.group(1)), window)


@dataclass(frozen=True)
class Match:
    sender: str | None = None
    recipient: str | None = None
    helo: str | None = None
    peer: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    authenticated: bool | None = None
    recipients_over: int | None = None
    size_over: int | None = None
    header: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def describe(self) -> str:
        parts = []
        for name in (
            "sender",
            "recipient",
            "helo",
            "peer",
            "authenticated",
            "recipients_over",
            "size_over",
        ):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        parts += [f"header.{name}~/{pattern.pattern}/" for name, pattern in self.header]
        return " ".join(parts) or "always"


@dataclass(frozen=True)
class Rule:
    name: str
    stage: str
    action: str = "reply"
    reply: Reply | None = None
    delay: float = 0.0
    probability: float = 1.0
    times: int = 0
    rate: Rate | None = None
    enabled: bool = True
    match: Match = field(default_factory=Match)

    def describe(self) -> str:
        """Everything about the rule, as `mailsink config` lists it."""
        parts = [f"{self.stage}: {self.action}"]
        if self.reply:
            parts.append(f'"{self.reply}"')
        if self.delay:
            parts.append(f"after {self.delay:g}s")
        if self.probability < 1:
            parts.append(f"p={self.probability:g}")
        if self.times:
            parts.append(f"{self.times} time(s)")
        if self.rate:
            parts.append(f"over {self.rate.count} per {self.rate.window:g}s per peer")
        parts.append(f"when {self.match.describe()}")
        if not self.enabled:
            parts.append("(disabled)")
        return " ".join(parts)

    def summary(self) -> str:
        """What the rule does when it fires, in one line (the Faults screen's "Does")."""
        text = self.action
        if self.reply:
            text = str(self.reply).replace("\r\n", " / ")
            if self.action == "disconnect":
                text += ", then disconnect"
        if self.delay:
            text += f" after {self.delay:g}s"
        return text


_RULE_KEYS = {
    "name",
    "stage",
    "reply",
    "action",
    "delay",
    "probability",
    "times",
    "rate",
    "enabled",
    "match",
}
_MATCH_KEYS = set(_CONDITION_STAGES)
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext


def _glob(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise RuleError(key, f'expected a glob pattern such as "*@marketing.test", got {value!r}')
    if value.count("[") != value.count("]"):
        raise RuleError(key, f"{value!r} has an unbalanced [ ] class")
    return value.lower()


def _whole(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RuleError(key, f"expected a whole number >= {minimum}, got {value!r}")
    return value


def _finite(key: str, value: Any) -> None:
    """NaN and infinities (JSON's NaN, TOML's nan and inf) pass every comparison check or
    overflow later: refused here, for every number a rule holds."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RuleError(key, f"expected a finite number, got {value!r}")


def parse_match(data: Any, stage: str) -> Match:
    if not isinstance(data, Mapping):
        raise RuleError("match", "expected a table of conditions")
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"match.{key}"
        if key not in _MATCH_KEYS:
            raise RuleError(dotted, f"unknown condition; allowed: {', '.join(sorted(_MATCH_KEYS))}")
        if stage not in _CONDITION_STAGES[key]:
            allowed = ", ".join(_CONDITION_STAGES[key])
            raise RuleError(dotted, f"cannot be checked at stage {stage!r}; only at: {allowed}")
        if key in ("sender", "recipient", "helo"):
            values[key] = _glob(dotted, value)
        elif key == "peer":
            try:
                values[key] = ipaddress.ip_network(str(value), strict=False)
            except ValueError:
                raise RuleError(dotted, f"{value!r} is not an address or CIDR block") from None
        elif key == "authenticated":
            if not isinstance(value, bool):
                raise RuleError(dotted, f"expected true or false, got {value!r}")
            values[key] = value
        elif key == "recipients_over":
            values[key] = _whole(dotted, value)
        elif key == "size_over":
            _finite(dotted, value)
            try:
                values[key] = parse_size(value)
            except ValueError as error:
                raise RuleError(dotted, str(error)) from None
        else:
            if not isinstance(value, Mapping) or not value:
                raise RuleError(dotted, 'expected a table such as { Subject = "regex" }')
            patterns = []
            for name, pattern in value.items():
                if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
                    # Such a condition would never match, and the rule never fire: say so now.
                    raise RuleError(
                        dotted,
                        f"{name!r} is not a header field name (printable ASCII characters,"
                        " at least one, no colon or space; such as Subject)",
                    )
                if not isinstance(pattern, str):
                    raise RuleError(
                        f"{dotted}.{name}",
                        f'expected a regular expression as a string, such as "^Reset",'
                        f" got {pattern!r}",
                    )
                try:
                    patterns.append((str(name), re.compile(pattern, re.IGNORECASE)))
                except re.error as error:
                    raise RuleError(
                        f"{dotted}.{name}", f"bad regular expression: {error}"
                    ) from None
            values[key] = tuple(patterns)
    return Match(**values)


def parse_rule(data: Any, index: int) -> Rule:
    """One [[fault]] table -> Rule; RuleError names the offending key. `index` (from 0) gives
    a rule without a name its default one, "rule {index + 1}"."""
    if not isinstance(data, Mapping):
        raise RuleError("", "expected a table")
    unknown = set(data) - _RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise RuleError(key, f"unknown key; allowed: {', '.join(sorted(_RULE_KEYS))}")
    name = data.get("name", f"rule {index + 1}")
    if not isinstance(name, str) or not name.strip():
        raise RuleError("name", f"expected a non-empty string, got {name!r}")
    stage = data.get("stage")
    if stage not in STAGES:
        raise RuleError("stage", f"{stage!r} is not a stage; allowed: {', '.join(STAGES)}")
    action = data.get("action", "reply")
    if action not in ACTIONS:
        raise RuleError("action", f"{action!r} is not an action; allowed: {', '.join(ACTIONS)}")
    reply = parse_reply(data["reply"]) if "reply" in data else None
    if action == "reply" and reply is None:
        raise RuleError("reply", 'action "reply" needs a reply such as "550 5.7.1 Not permitted"')
    _finite("delay", data.get("delay"))
    _finite("probability", data.get("probability"))
    try:
        delay = parse_duration(data.get("delay", 0))
    except ValueError as error:
        raise RuleError("delay", str(error)) from None
    if action == "delay" and delay <= 0:
        raise RuleError("delay", 'action "delay" needs a delay above zero such as "30s"')
    probability = data.get("probability", 1.0)
    if (
        isinstance(probability, bool)
        or not isinstance(probability, int | float)
        or not (0.0 <= probability <= 1.0)
    ):
        raise RuleError("probability", f"expected a number from 0 to 1, got {probability!r}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("enabled", f"expected true or false, got {enabled!r}")
    return Rule(
        name=name.strip(),
        stage=stage,
        action=action,
        reply=reply,
        delay=delay,
        probability=float(probability),
        times=_whole("times", data.get("times", 0)),
        rate=parse_rate(data.get("rate", "")),
        enabled=enabled,
        match=parse_match(data.get("match", {}), stage),
    )


def name_problem(name: str, taken: Iterable[str]) -> str | None:
    """Why a config or run-time rule may not be called `name` when the rules in `taken` are in
    force; None when it may. The same words for a [[fault]] table and a run-time rule."""
    if name.startswith(PRESET_PREFIX):
        return f"names starting with {PRESET_PREFIX!r} belong to the TUI's presets"
    if name in taken:
        return f"another rule is already named {name!r}"
    return None
