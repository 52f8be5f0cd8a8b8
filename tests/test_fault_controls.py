"""faults/controls.py: the rules in force while running (presets, config, run-time rules), their
switches, and the gate the SMTP handler asks (FaultControls.consider -> Verdict)."""

from __future__ import annotations

import pytest

from mailsink.config import ConfigError, Settings
from mailsink.config import parse as parse_config
from mailsink.errors import RuleError
from mailsink.events import EventBus, FaultFired, RulesChanged
from mailsink.faults.controls import FaultControls, Verdict
from mailsink.faults.policy import Context
from mailsink.faults.presets import PRESETS

CONFIG_RULES = [
    {"name": "blocked", "stage": "rcpt", "reply": "550 5.7.1 No", "match": {"recipient": "b@*"}},
    {"name": "slow", "stage": "data", "action": "delay", "delay": "10ms"},
]


def settings(rules: list[dict] | None = None, seed: int = 0) -> Settings:
    data: dict = {"fault": rules if rules is not None else CONFIG_RULES}
    if seed:
        data["faults"] = {"seed": seed}
    return parse_config(data)


def controls(rules: list[dict] | None = None, seed: int = 0) -> tuple[FaultControls, EventBus]:
    bus = EventBus()
    return FaultControls(settings(rules, seed), bus), bus


def config_words(table: dict, others: list[dict] = CONFIG_RULES) -> str:
    """What the config file says about `table` as its last [[fault]]."""
    with pytest.raises(ConfigError) as refused:
        parse_config({"fault": [*others, table]})
    return refused.value.reason


BAD_TABLES = [
    {"stage": "nowhere", "reply": "550 x"},
    {"stage": "rcpt"},
    {"stage": "rcpt", "reply": "250 fine"},
    {"stage": "rcpt", "reply": "550 x", "colour": "red"},
    {"stage": "mail", "reply": "550 x", "match": {"recipient": "a@*"}},
    {"stage": "data", "reply": "550 x", "match": {"size_over": "lots"}},
    {"stage": "data", "action": "delay", "delay": "soon"},
    {"stage": "mail", "reply": "550 x", "rate": "ten a minute"},
    {"stage": "mail", "reply": "550 x", "probability": 2},
    {"name": "preset: mine", "stage": "mail", "reply": "550 x"},
    {"name": "blocked", "stage": "mail", "reply": "550 x"},  # a config rule's name
]


@pytest.mark.parametrize("table", BAD_TABLES)
def test_a_run_time_rule_is_refused_in_the_config_files_words(table):
    faults, bus = controls()
    with bus.subscribe(RulesChanged) as changes:
        with pytest.raises(RuleError) as refused:
            faults.add_rule(table)
        assert refused.value.reason == config_words(table)
        assert not changes.pending()
    assert [rule.origin for rule in faults.rules()].count("runtime") == 0


def test_a_run_time_rule_may_not_take_the_name_of_another_one_or_of_a_preset():
    faults, _ = controls()
    faults.add_rule({"name": "mine", "stage": "mail", "reply": "451 later"})
    with pytest.raises(RuleError, match="another rule is already named 'mine'"):
        faults.add_rule({"name": "mine", "stage": "rcpt", "reply": "451 later"})
    with pytest.raises(RuleError) as refused:
        faults.add_rule({"name": PRESETS[0].name, "stage": "rcpt", "reply": "451 later"})
    assert refused.value.key == "name"


def test_rules_are_listed_presets_then_config_then_run_time_with_what_they_do():
    faults, _ = controls()
    added = faults.add_rule(
        {"name": "flaky", "stage": "mail", "action": "disconnect", "reply": "421 4.3.2 Bye"}
    )
    rules = faults.rules()
    assert [rule.origin for rule in rules] == ["preset"] * len(PRESETS) + ["config"] * 2 + [
        "runtime"
    ]
    assert [rule.preset_key for rule in rules[: len(PRESETS)]] == [p.key for p in PRESETS]
    assert not any(rule.enabled for rule in rules[: len(PRESETS)])  # presets start off
    assert rules[-1] == added
    assert added.summary == "421 4.3.2 Bye, then disconnect"
    assert (added.reply, added.delay, added.hits, added.last_fired_at) == (
        "421 4.3.2 Bye",
        0.0,
        0,
        None,
    )
    assert faults.rule("slow").summary == "delay after 0.01s"


UNNAMED = {"stage": "rcpt", "reply": "450 4.7.1 later"}


def test_run_time_rules_without_a_name_are_numbered_on_after_a_removal():
    """A number freed by a removal is not given again: "rule N" by position collided with the
    rule after it, and a valid table was refused."""
    faults, _ = controls([{"stage": "mail", "reply": "550 5.7.1 config"}])  # "rule 1"
    assert [faults.add_rule(UNNAMED).name for _ in range(2)] == [
        "run-time rule 1",
        "run-time rule 2",
    ]
    faults.remove_rule("run-time rule 1")
    assert faults.add_rule(UNNAMED).name == "run-time rule 3"
    faults.add_rule({**UNNAMED, "name": "run-time rule 4"})  # a name given is skipped
    assert faults.add_rule(UNNAMED).name == "run-time rule 5"
    names = [rule.name for rule in faults.rules() if rule.origin != "preset"]
    assert names == [
        "rule 1",
        "run-time rule 2",
        "run-time rule 3",
        "run-time rule 4",
        "run-time rule 5",
    ]


def test_a_reload_bringing_unnamed_config_rules_keeps_an_unnamed_run_time_rule():
    faults, bus = controls([])
    added = faults.add_rule({**UNNAMED, "times": 1})
    faults.set_enabled(added.name, False)
    with bus.subscribe(RulesChanged) as changes:
        faults.apply_settings(settings([{"stage": "mail", "reply": "550 5.7.1 config"}] * 2))
        assert changes.pending() == [RulesChanged("reloaded")]  # nothing removed
    rules = [(r.name, r.origin, r.enabled) for r in faults.rules() if r.origin != "preset"]
    assert rules == [
        ("rule 1", "config", True),
        ("rule 2", "config", True),
        (added.name, "runtime", False),
    ]


def test_remove_rule_takes_only_run_time_rules():
    faults, bus = controls()
    faults.add_rule({"name": "mine", "stage": "mail", "reply": "451 later"})
    with bus.subscribe(RulesChanged) as changes:
        faults.remove_rule("mine")
        assert changes.pending() == [RulesChanged("removed", "mine")]
    assert "mine" not in [rule.name for rule in faults.rules()]
    with pytest.raises(KeyError):
        faults.remove_rule("mine")
    with pytest.raises(RuleError, match="switch it off"):
        faults.remove_rule(PRESETS[0].name)
    with pytest.raises(RuleError, match="edit the config file"):
        faults.remove_rule("blocked")
    assert faults.rule("blocked").enabled


def rcpt(recipient: str) -> Context:
    return Context("rcpt", peer_ip="127.0.0.1", recipient=recipient)


def test_switching_a_rule_off_and_on_keeps_its_hits_and_tells_subscribers():
    faults, bus = controls()
    assert faults.consider("rcpt", rcpt("b@x.test"), 1) is not None
    with bus.subscribe(RulesChanged) as changes:
        faults.set_enabled("blocked", False)
        assert faults.consider("rcpt", rcpt("b@x.test"), 1) is None
        faults.set_enabled("blocked", False)  # no change, nothing to tell
        faults.set_enabled("blocked", True)
        assert faults.toggle_preset("2") is True
        assert faults.toggle_preset("2") is False
        assert changes.pending() == [
            RulesChanged("disabled", "blocked"),
            RulesChanged("enabled", "blocked"),
            RulesChanged("enabled", PRESETS[1].name),
            RulesChanged("disabled", PRESETS[1].name),
        ]
    assert faults.rule("blocked").hits == 1
    assert faults.rule("blocked").last_fired_at is not None
    with pytest.raises(KeyError):
        faults.set_enabled("nobody", True)


def test_switching_keeps_the_sequence_of_a_seeded_probability():
    rules = [{"name": "coin", "stage": "rcpt", "reply": "451 later", "probability": 0.5}]

    def outcomes(faults: FaultControls, switch_at: int | None) -> list[bool]:
        seen = []
        for n in range(30):
            if n == switch_at:
                faults.set_enabled("coin", False)
                faults.set_enabled("coin", True)
            seen.append(faults.consider("rcpt", rcpt(f"{n}@x"), 1) is not None)
        return seen

    plain = outcomes(controls(rules, seed=7)[0], None)
    switched = outcomes(controls(rules, seed=7)[0], 15)
    assert plain == switched
    assert 0 < sum(plain) < 30


def test_consider_answers_with_a_reply_and_publishes_the_firing():
    faults, bus = controls()
    with bus.subscribe(FaultFired) as fired:
        verdict = faults.consider("rcpt", rcpt("b@x.test"), 42)
        (event,) = fired.pending()
    assert verdict == Verdict(
        reply_lines=("550 5.7.1 No",),
        then="carry_on",
        delay=0.0,
        notes=("fault 'blocked' fired at rcpt: reply 550 5.7.1 No",),
        fired=("blocked",),
        action="reply",
    )
    assert verdict.answers and verdict.end_reason is None
    assert (event.session_id, event.rule, event.stage, event.action, event.reply) == (
        42,
        "blocked",
        "rcpt",
        "reply",
        "550 5.7.1 No",
    )
    assert faults.consider("rcpt", rcpt("a@x.test"), 42) is None
    assert faults.consider("mail", Context("mail"), 42) is None


@pytest.mark.parametrize(
    ("table", "then", "lines"),
    [
        ({"action": "disconnect", "reply": "421 4.3.2 Bye"}, "close", ("421 4.3.2 Bye",)),
        ({"action": "disconnect"}, "drop", ()),
        ({"action": "drop"}, "drop", ()),
    ],
)
def test_consider_closes_or_drops(table, then, lines):
    faults, _ = controls([])
    faults.add_rule({"name": "cut", "stage": "mail", **table})
    verdict = faults.consider("mail", Context("mail"), 1)
    assert verdict is not None
    assert (verdict.then, verdict.reply_lines) == (then, lines)
    assert verdict.end_reason == f"fault_{table['action']}"


def test_delays_add_up_and_carry_on_unless_a_later_rule_answers():
    faults, _ = controls([])
    faults.add_rule({"name": "wait", "stage": "data", "action": "delay", "delay": "250ms"})
    verdict = faults.consider("data", Context("data", size=10), 1)
    assert verdict is not None
    assert (verdict.then, verdict.delay, verdict.answers) == ("carry_on", 0.25, False)
    assert verdict.notes == ("fault 'wait' fired at data: delay after 0.25s",)
    faults.add_rule({"name": "full", "stage": "data", "reply": "452 4.3.1 Full", "delay": 0.5})
    verdict = faults.consider("data", Context("data", size=10), 1)
    assert verdict is not None
    assert (verdict.delay, verdict.fired, verdict.reply_lines) == (
        0.75,
        ("wait", "full"),
        ("452 4.3.1 Full",),
    )
    assert verdict.notes[-1] == "fault 'full' fired at data: reply 452 4.3.1 Full after 0.5s"


def test_a_reload_keeps_switches_and_run_time_rules():
    faults, bus = controls()
    faults.toggle_preset("1")
    faults.set_enabled("blocked", False)
    faults.add_rule({"name": "mine", "stage": "mail", "reply": "451 later"})
    edited = [{**CONFIG_RULES[0], "reply": "550 5.7.1 Still no"}, CONFIG_RULES[1]]
    with bus.subscribe(RulesChanged) as changes:
        faults.apply_settings(settings(edited))
        assert changes.pending() == [RulesChanged("reloaded")]
    by_name = {rule.name: rule for rule in faults.rules()}
    assert by_name[PRESETS[0].name].enabled
    assert not by_name["blocked"].enabled and by_name["blocked"].reply == "550 5.7.1 Still no"
    assert by_name["mine"].origin == "runtime"


def test_a_reloaded_config_rule_replaces_a_run_time_rule_of_the_same_name():
    faults, bus = controls()
    faults.add_rule({"name": "later", "stage": "mail", "reply": "451 later", "enabled": False})
    faults.set_enabled("later", True)
    assert faults.rule("later").enabled
    with bus.subscribe(RulesChanged) as changes:
        faults.apply_settings(
            settings(
                [
                    *CONFIG_RULES,
                    {"name": "later", "stage": "rcpt", "reply": "450 x", "enabled": False},
                ]
            )
        )
        assert changes.pending() == [RulesChanged("removed", "later"), RulesChanged("reloaded")]
    # The switch was the run-time rule's: the file's rule is as the file says.
    (later,) = [rule for rule in faults.rules() if rule.name == "later"]
    assert (later.origin, later.stage, later.enabled) == ("config", "rcpt", False)
    with pytest.raises(RuleError):
        faults.remove_rule("later")


def test_a_reload_that_changes_no_rule_tells_nobody():
    faults, bus = controls()
    with bus.subscribe(RulesChanged) as changes:
        faults.apply_settings(settings())
        assert changes.pending() == []


def test_restore_puts_back_the_rules_of_a_snapshot_whole_in_their_order():
    faults, bus = controls()
    faults.add_rule({"name": "first", "stage": "rcpt", "reply": "452 4.2.2 Full"})
    faults.add_rule({"name": "second", "stage": "mail", "reply": "451 4.3.0 Later"})
    faults.set_enabled("blocked", False)
    assert faults.consider("rcpt", rcpt("b@x.test"), 1) is not None  # "first" fires
    before = faults.rules()
    snapshot = faults.snapshot()
    faults.remove_rule("first")  # removed, then a rule of that name that says otherwise
    faults.add_rule({"name": "first", "stage": "rcpt", "reply": "421 4.3.2 Other"})
    faults.remove_rule("second")
    faults.add_rule({"name": "new", "stage": "helo", "reply": "421 4.3.2 Bye"})
    faults.set_enabled("blocked", True)
    faults.set_enabled(PRESETS[0].name, True)
    with bus.subscribe(RulesChanged) as changes:
        faults.restore(snapshot)
        told = changes.pending()
    assert faults.rules() == before  # the first "first" with its hits
    assert set(told) == {
        RulesChanged("removed", "first"),
        RulesChanged("added", "first"),
        RulesChanged("added", "second"),
        RulesChanged("removed", "new"),
        RulesChanged("disabled", "blocked"),
        RulesChanged("disabled", PRESETS[0].name),
    }


def test_restore_keeps_the_names_asked_for_and_an_unchanged_rules_hits():
    faults, _bus = controls()
    faults.add_rule({"name": "kept", "stage": "rcpt", "reply": "452 4.2.2 Full"})
    snapshot = faults.snapshot()
    faults.consider("rcpt", rcpt("a@x.test"), 1)
    faults.add_rule({"name": "older view's", "stage": "mail", "reply": "451 4.3.0 Later"})
    faults.add_rule({"name": "mine", "stage": "mail", "reply": "451 4.3.0 Mine"})
    faults.set_enabled("slow", False)
    faults.restore(snapshot, keep={"older view's", "slow"})
    assert [(s.name, s.enabled) for s in faults.rules()][-4:] == [
        ("blocked", True),
        ("slow", False),
        ("kept", True),
        ("older view's", True),
    ]
    assert faults.rule("kept").hits == 1
    faults.set_enabled("blocked", False)
    faults.add_rule({"name": "other", "stage": "mail", "reply": "451 4.3.0 Other"})
    faults.restore(snapshot, only={"blocked"})  # just that one put back
    assert faults.rule("blocked").enabled and faults.rule("other").enabled
