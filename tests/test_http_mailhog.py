"""MailHog v2 compatibility over real HTTP: shapes field by field against MailHog's Go structs
(github.com/mailhog/data message.go: Message, Path, Content, SMTPMessage, MIMEBody, and how
ContentFromString / ParseMIMEBody / PathFromString cut a message), the v2 list's paging
(MailHog-Server api/v2.go: messagesResult, getStartLimit), search with MailHog's meaning of each
kind (github.com/mailhog/storage memory.go Search) and v1's message, download and deletion
(api/v1.go)."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailsink.testing import RunningSink

# Boundaries from mailhog/data message_test.go (TestExtractBoundary): one quoted, one not.
QUOTED = "_----------=_MCPart_498914860"
BARE = "047d7bd74a2049b624050d805118"

PLAIN = (
    b"From: Shop <noreply@shop.test>\r\n"
    b"To: Ann <ann@x.test>\r\n"
    b"Subject: Your order\r\n"
    b"  is on its way\r\n"  # folded: MailHog drops the line break, keeps the spaces
    b"Message-ID: <m1@shop.test>\r\n"
    b"\r\n"
    b"Thanks for your order.\r\n"
)

ATTACHED = (
    "From: =?utf-8?q?Zo=C3=AB?= <zoe@corp.test>\r\n"
    "To: bob@y.test\r\n"
    'Subject: 50% off_sale, say "hi": now\r\n'
    f'Content-Type: multipart/mixed; boundary="{QUOTED}"\r\n'
    "\r\n"
    "This is a multi-part message in MIME format.\r\n"
    f"--{QUOTED}\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Caf=C3=A9 code 4711\r\n"
    f"--{QUOTED}\r\n"
    "Content-Type: application/pdf\r\n"
    'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "JVBERi0xLjQK\r\n"
    f"--{QUOTED}--\r\n"
).encode()

NESTED = (
    "From: news@list.test\r\n"
    "To: carol@z.test\r\n"
    "Subject: Weekly\r\n"
    f"Content-Type: multipart/mixed; boundary={BARE}\r\n"
    "\r\n"
    f"--{BARE}\r\n"
    'Content-Type: multipart/alternative; boundary="inner"\r\n'
    "\r\n"
    "--inner\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "plain words\r\n"
    "--inner\r\n"
    "Content-Type: text/html\r\n"
    "\r\n"
    "<p>html words</p>\r\n"
    "--inner--\r\n"
    f"--{BARE}--\r\n"
).encode()


@pytest.fixture(scope="module")
def hog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    with RunningSink(tmp_path_factory.mktemp("mailhog") / "mail.db") as running:
        with smtplib.SMTP(running.host, running.port, local_hostname="client.test") as smtp:
            smtp.sendmail("bounce@shop.test", ["ann@x.test", "audit@x.test"], PLAIN)  # id 1
            smtp.sendmail("zoe@corp.test", ["bob@y.test"], ATTACHED)  # id 2
            smtp.sendmail("", ["carol@z.test"], NESTED)  # id 3, the null sender
        yield running


def get(sink: RunningSink, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(sink.url + path, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(sink: RunningSink, path: str) -> Any:
    status, _, body = get(sink, path)
    assert status == 200, body
    return json.loads(body)


def ids(page: dict[str, Any]) -> list[str]:
    return [item["ID"] for item in page["items"]]


def search(sink: RunningSink, kind: str, query: str) -> dict[str, Any]:
    return get_json(
        sink, "/api/v2/search?" + urllib.parse.urlencode({"kind": kind, "query": query})
    )


def test_v2_messages_pages_as_mailhog(hog: RunningSink) -> None:
    status, headers, body = get(hog, "/api/v2/messages")
    assert status == 200 and headers["Content-Type"] == "text/json"  # api/v2.go messages
    page = json.loads(body)
    assert list(page) == ["total", "count", "start", "items"]  # messagesResult's json tags
    assert (page["total"], page["count"], page["start"], ids(page)) == (3, 3, 0, ["3", "2", "1"])
    # getStartLimit: start skips the newest; limit 0 is the default 50; past 250 is 250.
    page = get_json(hog, "/api/v2/messages?start=1&limit=1")
    assert (page["total"], page["count"], page["start"], ids(page)) == (3, 1, 1, ["2"])
    assert ids(get_json(hog, "/api/v2/messages?limit=0")) == ["3", "2", "1"]
    assert get_json(hog, "/api/v2/messages?limit=100000")["count"] == 3
    assert get_json(hog, "/api/v2/messages?start=7")["items"] == []  # an empty slice, not null
    # What getStartLimit cannot take (strconv.ParseInt fails, or not above 0) is the default,
    # never a 400: start 0, limit 50.
    for fallback in ("limit=ten", "limit=-5", "start=-1", "start=99999999999999999999", "start=x"):
        page = get_json(hog, f"/api/v2/messages?{fallback}")
        assert (page["start"], ids(page)) == (0, ["3", "2", "1"]), fallback
    assert get_json(hog, "/api/v2/messages?start=%2B2&limit=%2B1")["start"] == 2  # a sign


def test_message_shape_field_by_field(hog: RunningSink) -> None:
    status, headers, body = get(hog, "/api/v1/messages/1")
    assert status == 200 and headers["Content-Type"] == "text/json"  # api/v1.go message
    message = json.loads(body)
    assert list(message) == ["ID", "From", "To", "Content", "Created", "MIME", "Raw"]
    assert message["ID"] == "1"
    # Path (PathFromString): no source route, so Relays is Go's nil slice; Params always "".
    assert message["From"] == {
        "Relays": None,
        "Mailbox": "bounce",
        "Domain": "shop.test",
        "Params": "",
    }
    assert [(to["Mailbox"], to["Domain"]) for to in message["To"]] == [
        ("ann", "x.test"),
        ("audit", "x.test"),
    ]
    content = message["Content"]
    assert list(content) == ["Headers", "Body", "Size", "MIME"]
    assert content["Headers"] == {
        "From": ["Shop <noreply@shop.test>"],
        "To": ["Ann <ann@x.test>"],
        "Subject": ["Your order  is on its way"],
        "Message-ID": ["<m1@shop.test>"],
        "Return-Path": ["<bounce@shop.test>"],  # added by SMTPMessage.Parse
    }
    assert content["Body"] == "Thanks for your order.\r\n"
    assert content["Size"] == len(PLAIN)  # len(data): bytes
    assert content["MIME"] is None and message["MIME"] is None  # not multipart: nil
    # SMTPMessage: the envelope as SMTP gave it, and the data as received.
    assert message["Raw"] == {
        "From": "bounce@shop.test",
        "To": ["ann@x.test", "audit@x.test"],
        "Data": PLAIN.decode(),
        "Helo": "client.test",
    }
    created = datetime.fromisoformat(message["Created"])  # time.Time: RFC 3339
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=5)
    # The null sender: an empty Path.
    empty = {"Relays": None, "Mailbox": "", "Domain": "", "Params": ""}
    assert get_json(hog, "/api/v1/messages/3")["From"] == empty
    for unknown in ("999", "abc", "0"):
        status, _, body = get(hog, f"/api/v1/messages/{unknown}")
        assert status == 404 and "error" in json.loads(body)


def test_mime_parts_where_mailhog_puts_them(hog: RunningSink) -> None:
    message = get_json(hog, "/api/v1/messages/2")
    parts = message["MIME"]["Parts"]
    # ParseMIMEBody splits the body at "--boundary": the preamble and the closing "--" are
    # parts too, each trimmed of CR and LF at both ends.
    assert [part["Body"] for part in parts] == [
        "This is a multi-part message in MIME format.",
        "Caf=C3=A9 code 4711",  # as sent: the clients decode quoted-printable themselves
        "JVBERi0xLjQK",
        "--",
    ]
    assert parts[0]["Headers"] == {} and parts[3]["Headers"] == {}
    assert parts[1]["Headers"] == {
        "Content-Type": ["text/plain; charset=utf-8"],
        "Content-Transfer-Encoding": ["quoted-printable"],
    }
    assert parts[2]["Headers"]["Content-Disposition"] == ['attachment; filename="invoice.pdf"']
    # Size: len() of each trimmed piece, in bytes (the part's headers included).
    pieces = ATTACHED.split(b"\r\n\r\n", 1)[1].split(f"--{QUOTED}".encode())
    assert [part["Size"] for part in parts] == [len(p.strip(b"\r\n")) for p in pieces if p]
    assert all(part["MIME"] is None for part in parts)
    # Headers stay encoded: the npm client decodes =?utf-8?q?...?= itself.
    assert message["Content"]["Headers"]["From"] == ["=?utf-8?q?Zo=C3=AB?= <zoe@corp.test>"]
    # A nested multipart (an unquoted boundary) has a MIME of its own.
    outer = get_json(hog, "/api/v1/messages/3")["MIME"]["Parts"]
    assert [part["Body"] for part in outer][1:] == ["--"]
    inner = outer[0]["MIME"]["Parts"]
    assert [part["Body"] for part in inner] == ["plain words", "<p>html words</p>", "--"]
    assert inner[1]["Headers"] == {"Content-Type": ["text/html"]}


def test_search_kinds_as_mailhog_means_them(hog: RunningSink) -> None:
    # from: the envelope sender or the From header; to: a recipient or the To header.
    assert ids(search(hog, "from", "BOUNCE@shop")) == ["1"]  # envelope only
    assert ids(search(hog, "from", "noreply")) == ["1"]  # header only
    assert ids(search(hog, "from", "corp.test")) == ["2"]
    assert ids(search(hog, "to", "audit@")) == ["1"]  # a recipient not in To
    assert ids(search(hog, "to", "Ann")) == ["1"]
    assert ids(search(hog, "to", "x.test")) == ["1"]
    # containing: any header, or the body (mailsink looks in the decoded text, where MailHog
    # looks in the bytes as sent: "Café" is found, the quoted-printable "Caf=C3=A9" is not).
    assert ids(search(hog, "containing", "Weekly")) == ["3"]
    assert ids(search(hog, "containing", "plain words")) == ["3"]
    assert ids(search(hog, "containing", "café")) == ["2"]
    page = search(hog, "containing", "4711")
    assert (page["total"], page["count"], ids(page)) == (1, 1, ["2"])
    # The query is text, never mailsink's language: quotes, colons, % and _ are themselves.
    assert ids(search(hog, "containing", 'say "hi": now')) == ["2"]
    assert ids(search(hog, "containing", "50% off_sale")) == ["2"]
    assert ids(search(hog, "containing", "subject:Weekly")) == []
    for wildcard in ("%", "_", "%_%"):
        assert search(hog, "from", wildcard)["total"] == 0
    assert search(hog, "containing", "nowhere-at-all")["items"] == []
    # Paging applies to the matches.
    page = search(hog, "containing", "test")
    assert (page["total"], ids(page)) == (3, ["3", "2", "1"])
    status, headers, body = get(hog, "/api/v2/search?kind=to&query=x.test&start=1&limit=1")
    assert headers["Content-Type"] == "application/json"  # api/v2.go search
    assert json.loads(body)["total"] == 1 and json.loads(body)["items"] == []
    for bad, name in (("kind=subject&query=x", "kind"), ("kind=from&query=", "query")):
        status, _, body = get(hog, f"/api/v2/search?{bad}")
        assert status == 400 and json.loads(body)["error"].startswith(name)


def test_download_then_delete(hog: RunningSink) -> None:
    status, headers, body = get(hog, "/api/v1/messages/2/download")
    assert status == 200
    assert headers["Content-Type"] == "message/rfc822"  # api/v1.go download
    assert headers["Content-Disposition"] == 'attachment; filename="2.eml"'
    with hog.reader() as reader:
        assert body == reader.get_raw(2)
    assert get(hog, "/api/v1/messages/999/download")[0] == 404

    def delete(path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(hog.url + path, method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    # An empty 200: the npm client resolves an empty body as the response, parses any other.
    assert delete("/api/v1/messages/2") == (200, b"")
    assert delete("/api/v1/messages/2")[0] == 404
    assert get(hog, "/api/v1/messages/2")[0] == 404
    assert ids(get_json(hog, "/api/v2/messages")) == ["3", "1"]


def _nest(depth: int, payload: bytes) -> bytes:
    """`payload` as a base64 part inside `depth` multiparts, each with a boundary of its own."""
    body = b"Content-Type: application/octet-stream\r\n\r\n" + payload
    for level in range(depth, 0, -1):
        boundary = b"=_b%02d_=" % level
        body = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
            + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--"
        )  # fmt: skip
    return body


def test_bounds_on_nesting_headers_and_a_message_deleted_meanwhile(hog: RunningSink) -> None:
    payload = b"QUJD" * 150_000 + b"\r\n"  # 600 kB of base64
    nested = b"From: s@x.test\r\nSubject: deep\r\n" + _nest(12, payload) + b"\r\n"
    fields = b"".join(b"X-Many-%d: v\r\n" % n for n in range(1500))
    repeated = b"Received: from a\r\nReceived: from b\r\nReturn-Path: <mine@x.test>\r\n"
    with smtplib.SMTP(hog.host, hog.port) as smtp:
        smtp.sendmail("s@x.test", ["a@x.test"], nested)
        smtp.sendmail("s@x.test", ["a@x.test"], repeated + fields + b"\r\nbody\r\n")
    newest = get_json(hog, "/api/v2/messages?limit=2")["items"]
    deep_id, many_id = newest[1]["ID"], newest[0]["ID"]
    status, _, body = get(hog, f"/api/v1/messages/{deep_id}")
    # Unbounded, each of the 12 levels repeats the message: 14 times its size as text. The
    # nested levels may add at most 2 x size + 1 MiB to the three copies of the top level.
    assert status == 200 and len(body) < 5 * len(nested) + 1024 * 1024 + 64 * 1024
    depth, mime = 0, json.loads(body)["MIME"]
    while mime is not None:
        depth, part = depth + 1, mime["Parts"][0]
        mime = part["MIME"]
    assert 2 <= depth < 12  # split while the budget lasted, then one undecomposed part
    assert part["Body"].endswith("--")  # ... that holds the rest of the message
    # As MailHog's ContentFromString: a field again replaces its earlier value; Return-Path
    # gets the envelope sender appended. At most 1000 fields are read from one section.
    headers = get_json(hog, f"/api/v1/messages/{many_id}")["Content"]["Headers"]
    assert headers["Received"] == ["from b"]
    assert headers["Return-Path"] == ["<mine@x.test>", "<s@x.test>"]
    assert len(headers) == 2 + 997 and "X-Many-996" in headers and "X-Many-997" not in headers
    # A message deleted while a page is being built is left out, not listed empty.
    from mailsink.http.mailhog_api import _items, _Kept, _kept

    with hog.reader() as reader:
        records = reader.list_messages(limit=2)
        request = urllib.request.Request(f"{hog.url}/api/v1/messages/{deep_id}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()
        listed = _items(reader, _Kept(), records)
        assert [json.loads(item)["ID"] for item in listed] == [many_id]
    # A page's items are kept as JSON for the next poll: the same answer, no parse again.
    first = urllib.request.urlopen(f"{hog.url}/api/v2/messages?limit=5", timeout=10).read()
    assert str(many_id) in {str(i) for i in _kept(hog.sink).items}
    assert urllib.request.urlopen(f"{hog.url}/api/v2/messages?limit=5", timeout=10).read() == first
    urllib.request.urlopen(
        urllib.request.Request(f"{hog.url}/api/v1/messages/{many_id}", method="DELETE"), timeout=10
    ).close()


def test_kept_items_escapes_and_long_folded_fields(
    hog: RunningSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsink.http import mailhog_api

    control = b"From: c@x.test\r\nSubject: ctl\r\n\r\n" + b"\x01" * 10_000 + b"\r\n"
    recipients = b",\r\n ".join(b"r%d@x.test" % n for n in range(9000))
    folded = (
        b"From: f@x.test\r\nTo: " + recipients + b"\r\nSubject: after the long To\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\npart\r\n--b--\r\n"
    )
    with smtplib.SMTP(hog.host, hog.port) as smtp:
        smtp.sendmail("c@x.test", ["a@x.test"], control)
        smtp.sendmail("c@x.test", ["a@x.test"], control)
        smtp.sendmail("f@x.test", ["a@x.test"], folded)
    # A To: folded once a recipient: the fields after it are still fields, not glued on.
    newest = get_json(hog, "/api/v2/messages?limit=1")["items"][0]
    headers = newest["Content"]["Headers"]
    assert headers["Subject"] == ["after the long To"] and "Subject" not in headers["To"][0]
    assert headers["To"][0].count("@x.test") == 9000 and newest["MIME"] is not None
    # The page counts the JSON it sends: a control byte is six bytes of it (\u0001), so two
    # such messages of 10 kB are ~120 kB of JSON though their bytes count 60 kB.
    monkeypatch.setattr(mailhog_api, "PAGE_TEXT", 150_000)
    page = get_json(hog, "/api/v2/messages?start=1&limit=2")
    assert page["count"] == 1 and page["items"][0]["Content"]["Body"].startswith("\x01")
    monkeypatch.undo()
    # A kept item is never listed for a message deleted after the page's rows were read.
    kept = mailhog_api._Kept()
    with hog.reader() as reader:
        records = reader.list_messages(limit=3)
        assert len(mailhog_api._items(reader, kept, records)) == 3  # now kept
        gone = records[1].id
        urllib.request.urlopen(
            urllib.request.Request(f"{hog.url}/api/v1/messages/{gone}", method="DELETE"), timeout=10
        ).close()
        listed = [json.loads(item)["ID"] for item in mailhog_api._items(reader, kept, records)]
        assert listed == [str(records[0].id), str(records[2].id)]
