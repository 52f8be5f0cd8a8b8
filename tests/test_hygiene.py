"""Hygiene findings: what a production server would do with a message (bare LF, long lines,
8-bit without 8BITMIME, malformed Message-ID and Date, MIME encodings the content
contradicts, ...). Each corpus message (tests/hygiene_corpus.py) on its own, a few through a
real server and read back from the store, hostile messages, and the registry of kinds."""

from __future__ import annotations

import asyncio
import random
import re
import smtplib
import time
from datetime import UTC
from email import message_from_bytes, policy
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path

import pytest
from conftest import ROOT, RawClient
from hygiene_corpus import (
    CASES,
    CLEAN_CASES,
    FINDING_CASES,
    HOSTILE,
    HYGIENE_KINDS,
    RECEIVED_AT,
    Case,
    hostile_case,
    mail,
    stdlib_message,
)

from mailsink.mail import hygiene
from mailsink.mail.envelope import Envelope, RefusedRecipient
from mailsink.mail.findings import KINDS, Finding, findings
from mailsink.mail.hygiene import hygiene_findings
from mailsink.mail.parse import parse_headers
from mailsink.store import Reader, Store
from mailsink.store.operations import IncomingMessage, insert_message, insert_session, run_here
from mailsink.testing import RunningSink

LINE = re.compile(r"\bline (\d+)")


def envelope_of(case: Case) -> Envelope:
    return Envelope(case.mail_from, list(case.rcpt_to), list(case.mail_options))


def checked(case: Case) -> list[Finding]:
    return hygiene_findings(case.raw, envelope_of(case), parse_headers(case.raw), case.received_at)


def hygiene_kinds(stored: list[dict]) -> list[str]:
    return [f["kind"] for f in stored if f["kind"] in HYGIENE_KINDS]


# ---- the corpus, one message at a time


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_corpus_message_gets_exactly_its_findings(case):
    found = checked(case)
    assert [f.kind for f in found] == list(case.kinds), [f.detail for f in found]
    assert all(f.severity == KINDS[f.kind][0] for f in found)
    if case.line is not None:  # the offending line (a part's detail also says where it begins)
        (finding,) = found
        assert re.search(rf"\bline {case.line}\b", finding.detail), finding.detail
        assert int(LINE.findall(finding.detail)[-1]) == case.line, finding.detail
    if case.detail is not None:
        assert any(case.detail in f.detail for f in found), [f.detail for f in found]
    if case.clean:  # nor any of the envelope-against-headers findings
        assert findings(envelope_of(case), parse_headers(case.raw)) == []


def test_the_corpus_has_a_message_for_every_hygiene_kind():
    assert {kind for case in FINDING_CASES for kind in case.kinds} == set(HYGIENE_KINDS)
    assert [case for case in CLEAN_CASES if case.clean]


def test_bare_lf_says_what_servers_do_and_counts_the_lines():
    (finding,) = checked(FINDING_CASES[0])
    assert finding.detail.startswith("lines end in a bare LF, not CRLF")
    assert "line 10 first, 1 of 11 lines" in finding.detail
    assert (
        "Postfix 3.9+ normalises or, with smtpd_forbid_bare_newline = reject, refuses with "
        "550 'bare <LF> received'; Gmail and Exchange refuse such mail"
    ) in finding.detail


def test_the_stdlib_message_needs_8bitmime_and_nothing_else():
    """Without BODY=8BITMIME the same message has exactly the one finding that says so."""
    (case,) = [case for case in CLEAN_CASES if case.name.startswith("the stdlib")]
    bare = Case(**{**case.__dict__, "mail_options": ()})
    assert [f.kind for f in checked(bare)] == ["eight_bit_without_8bitmime"]
    binary = Case(**{**case.__dict__, "mail_options": ("BODY=BINARYMIME",)})
    assert checked(binary) == []


def test_future_date_is_more_than_a_day_ahead():
    raw = mail(replace={b"Date": b"Date: Sat, 28 Nov 2026 23:10:00 +0000"})
    dated = int(parsedate_to_datetime("Sat, 28 Nov 2026 23:10:00 +0000").timestamp()) * 1000
    envelope = Envelope("app@example.test", ["user@example.test"])
    headers = parse_headers(raw)
    assert hygiene_findings(raw, envelope, headers, dated - 86_400_000) == []  # a day ahead
    (ahead,) = hygiene_findings(raw, envelope, headers, dated - 86_401_000)
    assert ahead.kind == "future_date" and "is 24 hours after the message arrived" in ahead.detail


def test_dates_read_fast_are_read_as_the_stdlib_reads_them():
    """The fast path for formatdate's form gives parsedate_to_datetime's time, or fails where
    it fails (30 February, 24:00, a zone of a day, year 9999's December, ...)."""
    generator = random.Random(13)
    values = ["Mon, 31 Dec 9999 23:59:59 -2359", "29 Feb 2100 10:00:00 +0000", "1 Jan 0050 1:00"]
    for _ in range(2000):
        day, month = generator.randint(0, 32), generator.choice(["Jan", "Feb", "Apr", "Dec", "Foo"])
        year = generator.choice([generator.randint(1000, 9999), generator.randint(1899, 2101)])
        hour, minute, second = (generator.randint(0, 61) for _ in range(3))
        zone = (
            f"{generator.choice('+-')}{generator.randint(0, 25):02d}{generator.randint(0, 99):02d}"
        )
        values.append(f"Tue, {day} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {zone}")

    def read(function, value):
        try:
            return function(value)
        except Exception:
            return "invalid"

    def stdlib(value):
        moment = parsedate_to_datetime(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    for value in values:
        assert read(hygiene._date_seconds, value) == read(stdlib, value), value


def test_size_mismatch_counts_a_bare_lf_as_the_crlf_it_stands_for():
    raw = mail(body=b"line\n" * 400, eol=b"\n")
    declared = len(raw) + raw.count(b"\n")  # the message as sent: every line in CRLF
    envelope = Envelope("app@example.test", ["user@example.test"], [f"SIZE={declared}"])
    found = hygiene_findings(raw, envelope, parse_headers(raw), RECEIVED_AT)
    assert [f.kind for f in found] == ["bare_lf"]
    envelope = Envelope("app@example.test", ["user@example.test"], [f"SIZE={declared + 500}"])
    found = hygiene_findings(raw, envelope, parse_headers(raw), RECEIVED_AT)
    assert [f.kind for f in found] == ["bare_lf", "size_mismatch"]


# ---- refused recipients beside the hygiene kinds


def test_every_kind_found_is_in_kinds():
    produced = {f.kind for case in CASES for f in checked(case)}
    envelope = Envelope(
        "",
        ["a@x.test", "secret@y.test"],
        rcpt_refused=[RefusedRecipient("full@x.test", [], "452 4.2.2 Mailbox full", "full")],
    )
    headers = parse_headers(b"To: a@x.test, full@x.test, never@x.test\r\nBcc: b@x.test\r\n\r\n")
    produced |= {f.kind for f in findings(envelope, headers)}
    assert produced <= set(KINDS)
    assert {"refused_recipient", "undelivered_header_recipient", "null_sender"} <= produced


def test_readme_findings_table_is_kinds():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Findings\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        kind, severity, meaning = (cell.strip() for cell in row.strip("|").split(" | "))
        table[kind.strip("`")] = (severity, meaning.replace("`", ""))
    assert list(table) == list(KINDS)
    assert table == KINDS


# ---- never raising, never slow


def test_a_check_that_fails_is_a_parse_defect_and_the_others_still_run(monkeypatch):
    def broken(*_: object) -> list[Finding]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(hygiene, "_walk", broken)
    found = checked(FINDING_CASES[0])  # bare LF
    assert [f.kind for f in found] == ["bare_lf", "parse_defect"]
    assert found[1].detail == "the MIME structure check could not finish: RuntimeError: a bug"
    monkeypatch.setattr(hygiene, "_Message", broken)
    assert [f.detail for f in checked(FINDING_CASES[0])] == [
        "the hygiene check could not finish: RuntimeError: a bug"
    ]


def test_a_failing_check_does_not_keep_a_message_from_the_store(tmp_path, monkeypatch):
    path = str(tmp_path / "mail.db")
    store = Store(path)
    asyncio.run(store.run(partial(insert_session, session_id=1, started_at=0, peer="p")))
    store.close()

    def broken(*_: object) -> list[Finding]:
        raise MemoryError("out of it")

    monkeypatch.setattr(hygiene, "_walk", broken)
    case = FINDING_CASES[0]
    message = IncomingMessage(1, envelope_of(case), case.raw, case.received_at)
    stored = run_here(path, insert_message, message)
    assert "parse_defect" in stored.finding_kinds
    with Reader(path) as reader:
        assert reader.get_raw(stored.id) == case.raw


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_messages_are_checked_in_bounded_time(name):
    """Bounded: no check reads a message more than a few times, recurses, or loops per part
    past parse.py's limits. Quadratic work on any of these would take minutes."""
    hostile = hostile_case(name)
    envelope = Envelope("app@example.test", ["user@example.test"])
    headers = parse_headers(hostile.raw)
    started = time.perf_counter()
    found = hygiene_findings(hostile.raw, envelope, headers, RECEIVED_AT)
    elapsed = time.perf_counter() - started
    kinds = {f.kind for f in found}
    assert hostile.kinds <= kinds and "parse_defect" not in kinds, [f.detail for f in found]
    assert elapsed < 2.0
    assert len(found) <= 3 * hygiene.MAX_REPORTED


def test_line_numbers_deep_in_a_message_are_counted_once_from_the_nearest():
    raw = b"x\r\n" * 1000
    message = hygiene._Message(raw, Envelope("a@x.test", []))
    assert [message.line(p) for p in (2999, 0, 1500, 3, 2)] == [1000, 1, 501, 2, 1]


# ---- through a real server, read back from the store


def stored_findings(sink: RunningSink) -> list[dict]:
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        return record.findings


def test_the_stdlib_message_sent_by_smtplib_is_stored_without_a_finding(sink):
    message = message_from_bytes(stdlib_message(), policy=policy.SMTP)
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.send_message(message, mail_options=["BODY=8BITMIME"])
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert "BODY=8BITMIME" in record.envelope.mail_options
        assert any(option.startswith("SIZE=") for option in record.envelope.mail_options)
        assert record.findings == []


SENT = {case.name: case for case in FINDING_CASES}


@pytest.mark.parametrize(
    "name",
    [
        "bare LF in a CRLF client's body",
        "8-bit body without BODY=8BITMIME",
        "raw UTF-8 Subject without SMTPUTF8",
        "an HTML-only message",
        "base64 outside its alphabet",
    ],
)
def test_findings_stored_for_a_message_sent_by_smtplib(sink, name):
    case = SENT[name]
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail(case.mail_from, list(case.rcpt_to), case.raw, list(case.mail_options))
    stored = stored_findings(sink)
    assert hygiene_kinds(stored) == list(case.kinds)
    (finding,) = [f for f in stored if f["kind"] in HYGIENE_KINDS]
    assert finding["severity"] == KINDS[finding["kind"]][0]
    if case.line is not None:
        assert f"line {case.line}" in finding["detail"]


def test_a_hand_typed_bare_lf_session_gets_bare_lf_from_line_1(sink):
    raw = RawClient(sink.host, sink.port)
    for command in (b"EHLO nc", b"MAIL FROM:<app@example.test>", b"RCPT TO:<user@example.test>"):
        raw.send(command + b"\n")
        assert raw.reply()[0].startswith("250")
    raw.send(b"DATA\n")
    assert raw.reply()[0].startswith("354")
    raw.send(mail(eol=b"\n", body=b"Typed by hand.\n") + b".\n")
    assert raw.reply()[0].startswith("250")
    raw.close()
    (finding,) = [f for f in stored_findings(sink) if f["kind"] in HYGIENE_KINDS]
    assert finding["kind"] == "bare_lf" and "line 1 first, 8 of 8 lines" in finding["detail"]


def test_a_declared_size_far_off_is_stored_as_size_mismatch(sink):
    raw = RawClient(sink.host, sink.port)
    raw.command("EHLO client.test")
    assert raw.command("MAIL FROM:<app@example.test> SIZE=20000")[0].startswith("250")
    assert raw.command("RCPT TO:<user@example.test>")[0].startswith("250")
    assert raw.command("DATA")[0].startswith("354")
    assert raw.command(mail() + b".")[0].startswith("250")
    raw.close()
    (finding,) = [f for f in stored_findings(sink) if f["kind"] in HYGIENE_KINDS]
    assert finding["kind"] == "size_mismatch"
    assert f"SIZE=20000 but the message is {len(mail())} octets" in finding["detail"]


def test_a_refused_header_recipient_is_refused_recipient_end_to_end(tmp_path: Path):
    config = tmp_path / "mailsink.toml"
    config.write_text(
        '[[fault]]\nname = "mailbox full"\nstage = "rcpt"\nreply = "452 4.2.2 Mailbox full"\n'
        "times = 1\n"
        '[fault.match]\nrecipient = "full@*"\n'
    )
    body = mail(replace={b"To": b"To: ok@x.test, full@x.test"})
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        for again in (False, True):  # the rule fires once: the second time full@ is accepted
            raw = RawClient(sink.host, sink.port)
            raw.command("EHLO client.test")
            raw.command("MAIL FROM:<app@example.test>")
            assert raw.command("RCPT TO:<ok@x.test>")[0].startswith("250")
            assert raw.command("RCPT TO:<full@x.test>")[0].startswith("250" if again else "452")
            assert raw.command("DATA")[0].startswith("354")
            assert raw.command(body + b".")[0].startswith("250")
            raw.command("QUIT")
            raw.close()
        with sink.reader() as reader:
            accepted, refused = reader.list_messages()
    assert refused.envelope.rcpt_refused[0].address == "full@x.test"
    kinds = [f["kind"] for f in refused.findings]
    assert "undelivered_header_recipient" not in kinds
    (finding,) = [f for f in refused.findings if f["kind"] == "refused_recipient"]
    assert finding["address"] == "full@x.test" and finding["severity"] == "warning"
    assert finding["detail"] == (
        'full@x.test was given in RCPT TO and refused with 452 4.2.2 Mailbox full (rule "mailbox '
        'full"); it did not receive this message'
    )
    assert not [f for f in accepted.findings if "recipient" in f["kind"]]
