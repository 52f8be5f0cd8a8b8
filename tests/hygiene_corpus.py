"""Messages for the hygiene findings: one or more per finding, and clean ones that must get none.

Each Case is what a client sends (the raw message as the sink stores it, and MAIL FROM's
parameters) and what the hygiene checks must say: exactly these kinds, and the first line each
names where it names one. The header block's lines are numbered as in HEAD below.
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

from mailsink.mail.findings import KINDS

# Every kind from bare_lf on in KINDS is a hygiene kind.
HYGIENE_KINDS = tuple(list(KINDS)[list(KINDS).index("bare_lf") :])

DATE = "Fri, 27 Nov 2026 23:10:00 +0000"
# A minute after DATE, in milliseconds: what the unit tests pass as the time of arrival.
RECEIVED_AT = (int(email.utils.parsedate_to_datetime(DATE).timestamp()) + 60) * 1000
SENDER = "app@example.test"
RECIPIENT = "user@example.test"

# Lines 1 to 6 of every message built by `mail`; its extra headers follow from line 7.
HEAD = [
    b"From: App <app@example.test>",
    b"To: user@example.test",
    b"Subject: Hello",
    b"Date: " + DATE.encode(),
    b"Message-ID: <m1@example.test>",
    b"MIME-Version: 1.0",
]


def mail(
    *extra: bytes,
    body: bytes = b"Hello.\r\n",
    replace: dict[bytes, bytes] | None = None,
    eol: bytes = b"\r\n",
) -> bytes:
    """HEAD (a header replaced by its name: {b"Subject": b"Subject: other"}), `extra` headers,
    a blank line and `body` (its line ends as given)."""
    lines = []
    for line in HEAD:
        name = line.split(b":", 1)[0]
        if replace and name in replace:
            if replace[name]:
                lines.append(replace[name])
        else:
            lines.append(line)
    return eol.join([*lines, *extra, b""]) + eol + body


def multipart(kind: str, boundary: str, parts: list[bytes], *extra: bytes) -> bytes:
    """A multipart body (each part with its headers) after HEAD and `extra`."""
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + b + b"--\r\n"
    content_type = f'Content-Type: {kind}; boundary="{boundary}"'.encode()
    return mail(content_type, *extra, body=body)


TEXT_PART = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nHello."
HTML_PART = b"Content-Type: text/html; charset=us-ascii\r\n\r\n<p>Hello.</p>"
PDF = base64.encodebytes(b"%PDF-1.4 a small file " * 20).replace(b"\n", b"\r\n")
PDF_PART = (
    b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="invoice.pdf"\r\n\r\n' + PDF.rstrip()
)


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    kinds: tuple[str, ...]  # the hygiene kinds it must get, exactly (empty: clean)
    mail_options: tuple[str, ...] = ()
    rcpt_to: tuple[str, ...] = (RECIPIENT,)
    mail_from: str = SENDER
    line: int | None = None  # the first line the (single) finding names, "line N"
    detail: str | None = None  # a piece of text its detail must hold
    clean: bool = False  # must get no finding at all, of any kind
    received_at: int = RECEIVED_AT

    def with_size(self) -> Case:
        """The same, with MAIL FROM's SIZE= as an honest client counts it."""
        options = (*self.mail_options, f"SIZE={len(self.raw)}")
        return Case(**{**self.__dict__, "mail_options": options})


def stdlib_message() -> bytes:
    """A real message as an application builds it with the stdlib: policy.SMTP, Date from
    formatdate, Message-ID from make_msgid, text and HTML alternatives (non-ASCII, so 8bit),
    an attachment."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = "Zoë Martin <app@example.test>"
    message["To"] = "Jörg <user@example.test>"
    message["Subject"] = "Ihre Rechnung — Grüße"
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = email.utils.make_msgid()
    message.set_content("Guten Tag,\n\nanbei Ihre Rechnung.\n\nGrüße aus Köln\n")
    message.add_alternative("<p>Guten Tag,</p><p>anbei Ihre Rechnung.</p><p>Grüße</p>\n", "html")
    attachment = b"%PDF-1.4\n" + bytes(range(256)) * 8
    message.add_attachment(attachment, "application", "pdf", filename="Rechnung März.pdf")
    return message.as_bytes()


def forwarding(body_part: bytes, forwarded_type: bytes) -> bytes:
    """A message whose body is `body_part`, with a message of `forwarded_type` forwarded."""
    inner = mail(b"Content-Type: " + forwarded_type, body=b"Forwarded.\r\n")
    return multipart(
        "multipart/mixed",
        "fw",
        [body_part, b"Content-Type: message/rfc822\r\n\r\n" + inner.rstrip()],
    )


FINDING_CASES = [
    Case(
        "bare LF in a CRLF client's body",
        mail(b"Content-Type: text/plain", body=b"one\r\ntwo\nthree\r\n"),
        ("bare_lf",),
        line=10,
        detail="smtpd_forbid_bare_newline = reject",
    ),
    Case(
        "bare LF everywhere (nc without -C)",
        mail(body=b"Hello.\n", eol=b"\n"),
        ("bare_lf",),
        line=1,
        detail="8 of 8 lines",
    ),
    Case(
        "bare CR in a header",
        mail(replace={b"Subject": b"Subject: Hello\rthere"}),
        ("bare_cr",),
        line=3,
    ),
    Case(
        "a line over 998 octets",
        mail(body=b"short\r\n" + b"x" * 1200 + b"\r\n" + b"y" * 999 + b"\r\n"),
        ("long_line",),
        line=9,
        detail="1200 octets",
    ),
    Case(
        "8-bit body without BODY=8BITMIME",
        mail(
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Transfer-Encoding: 8bit",
            body="Grüße\r\n".encode(),
        ),
        ("eight_bit_without_8bitmime",),
        line=10,
        detail="RFC 6152",
    ),
    Case(
        "raw UTF-8 Subject without SMTPUTF8",
        mail(replace={b"Subject": "Subject: Grüße".encode()}),
        ("non_ascii_header",),
        line=3,
        detail="the Subject header",
    ),
    Case(
        "a Subject that is not UTF-8 with SMTPUTF8",
        mail(replace={b"Subject": b"Subject: Gr\xfc\xdfe"}),
        ("non_ascii_header",),
        mail_options=("SMTPUTF8", "BODY=8BITMIME"),
        line=3,
        detail="not valid UTF-8",
    ),
    Case(
        "a raw UTF-8 file name in a part header",
        multipart(
            "multipart/mixed",
            "b1",
            [TEXT_PART, PDF_PART.replace(b"invoice.pdf", "Rechnung-März.pdf".encode())],
        ),
        ("non_ascii_header",),
        mail_options=("BODY=8BITMIME",),
        line=16,
        detail="the application/pdf part at line 14: its Content-Disposition header (line 16)",
    ),
    Case(
        "a non-ASCII RCPT TO without SMTPUTF8",
        mail(),
        ("non_ascii_address",),
        rcpt_to=(RECIPIENT, "jörg@example.test"),
        detail="RCPT TO address jörg@example.test",
    ),
    Case(
        "a Message-ID without angle brackets",
        mail(replace={b"Message-ID": b"Message-ID: 1234.5678@example.test"}),
        ("invalid_message_id",),
        detail="RFC 5322 3.6.4",
    ),
    Case(
        "a Message-ID without a right side",
        mail(replace={b"Message-ID": b"Message-ID: <no-domain-here>"}),
        ("invalid_message_id",),
    ),
    Case(
        "a Date that does not parse",
        mail(replace={b"Date": b"Date: yesterday at noon"}),
        ("invalid_date",),
        detail="RFC 5322",
    ),
    Case(
        "a Date in 2099",
        mail(replace={b"Date": b"Date: Fri, 27 Nov 2099 23:10:00 +0000"}),
        ("future_date",),
        detail="days after the message arrived",
    ),
    Case(
        "two From addresses, no Sender",
        mail(replace={b"From": b"From: a@example.test, b@example.test"}),
        ("multiple_from_without_sender",),
        mail_from="a@example.test",
        detail="RFC 5322 3.6.2",
    ),
    Case(
        "SIZE= far from the real size",
        mail(),
        ("size_mismatch",),
        mail_options=("SIZE=20000",),
        detail="SIZE=20000",
    ),
    Case(
        "an HTML-only message",
        mail(b"Content-Type: text/html; charset=us-ascii", body=b"<p>Hello.</p>\r\n"),
        ("html_without_text",),
        detail="MIME_HTML_ONLY",
    ),
    Case(
        "HTML and an image, no text/plain",
        multipart(
            "multipart/related",
            "rel",
            [
                HTML_PART,
                b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBO",
            ],
        ),
        ("html_without_text",),
        detail="the text/html part at line 10",
    ),
    Case(
        "an HTML body forwarding a text message",
        forwarding(HTML_PART, b"text/plain"),
        ("html_without_text",),
        detail="the text/html part at line 10",
    ),
    Case(
        "7bit declared, 8-bit bytes",
        mail(
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Transfer-Encoding: 7bit",
            body=b"Hello\r\nGr\xc3\xbc\xc3\x9fe\r\n",
        ),
        ("encoding_mismatch",),
        mail_options=("BODY=8BITMIME",),
        line=11,
        detail="Content-Transfer-Encoding: 7bit",
    ),
    Case(
        "no Content-Transfer-Encoding, 8-bit bytes",
        mail(b"Content-Type: text/plain; charset=utf-8", body="Grüße\r\n".encode()),
        ("encoding_mismatch",),
        mail_options=("BODY=8BITMIME",),
        line=9,
        detail="no Content-Transfer-Encoding (so 7bit)",
    ),
    Case(
        "quoted-printable with 8-bit bytes",
        mail(b"Content-Transfer-Encoding: quoted-printable", body="Gr=C3=BC\xdfe\r\n".encode()),
        ("encoding_mismatch",),
        mail_options=("BODY=8BITMIME",),
        line=9,
    ),
    Case(
        "base64 outside its alphabet",
        multipart(
            "multipart/mixed",
            "b2",
            [TEXT_PART, PDF_PART.replace(PDF[:20], b"not base64 at all!! ")],
        ),
        ("encoding_mismatch",),
        line=18,
        detail="outside its alphabet",
    ),
    Case(
        "an encoding RFC 2045 does not define",
        mail(b"Content-Transfer-Encoding: utf-8"),
        ("encoding_mismatch",),
        detail="Content-Transfer-Encoding: utf-8, which is none of",
    ),
    Case(
        "a multipart encoded in base64",
        multipart("multipart/mixed", "b3", [TEXT_PART], b"Content-Transfer-Encoding: base64"),
        ("encoding_mismatch",),
        detail="a multipart may only be 7bit, 8bit or binary",
    ),
    Case(
        "a Message-ID written as an encoded word",
        mail(replace={b"Message-ID": b"Message-ID: =?utf-8?q?=3Ca=40b=3E?="}),
        ("invalid_message_id",),
        detail="Message-ID =?utf-8?q?=3Ca=40b=3E?= is not",
    ),
    Case(
        "a folded Message-ID as an encoded word, beside an encoded Subject",
        mail(
            replace={
                b"Subject": b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
                b"Message-ID": b"Message-ID:\r\n =?utf-8?b?PGFAYj4=?=",
            }
        ),
        ("invalid_message_id",),
    ),
    Case(
        "a raw UTF-8 Message-ID without SMTPUTF8",
        mail(replace={b"Message-ID": "Message-ID: <grüße@example.test>".encode()}),
        ("non_ascii_header", "invalid_message_id"),
    ),
    Case(
        "a Date without a zone",
        mail(replace={b"Date": b"Date: Fri, 27 Nov 2026 23:10:00"}),
        ("invalid_date",),
        detail="has no zone (RFC 5322 3.3 requires one",
    ),
    Case(
        "a Date with dots between hours, minutes and seconds",
        mail(replace={b"Date": b"Date: Fri, 27 Nov 2026 23.10.00 +0000"}),
        ("invalid_date",),
        detail="is not an RFC 5322 date-time (3.3)",
    ),
    Case(
        "a Date in a zone RFC 5322 does not name",
        mail(replace={b"Date": b"Date: Fri, 27 Nov 2026 23:10:00 CET"}),
        ("invalid_date",),
        detail="has the zone CET, which RFC 5322 does not name",
    ),
    Case(
        "a Date with the wrong day of the week",
        mail(replace={b"Date": b"Date: Mon, 27 Nov 2026 23:10:00 +0000"}),
        ("invalid_date",),
        detail="says Mon but 27 Nov 2026 is a Fri",
    ),
    Case(
        "an HTML part after a delimiter padded with 150 spaces",
        mail(
            b'Content-Type: multipart/alternative; boundary="B"',
            body=b"--B" + b" " * 150 + b"\r\n" + HTML_PART + b"\r\n--B--\r\n",
        ),
        ("html_without_text",),
    ),
    Case(
        "boundary=EVIL inside another parameter's quoted value",
        mail(
            b'Content-Type: multipart/mixed; name="x boundary=EVIL"; boundary="B"',
            body=b"--B\r\n"
            + TEXT_PART
            + b"\r\n--B\r\n"
            + PDF_PART.replace(PDF[:20], b"not base64 at all!! ")
            + b"\r\n--B--\r\n",
        ),
        ("encoding_mismatch",),
        detail="outside its alphabet",
    ),
    Case(
        "an RFC 2231 boundary*=",
        mail(
            b"Content-Type: multipart/alternative; boundary*=us-ascii''B%2Dx",
            body=b"--B-x\r\n" + HTML_PART + b"\r\n--B-x--\r\n",
        ),
        ("html_without_text",),
    ),
    Case(
        "an RFC 2231 boundary in two pieces",
        mail(
            b'Content-Type: multipart/alternative; boundary*0="B"; boundary*1="C"',
            body=b"--BC\r\n" + HTML_PART + b"\r\n--BC--\r\n",
        ),
        ("html_without_text",),
    ),
    Case(
        "a quoted boundary with a quoted pair",
        mail(
            b'Content-Type: multipart/alternative; boundary="a\\"b"',
            body=b'--a"b\r\n' + HTML_PART + b'\r\n--a"b--\r\n',
        ),
        ("html_without_text",),
    ),
    Case(
        "a boundary of 250 characters",
        mail(
            b'Content-Type: multipart/alternative; boundary="' + b"q" * 250 + b'"',
            body=b"--" + b"q" * 250 + b"\r\n" + HTML_PART + b"\r\n--" + b"q" * 250 + b"--\r\n",
        ),
        ("html_without_text",),
    ),
    Case(
        "two delimiter lines in a row (no empty part between them)",
        mail(
            b'Content-Type: multipart/alternative; boundary="B"',
            body=b"--B\r\n--B\r\n" + HTML_PART + b"\r\n--B--\r\n",
        ),
        ("html_without_text",),
    ),
    Case(
        "a multipart in lone CRs (old Mac line ends): the feedparser ends lines at them",
        mail(
            b'Content-Type: multipart/alternative; boundary="B"',
            body=b"--B\rContent-Type: text/html\r\r<p>Hello.</p>\r--B--\r",
            eol=b"\r",
        ),
        ("bare_cr", "html_without_text"),
    ),
    Case(
        "a multipart type with a comment",
        mail(
            b'Content-Type: multipart/alternative (made by hand); boundary="B"',
            body=b"--B\r\n" + HTML_PART + b"\r\n--B--\r\n",
        ),
        ("html_without_text",),
    ),
]

CLEAN_CASES = [
    Case(
        "the stdlib's message, sent with BODY=8BITMIME",
        stdlib_message(),
        (),
        mail_options=("BODY=8BITMIME",),
        clean=True,
        received_at=time.time_ns() // 1_000_000,  # its Date is now
    ).with_size(),
    Case("a plain ASCII message", mail(), (), clean=True).with_size(),
    Case(
        "UTF-8 headers and addresses with SMTPUTF8",
        mail(
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Transfer-Encoding: 8bit",
            replace={
                b"From": "From: Zoë <zoë@example.test>".encode(),
                b"To": "To: jörg@example.test".encode(),
                b"Subject": "Subject: Grüße".encode(),
            },
            body="Grüße\r\n".encode(),
        ),
        (),
        mail_options=("SMTPUTF8", "BODY=8BITMIME"),
        mail_from="zoë@example.test",
        rcpt_to=("jörg@example.test",),
        clean=True,
    ),
    Case("a line of exactly 998 octets", mail(body=b"x" * 998 + b"\r\n"), (), clean=True),
    Case(
        "text with an HTML attachment",
        multipart(
            "multipart/mixed",
            "b4",
            [
                TEXT_PART,
                HTML_PART.replace(b"\r\n\r\n", b"\r\nContent-Disposition: attachment\r\n\r\n"),
            ],
        ),
        (),
        clean=True,
    ),
    Case(
        "text and HTML alternatives with an attachment",
        multipart(
            "multipart/mixed",
            "outer",
            [
                b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
                + b"--inner\r\n"
                + TEXT_PART
                + b"\r\n--inner\r\n"
                + HTML_PART
                + b"\r\n--inner--",
                PDF_PART,
            ],
        ),
        (),
        clean=True,
    ),
    Case(
        "a text body forwarding an HTML-only message",
        forwarding(TEXT_PART, b"text/html"),
        (),
        clean=True,
    ),
    Case(
        "-0000, a domain literal, a comment, Sender beside two From",
        mail(
            b"Sender: app@example.test",
            replace={
                b"Date": b"Date: 27 Nov 2026 23:10:00 -0000",
                b"Message-ID": b"Message-ID: <a.b@[127.0.0.1]> (added by the app)",
                b"From": b"From: app@example.test, boss@example.test",
            },
        ),
        (),
        clean=True,
    ),
    Case(
        "SIZE= a little off (a header added on the way)",
        mail(),
        (),
        mail_options=(f"SIZE={len(mail()) + 60}",),
        clean=True,
    ),
    Case(
        "base64 in short lines with padding, x-uuencode",
        multipart(
            "multipart/mixed",
            "b5",
            [
                TEXT_PART,
                b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64"
                b"\r\n\r\nQUJD\r\n  REVG\r\n\tR0g=\r\n",
                b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
                b"x-uuencode\r\n\r\nbegin 644 a\r\n#86)C\r\n`\r\nend",
            ],
        ),
        (),
        clean=True,
    ),
    # Not clean of other findings (an invalid address; no From, no Date): the hygiene checks
    # have nothing to say.
    Case(
        "a display name the stdlib splits into words, one mailbox",
        mail(replace={b"From": b"From: [bold red]Boom[/] <app@example.test>"}),
        (),
    ),
    Case("no header at all", b"hello\r\n", ()),
    # The header block ends at the first line that is not a header line (the stdlib's feedparser
    # has it so): the Content-Type after it is body text, and the message text/plain.
    Case(
        "a line that is no header line before a Content-Type: text/html",
        mail(b"this line is no header", b"Content-Type: text/html", body=b"<p>Hello.</p>\r\n"),
        (),
    ),
    Case(
        "leap second, obsolete zone, two-digit year, comments, folded",
        mail(replace={b"Date": b"Date: (sent) Fri, 27 Nov 26\r\n 23:59:60 EST (5 hours behind)"}),
        (),
        received_at=RECEIVED_AT + 10 * 3600 * 1000,
    ),
]

CASES = FINDING_CASES + CLEAN_CASES


@dataclass
class Hostile:
    name: str
    raw: bytes
    kinds: set[str] = field(default_factory=set)  # kinds it must get at least
    mail_options: tuple[str, ...] = ()


def _nested(depth: int) -> bytes:
    chain = b"".join(
        f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n'.encode()
        for i in range(1, depth)
    )
    content_type = b'Content-Type: multipart/mixed; boundary="n0"'
    return mail(content_type, body=b"--n0\r\n" + chain + b"deep\r\n")


def _many_parts(count: int) -> bytes:
    part = b"--p\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\nx\xff\r\n"
    return mail(b'Content-Type: multipart/mixed; boundary="p"', body=part * count + b"--p--\r\n")


def _false_delimiters(multiparts: int, lines: int) -> bytes:
    """Multiparts side by side, each full of lines that begin like its delimiter and are not."""
    inner = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--ax\r\n" * lines
    return mail(
        b"Content-Type: multipart/mixed; boundary=r",
        body=b"--r\r\n" + (inner + b"--r\r\n") * multiparts,
    )


def _header_lines(part_count: int, line_count: int) -> bytes:
    """A multipart of `part_count` parts, each with `line_count` header lines of UTF-8."""
    head = b"".join(b"X-%d: \xc3\xbc\r\n" % i for i in range(line_count))
    part = b"--B\r\n" + head + b"\r\nbody\r\n"
    return mail(
        b'Content-Type: multipart/mixed; boundary="B"', body=part * part_count + b"--B--\r\n"
    )


def _long_content_types(count: int) -> bytes:
    """Multiparts inside one another, each Content-Type long with semicolons in a quoted value,
    as the stdlib's parameter parser takes time with the square of; the first one 1 MB."""
    semicolons = b'; name="' + b"a;" * 490 + b'"; boundary="B"'
    nested = b"--B\r\nContent-Type: multipart/mixed" + semicolons + b"\r\n\r\n"
    first = b"Content-Type: multipart/mixed; " + b"; ".join(
        b'name*%d="%s"' % (i, b"a;" * 8000) for i in range(64)
    )
    return mail(first + b'; boundary="B"', body=nested * count + b"--B--\r\n")


_EIGHT_BIT = ("BODY=8BITMIME",)
_UTF8 = ("SMTPUTF8", "BODY=8BITMIME")

# Messages built to make a careless check slow, each built when a test asks for it (several
# are 25 MB): name -> (the message, kinds it must get at least, MAIL FROM's parameters).
HOSTILE: dict[str, Callable[[], tuple[bytes, set[str], tuple[str, ...]]]] = {
    "a million lines": lambda: (mail(body=b"x\r\n" * 1_000_000), set(), ()),
    "25 MB of 8-bit bytes in bare-LF lines": lambda: (
        mail(body="Ünïcödé, a line that ends in a bare LF\n".encode() * 600_000),
        {"bare_lf", "eight_bit_without_8bitmime"},
        (),
    ),
    "1500 parts": lambda: (_many_parts(1500), {"encoding_mismatch"}, ()),
    "MIME nested a thousand deep": lambda: (_nested(1000), set(), ()),
    "one 25 MB line": lambda: (mail(body=b"y" * 25_000_000 + b"\r\n"), {"long_line"}, ()),
    "22 MB of lines that look like delimiters": lambda: (_false_delimiters(900, 5000), set(), ()),
    # each name different: a list of the names seen, searched for each line, took 17 s
    "40 000 header lines of 8-bit bytes": lambda: (
        mail(*[b"X-%d: \xff" % i for i in range(40_000)]),
        {"non_ascii_header"},
        _EIGHT_BIT,
    ),
    "40 000 header fields of one name, not UTF-8, with SMTPUTF8": lambda: (
        mail(*[b"X-Same: \xff"] * 40_000),
        {"non_ascii_header"},
        _UTF8,
    ),
    # UTF-8 decoded a line at a time took 2.5 s
    "1000 parts of 2000 UTF-8 header lines with SMTPUTF8": lambda: (
        _header_lines(1000, 2000),
        set(),
        _UTF8,
    ),
    "Content-Types of 1 MB and 1000 of 1 KB": lambda: (_long_content_types(999), set(), ()),
    "12 million CRs between LFs": lambda: (mail(body=b"\n\r" * 12_500_000), {"bare_cr"}, ()),
    # an unclosed comment of escaped parentheses: the comment search took 14 s for 16 KB
    "a Date of 100 000 escaped parentheses": lambda: (
        mail(replace={b"Date": b"Date: (" + b"\\(" * 50_000}),
        {"invalid_date"},
        (),
    ),
}


def hostile_case(name: str) -> Hostile:
    raw, kinds, options = HOSTILE[name]()
    return Hostile(name, raw, kinds, options)


def mime_variants(seed: int, count: int) -> list[bytes]:
    """Random MIME messages that real and odd-but-valid mailers write: boundaries quoted or
    not, folded, in RFC 2231 pieces, with other parameters beside them (one holding
    "boundary=" in its quoted value), long ones; delimiters padded, doubled, unclosed; parts
    without headers or starting with a blank line, a line in a header block that is no header
    line, preambles, epilogues, nested multiparts, digests, message/rfc822 in any encoding; LF
    or CRLF line ends. What the stdlib's feedparser makes of each is the reference."""
    generator = random.Random(seed)

    def pick(*choices: bytes) -> bytes:
        return generator.choice(choices)

    def boundary_parameter(boundary: bytes) -> bytes:
        forms = [
            b'boundary="%s"' % boundary,
            b'BOUNDARY="%s"' % boundary,
            b'boundary = "%s"' % boundary,
            b'name="x; boundary=EVIL"; boundary="%s"' % boundary,
            b'boundary="%s"; charset=us-ascii' % boundary,
            b'boundary="%s "' % boundary,
            b'type="text/html"; boundary="%s"' % boundary,
        ]
        if re.fullmatch(rb"[!#-'*+.0-9A-Z^-~-]+", boundary):  # a token: may go unquoted
            forms += [
                b"boundary=" + boundary,
                b"boundary*=''" + boundary,
                b"boundary*0=%s; boundary*1=%s" % (boundary[:2], boundary[2:]),
            ]
        return generator.choice(forms)

    def headers(kind: bytes, eol: bytes, boundary: bytes | None = None) -> bytes:
        fields = []
        if generator.random() < 0.95:
            value = kind.upper() if generator.random() < 0.1 else kind
            if generator.random() < 0.05:
                value += b" (a comment)"
            if boundary is not None:
                value += pick(b"; ", b";\r\n\t", b";\r\n ", b";") + boundary_parameter(boundary)
            elif generator.random() < 0.5:
                value += b"; charset=" + pick(b"utf-8", b'"us-ascii"')
            fields.append(b"Content-Type: " + value)
        if generator.random() < 0.5:
            fields.append(
                b"Content-Transfer-Encoding: "
                + pick(b"7bit", b"8bit", b"base64", b"quoted-printable", b"BASE64", b"7bit (x)")
            )
        if generator.random() < 0.3:
            fields.append(
                b"Content-Disposition: "
                + pick(
                    b"attachment",
                    b"inline",
                    b"ATTACHMENT; filename=a",
                    b'attachment; filename="x;y"',
                )
            )
        if generator.random() < 0.1:
            fields.append(b"X-Other: " + b"y" * generator.randint(0, 30))
        if generator.random() < 0.05:
            fields.insert(generator.randint(0, len(fields)), b"this line is no header line")
        return eol.join(fields)

    def entity(depth: int, eol: bytes) -> bytes:
        roll = generator.random()
        if depth < 3 and roll < 0.35:
            kind = pick(
                b"multipart/mixed",
                b"multipart/alternative",
                b"multipart/related",
                b"multipart/digest",
            )
            boundary = pick(
                b"B", b"===b%d==" % depth, b"a'b(c)", b"q" * generator.randint(60, 250), b"x y"
            )
            body = b"preamble" + eol if generator.random() < 0.3 else b""
            for _ in range(generator.randint(0, 3)):
                padding = pick(b"", b"", b" ", b"\t ", b" " * generator.randint(90, 200))
                body += b"--" + boundary + padding + eol
                if generator.random() < 0.1:
                    body += b"--" + boundary + eol  # a second delimiter line at once
                body += entity(depth + 1, eol) + eol
            if generator.random() < 0.85:
                body += b"--" + boundary + b"--" + pick(b"", b"  ") + eol
            if generator.random() < 0.2:
                body += b"epilogue" + eol
            return headers(kind, eol, boundary) + eol + eol + body
        if depth < 3 and roll < 0.45:
            return headers(b"message/rfc822", eol) + eol + eol + entity(depth + 1, eol)
        if generator.random() < 0.08:
            return pick(b"", eol) + b"a part with no header" + eol
        kind = pick(
            b"text/plain", b"text/html", b"application/pdf", b"image/png", b"text / html", b"text"
        )
        return (
            headers(kind, eol) + eol + eol + b"a line" + eol + b"--not-a-boundary" + eol + b"more"
        )

    messages = []
    for _ in range(count):
        eol = b"\n" if generator.random() < 0.1 else b"\r\n"
        head = b"From: a@example.test" + eol + b"To: b@example.test" + eol + b"Subject: s" + eol
        messages.append(head + entity(0, eol))
    return messages
