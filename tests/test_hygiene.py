"""Hygiene findings: what a production server would do with a message (bare LF, long lines,
8-bit without 8BITMIME, malformed Message-ID and Date, MIME encodings the content
contradicts, ...). Each corpus message (tests/hygiene_corpus.py) on its own, Date values
against RFC 5322 3.3, the MIME walk against the stdlib's feedparser, a few messages through a
real server and read back from the store, hostile messages, and the registry of kinds."""

from __future__ import annotations

import asyncio
import contextlib
import email.charset
import email.utils
import random
import re
import smtplib
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.mime.text import MIMEText
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
    RECIPIENT,
    SENDER,
    Case,
    hostile_case,
    mail,
    mime_variants,
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
CRLF = policy.compat32.clone(linesep="\r\n")


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


def test_future_date_is_more_than_a_day_ahead():
    raw = mail(replace={b"Date": b"Date: Sat, 28 Nov 2026 23:10:00 +0000"})
    dated = int(parsedate_to_datetime("Sat, 28 Nov 2026 23:10:00 +0000").timestamp()) * 1000
    envelope = Envelope("app@example.test", ["user@example.test"])
    headers = parse_headers(raw)
    assert hygiene_findings(raw, envelope, headers, dated - 86_400_000) == []  # a day ahead
    (ahead,) = hygiene_findings(raw, envelope, headers, dated - 86_401_000)
    assert ahead.kind == "future_date" and "is 24 hours after the message arrived" in ahead.detail


DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc_5322_seconds(weekday, day, month, year, hour, minute, second, sign, zone) -> object:
    """What RFC 5322 3.3 makes of a date-time, worked out with datetime: its time in seconds
    since the epoch, or "invalid"."""
    try:
        moment = datetime(year, MONTH_NAMES.index(month) + 1, day, hour, minute, tzinfo=UTC)
    except ValueError:
        return "invalid"  # no such day, hour or minute
    if year < 1900 or second > 60 or zone % 100 > 59 or DAY_NAMES[moment.weekday()] != weekday:
        return "invalid"
    offset = (zone // 100 * 60 + zone % 100) * 60 * (1 if sign == "+" else -1)
    return int(moment.timestamp()) + second - offset


def test_dates_are_read_as_rfc_5322_says():
    """Random date-times, near and far from valid ones: each is the time datetime works out,
    or invalid where RFC 5322 3.3 says so (a day the month lacks, 24:00, a zone's minutes
    over 59, a year before 1900, the wrong day of the week); the stdlib's parser agrees on
    every one it can read (it has no leap second, no zone of a day or more)."""
    generator = random.Random(13)
    for _ in range(3000):
        year = generator.choice([generator.randint(1890, 2101), generator.randint(1000, 9999)])
        day, month = generator.randint(0, 32), generator.choice(MONTH_NAMES)
        hour, minute, second = (generator.randint(0, 61) for _ in range(3))
        sign, zone = generator.choice("+-"), generator.choice([0, 100, 530, 2359, 2400, 9959, 1260])
        weekday = generator.choice(DAY_NAMES)
        with contextlib.suppress(ValueError):
            if generator.random() < 0.7:  # mostly the right day, to get past that check
                weekday = DAY_NAMES[datetime(year, MONTH_NAMES.index(month) + 1, day).weekday()]
        value = (
            f"{weekday}, {day} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {sign}{zone:04d}"
        )
        expected = rfc_5322_seconds(weekday, day, month, year, hour, minute, second, sign, zone)
        try:
            got: object = hygiene._date_seconds(value)
        except ValueError:
            got = "invalid"
        assert got == expected, value
        if expected != "invalid" and second < 60 and zone < 2400:
            assert parsedate_to_datetime(value).timestamp() == expected, value


@pytest.mark.parametrize(
    ("value", "kinds"),
    [
        ("Fri, 27 Nov 2026 23:10:00 +0000", []),
        ("27 Nov 2026 23:10 +0000", []),  # no day of the week, no seconds
        ("Fri,27 Nov 2026 23:10:00 +0000", []),
        ("fri, 27 nov 2026 23:10:00 +0000", []),  # names are case-insensitive
        ("Fri, 27 Nov 26 23:10:00 +0000", []),  # RFC 5322 4.3: 2026
        ("Fri, 27 Nov 126 23:10:00 +0000", []),  # RFC 5322 4.3: 2026
        ("Fri, 27 Nov 2026 23:10:00 GMT", []),
        ("Fri, 27 Nov 2026 18:10:00 EST", []),
        ("Fri, 27 Nov 2026 23:10:00 UT", []),
        ("Fri, 27 Nov 2026 23:10:00 Z", []),  # military: as -0000
        ("Fri, 27 Nov 2026 23:10:00 +0000 (UTC)", []),
        ("Fri, 27 Nov 2026 23 : 10 : 00 +0000", []),  # obsolete white space
        ("Fri, 27 Nov 2026 23:10:60 +0000", []),  # a leap second
        ("Sat, 28 Nov 2026 23:10:00 +2400", []),  # any hours of offset: 23:10 UTC the day before
        ("Fri, 27 Nov 2026 23:10:00", ["invalid_date"]),  # no zone
        ("Fri, 27 Nov 2026 23.10.00 +0000", ["invalid_date"]),
        ("Fri, 27 Nov 2026 23:10:00.123 +0000", ["invalid_date"]),
        ("2026-11-27T23:10:00Z", ["invalid_date"]),
        ("Fri, 27 Nov 2026 23:10:00 CET", ["invalid_date"]),
        ("Fri, 27 Nov 2026 23:10:00 UTC", ["invalid_date"]),  # not one of RFC 5322 4.3's
        ("Fri, 27 Nov 2026 23:10:00 J", ["invalid_date"]),  # the one military letter not used
        ("Fri, 27 November 2026 23:10:00 +0000", ["invalid_date"]),
        ("Friday, 27 Nov 2026 23:10:00 +0000", ["invalid_date"]),
        ("Mon, 27 Nov 2026 23:10:00 +0000", ["invalid_date"]),  # 27 Nov 2026 is a Friday
        ("Tue, 31 Nov 2026 23:10:00 +0000", ["invalid_date"]),
        ("Fri, 27 Nov 2026 24:00:00 +0000", ["invalid_date"]),
        ("Fri, 27 Nov 2026 23:10:00 +0060", ["invalid_date"]),
        ("Sat, 27 Nov 0050 23:10:00 +0000", ["invalid_date"]),  # before 1900 (the stdlib: 2050)
        ("Fri, 27 Nov 2026 23:10:00 +0000 (unclosed", ["invalid_date"]),
        ("Sat, 28 Nov 2026 23:11:00 +0000", []),  # a day after arrival, not more
        ("Sat, 28 Nov 2026 23:12:00 +0000", ["future_date"]),
        ("Sat, 28 Nov 2026 18:12:00 -0500", ["future_date"]),
        ("Sun, 29 Nov 2026 00:11:00 +0100", []),
    ],
)
def test_date_values(value, kinds):
    raw = mail(replace={b"Date": b"Date: " + value.encode()})
    found = hygiene_findings(raw, Envelope(SENDER, [RECIPIENT]), parse_headers(raw), RECEIVED_AT)
    assert [f.kind for f in found] == kinds, [f.detail for f in found]


def test_size_mismatch_counts_a_bare_lf_as_the_crlf_it_stands_for():
    raw = mail(body=b"line\n" * 400, eol=b"\n")
    declared = len(raw) + raw.count(b"\n")  # the message as sent: every line in CRLF
    envelope = Envelope("app@example.test", ["user@example.test"], [f"SIZE={declared}"])
    found = hygiene_findings(raw, envelope, parse_headers(raw), RECEIVED_AT)
    assert [f.kind for f in found] == ["bare_lf"]
    envelope = Envelope("app@example.test", ["user@example.test"], [f"SIZE={declared + 500}"])
    found = hygiene_findings(raw, envelope, parse_headers(raw), RECEIVED_AT)
    assert [f.kind for f in found] == ["bare_lf", "size_mismatch"]


def test_a_size_that_is_no_number_keeps_every_other_finding():
    """SIZE=² passes isdigit but not int(), and a SIZE of 5000 digits is past int()'s limit:
    neither may cost the message its other findings."""
    raw = mail(body=b"one\ntwo\r\n")
    for options, kinds in (
        (["SIZE=\u00b2"], ["bare_lf"]),
        (["SIZE=\u0661\u0662"], ["bare_lf"]),  # Arabic-Indic digits: not what RFC 1870 means
        (["SIZE=" + "9" * 5000], ["bare_lf", "size_mismatch"]),
        (["SIZE=" + "0" * 5000 + str(len(raw))], ["bare_lf"]),
    ):
        envelope = Envelope(SENDER, [RECIPIENT], options)
        found = hygiene_findings(raw, envelope, parse_headers(raw), RECEIVED_AT)
        assert [f.kind for f in found] == kinds, [f.detail for f in found]


# ---- the MIME structure, read as the stdlib reads it


def walked(raw: bytes) -> list[tuple[str, str, bool]]:
    message = hygiene._Message(raw, Envelope(SENDER, [RECIPIENT]))
    return [(p.content_type, p.encoding, p.attachment) for p in hygiene._walk(message)]


def stdlib_walked(raw: bytes) -> list[tuple[str, str, bool]]:
    message = message_from_bytes(raw, policy=policy.default)
    return [
        (
            part.get_content_type(),
            str(part.get("content-transfer-encoding", "")).split("(")[0].strip().lower(),
            part.get_content_disposition() == "attachment",
        )
        for part in message.walk()
    ]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_walk_finds_the_parts_the_stdlib_finds(case):
    assert walked(case.raw) == stdlib_walked(case.raw)


def test_the_walk_finds_the_parts_the_stdlib_finds_in_random_mime():
    """Where a header block ends, which boundary a Content-Type gives, which lines delimit:
    as the stdlib's feedparser has them, in 250 random messages (mime_variants)."""
    for raw in mime_variants(13, 250):
        assert walked(raw) == stdlib_walked(raw), raw


def test_a_long_content_type_is_read_in_bounded_time():
    """Message.get_boundary takes time with the square of a value's semicolons (64 RFC 2231
    pieces of 16 000 characters took 7 s): a long value is cut to its boundary parameters."""
    long_name = b"; ".join(b'name*%d="%s"' % (i, b"a;" * 8000) for i in range(64))
    for content_type, boundary in (
        (b"multipart/mixed; " + long_name + b'; boundary="B"', None),  # past 2 KB: not read
        (b'multipart/mixed; name="' + b"a;" * 1100 + b'"; boundary="B"', None),
        (b'multipart/mixed; name="' + b"a;" * 400 + b'"; boundary="B"', b"B"),
        (b'multipart/mixed; boundary="B"' + b";" * 500_000, b"B"),
    ):
        started = time.perf_counter()
        assert hygiene._boundary(b" " + content_type) == boundary
        assert time.perf_counter() - started < 0.1


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
    envelope = Envelope("app@example.test", ["user@example.test"], list(hostile.mail_options))
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


def test_a_message_sent_as_djangos_smtp_backend_sends_it(sink):
    """Django (5.2 and 6.0) gives an 8-bit UTF-8 text part Content-Transfer-Encoding: 8bit and
    sends it with smtplib's sendmail and no MAIL FROM parameter: no BODY=8BITMIME (README)."""
    utf8 = email.charset.Charset("utf-8")
    utf8.body_encoding = None  # Django's utf8_charset: no base64, so 8bit
    message = MIMEText("Grüße aus Köln\n", "plain", utf8)
    message["Subject"], message["From"], message["To"] = "Hallo", SENDER, RECIPIENT
    message["Date"], message["Message-ID"] = email.utils.formatdate(), email.utils.make_msgid()
    assert message["Content-Transfer-Encoding"] == "8bit"
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail(SENDER, [RECIPIENT], message.as_bytes(policy=CRLF))
    (finding,) = [f for f in stored_findings(sink) if f["kind"] in HYGIENE_KINDS]
    assert finding["kind"] == "eight_bit_without_8bitmime"
    assert "no BODY=8BITMIME (RFC 6152)" in finding["detail"]


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
