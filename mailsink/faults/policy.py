"""Deciding: which fault rules fire for one reply, with their state (hits, `times` budgets,
rate windows).

Pure: no I/O, no asyncio. The clock and the random source are injected, so a seeded policy makes the
same decisions for the same traffic, and tests can drive time. The rules themselves and their
parsing are in mailsink.faults.rules; the run-time controls around a policy (toggles, presets,
run-time rules, the gate the SMTP handler asks) in mailsink.faults.controls.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailsink.faults.rules import Match, Rule


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
    last_fired: float | None = None  # wall-clock time, in seconds


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

    def hits(self, name: str) -> int:
        """How often the rule called `name` has fired (KeyError if there is none)."""
        return self.stats[name].hits

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
