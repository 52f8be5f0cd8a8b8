"""The pytest plugin (mailsink/pytest_plugin.py) as a user meets it: test files that use the
`mailsink` and `mailsink_server` fixtures, the marks and the config option, run by pytester
(in-process, but for the xdist run), each sending real mail over loopback with smtplib."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli

pytest_plugins = ["pytester"]

# Every file given to pytester starts with this: a real client sending one message.
HELPERS = """
import json
import re
import smtplib
import threading
import urllib.request

import pytest


def send(sink, *, to=("ann@x.test",), subject="Hello", mail_from="app@x.test", header_to=None,
         extra=""):
    header_to = header_to or ", ".join(to)
    text = (
        f"From: App <{mail_from}>\\r\\nTo: {header_to}\\r\\nSubject: {subject}\\r\\n"
        "Date: Fri, 27 Nov 2026 23:10:00 +0000\\r\\nMessage-ID: <m@x.test>\\r\\n"
        f"{extra}\\r\\nHi there.\\r\\n"
    )
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        return client.sendmail(mail_from, list(to), text.encode())


def runtime_rules(sink):
    return [rule.name for rule in sink.faults if rule.origin == "runtime"]
"""


@pytest.fixture(autouse=True)
def outer_environment() -> Iterator[None]:
    """os.environ as it was: other plugins of the inner runs keep session state there
    (textual-snapshot's TEXTUAL_SNAPSHOT_TEMPDIR, removed at the inner session's end), which
    would then be this session's."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def make_test_file(pytester: pytest.Pytester, body: str, name: str = "test_user") -> Path:
    return pytester.makepyfile(**{name: HELPERS + textwrap.dedent(body)})


def section(report: pytest.TestReport) -> str | None:
    """The text of the report's "mailsink" section (None: it has none)."""
    texts = [text for name, text in report.sections if name == "mailsink"]
    assert len(texts) <= 1, report.sections
    return texts[0] if texts else None


def test_every_fixture_method_from_a_test_file(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        def test_addresses_and_settings(mailsink):
            assert mailsink.host == "127.0.0.1" and mailsink.port > 0
            assert mailsink.smtp_settings == {"host": mailsink.host, "port": mailsink.port}
            django = mailsink.django_settings
            assert (django["EMAIL_HOST"], django["EMAIL_PORT"]) == (mailsink.host, mailsink.port)
            assert django["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
            flask = mailsink.flask_settings
            assert (flask["MAIL_SERVER"], flask["MAIL_PORT"]) == (mailsink.host, mailsink.port)
            with smtplib.SMTP(**mailsink.smtp_settings, timeout=10) as client:
                client.sendmail("app@x.test", ["ann@x.test"], b"Subject: via settings\\r\\n\\r\\nx")
            with urllib.request.urlopen(mailsink.url + "/api/v1/messages", timeout=10) as answer:
                listed = json.load(answer)
            assert [m["Subject"] for m in listed["messages"]] == ["via settings"]

        def test_messages_and_sessions(mailsink):
            send(mailsink, to=["ann@x.test", "audit@x.test"], header_to="ann@x.test",
                 subject="Welcome")
            [message] = mailsink.messages
            assert message.envelope.mail_from == message.mail_from == "app@x.test"
            assert message.rcpt_to == ["ann@x.test", "audit@x.test"]
            assert message.headers["subject"] == message.subject == "Welcome"
            assert message.header("To") == "ann@x.test"
            assert "hidden_recipient" in [finding["kind"] for finding in message.findings]
            assert "Hi there." in message.text and message.html is None
            assert message.attachments == []
            assert message.raw.startswith(b"From: App <app@x.test>")
            assert message.parsed is not None
            assert message.session_id in [session.id for session in mailsink.sessions]
            assert mailsink.rejected == []

        def test_search_and_wait_for(mailsink):
            send(mailsink, to=["ann@x.test"], subject="Order 1")
            send(mailsink, to=["bob@x.test"], subject="Order 2: shipped")
            assert [m.subject for m in mailsink.search(subject="Order 2: shipped")] == [
                "Order 2: shipped"]
            assert [m.subject for m in mailsink.search("rcpt:ann@x.test")] == ["Order 1"]
            assert len(mailsink.wait_for(count=2, timeout=1)) == 2
            # Mail that arrives while wait_for waits wakes it.
            late = threading.Timer(0.2, send, [mailsink], {"subject": "Late"})
            late.start()
            try:
                assert [m.subject for m in mailsink.wait_for(subject="Late", timeout=10)] == [
                    "Late"]
            finally:
                late.join()

        def test_assert_sent(mailsink):
            send(mailsink, to=["ann@x.test", "audit@x.test"], header_to="ann@x.test, bob@x.test")
            [sent] = mailsink.assert_sent(to="audit@x.test", subject="Hello", count=1)
            assert sent.rcpt_to == ["ann@x.test", "audit@x.test"]
            mailsink.assert_sent(mail_from="APP@x.test", from_="app@x.test",
                                 subject=re.compile("^Hel"))
            with pytest.raises(AssertionError, match="never an envelope recipient"):
                mailsink.assert_sent(to="bob@x.test")

        def test_assert_no_findings(mailsink):
            send(mailsink)
            mailsink.assert_no_findings()
            send(mailsink, subject="Leaky", extra="Bcc: boss@x.test\\r\\n")
            with pytest.raises(AssertionError, match="bcc_header_present"):
                mailsink.assert_no_findings("error")
            with pytest.raises(ValueError):
                mailsink.assert_no_findings("fatal")

        def test_clear(mailsink):
            send(mailsink, subject="Before")
            mailsink.clear()
            assert mailsink.messages == []
            send(mailsink, subject="After")
            assert [m.subject for m in mailsink.messages] == ["After"]

        def test_add_and_remove_faults(mailsink):
            rule = mailsink.add_fault(stage="rcpt", reply="452 4.2.2 Mailbox full",
                                      match={"recipient": "full@*"})
            assert rule.name in runtime_rules(mailsink) and rule.enabled
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                send(mailsink, to=["full@x.test"])
            assert rule.hits == 1 and rule.last_fired_at is not None
            rule.disable()
            send(mailsink, to=["full@x.test"])
            rule.enable()
            mailsink.reset_faults()
            assert rule.hits == 0
            rule.remove()
            assert runtime_rules(mailsink) == []
            data = mailsink.add_fault({"name": "no orders", "stage": "data",
                                       "reply": "554 5.6.0 Refused",
                                       "match": {"header": {"Subject": "Order*"}}})
            with pytest.raises(smtplib.SMTPDataError):
                send(mailsink, subject="Order 3")
            [rejected] = mailsink.rejected
            assert (rejected.status, rejected.reply_rule) == ("rejected", "no orders")
            mailsink.remove_fault("no orders")
            assert data.name not in runtime_rules(mailsink)
            mailsink.remove_fault(mailsink.add_fault(stage="mail", reply="451 4.3.0 Later"))
            assert runtime_rules(mailsink) == []

        def test_isolate(mailsink):
            send(mailsink, subject="before")
            with mailsink.isolate() as view:
                assert view.messages == [] and view.port == mailsink.port
                send(view, subject="after")
                assert [m.subject for m in view.messages] == ["after"]
                view.add_fault(name="view rule", stage="helo", reply="421 4.3.2 Bye")
            assert "view rule" not in runtime_rules(mailsink)
            assert [m.subject for m in mailsink.messages] == ["before", "after"]
            assert mailsink.sink is mailsink.running.sink

        def test_fault_in_a_block(mailsink):
            with mailsink.fault(stage="rcpt", reply="452 4.2.2 Mailbox full") as rule:
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    send(mailsink)
                assert rule.hits == 1
            assert runtime_rules(mailsink) == []
            send(mailsink)
            assert len(mailsink.messages) == 1
        """,
    )
    result = pytester.runpytest_inprocess("--strict-markers")
    result.assert_outcomes(passed=9)


def test_a_wait_for_timeout_says_what_was_awaited_and_what_arrived(
    pytester: pytest.Pytester,
) -> None:
    make_test_file(
        pytester,
        """
        def test_waits_for_bob(mailsink):
            send(mailsink, to=["ann@x.test"], subject="Welcome")
            mailsink.wait_for(to="bob@x.test", timeout=0.2)
        """,
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "AssertionError" in output
    assert "to:bob@x.test" in output  # what was waited for
    # What did arrive: in the AssertionError, and again in the report's "mailsink" section.
    arrival = "#1 accepted  MAIL FROM:<app@x.test> RCPT TO:<ann@x.test>*Subject: 'Welcome'*"
    result.stdout.fnmatch_lines(
        [f"E*{arrival}", "*- mailsink -*", "mailsink: this test's server (SMTP 127.0.0.1:*"]
    )
    result.stdout.fnmatch_lines(["*- mailsink -*", f"*{arrival}"])


def test_the_failure_section_only_for_failed_tests_that_used_mailsink(
    pytester: pytest.Pytester,
) -> None:
    make_test_file(
        pytester,
        """
        def test_fails_after_mail(mailsink):
            send(mailsink, to=["ann@x.test"], subject="Hi \\x1b[2J\\x07 there")
            assert False, "the app sent the wrong mail"

        def test_fails_with_nothing_sent(mailsink):
            assert False

        def test_passes(mailsink):
            send(mailsink)

        def test_fails_without_mailsink():
            assert False

        @pytest.fixture
        def app(mailsink):
            send(mailsink, subject="From setup")
            raise RuntimeError("the app could not start")

        def test_fails_in_setup(app):
            pass

        def test_fails_with_both_servers(mailsink, mailsink_server):
            send(mailsink, subject="to the test's server")
            send(mailsink_server, subject="to the session's server")
            assert False

        @pytest.mark.mailsink(shared=True)
        def test_fails_on_the_shared_server(mailsink):
            send(mailsink, subject="shared, this test's")
            assert False
        """,
    )
    recorder = pytester.inline_run()
    reports = {
        (report.nodeid.split("::")[-1], report.when): report
        for report in recorder.getreports("pytest_runtest_logreport")
    }
    after_mail = section(reports["test_fails_after_mail", "call"])
    assert after_mail is not None
    assert "RCPT TO:<ann@x.test>" in after_mail
    assert "\x1b" not in after_mail and "\x07" not in after_mail  # made visible, not sent raw
    assert "(nothing arrived)" in (section(reports["test_fails_with_nothing_sent", "call"]) or "")
    assert section(reports["test_passes", "call"]) is None
    assert section(reports["test_fails_without_mailsink", "call"]) is None
    assert "'From setup'" in (section(reports["test_fails_in_setup", "setup"]) or "")

    both = section(reports["test_fails_with_both_servers", "call"]) or ""
    own, _, session = both.partition("\n\nmailsink_server: the session's server, all its mail")
    assert own.startswith("mailsink: this test's server (SMTP 127.0.0.1:")
    assert "to the test's server" in own and "to the session's server" not in own
    assert "to the session's server" in session and "to the test's server" not in session

    shared = section(reports["test_fails_on_the_shared_server", "call"]) or ""
    assert shared.startswith("mailsink: this test's view of the session's server (SMTP")
    assert "shared, this test's" in shared and "to the session's server" not in shared
    assert "mailsink_server:" not in shared


def test_shared_views_of_the_session_server_see_only_their_own_mail(
    pytester: pytest.Pytester,
) -> None:
    make_test_file(
        pytester,
        """
        pytestmark = pytest.mark.mailsink(shared=True)

        def test_first(mailsink, mailsink_server):
            assert mailsink.port == mailsink_server.port
            send(mailsink, subject="first")
            assert [m.subject for m in mailsink.messages] == ["first"]

        def test_second(mailsink, mailsink_server):
            assert mailsink.messages == [] and mailsink.sessions == []
            send(mailsink, subject="second")
            assert [m.subject for m in mailsink.wait_for()] == ["second"]
            assert [m.subject for m in mailsink_server.messages] == ["first", "second"]

        @pytest.mark.mailsink_faults(name="full", stage="rcpt", reply="452 4.2.2 Mailbox full")
        def test_marked_rule_on_the_shared_server(mailsink):
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                send(mailsink)

        def test_marked_rule_gone_after_its_test(mailsink, mailsink_server):
            assert "full" not in runtime_rules(mailsink_server)
            send(mailsink, subject="accepted again")
            mailsink.assert_sent(subject="accepted again", count=1)

        def test_rules_switched_over_http(mailsink):
            def call(method, path, body):
                request = urllib.request.Request(
                    mailsink.url + path, method=method, data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=10).close()

            call("POST", "/api/mailsink/faults", {"name": "over http", "stage": "rcpt",
                                                  "reply": "452 4.2.2 Mailbox full"})
            call("PUT", "/api/v1/chaos", {"Sender": {"ErrorCode": 451, "Probability": 100}})
            with pytest.raises(smtplib.SMTPSenderRefused):
                send(mailsink)

        def test_rules_switched_over_http_gone_after_their_test(mailsink, mailsink_server):
            assert runtime_rules(mailsink_server) == []
            send(mailsink)

        class TestOwnServer:
            pytestmark = pytest.mark.mailsink(shared=False)

            def test_own_server(self, mailsink, mailsink_server):
                assert mailsink.port != mailsink_server.port
                assert mailsink.messages == []
                send(mailsink, subject="own")
                assert "own" not in [m.subject for m in mailsink_server.messages]
        """,
    )
    pytester.runpytest_inprocess("--strict-markers").assert_outcomes(passed=7)


def test_no_view_or_server_of_a_test_outlives_it(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import gc
        import weakref

        views, servers = [], []

        @pytest.mark.parametrize("number", range(3))
        def test_own_server(mailsink, number):
            views.append(weakref.ref(mailsink))
            servers.append(weakref.ref(mailsink.running))
            send(mailsink)
            assert len(mailsink.messages) == 1

        @pytest.mark.parametrize("number", range(2))
        @pytest.mark.mailsink(shared=True)
        def test_shared_view(mailsink, number):
            views.append(weakref.ref(mailsink))
            send(mailsink)
            assert len(mailsink.messages) == 1

        def test_none_left(mailsink_server):
            gc.collect()
            assert len(views) == 5 and len(servers) == 3
            assert [ref for ref in views + servers if ref() is not None] == []
            assert mailsink_server.running.sink is not None  # the session's stays
        """,
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=6)


def test_two_tests_with_their_own_servers_do_not_meet(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        ports = []

        @pytest.mark.parametrize("subject", ["one", "two"])
        def test_own_server(mailsink, subject):
            assert mailsink.messages == []
            ports.append(mailsink.port)
            send(mailsink, subject=subject)
            assert [m.subject for m in mailsink.messages] == [subject]

        def test_the_servers_differed():
            assert len(set(ports)) == 2
        """,
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=3)


def test_fault_marks_on_module_class_and_function_apply_outermost_first(
    pytester: pytest.Pytester,
) -> None:
    make_test_file(
        pytester,
        """
        pytestmark = pytest.mark.mailsink_faults(
            {"name": "module rule", "stage": "mail", "reply": "451 4.3.0 Try later",
             "match": {"sender": "module@*"}})

        @pytest.mark.mailsink_faults(name="class rule", stage="rcpt",
                                     reply="452 4.2.2 Mailbox full", match={"recipient": "full@*"})
        class TestMarked:
            @pytest.mark.mailsink_faults(
                {"name": "function rule", "stage": "data", "reply": "554 5.6.0 No"},
                {"name": "second function rule", "stage": "helo", "reply": "421 4.3.2 Bye",
                 "enabled": False})
            def test_rules_in_force(self, mailsink):
                assert runtime_rules(mailsink) == [
                    "module rule", "class rule", "function rule", "second function rule"]
                with pytest.raises(smtplib.SMTPSenderRefused):
                    send(mailsink, mail_from="module@x.test")
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    send(mailsink, to=["full@x.test"])
                with pytest.raises(smtplib.SMTPDataError):
                    send(mailsink)

        def test_module_rule_only(mailsink):
            assert runtime_rules(mailsink) == ["module rule"]
        """,
    )
    pytester.runpytest_inprocess("--strict-markers").assert_outcomes(passed=2)


def test_bad_marks_fail_the_test_setup_saying_what_is_wrong(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        pytestmark = pytest.mark.mailsink(shared=True)

        @pytest.mark.mailsink_faults(stage="rpct", reply="452 4.2.2 Mailbox full")
        def test_unknown_stage(mailsink):
            pass

        @pytest.mark.mailsink_faults({"stage": "rcpt", "reply": "452 full"}, {"stage": "rcpt",
                                     "repyl": "452 4.2.2 Mailbox full"})
        def test_second_rule_misspelt(mailsink):
            pass

        @pytest.mark.mailsink_faults("stage=rcpt")
        def test_not_a_dict(mailsink):
            pass

        @pytest.mark.mailsink_faults()
        def test_no_rule(mailsink):
            pass

        @pytest.mark.mailsink(shared="yes")
        def test_shared_not_a_bool(mailsink):
            pass

        @pytest.mark.mailsink(share=True)
        def test_shared_misspelt(mailsink):
            pass

        @pytest.mark.mailsink_faults(stage="rcpt", reply="452 4.2.2 Mailbox full")
        def test_mark_without_the_fixture(mailsink_server):
            pass

        def test_the_shared_server_kept_no_rule(mailsink, mailsink_server):
            # test_second_rule_misspelt's first rule was added, then taken away with its view.
            assert runtime_rules(mailsink_server) == []
            send(mailsink, to=["full@x.test"])
        """,
    )
    recorder = pytester.inline_run()
    errors = {
        report.nodeid.split("::")[-1]: str(report.longrepr)
        for report in recorder.getreports("pytest_runtest_logreport")
        if report.when == "setup" and report.failed
    }
    expected = {
        "test_unknown_stage": "mailsink_faults on test_user.py::test_unknown_stage, rule 1:"
        " stage: 'rpct' is not a stage",
        "test_second_rule_misspelt": "rule 2: repyl: unknown key",
        "test_not_a_dict": "rule 1 is a str, not a dict",
        "test_no_rule": "give a rule",
        "test_shared_not_a_bool": "shared must be True or False, got 'yes'",
        "test_shared_misspelt": "takes only shared=True or shared=False, got share",
        "test_mark_without_the_fixture": "does not use the `mailsink` fixture",
    }
    assert set(errors) == set(expected)
    for test, text in expected.items():
        assert text in errors[test], (test, errors[test])
        assert "UsageError" in errors[test]
    recorder.assertoutcome(passed=1, failed=len(expected))


CONFIG = """
[smtp]
port = 2525
hostname = "mx.{name}.test"

[http]
port = 8025

[[fault]]
name = "{name} rule"
stage = "rcpt"
reply = "550 5.7.1 Blocked by {name}"
match = {{ recipient = "blocked@*" }}
"""


def test_config_from_the_ini_file_and_the_option(pytester: pytest.Pytester) -> None:
    # The ini value is relative to the ini file's directory, the option to the current one: run
    # from a subdirectory, where neither would be found the other way round.
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "sink.toml").write_text(CONFIG.format(name="ini"))
    pytester.makeini("[pytest]\nmailsink_config = conf/sink.toml\n")
    sub = pytester.mkpydir("sub")
    (sub / "option.toml").write_text(CONFIG.format(name="option"))
    (sub / "test_config.py").write_text(
        HELPERS
        + textwrap.dedent(
            """
            import os

            WANTED = os.environ["WANTED"]

            def test_config_in_force(mailsink):
                assert mailsink.port != 2525 and mailsink.url != "http://127.0.0.1:8025"
                assert [(r.name, r.origin) for r in mailsink.faults if r.origin != "preset"] == [
                    (f"{WANTED} rule", "config")]
                with smtplib.SMTP(mailsink.host, mailsink.port, timeout=10) as client:
                    assert client.ehlo()[1].startswith(f"mx.{WANTED}.test".encode())
                with pytest.raises(smtplib.SMTPRecipientsRefused, match=f"Blocked by {WANTED}"):
                    send(mailsink, to=["blocked@x.test"])

            def test_session_server_too(mailsink_server):
                assert f"{WANTED} rule" in [r.name for r in mailsink_server.faults]
            """
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(sub)
        patch.setenv("WANTED", "ini")
        pytester.runpytest_inprocess().assert_outcomes(passed=2)
        patch.setenv("WANTED", "option")
        pytester.runpytest_inprocess("--mailsink-config", "option.toml").assert_outcomes(passed=2)


def test_a_bad_config_is_a_usage_error_with_check_configs_line(
    pytester: pytest.Pytester,
) -> None:
    bad = pytester.path / "bad.toml"
    bad.write_text("[smtp]\nport = 'twenty-five'\n")
    make_test_file(pytester, "def test_never_run(mailsink):\n    pass\n")
    check_config = run_cli("check-config", str(bad))
    assert check_config.code == 1
    result = pytester.runpytest_inprocess("--mailsink-config", "bad.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == f"ERROR: {check_config.err.strip()} (from --mailsink-config)"
    assert "smtp.port" in result.stderr.lines[0]
    assert "Traceback" not in result.stderr.str() + result.stdout.str()

    pytester.makeini("[pytest]\nmailsink_config = missing.toml\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (
        f"ERROR: mailsink: {pytester.path / 'missing.toml'}: file not found"
        " (from ini mailsink_config)"
    )


def test_turned_off_with_no_mailsink(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        def test_wants_the_fixture(mailsink):
            pass

        def test_plain():
            pass
        """,
    )
    result = pytester.runpytest_inprocess("-p", "no:mailsink")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mailsink' not found*"])
    result = pytester.runpytest_inprocess("-p", "no:mailsink", "--mailsink-config", "x.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --mailsink-config" in result.stderr.str()


def test_each_xdist_worker_has_its_own_server_and_tests_never_see_each_others_mail(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = pytester.path / "servers.log"
    make_test_file(
        pytester,
        f"""
        import os

        pytestmark = pytest.mark.mailsink(shared=True)

        @pytest.mark.parametrize("number", range(8))
        def test_sees_only_its_own_mail(mailsink, mailsink_server, number):
            subject = f"mail of test {{number}}"
            send(mailsink, to=[f"user{{number}}@x.test"], subject=subject)
            assert [m.subject for m in mailsink.messages] == [subject]
            assert [m.subject for m in mailsink.wait_for()] == [subject]
            mailsink.assert_sent(to=f"user{{number}}@x.test", count=1)
            with open({str(log)!r}, "a") as log:
                worker = os.environ["PYTEST_XDIST_WORKER"]
                log.write(f"{{worker}} {{mailsink_server.port}} {{number}}\\n")

        def test_failure_report_under_xdist(mailsink):
            send(mailsink, subject="seen in the report")
            assert False
        """,
    )
    # Only the two plugins at stake: the others installed here (textual's snapshots, Django's)
    # would double the time the three processes take to start. The in-process runs above load
    # the plugin through its entry point as any project does.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "xdist", "-p", "mailsink", "-n", "2")
    result.assert_outcomes(passed=8, failed=1)
    result.stdout.fnmatch_lines(["*- mailsink -*", "*Subject: 'seen in the report'*"])
    ports: dict[str, set[str]] = {}
    tests: dict[str, int] = {}
    for line in log.read_text().splitlines():
        worker, port, _ = line.split()
        ports.setdefault(worker, set()).add(port)
        tests[worker] = tests.get(worker, 0) + 1
    assert len(ports) == 2, ports  # both workers ran tests...
    assert all(len(each) == 1 for each in ports.values()), ports  # ...each on one server...
    assert len(set.union(*ports.values())) == 2, ports  # ...of its own...
    assert max(tests.values()) >= 2, tests  # ...which tests shared without meeting
