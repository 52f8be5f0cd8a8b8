"""Message parsing and envelope-vs-header findings; hostile and broken messages."""

from __future__ import annotations

import json
import smtplib
import time

import pytest
from conftest import message, run_cli

from mailsink.mail.addresses import syntax_error
from mailsink.mail.envelope import Envelope, RefusedRecipient
from mailsink.mail.findings import findings
from mailsink.mail.parse import parse_headers, parse_message
from mailsink.text import visible, visible_block


def found(mail_from: str, rcpt_to: list[str], headers: bytes) -> dict[str, list]:
    result: dict[str, list] = {}
    for finding in findings(Envelope(mail_from, rcpt_to), parse_headers(headers + b"\r\n")):
        result.setdefault(finding.kind, []).append(finding)
    return result


COMPLETE = b"Date: Fri, 27 Nov 2026 23:10:00 +0000\r\nMessage-ID: <x@y>\r\n"


def test_matching_envelope_and_headers_have_no_findings():
    headers = b"From: App <App@X.test>\r\nTo: a@x.test, B <b@x.test>\r\nCc: c@x.test\r\n" + COMPLETE
    assert found("app@x.test", ["A@X.TEST", "b@x.test", "c@x.test"], headers) == {}


def test_hidden_and_undelivered_recipients():
    headers = b"From: app@x.test\r\nTo: a@x.test, never@x.test\r\n" + COMPLETE
    result = found("app@x.test", ["a@x.test", "secret@y.test"], headers)
    assert [f.address for f in result["hidden_recipient"]] == ["secret@y.test"]
    assert [f.address for f in result["undelivered_header_recipient"]] == ["never@x.test"]
    assert result["hidden_recipient"][0].severity == "warning"


def refused_found(rcpt_to: list[str], refused: list[RefusedRecipient], headers: bytes):
    envelope = Envelope("app@x.test", rcpt_to, rcpt_refused=refused)
    result: dict[str, list] = {}
    for finding in findings(envelope, parse_headers(headers + COMPLETE + b"\r\n")):
        result.setdefault(finding.kind, []).append(finding)
    return result


FULL = RefusedRecipient("full@x.test", [], "452 4.2.2 Mailbox full", "mailbox full")


def test_a_refused_header_recipient_is_refused_not_undelivered():
    headers = b"From: app@x.test\r\nTo: a@x.test, Full <FULL@x.test>\r\n"
    result = refused_found(["a@x.test"], [FULL], headers)
    assert "undelivered_header_recipient" not in result
    (refused,) = result["refused_recipient"]
    assert (refused.severity, refused.address) == ("warning", "full@x.test")
    assert refused.detail == (
        'full@x.test was given in RCPT TO and refused with 452 4.2.2 Mailbox full (rule "mailbox '
        'full"); it did not receive this message'
    )


def test_a_refused_recipient_not_in_the_headers_is_told_too():
    result = refused_found(["a@x.test"], [FULL], b"From: app@x.test\r\nTo: a@x.test\r\n")
    assert [f.address for f in result["refused_recipient"]] == ["full@x.test"]
    assert set(result) == {"refused_recipient"}


def test_a_recipient_refused_then_accepted_was_delivered():
    headers = b"From: app@x.test\r\nTo: a@x.test, full@x.test\r\n"
    assert refused_found(["a@x.test", "Full@X.test"], [FULL], headers) == {}


def test_a_recipient_refused_twice_is_told_once_with_the_last_reply():
    again = RefusedRecipient(
        "Full@x.test", [], "550-5.1.1 No such user\n550 5.1.1 Really", None, "validation"
    )
    headers = b"From: app@x.test\r\nTo: a@x.test\r\n"
    (refused,) = refused_found(["a@x.test"], [FULL, again], headers)["refused_recipient"]
    assert refused.detail == (
        "Full@x.test was given in RCPT TO and refused with 550-5.1.1 No such user / 550 5.1.1 "
        'Really ([validation] addresses = "reject"); it did not receive this message'
    )


def test_bcc_header_present_is_an_error():
    headers = b"From: app@x.test\r\nTo: a@x.test\r\nBcc: boss@x.test\r\n" + COMPLETE
    result = found("app@x.test", ["a@x.test", "boss@x.test"], headers)
    assert result["bcc_header_present"][0].severity == "error"
    assert "boss@x.test" in result["bcc_header_present"][0].detail
    assert "hidden_recipient" in result  # Bcc is not To/Cc


def test_sender_mismatch_and_alignment():
    headers = b"From: news@shop.test\r\nTo: a@x.test\r\n" + COMPLETE
    aligned = found("bounces+123@mail.shop.test", ["a@x.test"], headers)
    assert "sender_mismatch" in aligned and "domain_misaligned" not in aligned
    misaligned = found("bounce@esp.test", ["a@x.test"], headers)
    assert misaligned["domain_misaligned"][0].severity == "warning"
    with_sender = b"From: news@shop.test\r\nSender: bounce@esp.test\r\nTo: a@x.test\r\n" + COMPLETE
    assert "sender_mismatch" not in found("bounce@esp.test", ["a@x.test"], with_sender)


def test_null_sender_and_missing_headers():
    result = found("", ["a@x.test"], b"To: a@x.test\r\n")
    assert result["null_sender"][0].severity == "info"
    missing = sorted((f.severity, f.detail.split()[1]) for f in result["missing_header"])
    assert missing == [("info", "Message-ID"), ("warning", "Date"), ("warning", "From")]


def test_invalid_addresses_are_flagged_without_dns():
    headers = b"From: app@x.test\r\nTo: a@x.test\r\n" + COMPLETE
    result = found("not an address", ["a@x.test", "bad@@x.test"], headers)
    flagged = sorted(f.address for f in result["invalid_address"])
    assert flagged == ["bad@@x.test", "not an address"]
    assert result["invalid_address"][0].severity == "error"


@pytest.mark.parametrize(
    "address", ["user@localhost", "a@mail.local", "a@x.test", "jörg@bücher.test", "u@[127.0.0.1]"]
)
def test_development_addresses_are_valid(address):
    assert syntax_error(address) is None


def test_parse_message_bodies_attachments_and_tree():
    raw = (
        b"From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: multipart/alternative; boundary=C\r\n\r\n"
        b"--C\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=E9\r\n--C\r\nContent-Type: text/html\r\n\r\n<b>caf\xc3\xa9</b>\r\n--C--\r\n"
        b'--B\r\nContent-Type: image/png; name="../../etc/passwd"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        b"iVBORw0KGgo=\r\n--B--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "café"
    assert parsed.html == "<b>café</b>"
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        ("../../etc/passwd", "image/png", 8)
    ]
    assert parsed.mime.content_type == "multipart/mixed"
    assert [c.content_type for c in parsed.mime.children] == ["multipart/alternative", "image/png"]


def test_unknown_charset_becomes_a_defect_not_a_crash():
    raw = b"From: a@x.test\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nqapla\xff\r\n"
    parsed = parse_message(raw)
    assert parsed.text.startswith("qapla")
    assert any("could not be decoded" in d for d in parsed.defects)


BROKEN = (
    b"From: J\xf6rg <j@x.test>\r\nTo: a@x.test\r\nSubject: caf\xe9 \xff\xfe\r\n"
    b"Content-Type: multipart/mixed\r\n\r\n"  # multipart without a boundary
    b"--nothing\r\nthis is not mime\r\n"
)


def test_broken_mime_and_non_utf8_headers_are_stored_and_shown(sink):
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("j@x.test", ["a@x.test"], BROKEN)
    with sink.reader() as reader:
        (record,) = reader.list_messages()
        assert reader.get_raw(record.id) == BROKEN
    assert "caf" in record.headers["subject"]
    shown = run_cli("show", str(record.id), "--db", sink.db)
    assert shown.code == 0, shown.err
    assert "Subject" in shown.out
    data = json.loads(run_cli("show", str(record.id), "--db", sink.db, "--json").out)
    assert any(f["kind"] == "parse_defect" for f in data["findings"])
    assert run_cli("show", str(record.id), "--db", sink.db, "--headers").code == 0
    assert run_cli("list", "--db", sink.db).code == 0


def test_garbage_bytes_as_a_message(sink):
    garbage = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * 4 + b"\r\n"
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@x.test", ["b@x.test"], garbage)
    result = run_cli("show", "latest", "--db", sink.db)
    assert result.code == 0, result.err
    assert "\x1b" not in result.out and "\x07" not in result.out


def test_control_characters_become_visible():
    assert visible("a\x1b[31mb\x07c\x08\x9b\u202e") == "a␛[31mb␇c␈<U+009B><U+202E>"
    assert visible("tab\there") == "tab␉here"
    assert visible_block("line1\r\nline2\ttab\x1b") == "line1\nline2\ttab␛"
    assert visible("[bold red]Boom[/]") == "[bold red]Boom[/]"


@pytest.mark.parametrize(
    ("raw", "from_", "to", "subject"),
    [
        (
            b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <j@x.test>\r\n"
            b'To: "Doe, John" <jd@x.test>, b@x.test\r\nCc: undisclosed-recipients:;\r\n'
            b"Subject: =?utf-8?b?R3LDvMOfZQ==?= and more\r\n\r\nbody",
            ["Jörg Müller <j@x.test>"],
            ['"Doe, John" <jd@x.test>', "b@x.test"],
            "Grüße and more",
        ),
        (
            b"From: a@x.test\r\nTo: a@x.test,\r\n b@x.test\r\nTo: c@x.test\r\n"
            b"Subject: folded\r\n  subject line\r\n\r\n",
            ["a@x.test"],
            ["a@x.test", "b@x.test", "c@x.test"],
            "folded  subject line",
        ),
        (b"From: J\xf6rg <j@x.test>\r\nSubject: caf\xe9\r\n\r\n", ["J�rg <j@x.test>"], [], "caf�"),
        (
            "From: Zoë <zoë@bücher.test>\r\nSubject: grüße\r\n\r\n".encode(),
            ["Zoë <zoë@bücher.test>"],
            [],
            "grüße",
        ),
        (b"From: Team: a@x.test, b@x.test;\r\nTo: <>\r\n\r\n", ["a@x.test", "b@x.test"], [], None),
    ],
)
def test_header_summary_decodes_like_the_stdlib_default_policy(raw, from_, to, subject):
    summary = parse_headers(raw)
    assert (summary.from_, summary.to, summary.subject) == (from_, to, subject)
    assert summary.cc == []


@pytest.mark.timeout(20)
def test_html_to_text_is_linear_on_hostile_markup():
    from mailsink.mail.html import html_to_text

    # HTMLParser needs minutes for the first of these (it rescans unfinished tags).
    for hostile in ("<a " * 50_000, "<!--" * 100_000, "<script>" * 50_000, "<" * 500_000):
        assert isinstance(html_to_text(hostile), str)
    text = html_to_text('<p>Hi &amp; <a href="https://x.test/?a=1&amp;b=2">there</a></p><ul><li>1')
    assert text == "Hi & there <https://x.test/?a=1&b=2>\n\n• 1\n"


@pytest.mark.timeout(20)
def test_html_to_text_quoted_attributes_stay_linear():
    from mailsink.mail.html import html_to_text

    # Each attempt to match a tag stops at the next "<": unfinished quotes cost no rescans.
    for hostile in ('<a "' * 50_000, "<a '" * 50_000, "<a " * 50_000, "<" * 100_000, "<!" * 50_000):
        start = time.process_time()
        assert isinstance(html_to_text(hostile), str)
        assert time.process_time() - start < 2, hostile[:8]


def test_html_to_text_reads_quoted_greater_than_and_whole_attribute_names():
    from mailsink.mail.html import html_to_text

    assert html_to_text('<a title="x>y" href="http://e/">link</a>') == "link <http://e/>\n"
    assert html_to_text("<img alt='1 > 0' src=x>") == "[image: 1 > 0]\n"
    tricky = '<a data-href="http://bad/" href="http://good/">a</a> <a title="href=x">b</a>'
    assert html_to_text(tricky) == "a <http://good/> b\n"


def test_html_to_text_drops_declarations_and_keeps_a_bare_less_than():
    from mailsink.mail.html import html_to_text

    document = (
        '<?xml version="1.0"?><!DOCTYPE html><html><body><p>a<![CDATA[x]]>b'
        "<![if !mso]>c<![endif]>d</p><p>if a < b and c > d, then 1 <2</p></body></html>"
    )
    assert html_to_text(document) == "abcd\n\nif a < b and c > d, then 1 <2\n"


def test_html_to_text_keeps_preformatted_indentation():
    from mailsink.mail.html import html_to_text

    document = "<p>Code:</p><pre> one\n   three\n\ttab</pre><div>\n  after  <b>it</b></div>"
    assert html_to_text(document) == "Code:\n\n one\n   three\n\ttab\n\nafter it\n"


def test_attachment_names_fit_the_file_system(tmp_path):
    from mailsink.mail.attachments import save_part

    for name in ("é" * 200 + ".pdf", "😀" * 100, "日本" * 100 + ".txt", "../" * 100 + "x"):
        first = save_part(b"1", name, tmp_path, "fallback.bin")
        second = save_part(b"2", name, tmp_path, "fallback.bin")
        assert first.parent == second.parent == tmp_path
        assert first != second and first.read_bytes() == b"1" and second.read_bytes() == b"2"
        assert len(second.name.encode()) <= 255
    assert (tmp_path / ("é" * 98 + ".pdf")).exists()  # cut on whole characters


def test_attachment_hint_at_ingest():
    from mailsink.store.operations import has_attachment_hint

    assert has_attachment_hint(b"Content-Disposition: ATTACHMENT\r\n\r\nx")
    assert has_attachment_hint(b'Content-Disposition: inline; filename="a.png"\r\n')
    assert has_attachment_hint(b"Content-Type: text/plain;\r\n\tFileName*0*=utf-8''a%20b\r\n")
    assert not has_attachment_hint(message())
