"""The fault controls: the rules in force while mailsink runs, and the gate that decides.

Every injected fault is decided here and nowhere else. The SMTP handler (mailsink.smtp.handler)
asks `consider` before each reply it may refuse; the answer is a Verdict (what to say, then carry
on, close or drop, after how long a wait), which the handler has the connection carry out.

The rules in force are, in the order they are tried: the presets (mailsink.faults.presets, off
until switched on), the config file's [[fault]] tables, then run-time rules added while running
(the HTTP API, test fixtures). Switching any of them on or off, and adding or removing a run-time
rule, lasts until mailsink stops: a config reload keeps them. Each change is told on the event
bus as RulesChanged, each firing as FaultFired.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailsink.clock import now_ms
from mailsink.config import Settings
from mailsink.errors import RuleError
from mailsink.events import EventBus, FaultFired, RulesChanged
from mailsink.faults.policy import Context, Policy, RuleStats
from mailsink.faults.presets import BY_KEY, PRESETS, preset_rules
from mailsink.faults.rules import Rule, name_problem, parse_rule

log = logging.getLogger("mailsink.smtp")

Origin = Literal["preset", "config", "runtime"]
Then = Literal["carry_on", "close", "drop"]

_PRESET_KEYS = {preset.name: preset.key for preset in PRESETS}


@dataclass(frozen=True, slots=True)
class RuleState:
    """One rule in force, as the Faults screen and the HTTP API show it."""

    name: str
    stage: str
    action: str
    reply: str | None  # "550 5.7.1 Not permitted" (lines of a multi-line reply joined by " | ")
    delay: float  # seconds
    enabled: bool
    origin: Origin
    preset_key: str | None  # the key that toggles a preset on the Faults screen
    hits: int
    last_fired_at: int | None  # ms since the epoch
    summary: str  # what it does when it fires, in one line


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules that fired for one reply want done: wait `delay` seconds, then send
    `reply_lines` (exactly as configured; may be none), then carry on, close the connection, or
    (`drop`) close it without a word. `notes` go into the session's transcript."""

    reply_lines: tuple[str, ...]
    then: Then
    delay: float
    notes: tuple[str, ...]
    fired: tuple[str, ...]  # the names of the rules that fired, in the order tried
    action: str  # the answering rule's action (reply, disconnect, drop); "delay" if none answers

    @property
    def answers(self) -> bool:
        """Whether the verdict takes the place of the normal reply (else: only a wait)."""
        return self.action != "delay"

    @property
    def end_reason(self) -> str | None:
        """The session's end reason, when the verdict ends it."""
        return None if self.then == "carry_on" else f"fault_{self.action}"


@dataclass(frozen=True, slots=True)
class RulesSnapshot:
    """The rules in force at one moment, as `FaultControls.restore` puts them back: the run-time
    rules (whole, in their order: a Mailpit chaos PUT replaces a rule under the same name) and
    every switch set while running (presets', config rules', run-time rules')."""

    runtime: tuple[Rule, ...]
    toggles: Mapping[str, bool] = field(default_factory=dict)
    # The run-time rules' counts, as they went on until a rule was removed: one put back has
    # its hits (and `times` budget) again.
    stats: Mapping[str, RuleStats] = field(default_factory=dict)


class FaultControls:
    def __init__(self, settings: Settings, events: EventBus) -> None:
        self._settings = settings
        self._events = events
        # Switched on or off while running (by name), kept over config reloads.
        self._toggles: dict[str, bool] = {}
        self._runtime: list[Rule] = []  # in the order they were added
        self._unnamed = 0  # the last number in a "run-time rule N" name given
        self.source: Path | None = settings.source
        self._policy = Policy(self._in_force(), settings.faults.seed)

    @property
    def policy(self) -> Policy:
        """The policy deciding now; replaced (not changed) by every change of the rules."""
        return self._policy

    # ---- reading

    def rules(self) -> list[RuleState]:
        """Every rule in force, in the order they are tried: presets, config, run-time."""
        config = {rule.name for rule in self._settings.rules}
        states = []
        for rule in self._policy.rules:
            stats = self._policy.stats[rule.name]
            key = _PRESET_KEYS.get(rule.name)
            origin: Origin = "preset" if key else "config" if rule.name in config else "runtime"
            last = stats.last_fired
            states.append(
                RuleState(
                    name=rule.name,
                    stage=rule.stage,
                    action=rule.action,
                    reply=str(rule.reply) if rule.reply else None,
                    delay=rule.delay,
                    enabled=rule.enabled,
                    origin=origin,
                    preset_key=key,
                    hits=stats.hits,
                    last_fired_at=round(last * 1000) if last is not None else None,
                    summary=rule.summary(),
                )
            )
        return states

    def rule(self, name: str) -> RuleState:
        """One rule in force; KeyError if there is none of that name."""
        for state in self.rules():
            if state.name == name:
                return state
        raise KeyError(name)

    # ---- changing

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a rule on or off from the next SMTP command on. Its hit count stays, and so
        does the sequence of a seeded `probability`. KeyError if there is no such rule."""
        current = next((rule for rule in self._policy.rules if rule.name == name), None)
        if current is None:
            raise KeyError(name)
        self._toggles[name] = enabled
        if current.enabled == enabled:
            return
        self._new_policy(same_random=True)
        self._events.publish(RulesChanged("enabled" if enabled else "disabled", name))

    def toggle_preset(self, key: str) -> bool:
        """Switch a preset (mailsink.faults.presets, by its key) on or off; True when it is now
        on. KeyError for a key that is no preset's."""
        name = BY_KEY[key].name
        enabled = not next(rule.enabled for rule in self._policy.rules if rule.name == name)
        self.set_enabled(name, enabled)
        return enabled

    def add_rule(self, table: Mapping[str, Any]) -> RuleState:
        """Add a rule while running, tried after every other one. `table` is what a [[fault]]
        table in the config file holds, and is checked the same way: RuleError (naming the key)
        for anything the config file would refuse, a name another rule in force has included.
        A rule without a name is called "run-time rule N", N one more than the last such name
        given (never a name given before, nor one in force)."""
        if "name" not in table:
            # Not "rule N" as in the config file: that name is the config's Nth unnamed rule,
            # which a reload may bring, and a removal would free a number still in use.
            taken = {rule.name for rule in self._policy.rules}
            while True:
                self._unnamed += 1
                name = f"run-time rule {self._unnamed}"
                if name not in taken:
                    break
            table = {**table, "name": name}
        rule = parse_rule(table, 0)
        problem = name_problem(rule.name, (r.name for r in self._policy.rules))
        if problem:
            raise RuleError("name", problem)
        self._runtime.append(rule)
        self._new_policy(same_random=True)
        self._events.publish(RulesChanged("added", rule.name))
        return self.rule(rule.name)

    def remove_rule(self, name: str) -> None:
        """Remove a run-time rule. KeyError if there is no rule of that name; RuleError for a
        preset or a config file's rule, which are switched off instead."""
        if name in _PRESET_KEYS:
            raise RuleError("name", f"{name!r} is a preset: switch it off instead")
        if any(rule.name == name for rule in self._settings.rules):
            where = f" ({self.source})" if self.source else ""
            raise RuleError(
                "name",
                f"{name!r} comes from the config file{where}: switch it off, or edit the"
                " config file to remove it",
            )
        if not any(rule.name == name for rule in self._runtime):
            raise KeyError(name)
        self._runtime = [rule for rule in self._runtime if rule.name != name]
        self._toggles.pop(name, None)
        self._new_policy(same_random=True)
        self._events.publish(RulesChanged("removed", name))

    def snapshot(self) -> RulesSnapshot:
        """The rules in force now, for `restore`."""
        stats = {rule.name: self._policy.stats[rule.name] for rule in self._runtime}
        return RulesSnapshot(tuple(self._runtime), dict(self._toggles), stats)

    def restore(
        self,
        snapshot: RulesSnapshot,
        *,
        keep: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> None:
        """Put the rules back as `snapshot` has them: run-time rules added since removed, those
        removed or replaced since put back (in the snapshot's order), every switch as it was.
        The names in `keep` stay as they are now (rule and switch), and with `only` just those
        names are put back. Rules unchanged across keep their hits (as a switch does); each
        difference is published as a RulesChanged ("removed", "added", "enabled", "disabled")."""
        config = {rule.name for rule in (*preset_rules(), *self._settings.rules)}

        def restored(name: str) -> bool:
            return name not in keep and (only is None or name in only)

        now = {rule.name: rule for rule in self._runtime}
        then = {rule.name: rule for rule in snapshot.runtime}
        runtime = []
        for rule in snapshot.runtime:
            if rule.name in config:  # a reload's config took the name since: the file wins
                continue
            if restored(rule.name):
                runtime.append(rule)
            elif rule.name in now:
                runtime.append(now[rule.name])
        runtime += [r for r in self._runtime if r.name not in then and not restored(r.name)]
        names = config | {rule.name for rule in runtime}
        toggles = {}
        for name in names:
            source = snapshot.toggles if restored(name) else self._toggles
            if name in source:
                toggles[name] = source[name]

        def same(one: Rule, other: Rule) -> bool:  # (a switch is not a change of the rule)
            return dataclasses.replace(one, enabled=other.enabled) == other

        before = {rule.name: rule for rule in self._policy.rules}
        self._runtime, self._toggles = runtime, toggles
        self._new_policy(same_random=True)
        after = {rule.name: rule for rule in self._policy.rules}
        for rule in runtime:  # one removed or replaced since, put back: its counts again
            was = before.get(rule.name)
            if (
                restored(rule.name)
                and rule.name in snapshot.stats
                and (was is None or not same(was, rule))
            ):
                self._policy.stats[rule.name] = snapshot.stats[rule.name]
        for name, rule in before.items():
            if name not in after or not same(after[name], rule):
                self._events.publish(RulesChanged("removed", name))
        for name, rule in after.items():
            if name not in before or not same(before[name], rule):
                self._events.publish(RulesChanged("added", name))
            elif before[name].enabled != rule.enabled:
                self._events.publish(RulesChanged("enabled" if rule.enabled else "disabled", name))

    def reset(self) -> None:
        """Zero every rule's hits, `times` budgets and rate windows, and start a seeded
        `probability` sequence again from its seed (as at start-up), from the next SMTP command
        on. The rules and their switches stay."""
        # Not _new_policy: it carries over the counts of unchanged rules, which must go here.
        self._policy = Policy(self._in_force(), self._settings.faults.seed)
        self._events.publish(RulesChanged("reset"))

    def apply_settings(self, settings: Settings) -> None:
        """A reloaded config: its rules replace the old config rules, from each connection's
        next command. Switches and run-time rules stay. A run-time rule whose name the new
        config now uses is removed (the file wins: it is what the user edits and keeps), with
        a warning and a RulesChanged("removed") before the RulesChanged("reloaded")."""
        old = self._settings
        self._settings = settings
        self.source = settings.source
        config = {rule.name for rule in settings.rules}
        displaced = [rule.name for rule in self._runtime if rule.name in config]
        for name in displaced:
            log.warning(
                "fault rule %r from the reloaded config replaces the run-time rule of that name",
                name,
            )
            self._toggles.pop(name, None)  # it switched the run-time rule, not the file's
        self._runtime = [rule for rule in self._runtime if rule.name not in config]
        names = {rule.name for rule in (*preset_rules(), *settings.rules, *self._runtime)}
        self._toggles = {name: on for name, on in self._toggles.items() if name in names}
        if displaced or settings.rules != old.rules or settings.faults.seed != old.faults.seed:
            self._new_policy()
            for name in displaced:
                self._events.publish(RulesChanged("removed", name))
            self._events.publish(RulesChanged("reloaded"))

    def _in_force(self) -> list[Rule]:
        """Presets (off unless switched on), the config's rules, run-time rules; the switches
        applied."""
        return [
            dataclasses.replace(rule, enabled=self._toggles.get(rule.name, rule.enabled))
            for rule in (*preset_rules(), *self._settings.rules, *self._runtime)
        ]

    def _new_policy(self, *, same_random: bool = False) -> None:
        policy = Policy(self._in_force(), self._settings.faults.seed)
        policy.carry_over(self._policy, same_random=same_random)
        self._policy = policy

    # ---- the gate

    def active_at(self, stage: str) -> bool:
        """Whether any rule switched on is for `stage`: when none is (nearly always), the
        caller need not build a Context."""
        return stage in self._policy.stages

    def consider(self, stage: str, context: Context, session_id: int) -> Verdict | None:
        """Which rules fire for the reply about to be sent at `stage` (context.stage) of
        session `session_id`, and what is to be done; None when none fires. Hits are counted
        and each firing is published (FaultFired) and logged."""
        policy = self._policy
        if stage not in policy.stages:
            return None
        decision = policy.decide(context)
        if decision is None:
            return None
        answer = decision.answer
        notes = []
        wanted = self._events.wants(FaultFired)
        for rule in decision.fired:
            reply = f"{rule.reply}" if rule.reply and rule is answer else None
            delay = f" after {rule.delay:g}s" if rule.delay else ""
            notes.append(
                f"fault {rule.name!r} fired at {stage}: {rule.action}"
                f"{f' {reply}' if reply else ''}{delay}"
            )
            log.info(
                "session %s: fault %r fired at %s (%s)", session_id, rule.name, stage, rule.action
            )
            if wanted:
                self._events.publish(
                    FaultFired(session_id, rule.name, stage, rule.action, reply, now_ms())
                )
        lines = tuple(decision.reply_lines)
        then: Then = "carry_on"
        if answer is not None:
            if answer.action == "drop" or (answer.action == "disconnect" and not lines):
                then = "drop"
            elif answer.action == "disconnect":
                then = "close"
        return Verdict(
            reply_lines=lines,
            then=then,
            delay=decision.delay,
            notes=tuple(notes),
            fired=tuple(rule.name for rule in decision.fired),
            action=answer.action if answer is not None else "delay",
        )
