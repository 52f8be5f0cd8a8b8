"""The search language's parser (mailsink/query.py): every prefix, negation, quoting, and an
error naming the term for each way a term can be wrong."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from mailsink.errors import QueryError
from mailsink.mail.findings import KINDS
from mailsink.query import (
    PREFIXES,
    WORDS,
    Term,
    describe,
    fold,
    parse_query,
    split_terms,
)

NOW = datetime(2026, 12, 1, 12, 0).astimezone().timestamp()


def term(text: str) -> Term:
    (only,) = parse_query(text, now=NOW).terms
    return only


# One value per prefix, and what it parses to.
VALUES = {
    "from": ("zoe", "zoe"),
    "to": ("bob@x.test", "bob@x.test"),
    "cc": ("team", "team"),
    "bcc": ("audit", "audit"),
    "reply-to": ("support", "support"),
    "addressed": ("x.test", "x.test"),
    "subject": ('"order 1014"', "order 1014"),
    "message-id": ("abc@app", "abc@app"),
    "tag": ("signup", "signup"),
    "is": ("UNREAD", "unread"),
    "has": ("attachments", "attachment"),
    "after": ("2h", int((NOW - 7200) * 1000)),
    "before": ("2026-11-30", int(datetime(2026, 11, 30).astimezone().timestamp() * 1000)),
    "larger": ("1.5M", 1572864),
    "smaller": ("20K", 20480),
    "mailfrom": ("bounce@", "bounce@"),
    "rcpt": ("audit@x.test", "audit@x.test"),
    "helo": ("app-server", "app-server"),
    "peer": ("127.0.0.1", "127.0.0.1"),
    "auth": ("alice", "alice"),
    "finding": ("BCC_HEADER_PRESENT", "bcc_header_present"),
    "status": ("rejected", "rejected"),
    "session": ("42", 42),
    "attachment": ("invoice-*.pdf", "invoice-*.pdf"),
    "header": ("X-Mailer=PHPMailer", ("X-Mailer", "PHPMailer")),
}


def test_every_prefix_is_tested_here():
    assert set(VALUES) == set(PREFIXES)


@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_every_prefix_parses_and_negates(name):
    typed, value = VALUES[name]
    parsed = term(f"{name}:{typed}")
    assert (parsed.prefix, parsed.kind, parsed.value, parsed.negated) == (
        name,
        PREFIXES[name].kind,
        value,
        False,
    )
    for sign in "-!":
        negated = term(f"{sign}{name.upper()}:{typed}")  # prefixes in any case
        assert (negated.prefix, negated.value, negated.negated) == (name, value, True)
    assert term(PREFIXES[name].example).prefix == name  # the README's example parses


def test_words_phrases_and_quoting():
    assert [(t.value, t.phrase) for t in parse_query('track "track it" Zoë').terms] == [
        ("track", False),
        ("track it", True),
        ("Zoë", False),
    ]
    assert term('from:"Zoe Q"').value == "Zoe Q"
    assert term('"from:Zoe Q"').kind == WORDS  # quoted from the start: text, not a prefix
    assert term('"-x"').value == "-x" and not term('"-x"').negated
    assert term('-"track it"').negated
    assert term('"unclosed phrase').value == "unclosed phrase"  # still being typed
    assert term("10:30").kind == WORDS  # a colon after no prefix-like word is text
    assert term("[::1]").kind == WORDS
    assert parse_query('- ! ""').terms == ()
    assert not parse_query("   ")
    assert split_terms('a "b c" d') == [
        ("a", "a", False),
        ("b c", '"b c"', True),
        ("d", "d", False),
    ]


def test_header_without_value_and_dates_in_words():
    assert term("header:X-Tags").value == ("X-Tags", None)
    today = datetime.fromtimestamp(NOW).replace(hour=0, minute=0, second=0, microsecond=0)
    assert term("after:today").value == int(today.timestamp() * 1000)
    assert term("after:yesterday").value == int(today.timestamp() * 1000) - 86_400_000
    assert term("before:2026-11-30T14:00+00:00").value == 1796047200000


def test_status_and_conditions():
    query = parse_query("-status:rejected from:a", now=NOW)
    assert query.status == "accepted"
    assert [t.prefix for t in query.conditions] == ["from"]
    assert parse_query("status:any").status == "any"
    assert parse_query("-status:any").status == "none"
    assert parse_query("track").status == "accepted"
    assert parse_query("track").needs_body and parse_query("attachment:x").needs_body
    assert not parse_query("from:x").needs_body
    assert describe(parse_query('from:x  "a b"')) == 'from:x "a b"'


def test_fold_is_case_and_compatibility_folding():
    assert fold("MÜLLER") == "müller"
    assert fold("Straße") == "strasse"
    assert fold("ﬁle") == "file"


@pytest.mark.parametrize(
    ("text", "term_text", "says"),
    [
        ("from:a foo:bar", "foo:bar", "unknown prefix foo:"),
        ("from:", "from:", "needs a value, as in from:zoe"),
        ("larger:1x", "larger:1x", "takes a size"),
        ("smaller:-2", "smaller:-2", "takes a size"),
        ("after:soon", "after:soon", "takes a date"),
        ("before:2026-13-01", "before:2026-13-01", "takes a date"),
        ("is:maybe", "is:maybe", "takes read, unread or tagged"),
        ("has:stuff", "has:stuff", "takes attachment"),
        ("finding:nope", "finding:nope", "the finding kinds are"),
        ("status:meh", "status:meh", "the statuses are accepted, rejected, any"),
        ("session:0", "session:0", "takes a session number"),
        ("session:x", "session:x", "takes a session number"),
        ("header:=x", "header:=x", "takes Name=value or Name"),
        ("-tag:", "-tag:", "needs a value"),
    ],
)
def test_each_error_names_the_term(text, term_text, says):
    with pytest.raises(QueryError) as caught:
        parse_query(text, now=NOW)
    assert caught.value.term == term_text
    assert str(caught.value).startswith(repr(term_text))
    assert says in str(caught.value)


def test_an_unknown_prefix_lists_the_prefixes_and_too_much_is_refused():
    with pytest.raises(QueryError) as caught:
        parse_query("colour:red")
    assert all(f"{name}:" in str(caught.value) for name in PREFIXES)
    assert '"colour:red"' in str(caught.value)  # how to search for the text itself
    assert KINDS  # (finding kinds come from the findings module)
    with pytest.raises(QueryError, match="at most 64"):
        parse_query(" ".join(["x"] * 65))
    with pytest.raises(QueryError, match="characters long"):
        parse_query("x" * 5000)


def test_the_readme_table_lists_exactly_the_prefixes():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n### Search\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+):` \| `([^`]+)` \|", section, re.MULTILINE)
    assert [name for name, _ in rows] == list(PREFIXES)
    assert [example for _, example in rows] == [p.example for p in PREFIXES.values()]


@pytest.mark.parametrize(
    "text",
    ["session:99999999999999999999999", "after:0001-01-01", "caf\udce9", "from:a\x00b"],
)
def test_values_sqlite_cannot_hold_are_errors_naming_the_term(text):
    with pytest.raises(QueryError) as error:
        parse_query(text)
    assert error.value.term == text


def test_sizes_and_times_beyond_any_message_are_the_largest_sqlite_holds():
    largest = 2**63 - 1
    assert parse_query("larger:99999999999999999999G").terms[0].value == largest
    assert parse_query("larger:" + "9" * 400).terms[0].value == largest  # float('9'*400): inf
    assert parse_query("after:99999999999999999w").terms[0].value == -largest


def test_today_is_local_midnight_on_the_days_the_clocks_change(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        for day in ("2026-03-29", "2026-10-25"):  # spring forward, fall back
            noon = datetime.fromisoformat(f"{day} 12:00").timestamp()
            today = parse_query("after:today", now=noon).terms[0].value
            assert datetime.fromtimestamp(today / 1000) == datetime.fromisoformat(day)
            yesterday = parse_query("after:yesterday", now=noon).terms[0].value
            assert (today - yesterday) / 3_600_000 in (23, 24, 25)
    finally:
        monkeypatch.undo()
        time.tzset()
