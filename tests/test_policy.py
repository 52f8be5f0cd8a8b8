"""faults/rules.py and faults/policy.py on their own: rule parsing errors, matching, seeded
decisions, times, rates."""

from __future__ import annotations

import pytest

from mailsink.config import ConfigError
from mailsink.config import parse as parse_config
from mailsink.errors import RuleError
from mailsink.faults.policy import Context, Policy
from mailsink.faults.rules import Reply, parse_reply, parse_rule


def rule(**data):
    return parse_rule(data, 0)


def test_reply_lines_single_and_multi_line():
    assert parse_reply("550 5.7.1 Sender not permitted").lines() == [
        "550 5.7.1 Sender not permitted"
    ]
    assert parse_reply("421 Bye").lines() == ["421 Bye"]
    assert Reply(452, "4.3.1", "first\nsecond").lines() == ["452-4.3.1 first", "452 4.3.1 second"]


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        (
            {"stage": "bogus", "reply": "550 x"},
            "stage",
            "allowed: connect, helo, auth, mail, rcpt, data",
        ),
        ({"stage": "mail", "reply": "250 2.0.0 fine"}, "reply", "not a failure; use 400-599"),
        ({"stage": "mail", "reply": "600 nope"}, "reply", "three-digit"),
        ({"stage": "mail", "reply": "550 4.7.1 mixed"}, "reply", "does not agree"),
        ({"stage": "mail"}, "reply", "needs a reply"),
        ({"stage": "mail", "reply": "550 x", "probability": 1.5}, "probability", "from 0 to 1"),
        ({"stage": "mail", "reply": "550 x", "probability": -0.1}, "probability", "from 0 to 1"),
        ({"stage": "mail", "reply": "550 x", "action": "explode"}, "action", "allowed: reply"),
        ({"stage": "mail", "action": "delay"}, "delay", "above zero"),
        ({"stage": "mail", "reply": "550 x", "rate": "lots"}, "rate", "COUNT/WINDOW"),
        ({"stage": "mail", "reply": "550 x", "times": -1}, "times", ">= 0"),
        ({"stage": "mail", "reply": "550 x", "colour": "red"}, "colour", "unknown key"),
        (
            {"stage": "mail", "reply": "550 x", "match": {"peer": "300.1.1.1/8"}},
            "match.peer",
            "CIDR",
        ),
        (
            {"stage": "mail", "reply": "550 x", "match": {"sender": "[abc"}},
            "match.sender",
            "unbalanced",
        ),
        (
            {"stage": "data", "reply": "550 x", "match": {"header": {"Subject": "(unclosed"}}},
            "match.header.Subject",
            "bad regular expression",
        ),
        (
            {"stage": "mail", "reply": "550 x", "match": {"recipient": "a@*"}},
            "match.recipient",
            "only at: rcpt, data",
        ),
        (
            {"stage": "mail", "reply": "550 x", "match": {"shoe_size": 9}},
            "match.shoe_size",
            "unknown",
        ),
    ],
)
def test_malformed_rules_name_the_key(data, key, text):
    with pytest.raises(RuleError) as caught:
        rule(**data)
    assert caught.value.key == key
    assert text in str(caught.value)


def test_config_errors_for_rules_carry_file_line_and_key(tmp_path):
    text = (
        '[[fault]]\nstage = "mail"\nreply = "550 x"\n\n[[fault]]\nname = "second"\nstage = "rcpt"\n'
    )
    text += 'reply = "550 5.7.1 no"\n[fault.match]\npeer = "not-a-network"\n'
    import tomllib

    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), tmp_path / "f.toml", text)
    assert str(caught.value).startswith(f"{tmp_path / 'f.toml'}:10: fault[2].match.peer: ")


def test_duplicate_rule_names_are_refused(tmp_path):
    data = {"fault": [{"name": "a", "stage": "mail", "reply": "550 x"}] * 2}
    with pytest.raises(ConfigError, match=r"fault\[2\]\.name: another rule is already named 'a'"):
        parse_config(data, tmp_path / "f.toml")


def test_first_rule_in_order_that_fires_answers():
    first = rule(name="one", stage="rcpt", reply="550 5.7.1 one", match={"recipient": "*@x.test"})
    second = rule(name="two", stage="rcpt", reply="450 4.2.0 two")
    policy = Policy([first, second])
    assert policy.decide(Context("rcpt", recipient="a@X.TEST")).answer is first
    assert policy.decide(Context("rcpt", recipient="a@y.test")).answer is second
    assert policy.decide(Context("mail", sender="a@x.test")) is None
    assert policy.stats["one"].hits == 1 and policy.stats["two"].hits == 1


def test_delay_rules_add_up_and_let_a_later_rule_answer():
    slow = rule(name="slow", stage="data", action="delay", delay="1s")
    slower = rule(name="slower", stage="data", action="delay", delay="500ms")
    refuse = rule(name="refuse", stage="data", reply="554 5.6.0 no")
    decision = Policy([slow, slower, refuse]).decide(Context("data", size=10))
    assert decision.delay == 1.5
    assert [r.name for r in decision.fired] == ["slow", "slower", "refuse"]
    assert decision.answer is refuse
    only_delay = Policy([slow]).decide(Context("data", size=10))
    assert only_delay.answer is None and only_delay.delay == 1.0


def test_times_fires_n_times_then_lets_traffic_through():
    flaky = rule(name="flaky", stage="data", reply="451 4.3.0 later", times=2)
    policy = Policy([flaky])
    outcomes = [policy.decide(Context("data")) is not None for _ in range(4)]
    assert outcomes == [True, True, False, False]


def test_rate_is_a_sliding_window_per_peer():
    now = [1000.0]
    limit = rule(name="rate", stage="mail", reply="450 4.7.1 slow down", rate="3/1m")
    policy = Policy([limit], clock=lambda: now[0])

    def send(peer):
        return policy.decide(Context("mail", peer_ip=peer, sender="a@x.test")) is not None

    assert [send("10.0.0.1") for _ in range(5)] == [False, False, False, True, True]
    assert send("10.0.0.2") is False  # another peer has its own window
    now[0] += 61
    assert send("10.0.0.1") is False  # the window has moved on


def test_same_seed_and_traffic_give_the_same_decisions():
    rules = [rule(name="coin", stage="rcpt", reply="450 4.7.1 maybe", probability=0.5)]
    runs = []
    for _ in range(2):
        policy = Policy(list(rules), seed=7)
        runs.append(
            [policy.decide(Context("rcpt", recipient=f"{n}@x")) is not None for n in range(40)]
        )
    assert runs[0] == runs[1]
    assert 5 < sum(runs[0]) < 35  # a real coin, not always or never
    other = Policy(list(rules), seed=8)
    assert [
        other.decide(Context("rcpt", recipient=f"{n}@x")) is not None for n in range(40)
    ] != runs[0]


def test_match_conditions():
    def fires(match, **context):
        stage = context.pop("stage", "data")
        return (
            Policy([rule(stage=stage, reply="550 x", match=match)]).decide(
                Context(stage, **context)
            )
            is not None
        )

    assert fires({"peer": "127.0.0.0/8"}, peer_ip="127.0.0.5")
    assert not fires({"peer": "10.0.0.0/8"}, peer_ip="127.0.0.5")
    assert fires({"helo": "*.local"}, helo="app.LOCAL")
    assert fires({"authenticated": False}, authenticated=False)
    assert not fires({"authenticated": True}, authenticated=False)
    assert fires({"size_over": "1KiB"}, size=2000)
    assert not fires({"size_over": "1KiB"}, size=1000)
    assert not fires({"size_over": "1KiB"}, stage="mail", size=None)  # no SIZE parameter
    assert fires({"recipient": "vip@*"}, recipients=("a@x", "vip@y"))
    assert fires({"header": {"Subject": "^invoice"}}, headers={"subject": "Invoice #4"})
    assert not fires({"header": {"Subject": "^invoice"}}, headers={"subject": "Re: Invoice"})
    assert not fires({"header": {"X-Missing": "."}}, headers={"subject": "x"})
    assert fires({"recipients_over": 2}, stage="rcpt", recipients=("a", "b"))
    assert not fires({"recipients_over": 2}, stage="rcpt", recipients=("a",))


def test_reload_keeps_counters_of_unchanged_rules_only():
    kept = rule(name="kept", stage="data", reply="451 4.3.0 x", times=1)
    edited = rule(name="edited", stage="rcpt", reply="451 4.3.0 y", times=1)
    old = Policy([kept, edited])
    old.decide(Context("data"))
    old.decide(Context("rcpt"))
    new = Policy([kept, rule(name="edited", stage="rcpt", reply="452 4.3.1 z", times=1)])
    new.carry_over(old)
    assert new.stats["kept"].hits == 1 and new.decide(Context("data")) is None
    assert new.stats["edited"].hits == 0 and new.decide(Context("rcpt")) is not None
