"""What the server refused, as the CLI shows it: refused recipients, a rejected message's reply
and rule, sessions with refusals, and `list --findings KIND` (issue 13)."""

from __future__ import annotations

import json
import smtplib
import sqlite3

import pytest
from conftest import HOSTILE, RawClient, downgrade, message, run_cli
from conftest import REFUSAL_RULES as RULES
from rich.cells import cell_len

from mailsink.mail.envelope import Envelope, RefusedRecipient
from mailsink.mail.findings import KINDS
from mailsink.store import IncomingMessage, Store, run_here
from mailsink.store.operations import insert_message, insert_session, update_session
from mailsink.testing import RunningSink

HOSTILE_SHOWN = "[bold red]x␛[2J␇"


@pytest.fixture
def served(tmp_path):
    config = tmp_path / "faults.toml"
    config.write_text(RULES)
    with RunningSink(tmp_path / "mail.db", config=str(config)) as sink:
        yield sink


def _ended(sink: RunningSink, count: int) -> None:
    sink.wait_for(lambda r: len(s := r.list_sessions()) >= count and all(x.end_reason for x in s))


# ---- end to end: the real server answers, the CLI reads the store -------------------------


def test_a_recipient_refused_at_rcpt_is_shown_by_show_and_list(served):
    with smtplib.SMTP(served.host, served.port) as client:
        refused = client.sendmail(
            "app@shop.test",
            ["a@x.test", "full@x.test"],
            message(to="a@x.test, full@x.test", subject="Two recipients"),
        )
    assert refused == {"full@x.test": (452, b"4.2.2 Mailbox full")}
    db = served.db

    text = run_cli("show", "1", "--db", db).out
    lines = text.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("  RCPT TO"))
    assert lines[at] == "  RCPT TO    a@x.test"
    assert lines[at + 1] == (
        '             full@x.test  ✗ 452 4.2.2 Mailbox full  (rule "mailbox full")'
    )
    assert "Status:" not in text  # accepted: the first line says so, no reply to show

    data = json.loads(run_cli("show", "1", "--db", db, "--json").out)
    assert (data["status"], data["reply"], data["reply_rule"]) == ("accepted", None, None)
    assert data["envelope"]["rcpt_to"] == ["a@x.test"]
    assert data["envelope"]["rcpt_refused"] == [
        {
            "address": "full@x.test",
            "options": [],
            "reply": "452 4.2.2 Mailbox full",
            "rule": "mailbox full",
            "reason": "fault_rule",
        }
    ]
    (summary,) = json.loads(run_cli("list", "--db", db, "--json").out)
    assert summary["rcpt_to"] == ["a@x.test"] and summary["rcpt_refused"] == ["full@x.test"]
    assert (summary["reply"], summary["reply_rule"]) == (None, None)


# What a viewer from before rcpt_refused (issue 13) knows of a stored envelope: it builds
# Envelope(**data) and fails on any other key.
ENVELOPE_KEYS_BEFORE_REFUSALS = {
    "mail_from",
    "rcpt_to",
    "mail_options",
    "rcpt_options",
    "helo",
    "peer",
    "auth_user",
    "tls",
}


def test_an_envelope_without_refusals_is_stored_as_an_older_viewer_reads_it(served):
    with smtplib.SMTP(served.host, served.port) as client:
        client.sendmail("app@shop.test", ["a@x.test"], message())
        client.sendmail("app@shop.test", ["a@x.test", "full@x.test"], message())
    served.wait_for(lambda r: len(r.list_messages()) == 2)
    with sqlite3.connect(served.db) as conn:
        stored = dict(conn.execute("SELECT id, envelope FROM messages").fetchall())
    assert set(json.loads(stored[1])) == ENVELOPE_KEYS_BEFORE_REFUSALS
    assert set(json.loads(stored[2])) == ENVELOPE_KEYS_BEFORE_REFUSALS | {"rcpt_refused"}
    # show --json keeps its documented shape: rcpt_refused always there.
    clean = json.loads(run_cli("show", "1", "--db", served.db, "--json").out)
    assert clean["envelope"]["rcpt_refused"] == []
    refused = json.loads(run_cli("show", "2", "--db", served.db, "--json").out)
    assert [r["address"] for r in refused["envelope"]["rcpt_refused"]] == ["full@x.test"]


def test_a_message_rejected_at_data_shows_its_reply_and_rule(served):
    with smtplib.SMTP(served.host, served.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("app@shop.test", ["a@x.test"], message(subject="reject me"))
        assert refused.value.smtp_code == 452
    db = served.db
    assert json.loads(run_cli("list", "--db", db, "--json").out) == []  # accepted ones only
    (summary,) = json.loads(run_cli("list", "--db", db, "--all", "--json").out)
    assert summary["status"] == "rejected"
    assert summary["reply"] == "452 4.3.1 Insufficient system storage"
    assert summary["reply_rule"] == "storage full"

    data = json.loads(run_cli("show", "1", "--db", db, "--json").out)
    assert (data["status"], data["reply"], data["reply_rule"]) == (
        "rejected",
        "452 4.3.1 Insufficient system storage",
        "storage full",
    )
    lines = run_cli("show", "1", "--db", db).out.splitlines()
    assert lines[0].startswith("Message 1  rejected  ")
    assert lines[1] == (
        'Status: rejected — 452 4.3.1 Insufficient system storage (rule "storage full")'
    )


def test_a_session_whose_mail_from_was_refused_shows_its_last_refusal(served):
    with smtplib.SMTP(served.host, served.port) as client, pytest.raises(smtplib.SMTPSenderRefused):
        client.sendmail("ads@marketing.test", ["a@x.test"], message())
    with smtplib.SMTP(served.host, served.port) as client:
        client.sendmail("app@shop.test", ["a@x.test"], message())
    _ended(served, 2)
    db = served.db

    lines = run_cli("sessions", "--db", db).out.splitlines()
    assert [line.split()[0] for line in lines[1:] if line[:1].isdigit()] == ["2", "1"]
    refused_row = next(n for n, line in enumerate(lines) if line.startswith("1 "))
    refusal = lines[refused_row + 1 :]  # under its row (the last), wrapped at 80 columns
    assert refusal[0].startswith("        ✗ 1 refused, last: mail FROM:<ads@marketing.test>")
    assert all(len(line) <= 80 and line.startswith("        ") for line in refusal)
    assert " ".join(line.strip() for line in refusal).endswith(": 550 5.7.1 Sender not permitted")
    assert lines[refused_row - 1].startswith("2 ")  # session 2 refused nothing: no line

    only = run_cli("sessions", "--db", db, "--refusals").out.splitlines()
    assert [line.split()[0] for line in only[1:] if line[:1].isdigit()] == ["1"]
    (session,) = json.loads(run_cli("sessions", "--db", db, "--refusals", "--json").out)
    assert session["id"] == 1 and session["message_count"] == 0
    assert session["refusals"] == 1
    assert session["last_refusal"].startswith("mail FROM:<ads@marketing.test>")
    assert session["last_refusal"].endswith(": 550 5.7.1 Sender not permitted")
    everything = json.loads(run_cli("sessions", "--db", db, "--json").out)
    newest = everything[0]
    assert (newest["id"], newest["refusals"], newest["last_refusal"]) == (2, 0, None)
    transcript = run_cli("session", "1", "--db", db).out.splitlines()
    assert transcript[1].startswith("✗ 1 refused, last: mail FROM:<ads@marketing.test>")


def test_a_hostile_refused_address_is_inert_in_show_and_json(served):
    client = RawClient(served.host, served.port)
    try:
        client.command("EHLO app.test")
        assert client.command("MAIL FROM:<app@shop.test>")[0].startswith("250")
        assert client.command("RCPT TO:<a@x.test>")[0].startswith("250")
        assert client.command(f"RCPT TO:<{HOSTILE}@x.test>")[0].startswith("5")
        assert client.command("DATA")[0].startswith("354")
        assert client.command(message() + b".")[0].startswith("250")
        client.command("QUIT")
    finally:
        client.close()
    text = run_cli("show", "1", "--db", served.db).out
    assert "\x1b" not in text and "\x07" not in text
    # The second RCPT TO line: the address as given (it could not be parsed), the reply, why.
    (line,) = [line for line in text.splitlines() if "  ✗ " in line]
    assert line.startswith(" " * 13) and f"{HOSTILE_SHOWN}@x.test" in line, line
    assert "@x.test>  ✗ 501 5.1.3 " in line and line.endswith("  (reason: syntax)"), line
    raw = run_cli("show", "1", "--db", served.db, "--json").out
    assert "\x1b" not in raw and "\x07" not in raw
    (refused,) = json.loads(raw)["envelope"]["rcpt_refused"]
    assert HOSTILE in refused["address"] and refused["rule"] is None
    assert refused["reason"] == "syntax"


# ---- the same faces on a store filled with the writer's own operations ----------------------

BASE = 1_795_770_000_000


def _fill(path, *incoming: IncomingMessage, sessions: tuple[dict, ...] = ()) -> None:
    Store(str(path)).close()  # a new store, migrated
    run_here(str(path), insert_session, session_id=1, started_at=BASE, peer="127.0.0.1:1")
    for fields in sessions:
        session_id = fields["session_id"]
        run_here(str(path), insert_session, session_id=session_id, started_at=BASE, peer="p")
        run_here(str(path), update_session, events=[], started_at=BASE, peer="p", **fields)
    for message_ in incoming:
        run_here(str(path), insert_message, message=message_)


def test_hostile_refusals_and_replies_are_inert_in_every_cli_output(tmp_path):
    db = tmp_path / "mail.db"
    envelope = Envelope(
        "app@shop.test",
        ["a@x.test"],
        helo="h",
        peer="p",
        rcpt_refused=[
            RefusedRecipient(
                f"{HOSTILE}@x.test", ["NOTIFY=\x1b[1m"], f"452 4.2.2 {HOSTILE}\n452 more", HOSTILE
            ),
            RefusedRecipient("v@x.test", [], "553 5.1.3 Bad recipient", None, "validation"),
        ],
    )
    rejected = IncomingMessage(
        1,
        Envelope("app@shop.test", ["a@x.test"], helo="h", peer="p"),
        message(),
        BASE,
        status="rejected",
        reply=f"452 4.3.1 {HOSTILE}\n452 4.3.1 second line",
        reply_rule=HOSTILE,
    )
    _fill(
        db,
        IncomingMessage(1, envelope, message(), BASE),
        rejected,
        sessions=({"session_id": 2, "end_reason": "quit", "refusals": 3, "last_refusal": HOSTILE},),
    )
    shown = run_cli("show", "1", "--db", str(db)).out
    assert "\x1b" not in shown and "\x07" not in shown
    assert (
        f"             {HOSTILE_SHOWN}@x.test  NOTIFY=␛[1m  ✗ 452 4.2.2 {HOSTILE_SHOWN}"
        f'  (rule "{HOSTILE_SHOWN}")'
    ) in shown.splitlines()
    assert "             v@x.test  ✗ 553 5.1.3 Bad recipient  (reason: validation)" in shown
    lines = run_cli("show", "2", "--db", str(db)).out.splitlines()
    assert lines[1] == f'Status: rejected — 452 4.3.1 {HOSTILE_SHOWN} (rule "{HOSTILE_SHOWN}")'
    assert lines[2] == "          452 4.3.1 second line"
    for args in (
        ("show", "1", "--json"),
        ("show", "2", "--json"),
        ("list", "--all", "--json"),
        ("sessions", "--json"),
        ("sessions",),
    ):
        out = run_cli(*args, "--db", str(db)).out
        assert "\x1b" not in out and "\x07" not in out, args
    listed = json.loads(run_cli("list", "--all", "--json", "--db", str(db)).out)
    assert listed[0]["reply_rule"] == HOSTILE  # JSON escapes it and decodes to what it was
    assert listed[1]["rcpt_refused"] == [f"{HOSTILE}@x.test", "v@x.test"]
    sessions = run_cli("sessions", "--refusals", "--db", str(db)).out.splitlines()
    assert sessions[2] == f"        ✗ 3 refused, last: {HOSTILE_SHOWN}"
    assert run_cli("sessions", "--refusals", "-n", "1", "--db", str(db)).code == 0


def test_sessions_refusals_says_when_there_are_none(tmp_path):
    db = tmp_path / "mail.db"
    _fill(db)
    result = run_cli("sessions", "--refusals", "--db", str(db))
    assert (result.code, result.out, result.err) == (0, "no sessions with refusals\n", "")


def test_a_long_last_refusal_wraps_at_80_columns_in_three_lines_at_most(tmp_path):
    db = tmp_path / "mail.db"
    long = "RCPT TO:<" + "r" * 300 + "@x.test>: 452 4.2.2 Mailbox full"
    _fill(db, sessions=({"session_id": 2, "refusals": 1, "last_refusal": long},))
    lines = run_cli("sessions", "--db", str(db)).out.splitlines()
    start = next(n for n, line in enumerate(lines) if "refused" in line)
    refusal = lines[start : start + 3]
    assert lines[start + 3].startswith("1 ")  # then the next session's row
    assert refusal[-1].endswith("r…") and all(len(line) <= 80 for line in refusal)
    assert refusal[0].startswith("        ✗ 1 refused, last: RCPT TO:<rrr")


def test_a_last_refusal_of_wide_characters_wraps_at_80_terminal_cells(tmp_path):
    db = tmp_path / "mail.db"
    wide = "日本語のメールアドレス" * 6  # two cells a character
    last = f"RCPT TO:<{wide}@full.test>: 452 4.2.2 Mailbox full"
    _fill(db, sessions=({"session_id": 2, "refusals": 1, "last_refusal": last},))
    lines = run_cli("sessions", "--db", str(db)).out.splitlines()
    start = next(n for n, line in enumerate(lines) if "refused" in line)
    refusal = lines[start : lines.index(next(x for x in lines if x.startswith("1 ")))]
    assert [cell_len(line) for line in refusal] == [80, 80, 63]
    assert refusal[0] == f"        ✗ 1 refused, last: RCPT TO:<{wide[:22]}"
    assert "".join(refusal).replace(" ", "") == f"✗1refused,last:{last}".replace(" ", "")


# ---- list --findings KIND ------------------------------------------------------------------


def _kinds_store(path) -> None:
    """1: sender_mismatch and hidden_recipient; 2: none; 3: bcc_header_present and
    hidden_recipient; 4: a rejected one with sender_mismatch."""
    envelope = Envelope("news@shop.test", ["a@x.test"], helo="h", peer="p")
    _fill(
        path,
        IncomingMessage(1, Envelope("a@shop.test", ["a@x.test", "b@y.test"]), message(), BASE),
        IncomingMessage(1, envelope, message(sender="news@shop.test"), BASE),
        IncomingMessage(
            1,
            Envelope("news@shop.test", ["a@x.test", "c@z.test"]),
            message(sender="news@shop.test", extra="Bcc: c@z.test\r\n"),
            BASE,
        ),
        IncomingMessage(1, envelope, message(), BASE, status="rejected", reply="451 x"),
    )


def _ids(*args: str) -> list[int]:
    result = run_cli("list", "--json", *args)
    assert result.code == 0, result.err
    return [summary["id"] for summary in json.loads(result.out)]


def test_list_findings_kind_filters_by_kind_and_bare_findings_means_any(tmp_path):
    db = str(tmp_path / "mail.db")
    _kinds_store(db)
    with sqlite3.connect(db) as conn:
        kinds = {
            row[0]: json.loads(row[1]) for row in conn.execute("SELECT id, findings FROM messages")
        }
    assert [f["kind"] for f in kinds[2]] == []
    assert "bcc_header_present" in {f["kind"] for f in kinds[3]}
    assert _ids("--db", db, "--findings") == [3, 1]
    assert _ids("--db", db, "--findings", "bcc_header_present") == [3]
    assert _ids("--db", db, "--findings", "hidden_recipient") == [3, 1]
    assert _ids("--db", db, "--findings", "bcc_header_present", "--findings", "null_sender") == [3]
    assert _ids("--db", db, "--findings", "sender_mismatch") == [1]
    assert _ids("--db", db, "--findings", "sender_mismatch", "--all") == [4, 1]
    assert _ids(
        "--db", db, "--findings", "sender_mismatch", "--findings", "bcc_header_present"
    ) == [
        3,
        1,
    ]
    assert _ids("--db", db, "--findings", "hidden_recipient", "--search", "b@y.test") == [1]
    assert _ids("--db", db, "--findings=bcc_header_present", "--search", "nothing-like-it") == []
    assert _ids("--db", db, "--findings", "bare_lf") == []
    text = run_cli("list", "--db", db, "--findings", "bcc_header_present").out.splitlines()
    assert [line.split()[0] for line in text[1:]] == ["3"]


def test_list_findings_matches_a_findings_kind_not_a_detail_that_names_one(tmp_path):
    db = str(tmp_path / "mail.db")
    _kinds_store(db)
    # Another field that says a kind's name: an address, a detail that ends in one (its JSON
    # text then holds "bare_lf" with the quotes), as a hostile message could make them.
    finding = {"kind": "parse_defect", "severity": "warning", "address": "bare_lf"}
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE messages SET findings = ?, finding_count = 1 WHERE id = 2",
            (json.dumps([{**finding, "detail": 'header says "long_line'}]),),
        )
    assert _ids("--db", db, "--findings", "parse_defect") == [2]
    assert _ids("--db", db, "--findings", "bare_lf") == []
    assert _ids("--db", db, "--findings", "long_line") == []


def test_an_unknown_finding_kind_is_one_line_naming_the_kinds(tmp_path):
    db = str(tmp_path / "mail.db")
    _kinds_store(db)
    result = run_cli("list", "--db", db, "--findings", "hidden\x1b[31m")
    assert result.code == 2 and result.out == ""
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "\x1b" not in result.err  # quoted as Python would write it
    assert result.err.startswith("mailsink: --findings: unknown finding kind 'hidden\\x1b[31m'")
    for kind in KINDS:
        assert kind in result.err


def test_a_store_of_schema_4_lists_no_refusals_and_no_rules(tmp_path):
    """Before schema 5 nothing counted refusals or kept a rejection's rule: read as it is."""
    db = tmp_path / "mail.db"
    _fill(
        db,
        IncomingMessage(1, Envelope("a@x.test", ["b@x.test"]), message(), BASE, status="rejected"),
        sessions=({"session_id": 2, "refusals": 1, "last_refusal": "x"},),
    )
    downgrade(db, 4)
    result = run_cli("sessions", "--refusals", "--db", str(db))
    assert (result.code, result.out) == (0, "no sessions with refusals\n")
    # Not "none": nothing counted them. One line says so, on stderr (--json stays JSON).
    assert result.err == (
        "mailsink: this store was written before mailsink counted refusals (schema 4);"
        " a newer server counts them in the sessions it serves\n"
    )
    result = run_cli("sessions", "--refusals", "--json", "--db", str(db))
    assert (result.code, json.loads(result.out), result.err.count("\n")) == (0, [], 1)
    assert run_cli("sessions", "--db", str(db)).err == ""  # not asked for refusals
    assert [
        s["refusals"] for s in json.loads(run_cli("sessions", "--json", "--db", str(db)).out)
    ] == [
        0,
        0,
    ]
    (summary,) = json.loads(run_cli("list", "--all", "--json", "--db", str(db)).out)
    assert (summary["reply_rule"], summary["rcpt_refused"]) == (None, [])
