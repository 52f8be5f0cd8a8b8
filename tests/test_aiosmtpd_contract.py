"""The aiosmtpd contract (mailsink/smtp/aiosmtpd_contract.py) against the installed aiosmtpd.

Each test fails by name when an upgrade renames, removes or changes something mailsink relies on;
the scan of mailsink/smtp/ keeps the contract's list whole. The wire tests at the end check the
upstream fixes mailsink has to carry itself (it replaces the methods they were made in) or
inherits (it extends them)."""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtpd
import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax
from conftest import ROOT, RawClient

from mailsink.smtp import aiosmtpd_contract as contract
from mailsink.smtp.aiosmtpd_contract import live_setting
from mailsink.smtp.handler import SmtpHandler
from mailsink.smtp.protocol import SmtpConnection
from mailsink.testing import RunningSink

SMTP_SOURCES = sorted((ROOT / "mailsink" / "smtp").glob("*.py"))
VERSION = aiosmtpd.__version__
METHODS = [use for use in (*contract.PRIVATE, *contract.HOOKS) if use.signature is not None]
ATTRIBUTES = [use for use in (*contract.PRIVATE, *contract.LIVE_PUBLIC) if use.assigned_in]
REACHED = [
    use
    for use in (
        *contract.PRIVATE,
        *contract.LIVE_PUBLIC,
        *contract.HOOKS,
        *contract.CLASS_ATTRIBUTES,
    )
    if use.used_by
]


def ids(uses: list[contract.Use]) -> list[str]:
    return [use.name for use in uses]


def bare_signature(function: Any) -> str:
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=signature.empty))


@functools.cache
def upstream_methods() -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """aiosmtpd's SMTP methods, parsed from the installed source."""
    tree = ast.parse(inspect.getsource(aiosmtpd.smtp))
    smtp = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SMTP")
    return {n.name: n for n in smtp.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def upstream(name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    method = upstream_methods().get(name)
    assert method is not None, f"aiosmtpd {VERSION} has no method SMTP.{name}"
    return method


def self_attributes(node: ast.AST, context: type[ast.expr_context] = ast.Load) -> set[str]:
    """Names used as `self.<name>` in `node`, read (Load) or assigned (Store)."""
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute)
        and isinstance(n.ctx, context)
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
    }


@functools.cache
def aiosmtpd_private_names() -> frozenset[str]:
    """Private names aiosmtpd's SMTP (with its asyncio bases) and asyncio's StreamReader and
    StreamWriter define: class attributes, and instance attributes their code assigns."""
    names: set[str] = set()
    for cls in (*SMTP.__mro__, asyncio.StreamReader, asyncio.StreamWriter):
        if cls is object:
            continue
        names.update(vars(cls))
        names.update(self_attributes(ast.parse(inspect.getsource(cls)), ast.Store))
    return frozenset(n for n in names if n.startswith("_") and not n.startswith("__"))


def smtp_subclasses(tree: ast.AST) -> list[ast.ClassDef]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(isinstance(base, ast.Name) and base.id == "SMTP" for base in node.bases)
    ]


def mailsink_private_uses() -> dict[str, set[str]]:
    """aiosmtpd's private names mailsink/smtp/*.py touches, with where: `self._x` and
    `super()._x` in SMTP subclasses (and what they define), `anything._x`, getattr(x, "_x")."""
    defined = aiosmtpd_private_names()
    found: dict[str, set[str]] = {}

    def note(name: str, where: str) -> None:
        if name in defined:
            found.setdefault(name, set()).add(where)

    for path in SMTP_SOURCES:
        tree = ast.parse(path.read_text())
        subclasses = smtp_subclasses(tree)
        in_subclass = {id(n) for cls in subclasses for n in ast.walk(cls)}
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute):
                on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
                if not on_self or id(node) in in_subclass:
                    note(node.attr, where)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                note(node.args[1].value, where)
        for cls in subclasses:
            for item in cls.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    note(item.name, f"{path.name}:{item.lineno}")
                elif isinstance(item, ast.Assign | ast.AnnAssign):
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    for target in targets:
                        if isinstance(target, ast.Name):
                            note(target.id, f"{path.name}:{item.lineno}")
    return found


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


# ---- the pin


def test_the_pinned_aiosmtpd_is_the_one_installed_and_in_pyproject():
    assert VERSION == contract.PINNED, (
        f"aiosmtpd {VERSION} is installed; the contract was checked against {contract.PINNED}"
    )
    pins = [
        line.strip()
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.strip().startswith('"aiosmtpd')
    ]
    assert len(pins) == 1 and pins[0].startswith(f'"aiosmtpd=={contract.PINNED}",'), pins
    assert "aiosmtpd_contract" in pins[0], "the pin says why, beside it"


# ---- names and signatures


@pytest.mark.parametrize("use", METHODS, ids=ids(METHODS))
def test_each_method_mailsink_uses_exists_with_its_signature(use):
    method = getattr(SMTP, use.name, None)
    assert method is not None, (
        f"aiosmtpd {VERSION} has no SMTP.{use.name}: mailsink's {use.how} of it ({use.why}) "
        "has nothing to stand on"
    )
    assert bare_signature(method) == use.signature, (
        f"aiosmtpd {VERSION} changed SMTP.{use.name}{bare_signature(method)}; mailsink expects "
        f"{use.signature}"
    )
    if use.how in (contract.REPLACE, contract.EXTEND):
        ours = vars(SmtpConnection).get(use.name)
        assert ours is not None, (
            f"SmtpConnection no longer overrides {use.name}: update the contract"
        )
        # aiosmtpd calls it as it declares it, so mailsink's must take the same parameters.
        assert bare_signature(ours) == use.signature, f"SmtpConnection.{use.name}"


def mailsink_calls() -> list[tuple[str, ast.Call, str]]:
    """Calls in mailsink's SMTP subclasses that reach aiosmtpd's own method: super().name(...),
    and self.name(...) where SmtpConnection does not override name."""
    calls = []
    for path in SMTP_SOURCES:
        for cls in smtp_subclasses(ast.parse(path.read_text())):
            for node in ast.walk(cls):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                receiver, name = node.func.value, node.func.attr
                is_super = (
                    isinstance(receiver, ast.Call)
                    and isinstance(receiver.func, ast.Name)
                    and receiver.func.id == "super"
                )
                is_self = isinstance(receiver, ast.Name) and receiver.id == "self"
                overridden = name in vars(SmtpConnection)
                if hasattr(SMTP, name) and (is_super or (is_self and not overridden)):
                    calls.append((name, node, f"{path.name}:{node.lineno}"))
    return calls


def test_mailsink_calls_aiosmtpd_methods_with_arguments_their_signatures_accept():
    calls = mailsink_calls()
    assert {"_call_handler_hook", "_reset_timeout", "smtp_DATA"} & {c[0] for c in calls}
    for name, call, where in calls:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        ):
            continue
        signature = inspect.signature(getattr(SMTP, name))
        try:
            signature.bind(None, *call.args, **{k.arg: None for k in call.keywords if k.arg})
        except TypeError as error:
            pytest.fail(f"{where}: aiosmtpd {VERSION}'s SMTP.{name}{signature} refuses: {error}")


def test_the_keywords_mailsink_constructs_smtp_with_are_accepted():
    given: set[str] = set()
    for path in (ROOT / "mailsink").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "SmtpConnection"
            ):
                given.update(k.arg for k in node.keywords if k.arg)
    assert given == set(contract.INIT_KEYWORDS), "update INIT_KEYWORDS in the contract"
    parameters = inspect.signature(SMTP.__init__).parameters
    for keyword in contract.INIT_KEYWORDS:
        assert keyword in parameters, f"aiosmtpd {VERSION}'s SMTP() takes no {keyword}="
        assert parameters[keyword].kind == inspect.Parameter.KEYWORD_ONLY, keyword


# ---- attributes


@pytest.mark.parametrize("use", ATTRIBUTES, ids=ids(ATTRIBUTES))
def test_aiosmtpd_assigns_each_attribute_mailsink_reads(use):
    for method in use.assigned_in:
        assert use.name in self_attributes(upstream(method), ast.Store), (
            f"aiosmtpd {VERSION}'s SMTP.{method} no longer assigns self.{use.name}: mailsink "
            f"{use.how}s it ({use.why})"
        )


@pytest.mark.parametrize("use", REACHED, ids=ids(REACHED))
def test_aiosmtpd_still_reaches_what_mailsink_overrides_or_makes_live(use):
    for method in use.used_by:
        assert use.name in self_attributes(upstream(method)), (
            f"aiosmtpd {VERSION}'s SMTP.{method} no longer uses self.{use.name}: mailsink's "
            f"{use.how} of it ({use.why}) does not reach there"
        )


async def _connected_plain_smtp() -> tuple[SMTP, list[str]]:
    """A plain aiosmtpd SMTP on a loopback connection, and its attributes once it has greeted."""
    loop = asyncio.get_running_loop()
    protocols: list[SMTP] = []

    def factory() -> SMTP:
        protocols.append(SMTP(object(), hostname="contract.test", loop=loop))
        return protocols[-1]

    listener = await loop.create_server(factory, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    greeting = await reader.readline()
    present = list(vars(protocols[0]))
    writer.close()
    listener.close()
    await listener.wait_closed()
    assert greeting.startswith(b"220 contract.test")
    return protocols[0], present


def test_a_connected_aiosmtpd_smtp_has_every_attribute_mailsink_reads():
    protocol, present = asyncio.run(_connected_plain_smtp())
    missing = [use.name for use in ATTRIBUTES if use.name not in present]
    assert not missing, f"aiosmtpd {VERSION} sets none of {missing} on a connection"
    reader = protocol._reader
    for use in contract.ASYNCIO_PRIVATE:
        assert use.name in vars(reader), f"asyncio's StreamReader has no {use.name} ({use.why})"
    assert isinstance(reader._buffer, bytearray)


# ---- the list stays whole


def test_every_aiosmtpd_private_name_mailsink_touches_is_in_the_contract():
    listed = {use.name for use in (*contract.PRIVATE, *contract.ASYNCIO_PRIVATE)}
    unlisted = {
        name: sorted(where) for name, where in mailsink_private_uses().items() if name not in listed
    }
    assert not unlisted, f"add these to mailsink/smtp/aiosmtpd_contract.py: {unlisted}"


def test_every_private_name_in_the_contract_is_still_used_by_mailsink():
    used = set(mailsink_private_uses())
    stale = [u.name for u in (*contract.PRIVATE, *contract.ASYNCIO_PRIVATE) if u.name not in used]
    assert not stale, f"mailsink no longer uses {stale}: take them out of the contract"


def test_every_aiosmtpd_method_mailsink_overrides_is_pinned():
    overridden = {
        name
        for name, value in vars(SmtpConnection).items()
        if name in vars(SMTP) and callable(value)
    }
    assert overridden == set(contract.PINNED_METHODS)
    listed = {u.name for u in (*contract.PRIVATE, *contract.HOOKS) if u.signature}
    assert set(contract.PINNED_METHODS) - {"__init__"} <= listed


@pytest.mark.parametrize("name", sorted(contract.PINNED_METHODS))
def test_each_method_mailsink_replaces_or_extends_is_an_upstream_version_reviewed(name):
    pinned = contract.PINNED_METHODS[name]
    digest = contract.source_digest(inspect.getsource(getattr(SMTP, name)))
    if pinned.how == contract.REPLACE:
        advice = f"re-port it into SmtpConnection.{name} (mailsink/smtp/protocol.py)"
    else:
        advice = f"check that SmtpConnection.{name}, which extends it, still fits"
    assert digest in pinned.reviewed, (
        f"aiosmtpd {VERSION} changed SMTP.{name}: {advice}, then add {digest!r} to "
        f"PINNED_METHODS[{name!r}].reviewed in mailsink/smtp/aiosmtpd_contract.py"
    )


# ---- live settings fail loudly


def test_the_contract_lists_exactly_the_live_settings():
    listed = {u.name for u in (*contract.PRIVATE, *contract.LIVE_PUBLIC) if u.how == contract.LIVE}
    assert set(contract.live_settings(SmtpConnection)) == listed


def test_a_live_setting_aiosmtpd_does_not_assign_stops_the_connection_loudly(loop):
    class OnAnotherAiosmtpd(SmtpConnection):
        # As if aiosmtpd had renamed an attribute it assigns: this one it has never assigned.
        _renamed_upstream = live_setting(lambda self: 1)

    for _ in range(2):  # and not only the first time
        with pytest.raises(RuntimeError, match=r"OnAnotherAiosmtpd\._renamed_upstream\b") as error:
            OnAnotherAiosmtpd(SmtpHandler(None), None, hostname="contract.test", loop=loop)
        assert "SMTP.__init__" in str(error.value)
        assert "hostname" not in str(error.value)  # assigned: not named


def test_the_live_settings_are_confirmed_once_per_class(loop):
    class Fresh(SmtpConnection):
        pass

    first = Fresh(SmtpHandler(None), None, hostname="contract.test", loop=loop)
    assert "_live_seen" not in vars(first)
    assert contract.watch_live_settings(first) is False  # confirmed: nothing more to record
    again = Fresh(SmtpHandler(None), None, hostname="contract.test", loop=loop)
    assert "_live_seen" not in vars(again)


def test_a_live_setting_aiosmtpd_does_not_assign_stops_the_server_from_starting(
    tmp_path, monkeypatch
):
    """Checked in the listener's protocol factory only, the error would reach no one: asyncio
    logs nothing, uvloop a traceback per connection, and each client hangs."""
    # As if aiosmtpd had renamed an attribute it assigns, before its first connection.
    monkeypatch.setattr(
        SmtpConnection, "_renamed_upstream", live_setting(lambda self: 1), raising=False
    )
    monkeypatch.setattr(contract, "_CONFIRMED", set())
    running = RunningSink(tmp_path / "mail.db")
    try:
        with pytest.raises(RuntimeError, match=r"SmtpConnection\._renamed_upstream\b"):
            running.start()
    finally:
        running.stop()


def test_serve_on_an_aiosmtpd_that_renamed_a_live_setting_exits_with_one_line(tmp_path):
    """The real thing: a copy of aiosmtpd whose SMTP.__init__ assigns the idle timeout under
    another name."""
    upstream = Path(aiosmtpd.__file__).parent
    copy = tmp_path / "upgraded" / "aiosmtpd"
    shutil.copytree(upstream, copy, ignore=shutil.ignore_patterns("tests", "docs", "qa", "*.pyc"))
    smtp = copy / "smtp.py"
    source = smtp.read_text()
    assert source.count("self._timeout_duration") == 2
    smtp.write_text(source.replace("self._timeout_duration", "self._timeout_renamed"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy.parent), str(ROOT)])}
    env.pop("MAILSINK_DEBUG", None)
    args = ["serve", "--port", "0", "--http-port", "0", "--db", str(tmp_path / "mail.db")]
    done = subprocess.run(
        [sys.executable, "-m", "mailsink", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 70, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "internal error" in line]
    assert "SmtpConnection._timeout_duration" in line and "Traceback" not in done.stderr


# ---- what could change without renaming anything (contract.SILENT)


def test_aiosmtpd_discovers_methods_and_hooks_only_by_the_prefixes_mailsinks_dir_answers(loop):
    prefixes = {
        arg.value
        for node in ast.walk(upstream("__init__"))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "startswith"
        for arg in node.args
        if isinstance(arg, ast.Constant)
    }
    assert prefixes == {"auth_", "handle_", "smtp_"}, (
        f"aiosmtpd {VERSION} looks for {prefixes} with dir(): SmtpConnection.__dir__ and "
        "SmtpHandler.__dir__ answer auth_/smtp_ and handle_/auth_ only"
    )
    handler = SmtpHandler(None)
    connection = SmtpConnection(handler, None, hostname="contract.test", loop=loop)
    hooks = {n[len("handle_") :] for n in object.__dir__(handler) if n.startswith("handle_")}
    assert set(connection._handle_hooks) == hooks
    verbs = {n[len("smtp_") :] for n in object.__dir__(connection) if n.startswith("smtp_")}
    assert set(connection._smtp_methods) == verbs
    # auth_CRAM__MD5 (mailsink's) is CRAM-MD5: "__" is read as "-".
    assert {"PLAIN", "LOGIN", "CRAM-MD5"} <= set(connection._auth_methods)
    assert connection._ehlo_hook_ver == "new", "handle_EHLO's five-parameter form"


def _hook_calls(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(verb, number of arguments after server, session, envelope) of each hook call; not those
    for the deprecated four-parameter handle_EHLO (the five-parameter form is checked above)."""
    old_form = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and any(isinstance(c, ast.Constant) and c.value == "old" for c in ast.walk(node.test))
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in old_form:
            continue
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_call_handler_hook"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield node.args[0].value, len(node.args) - 1


def test_each_handler_hook_takes_the_arguments_it_is_called_with():
    calls = set(_hook_calls(ast.parse(inspect.getsource(aiosmtpd.smtp))))
    for path in SMTP_SOURCES:
        calls |= set(_hook_calls(ast.parse(path.read_text())))
    handler = SmtpHandler(None)
    called = set()
    for verb, count in calls:
        hook = getattr(handler, f"handle_{verb}", None)
        if hook is None:
            continue
        called.add(verb)
        try:
            inspect.signature(hook).bind(None, None, None, *[None] * count)
        except TypeError as error:
            pytest.fail(
                f"handle_{verb} is called with server, session, envelope + {count}: {error}"
            )
    assert {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"} <= called


def test_the_authenticator_and_its_records_keep_their_shape():
    calls = [
        node
        for node in ast.walk(upstream("_authenticate"))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_authenticator"
    ]
    assert [len(c.args) for c in calls] == [5], "(server, session, envelope, mechanism, data)"
    inspect.signature(SmtpHandler(None).authenticate).bind(None, None, None, "PLAIN", None)
    result = AuthResult(success=True, handled=False, auth_data=LoginPassword(b"u", b"p"))
    assert (result.success, result.handled, result.auth_data.login) == (True, False, b"u")
    assert bare_signature(syntax) == "(text, extended=None, when=None)"
    assert "__smtp_syntax_when__" in {
        n.attr for n in ast.walk(upstream("_syntax_available")) if isinstance(n, ast.Attribute)
    }


def test_the_quieter_reliances_hold(loop):
    smtp = SMTP(object(), hostname="contract.test", loop=loop)
    assert loop.run_until_complete(smtp._call_handler_hook("NOOP")) is aiosmtpd.smtp.MISSING
    assert "_handler_coroutine" in self_attributes(upstream("smtp_QUIT"))
    assert aiosmtpd.smtp.log.name == "mail.log"
    assert SMTP.local_part_limit == 0
    lookups = [
        node
        for node in ast.walk(upstream("__init__"))
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "hostname"
        and "getfqdn" in ast.dump(ast.Module(body=node.orelse, type_ignores=[]))
    ]
    assert lookups, "getfqdn() only without hostname="
    envelope, session = Envelope(), Session(loop)
    for name in ("mail_from", "mail_options", "smtp_utf8", "content", "original_content"):
        assert hasattr(envelope, name), f"Envelope.{name}"
    assert hasattr(envelope, "rcpt_tos")
    for name in ("peer", "host_name", "extended_smtp", "authenticated", "auth_data"):
        assert hasattr(session, name), f"Session.{name}"


# ---- upstream fixes, on the wire


def transaction(raw: RawClient) -> None:
    raw.command("EHLO x")
    assert raw.command("MAIL FROM:<a@x.test>")[0].startswith("250")
    assert raw.command("RCPT TO:<b@x.test>")[0].startswith("250")
    assert raw.command("DATA")[0].startswith("354")


@pytest.mark.parametrize(
    "lone_dot",
    [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"],
    ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF"],
)
def test_only_crlf_dot_crlf_ends_data_so_no_message_is_smuggled(sink, raw, lone_dot):
    """aiosmtpd 1.4.5's fix (SMTP smuggling), in the smtp_DATA mailsink replaces: for a client
    whose DATA line ended in CRLF (tests/test_hand_typed.py has the bare-LF client's rule)."""
    transaction(raw)
    smuggled = (
        b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\nSubject: smuggled\r\n"
    )
    raw.send(b"Subject: first\r\n\r\nbody" + lone_dot + smuggled + b"\r\n.\r\n")
    assert raw.reply()[0].startswith("250 2.0.0 Ok: queued")
    # A smuggled MAIL, RCPT and DATA would be answered before this.
    assert raw.command("NOOP") == ["250 2.0.0 OK"]
    with sink.reader() as reader:
        messages = reader.list_messages()
        assert len(messages) == 1
        assert messages[0].envelope.rcpt_to == ["b@x.test"]
        assert b"evil@x.test" in (reader.get_raw(messages[0].id) or b"")


class TlsClient(RawClient):
    """RawClient continued over TLS on its socket (mailsink's certificate is self-signed)."""

    def __init__(self, sock: socket.socket):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.sock = context.wrap_socket(sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")


def test_commands_pipelined_behind_starttls_are_not_carried_out(tmp_path: Path):
    """aiosmtpd 1.4.6's fix, in the connection_made mailsink extends: plaintext sent behind
    STARTTLS is dropped, not read as if it had come over TLS."""
    config = tmp_path / "tls.toml"
    config.write_text('[smtp]\ntimeout = "5s"\n[tls]\nstarttls = true\n')
    with RunningSink(tmp_path / "t.db", config=config) as sink:
        plain = client = RawClient(sink.host, sink.port)
        try:
            assert "250-STARTTLS" in plain.command("EHLO x")
            plain.send(b"STARTTLS\r\nNOOP injected\r\nMAIL FROM:<injected@x.test>\r\n")
            assert plain.reply()[0].startswith("220")
            upgraded = client = TlsClient(plain.sock)
            first = upgraded.command("EHLO x")
            assert first[0].startswith("250-"), f"answered before the EHLO: {first}"
            assert upgraded.command("MAIL FROM:<a@x.test>")[0].startswith("250")
            assert upgraded.command("QUIT")[0].startswith("221")
        finally:
            client.close()
        session = sink.wait_for(lambda r: (s := r.list_sessions()) and s[0].end_reason and s[0])
        with sink.reader() as reader:
            lines = [text for _, _, text in reader.get_session(session.id).events]
    assert not [line for line in lines if "injected" in line]
