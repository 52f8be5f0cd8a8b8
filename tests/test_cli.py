"""The CLI against a store filled by the real server."""

from __future__ import annotations

import email
import json
import mailbox
import signal
import smtplib
import subprocess
import sys

import pytest
from conftest import free_port, mailsink_process, message, run_cli, wait_for_port

ATTACHED = (
    b"From: Billing <billing@shop.test>\r\nTo: a@x.test\r\nSubject: Invoice\r\n"
    b"Date: Fri, 27 Nov 2026 23:10:00 +0000\r\nMessage-ID: <inv@shop.test>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour invoice.\r\n"
    b"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Your <b>invoice</b>.</p>\r\n"
    b"--XX\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename=invoice.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
)


@pytest.fixture
def filled(sink):
    """Three messages: a hidden recipient, an attachment, a Bcc header."""
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail(
            "bounce@app.test", ["a@x.test", "hidden@y.test"], message(subject="Welcome")
        )
        client.sendmail("billing@shop.test", ["a@x.test"], ATTACHED)
        client.sendmail(
            "noreply@shop.test",
            ["a@x.test", "c@z.test"],
            message(
                sender="noreply@shop.test",
                subject="[bold red]Boom[/] \x1b[31mred",
                extra="Bcc: c@z.test\r\n",
            ),
        )
    return sink


def test_list_table_newest_first(filled):
    result = run_cli("list", "--db", filled.db)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:4] == ["ID", "RECEIVED", "MAIL", "FROM"]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    assert "hidden@y.test" in lines[3] and "Welcome" in lines[3]
    assert "\x1b" not in result.out and "␛[31mred" in result.out


def test_list_json_contract(filled):
    result = run_cli("list", "--db", filled.db, "--json")
    summaries = json.loads(result.out)
    assert [s["id"] for s in summaries] == [3, 2, 1]
    first = summaries[2]
    assert list(first) == [
        "id",
        "received_at",
        "status",
        "reply",
        "reply_rule",
        "mail_from",
        "rcpt_to",
        "rcpt_refused",
        "from",
        "to",
        "subject",
        "size",
        "findings",
        "read",
        "tags",
    ]
    assert (first["read"], first["tags"]) == (False, [])
    assert (first["reply"], first["reply_rule"], first["rcpt_refused"]) == (None, None, [])
    assert first["mail_from"] == "bounce@app.test"
    assert first["rcpt_to"] == ["a@x.test", "hidden@y.test"]
    assert first["from"] == ["Shop <noreply@shop.test>"] and first["to"] == ["a@x.test"]
    assert "hidden_recipient" in first["findings"]
    assert first["received_at"].endswith("Z") and first["status"] == "accepted"


def test_list_limit_search_and_findings_filters(filled):
    assert [
        s["id"] for s in json.loads(run_cli("list", "--db", filled.db, "--json", "-n", "2").out)
    ] == [3, 2]
    assert [
        s["id"]
        for s in json.loads(run_cli("list", "--db", filled.db, "--json", "--limit", "100000").out)
    ] == [3, 2, 1]
    found = json.loads(run_cli("list", "--db", filled.db, "--json", "--search", "INVOICE").out)
    assert [s["id"] for s in found] == [2]
    found = json.loads(run_cli("list", "--db", filled.db, "--json", "--search", "hidden@").out)
    assert [s["id"] for s in found] == [1]
    assert json.loads(run_cli("list", "--db", filled.db, "--json", "--search", "100%_").out) == []
    with_findings = json.loads(run_cli("list", "--db", filled.db, "--json", "--findings").out)
    assert [s["id"] for s in with_findings] == [3, 1]


def test_show_json_contract(filled):
    data = json.loads(run_cli("show", "2", "--db", filled.db, "--json").out)
    assert list(data) == [
        "id",
        "received_at",
        "size",
        "session_id",
        "status",
        "reply",
        "reply_rule",
        "envelope",
        "headers",
        "findings",
        "read",
        "tags",
        "attachments",
        "text",
        "html",
        "releases",
    ]
    assert data["releases"] == []  # never released (tests/test_release_cli.py: the records)
    assert list(data["envelope"]) == [
        "mail_from",
        "rcpt_to",
        "mail_options",
        "rcpt_options",
        "helo",
        "peer",
        "auth_user",
        "tls",
        "rcpt_refused",
    ]
    assert data["envelope"] == {
        "mail_from": "billing@shop.test",
        "rcpt_to": ["a@x.test"],
        "mail_options": [f"SIZE={len(ATTACHED)}"],
        "rcpt_options": [[]],
        "helo": data["envelope"]["helo"],
        "peer": data["envelope"]["peer"],
        "auth_user": None,
        "tls": False,
        "rcpt_refused": [],
    }
    assert data["headers"] == {
        "from": ["Billing <billing@shop.test>"],
        "sender": None,
        "reply_to": [],
        "to": ["a@x.test"],
        "cc": [],
        "bcc": [],
        "subject": "Invoice",
        "date": "Fri, 27 Nov 2026 23:10:00 +0000",
        "message_id": "<inv@shop.test>",
    }
    assert (data["reply"], data["reply_rule"]) == (None, None)
    assert data["findings"] == []
    assert data["attachments"] == [
        {"filename": "invoice.pdf", "content_type": "application/pdf", "size": 9}
    ]
    assert data["text"] == "Your invoice."  # the CRLF before a boundary belongs to it
    assert data["html"] == "<p>Your <b>invoice</b>.</p>"
    assert data["size"] == len(ATTACHED)


def test_show_text_latest_shows_envelope_headers_and_findings_safely(filled):
    result = run_cli("show", "latest", "--db", filled.db)
    assert result.code == 0
    assert "Message 3" in result.out
    assert "MAIL FROM  noreply@shop.test" in result.out
    assert "c@z.test" in result.out
    assert "bcc_header_present" in result.out and "hidden_recipient" in result.out
    assert "[bold red]Boom[/] ␛[31mred" in result.out and "\x1b" not in result.out


def test_show_raw_headers_and_session(filled):
    raw = subprocess.run(
        [sys.executable, "-m", "mailsink", "show", "2", "--db", filled.db, "--raw"],
        capture_output=True,
        check=True,
    )
    assert raw.stdout == ATTACHED  # not a terminal: the bytes exactly as stored
    headers = run_cli("show", "2", "--db", filled.db, "--headers").out.splitlines()
    assert headers[:3] == ["From: Billing <billing@shop.test>", "To: a@x.test", "Subject: Invoice"]
    session = run_cli("show", "2", "--db", filled.db, "--session").out
    assert "S: 250 2.0.0 Ok: queued as 2" in session


def test_show_errors_are_one_line(filled, tmp_path):
    for args, expected in (
        (["show", "99"], "mailsink: no message 99\n"),
        (["show", "abc"], "mailsink: 'abc' is not a message id (a number, or 'latest')\n"),
    ):
        result = run_cli(*args, "--db", filled.db)
        assert (result.code, result.err) == (1, expected)
    missing = tmp_path / "missing.db"
    result = run_cli("list", "--db", str(missing))
    assert (
        result.code == 1
        and result.err == f"mailsink: no store at {missing} (start `mailsink serve` or pass --db)\n"
    )
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    result = run_cli("list", "--db", str(garbage))
    assert result.code == 1 and result.err.count("\n") == 1 and "not a mailsink store" in result.err
    result = run_cli("list", "--frobnicate")
    assert result.code == 2 and result.err.count("\n") == 1 and "--frobnicate" in result.err


def test_sessions_and_session_transcript(filled):
    filled.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason)
    listing = run_cli("sessions", "--db", filled.db)
    assert listing.code == 0
    assert "quit" in listing.out and "127.0.0.1:" in listing.out
    sessions = json.loads(run_cli("sessions", "--db", filled.db, "--json").out)
    assert sessions[0]["messages"] == [1, 2, 3] and sessions[0]["end_reason"] == "quit"
    transcript = run_cli("session", str(sessions[0]["id"]), "--db", filled.db)
    assert "S: 220 mailsink ESMTP mailsink" in transcript.out
    assert "C: [message data:" in transcript.out
    detail = json.loads(run_cli("session", str(sessions[0]["id"]), "--db", filled.db, "--json").out)
    assert detail["transcript"][0] == {
        "at": detail["transcript"][0]["at"],
        "direction": "S",
        "text": "220 mailsink ESMTP mailsink",
    }
    assert run_cli("session", "999", "--db", filled.db).err == "mailsink: no session 999\n"


def test_export_eml_mbox_maildir(filled, tmp_path):
    with filled.reader() as reader:
        raws = {i: reader.get_raw(i) for i in (1, 2, 3)}
    result = run_cli("export", "--db", filled.db, "--format", "eml", "--out", str(tmp_path / "eml"))
    assert result.code == 0 and "exported 3 message(s)" in result.out
    assert {p.name: p.read_bytes() for p in (tmp_path / "eml").iterdir()} == {
        f"{i}.eml": raws[i] for i in raws
    }

    run_cli(
        "export",
        "1",
        "2",
        "--db",
        filled.db,
        "--format",
        "mbox",
        "--out",
        str(tmp_path / "out.mbox"),
    )
    box = mailbox.mbox(tmp_path / "out.mbox")
    assert [m["Subject"] for m in box] == ["Welcome", "Invoice"]
    assert box[0].get_from().startswith("bounce@app.test ")

    run_cli("export", "3", "--db", filled.db, "--format", "maildir", "--out", str(tmp_path / "md"))
    (entry,) = list(mailbox.Maildir(tmp_path / "md"))
    assert email.message_from_bytes(entry.as_bytes())["Bcc"] == "c@z.test"

    result = run_cli("export", "7", "--db", filled.db, "--out", str(tmp_path / "none"))
    assert (result.code, result.err) == (1, "mailsink: no message 7; nothing exported\n")
    assert not (tmp_path / "none").exists()


def test_clear(filled):
    assert run_cli("clear", "--db", filled.db).out == "deleted 3 message(s)\n"
    assert run_cli("list", "--db", filled.db).out == "no messages\n"
    assert (
        run_cli("show", "latest", "--db", filled.db).err == "mailsink: the store has no messages\n"
    )


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["list"], ["show"], ["sessions"], ["session"], ["export"], ["clear"]]
)
def test_help_everywhere(command):
    result = run_cli(*command, "--help")
    assert result.code == 0 and result.out.startswith("Usage: mailsink")


def test_serve_logs_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    db = tmp_path / "serve.db"
    process = mailsink_process("serve", "--port", str(port), "--db", str(db))
    try:
        wait_for_port(port)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("a@x.test", ["b@x.test"], message(subject="logged"))
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    log = err.decode()
    assert process.returncode == 0, log
    assert f"listening on 127.0.0.1:{port}" in log
    assert "message 1 from <a@x.test> to <b@x.test>" in log and "'logged'" in log
    assert "session 1 127.0.0.1:" in log and "ended (quit)" in log
    assert log.rstrip().endswith("stopped")
    assert "Traceback" not in log


def test_bare_mailsink_runs_the_server_and_port_in_use_is_one_line(tmp_path):
    port = free_port()
    process = mailsink_process("--port", str(port), "--db", str(tmp_path / "bare.db"))
    try:
        wait_for_port(port)
        second = mailsink_process("serve", "--port", str(port), "--db", str(tmp_path / "other.db"))
        _, err = second.communicate(timeout=15)
        assert second.returncode == 1
        assert (
            err.decode().splitlines()[-1].startswith(f"mailsink: cannot listen on 127.0.0.1:{port}")
        )
        assert "Traceback" not in err.decode()
        locked = mailsink_process("serve", "--port", "0", "--db", str(tmp_path / "bare.db"))
        _, err = locked.communicate(timeout=15)
        assert locked.returncode == 1
        assert err.decode().endswith(
            f"mailsink: another mailsink server is using {tmp_path / 'bare.db'}\n"
        )
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
    assert process.returncode == 0
