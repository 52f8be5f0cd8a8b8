"""Fault rules: parsing (with the key named in every error), matching, and deciding.

Pure: no I/O, no asyncio. The clock and the random source are injected, so a seeded policy makes the
same decisions for the same traffic, and tests can drive time.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailsink.errors import RuleError

STAGES = ("connect", "helo", "auth", "mail", "rcpt", "data")
ACTIONS = ("reply", "disconnect", "drop", "delay")

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
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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
    if value in ("", None):
        return None
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise RuleError("rate", f'{value!r} is not a rate; use COUNT/WINDOW such as "10/1m"')
    window = float(match.group(2) or 1) * _UNIT_SECONDS[match.group(3)]
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


def parse_match(data: Any, stage: str, parse_size: Callable[[Any], int]) -> Match:
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
            try:
                values[key] = parse_size(value)
            except ValueError as error:
                raise RuleError(dotted, str(error)) from None
        else:
            if not isinstance(value, Mapping) or not value:
                raise RuleError(dotted, 'expected a table such as { Subject = "regex" }')
            patterns = []
            for name, pattern in value.items():
                try:
                    patterns.append((str(name), re.compile(str(pattern), re.IGNORECASE)))
                except re.error as error:
                    raise RuleError(
                        f"{dotted}.{name}", f"bad regular expression: {error}"
                    ) from None
            values[key] = tuple(patterns)
    return Match(**values)


def parse_rule(
    data: Any, index: int, parse_size: Callable[[Any], int], parse_duration: Callable[[Any], float]
) -> Rule:
    """One [[fault]] table -> Rule; RuleError names the offending key."""
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
        match=parse_match(data.get("match", {}), stage, parse_size),
    )


# ---- deciding -----------------------------------------------------------------------------------


@dataclass
class Context:
    """What is known when a reply is about to be sent."""

    stage: str
    peer_ip: str = ""
    helo: str | None = None
    sender: str | None = None
    recipient: str | None = None
    recipients: tuple[str, ...] = ()  # accepted so far (data: all of them)
    authenticated: bool = False
    size: int | None = None
    headers: Mapping[str, str] | None = None  # data stage, only when a rule needs them


@dataclass(frozen=True)
class Decision:
    """The rules that fired for one reply: waits to make, then at most one answer."""

    delay: float
    fired: tuple[Rule, ...]
    answer: Rule | None  # reply / disconnect / drop; None = carry on after the delay

    @property
    def reply_lines(self) -> list[str]:
        return self.answer.reply.lines() if self.answer and self.answer.reply else []


@dataclass
class RuleStats:
    hits: int = 0
    last_fired: float | None = None  # wall-clock time


def _glob_match(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatch.fnmatchcase(value.lower(), pattern)


class Policy:
    """The rules in file order plus their state (hits, `times` budgets, rate windows)."""

    def __init__(
        self,
        rules: list[Rule],
        seed: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.rules = rules
        self.seed = seed
        self._random = random.Random(seed if seed else int.from_bytes(os.urandom(8), "big"))
        self._clock = clock
        self._wall_clock = wall_clock
        self.stats: dict[str, RuleStats] = {rule.name: RuleStats() for rule in rules}
        self.stages = frozenset(rule.stage for rule in rules if rule.enabled)
        self._windows: dict[tuple[str, str], deque[float]] = {}

    def carry_over(self, previous: Policy, *, same_random: bool = False) -> None:
        """Keep hit counts and rate windows of rules that a reload left unchanged; with
        `same_random` (a rule switched on or off, not a reload) also the random sequence."""
        if same_random and previous.seed == self.seed:
            self._random = previous._random
        # Switching a rule off and on again is not a change: its counts stay.
        before = [dataclasses.replace(r, enabled=True) for r in previous.rules]
        unchanged = {r.name for r in self.rules if dataclasses.replace(r, enabled=True) in before}
        for name in unchanged:
            self.stats[name] = previous.stats[name]
        self._windows = {k: v for k, v in previous._windows.items() if k[0] in unchanged}

    def needs_headers(self) -> bool:
        return any(r.enabled and r.stage == "data" and r.match.header for r in self.rules)

    def decide(self, context: Context) -> Decision | None:
        delay = 0.0
        fired: list[Rule] = []
        for rule in self.rules:
            if not rule.enabled or rule.stage != context.stage:
                continue
            if not self._matches(rule.match, context):
                continue
            if rule.times and self.stats[rule.name].hits >= rule.times:
                continue
            if rule.rate and not self._over_rate(rule, context.peer_ip):
                continue
            if rule.probability < 1.0 and self._random.random() >= rule.probability:
                continue
            stats = self.stats[rule.name]
            stats.hits += 1
            stats.last_fired = self._wall_clock()
            fired.append(rule)
            delay += rule.delay
            if rule.action != "delay":
                return Decision(delay, tuple(fired), rule)
        return Decision(delay, tuple(fired), None) if fired else None

    def _over_rate(self, rule: Rule, peer: str) -> bool:
        """Count this event for the peer; True once more than `count` fall in the window."""
        assert rule.rate is not None
        now = self._clock()
        window = self._windows.setdefault((rule.name, peer), deque())
        window.append(now)
        while window and window[0] <= now - rule.rate.window:
            window.popleft()
        return len(window) > rule.rate.count

    @staticmethod
    def _matches(match: Match, context: Context) -> bool:
        if match.sender is not None and not _glob_match(match.sender, context.sender):
            return False
        if match.recipient is not None:
            candidates = (
                [context.recipient] if context.stage == "rcpt" else list(context.recipients)
            )
            if not any(_glob_match(match.recipient, c) for c in candidates):
                return False
        if match.helo is not None and not _glob_match(match.helo, context.helo):
            return False
        if match.peer is not None:
            try:
                if ipaddress.ip_address(context.peer_ip) not in match.peer:
                    return False
            except ValueError:
                return False
        if match.authenticated is not None and match.authenticated != context.authenticated:
            return False
        if match.recipients_over is not None and len(context.recipients) < match.recipients_over:
            return False
        if match.size_over is not None and (
            context.size is None or context.size <= match.size_over
        ):
            return False
        if match.header:
            headers = context.headers or {}
            for name, pattern in match.header:
                value = headers.get(name.lower())
                if value is None or not pattern.search(value):
                    return False
        return True
