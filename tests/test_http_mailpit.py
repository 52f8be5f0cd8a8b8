"""Mailpit v1's reading and state routes over real HTTP, against messages sent over real SMTP.

The key sets below are Mailpit's own: the `definitions` of its swagger document
(server/ui/api/v1/swagger.json in axllent/mailpit at 408b30d) and, for the legacy `count` of
a list, the MessagesSummary struct of server/apiv1/messages.go. PartIDs are enmime's numbering
(jhillyerd/enmime part.go: root "0", children "1", "2", a nested multipart's children
"N.1", "N.2" and the multipart itself "N.0").
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsink.events import MessagesDeleted
from mailsink.testing import RunningSink

# swagger.json definitions (Mailpit 408b30d)
MESSAGES_SUMMARY = {
    "messages",
    "messages_count",
    "messages_unread",
    "start",
    "tags",
    "total",
    "unread",
}
MESSAGE_SUMMARY = {
    *("Attachments", "Bcc", "Cc", "Created", "From", "ID", "MessageID", "Read", "ReplyTo"),
    *("Size", "Snippet", "Subject", "Tags", "To", "Username"),
}
MESSAGE = {
    *("Attachments", "Bcc", "Cc", "Date", "From", "HTML", "ID", "Inline", "ListUnsubscribe"),
    *("MessageID", "ReplyTo", "ReturnPath", "Size", "Subject", "Tags", "Text", "To", "Username"),
}
ATTACHMENT = {"Checksums", "ContentID", "ContentType", "FileName", "PartID", "Size"}
LIST_UNSUBSCRIBE = {"Errors", "Header", "HeaderPost", "Links"}
APP_INFORMATION = {
    *("Database", "DatabaseSize", "LatestVersion", "Messages", "RuntimeStats", "Tags"),
    *("Unread", "Version"),
}
RUNTIME_STATS = {
    *("Memory", "MessagesDeleted", "SMTPAccepted", "SMTPAcceptedSize", "SMTPIgnored"),
    *("SMTPRejected", "Uptime"),
}
WEBUI = {
    *("ChaosEnabled", "DuplicatesIgnored", "HideDeleteAllButton", "Label", "MessageRelay"),
    "SpamAssassin",
}
# mailsink's additions to the summary and the message
EXTRAS = {"Envelope", "Findings", "Status"}
ENVELOPE = {"mail_from", "rcpt_to", "rcpt_refused", "helo", "peer", "tls", "auth_user"}

PNG = bytes.fromhex("89504e470d0a1a0a")
PDF = b"%PDF-1.4"
MIXED = (
    b"From: Zoe Example <zoe@x.test>\r\n"
    b"To: Bob <bob@x.test>\r\n"
    b"Cc: carol@x.test\r\n"
    b"Subject: parts\r\n"
    b"message-id: <parts-1@x.test>\r\n"
    b"x-custom-header: folded\r\n  value\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=B1\r\n\r\n"
    b"--B1\r\nContent-Type: multipart/related; boundary=B2\r\n\r\n"
    b"--B2\r\nContent-Type: multipart/alternative; boundary=B3\r\n\r\n"
    b"--B3\r\nContent-Type: text/plain\r\n\r\nThe plain   text\r\nof the parts message\r\n"
    b'--B3\r\nContent-Type: text/html\r\n\r\n<p>The <b>HTML</b> <img src="cid:logo"></p>\r\n'
    b"--B3--\r\n"
    b"--B2\r\nContent-Type: image/png\r\nContent-ID: <logo>\r\n"
    b'Content-Disposition: inline; filename="logo.png"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
    b"--B2--\r\n"
    b'--B1\r\nContent-Type: application/pdf; name="doc.pdf"\r\n'
    b'Content-Disposition: attachment; filename="doc.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n"
    b"--B1--\r\n"
)
# 8-bit bytes that are not UTF-8, a bare CR and a bare LF: kept exactly as received
ODD = (
    b"From: odd@x.test\r\nTo: bob@x.test\r\nSubject: odd bytes\r\n\r\n"
    b"caf\xe9 \xff\xfe bare\rCR and bare\nLF\r\n"
)


def plain(subject: str, to: str = "bob@x.test") -> bytes:
    return (
        f"From: app@x.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def mailpit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSink]:
    directory: Path = tmp_path_factory.mktemp("mailpit")
    config = directory / "mailsink.toml"
    config.write_text(
        '[[fault]]\nname = "refuse"\nstage = "data"\nreply = "554 5.7.1 Refused"\n'
        '[fault.match]\nheader = { Subject = "^rejected" }\n'
    )
    with RunningSink(directory / "mail.db", config=config) as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            # id 1: a Bcc recipient only the envelope names
            client.sendmail("bounce@x.test", ["bob@x.test", "hidden@x.test"], MIXED)
            client.sendmail("odd@x.test", ["bob@x.test"], ODD)  # id 2
            for n in range(3, 8):  # ids 3..7
                client.sendmail(f"list{n}@x.test", ["bob@x.test"], plain(f"list {n}"))
            with pytest.raises(smtplib.SMTPDataError):  # id 8, stored as rejected
                client.sendmail("r@x.test", ["bob@x.test"], plain("rejected 8"))
        yield sink


def call(sink: RunningSink, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(sink.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def get_json(sink: RunningSink, path: str) -> Any:
    status, _headers, body = call(sink, "GET", path)
    assert status == 200, (path, body)
    return json.loads(body)


def test_list_has_mailpits_keys_pages_and_computes_bcc(mailpit: RunningSink) -> None:
    page = get_json(mailpit, "/api/v1/messages?limit=2")
    assert set(page) == MESSAGES_SUMMARY | {"count"}
    assert (page["total"], page["messages_count"], page["count"], page["start"]) == (7, 7, 2, 0)
    assert [m["ID"] for m in page["messages"]] == ["7", "6"]
    summary = page["messages"][0]
    assert set(summary) == MESSAGE_SUMMARY | EXTRAS
    assert set(summary["Envelope"]) == ENVELOPE
    assert summary["Created"].endswith("Z") and summary["Created"][10] == "T"
    assert summary["Snippet"] == "body of list 7"
    assert summary["Status"] == "accepted"

    later = get_json(mailpit, "/api/v1/messages?start=5&limit=50")
    assert [m["ID"] for m in later["messages"]] == ["2", "1"] and later["start"] == 5
    first = later["messages"][1]
    assert first["From"] == {"Name": "Zoe Example", "Address": "zoe@x.test"}
    assert first["To"] == [{"Name": "Bob", "Address": "bob@x.test"}]
    assert first["Cc"] == [{"Name": "", "Address": "carol@x.test"}]
    # Bcc: computed from the envelope (nothing names hidden@ in the headers)
    assert first["Bcc"] == [{"Name": "", "Address": "hidden@x.test"}]
    assert first["MessageID"] == "parts-1@x.test" and first["Attachments"] == 1
    assert first["Snippet"].startswith("The HTML")  # Mailpit's snippet prefers the HTML


def test_message_shape_parts_numbered_as_mailpit_and_read_marked(mailpit: RunningSink) -> None:
    assert get_json(mailpit, "/api/v1/messages?start=6&limit=1")["messages"][0]["Read"] is False
    message = get_json(mailpit, "/api/v1/message/1")
    assert set(message) == MESSAGE | EXTRAS
    assert set(message["ListUnsubscribe"]) == LIST_UNSUBSCRIBE
    assert message["ReturnPath"] == "bounce@x.test"
    assert message["Date"] == "2026-12-01T10:00:00+01:00"
    assert message["Text"] == "The plain   text\nof the parts message"
    assert message["HTML"].startswith("<p>The <b>HTML</b>")
    [inline] = message["Inline"]
    [attached] = message["Attachments"]
    assert set(inline) == set(attached) == ATTACHMENT
    assert (inline["PartID"], inline["ContentID"], inline["FileName"]) == (
        "1.2",
        "logo",
        "logo.png",
    )
    assert (attached["PartID"], attached["ContentType"]) == ("2", "application/pdf")
    assert attached["Checksums"]["SHA256"] == hashlib.sha256(PDF).hexdigest()
    assert attached["Size"] == len(PDF)
    status, headers, body = call(mailpit, "GET", "/api/v1/message/1/part/1.2")
    assert (status, body, headers["Content-Type"]) == (200, PNG, "image/png")
    assert call(mailpit, "GET", "/api/v1/message/1/part/2")[2] == PDF
    assert call(mailpit, "GET", "/api/v1/message/1/part/1.1.1")[0] == 404  # a body, not listed
    # reading it marked it read
    assert get_json(mailpit, "/api/v1/messages?start=6&limit=1")["messages"][0]["Read"] is True


def test_latest_headers_and_raw_bytes(mailpit: RunningSink) -> None:
    assert get_json(mailpit, "/api/v1/message/latest")["ID"] == "7"  # 8 was rejected
    query = urllib.parse.quote("mailfrom:list4@")  # a mailsink-only prefix
    assert get_json(mailpit, f"/api/v1/message/latest?query={query}")["ID"] == "4"
    assert call(mailpit, "GET", "/api/v1/message/latest?query=subject:nothing-like-it")[0] == 404
    found = get_json(mailpit, "/api/v1/message/1/headers")
    assert list(found) == sorted(found)
    assert found["Message-Id"] == ["<parts-1@x.test>"]  # Go's CanonicalMIMEHeaderKey
    assert found["X-Custom-Header"] == ["folded value"]
    assert found["Mime-Version"] == ["1.0"]
    status, headers, body = call(mailpit, "GET", "/api/v1/message/2/raw")
    assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert ODD in body and body.endswith(ODD)  # the server's Received line, then the bytes
    _, headers, _ = call(mailpit, "GET", "/api/v1/message/2/raw?dl=1")
    assert headers["Content-Disposition"] == 'attachment; filename="2.eml"'


def test_views_are_served_under_a_policy_and_by_the_doubled_slash(mailpit: RunningSink) -> None:
    status, headers, body = call(mailpit, "GET", "/view/1.html")
    assert status == 200 and body.startswith(b"<p>The <b>HTML</b>")
    assert headers["Content-Security-Policy"] == (
        "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; sandbox"
    )
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert call(mailpit, "GET", "//view/1.html")[2] == body
    assert call(mailpit, "GET", "//view/latest.txt")[2] == b"body of list 7\n"
    assert call(mailpit, "GET", "/view/3.html")[0] == 404  # no HTML part
    for path in ("/view/999.html", "/view/abc.html", "/api/v1/message/999", "/api/v1/message/x1"):
        status, headers, _ = call(mailpit, "GET", path)
        assert status == 404 and headers["Content-Type"].startswith("text/plain"), path


def test_search_with_mailsink_prefixes_and_a_bad_one(mailpit: RunningSink) -> None:
    rejected = get_json(mailpit, "/api/v1/search?query=status:rejected")
    assert [m["ID"] for m in rejected["messages"]] == ["8"] and rejected["total"] == 7
    assert rejected["messages"][0]["Status"] == "rejected"
    found = get_json(mailpit, "/api/v1/search?query=" + urllib.parse.quote("helo:127 subject:list"))
    assert found["messages_count"] == 5 and found["total"] == 7
    assert {m["ID"] for m in found["messages"]} == {"3", "4", "5", "6", "7"}
    assert found["messages_unread"] <= 5
    status, headers, body = call(mailpit, "GET", "/api/v1/search?query=nosuch:x")
    assert status == 400 and body.startswith(b"query: ")
    assert headers["Content-Type"].startswith("text/plain")
    assert call(mailpit, "GET", "/api/v1/search")[0] == 400
    # Paging as Mailpit's getStartLimit (server/apiv1/api.go): strconv.Atoi reads "+2";
    # what it cannot read, a start below 1 or a limit below 0 is the default, never a 400.
    for path in ("/api/v1/messages", "/api/v1/search?query=subject:list&"):
        path += "" if path.endswith("&") else "?"
        signed = get_json(mailpit, path + "start=%2B1&limit=%2B2")
        assert (signed["start"], len(signed["messages"])) == (1, 2)
        default = get_json(mailpit, path)
        for fallback in (
            "limit=-1",
            "limit=abc",
            "limit=1_0",
            "start=-1",
            "start=x",
            "start=" + "9" * 30,
        ):
            page = get_json(mailpit, path + fallback)
            assert (page["start"], page["messages"]) == (0, default["messages"]), fallback
        assert get_json(mailpit, path + f"start={2**63 - 1}")["messages"] == []


def test_read_state_by_ids_by_search_and_for_all(mailpit: RunningSink) -> None:
    def unread() -> int:
        return get_json(mailpit, "/api/v1/messages")["unread"]

    assert call(mailpit, "PUT", "/api/v1/messages", {"Read": True})[2] == b"ok"
    assert unread() == 0
    assert call(mailpit, "PUT", "/api/v1/messages", {"IDs": ["3", "4"], "Read": False})[0] == 200
    assert unread() == 2
    call(mailpit, "PUT", "/api/v1/messages", {"Search": "subject:odd", "Read": False})
    assert unread() == 3
    call(mailpit, "PUT", "/api/v1/messages", {"Read": False})
    assert unread() == 7
    both = {"IDs": ["3"], "Search": "x", "Read": True}
    assert call(mailpit, "PUT", "/api/v1/messages", both)[0] == 400
    assert call(mailpit, "PUT", "/api/v1/messages", {"Search": "bad:x"})[2].startswith(b"Search:")


def test_tags_set_rename_and_delete(mailpit: RunningSink) -> None:
    assert call(mailpit, "PUT", "/api/v1/tags", {"IDs": ["5", "6"], "Tags": ["alpha", "Beta"]})[0]
    assert get_json(mailpit, "/api/v1/tags") == ["Beta", "alpha"]
    call(mailpit, "PUT", "/api/v1/tags", {"IDs": ["6"], "Tags": ["gamma"]})  # exactly these
    assert get_json(mailpit, "/api/v1/message/6")["Tags"] == ["gamma"]
    assert call(mailpit, "PUT", "/api/v1/tags", {"IDs": ["5"], "Tags": ["Straße"]})[0] == 400
    assert call(mailpit, "PUT", "/api/v1/tags/alpha", {"Name": "renamed"})[0] == 200
    assert get_json(mailpit, "/api/v1/message/5")["Tags"] == ["Beta", "renamed"]
    assert call(mailpit, "PUT", "/api/v1/tags/renamed", {"Name": "gamma"})[0] == 400  # exists
    assert call(mailpit, "PUT", "/api/v1/tags/nosuch", {"Name": "x"})[0] == 400
    assert call(mailpit, "DELETE", "/api/v1/tags/Beta")[0] == 200
    assert get_json(mailpit, "/api/v1/tags") == ["gamma", "renamed"]
    assert get_json(mailpit, "/api/v1/info")["Tags"] == {"gamma": 1, "renamed": 1}

    # The list's summaries are kept between polls, never past a change of read state or tags.
    def listed(message_id: str) -> dict[str, Any]:
        page = get_json(mailpit, "/api/v1/messages?limit=1000")["messages"]
        return next(item for item in page if item["ID"] == message_id)

    before = listed("6")
    assert listed("6") == before and before["Tags"] == ["gamma"]
    call(mailpit, "PUT", "/api/v1/tags", {"IDs": ["6"], "Tags": ["delta", "Gamma", "beta"]})
    call(mailpit, "PUT", "/api/v1/messages", {"IDs": ["6"], "Read": not before["Read"]})
    after = listed("6")
    assert after["Tags"] == ["beta", "delta", "gamma"] and after["Read"] is not before["Read"]
    assert {**after, "Tags": before["Tags"], "Read": before["Read"]} == before


def test_info_and_webui_have_mailpits_keys(mailpit: RunningSink) -> None:
    info = get_json(mailpit, "/api/v1/info")
    assert set(info) == APP_INFORMATION and set(info["RuntimeStats"]) == RUNTIME_STATS
    assert info["Messages"] == 7 and info["RuntimeStats"]["SMTPAccepted"] == 7
    assert info["DatabaseSize"] > 0 and info["Database"].endswith("mail.db")
    webui = get_json(mailpit, "/api/v1/webui")
    assert set(webui) == WEBUI and webui["ChaosEnabled"] is True


def test_delete_by_search_by_ids_then_all(mailpit: RunningSink) -> None:
    status, _, body = call(mailpit, "DELETE", "/api/v1/search?query=subject:odd")
    assert (status, body) == (200, b"")
    assert call(mailpit, "DELETE", "/api/v1/messages", {"IDs": ["3", "4"]})[2] == b""
    assert [m["ID"] for m in get_json(mailpit, "/api/v1/messages")["messages"]] == [
        "7",
        "6",
        "5",
        "1",
    ]
    assert call(mailpit, "GET", "/api/v1/message/3")[0] == 404
    request = urllib.request.Request(mailpit.url + "/api/v1/messages", b"not json", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:  # not JSON: all of them
        assert (response.status, response.read()) == (200, b"")
    assert get_json(mailpit, "/api/v1/messages")["total"] == 0
    assert call(mailpit, "GET", "/api/v1/message/8")[0] == 404  # the rejected one went too


# ---- after the store was emptied above: messages of the tests' own


def sent(sink: RunningSink, raw: bytes) -> str:
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("app@x.test", ["bob@x.test"], raw)
    return get_json(sink, "/api/v1/messages?limit=1")["messages"][0]["ID"]


def test_a_header_folded_4000_times_is_cut_and_a_head_reads_nothing(
    mailpit: RunningSink,
) -> None:
    folds, piece = 4000, " " + "b" * 20  # 84 KB of one value
    raw = (
        b"From: a@x.test\r\nSubject: fold\r\nX-F: a\r\n"
        + (piece + "\r\n").encode() * folds
        + b"\r\nbody\r\n"
    )
    message_id = sent(mailpit, raw)
    started = time.perf_counter()
    found = get_json(mailpit, f"/api/v1/message/{message_id}/headers")
    # Joined once (joined line by line it is quadratic: 300 000 folds took 10 s), and cut.
    assert time.perf_counter() - started < 2.0
    assert found["X-F"] == [("a" + piece * folds)[: 64 * 1024]]
    assert found["Subject"] == ["fold"]
    request = urllib.request.Request(f"{mailpit.url}/api/v1/message/{message_id}", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    summary = get_json(mailpit, "/api/v1/messages?limit=1")["messages"][0]
    assert summary["ID"] == message_id and summary["Read"] is False  # a HEAD marks nothing
    assert get_json(mailpit, f"/api/v1/message/{message_id}")["Subject"] == "fold"
    assert get_json(mailpit, "/api/v1/messages?limit=1")["messages"][0]["Read"] is True


HTML_ATTACHED = (
    b"From: a@x.test\r\nSubject: html part\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nsee the page\r\n"
    b'--B\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename="page.html"\r\n'
    b"\r\n<script>alert(1)</script>\r\n--B--\r\n"
)


def test_tags_null_ok_and_plain_errors_and_a_html_part_under_the_policy(
    mailpit: RunningSink,
) -> None:
    message_id = sent(mailpit, HTML_ATTACHED)
    status, headers, body = call(mailpit, "GET", f"/api/v1/message/{message_id}/part/2")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == (
        "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; sandbox"
    )
    assert call(mailpit, "PUT", "/api/v1/tags", {"IDs": [message_id], "Tags": ["a", "b"]})[0]
    # Tags null is Go's nil slice: every tag removed, as Mailpit does.
    nulled = call(mailpit, "PUT", "/api/v1/tags", {"IDs": [message_id], "Tags": None})
    assert nulled[0] == 200 and get_json(mailpit, f"/api/v1/message/{message_id}")["Tags"] == []
    call(mailpit, "PUT", "/api/v1/tags", {"IDs": [message_id], "Tags": ["kept"]})
    assert call(mailpit, "DELETE", "/api/v1/tags/nosuch")[:3:2] == (400, b"tag not found: nosuch")
    assert call(mailpit, "PUT", "/api/v1/tags/gone", {"Name": "x"})[2] == b"tag not found: gone"
    status, headers, body = call(mailpit, "DELETE", "/api/v1/tags/kept")  # tags.go: "ok"
    assert (status, body, headers["Content-Type"]) == (200, b"ok", "text/plain; charset=utf-8")


def test_many_ids_the_unknown_ones_cost_nothing(mailpit: RunningSink) -> None:
    kept = sent(mailpit, plain("kept"))
    gone = sent(mailpit, plain("gone"))
    unknown = [str(10**9 + n) for n in range(11_000)]  # past IDS_ON_LOOP
    marked = call(mailpit, "PUT", "/api/v1/messages", {"IDs": [*unknown, kept], "Read": True})
    assert marked[0] == 200
    assert get_json(mailpit, "/api/v1/search?query=subject:kept")["messages"][0]["Read"] is True
    events = mailpit.events(MessagesDeleted)
    assert call(mailpit, "DELETE", "/api/v1/messages", {"IDs": [*unknown, gone, gone]})[0] == 200
    # Only what was there is deleted (and announced), not 11 000 IDs that name nothing.
    [deleted] = events.until(MessagesDeleted)
    assert deleted.message_ids == (int(gone),)
    assert [m["ID"] for m in get_json(mailpit, "/api/v1/messages")["messages"]][:1] == [kept]
