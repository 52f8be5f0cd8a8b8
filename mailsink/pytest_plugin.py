"""The pytest plugin: the `mailsink` and `mailsink_server` fixtures, the `--mailsink-config`
option, the `mailsink` and `mailsink_faults` marks and the "mailsink" section of a failure's
report. Registered as the `pytest11` entry point `mailsink`; `-p no:mailsink` turns it off.

Every pytest run of every project with mailsink installed loads this module, so it imports
nothing of mailsink's at import time: the server (aiosmtpd, aiohttp, the store) is imported by
the first test that asks for a fixture, and the config module only when a config is given.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pluggy import Result

    from mailsink.config import Settings
    from mailsink.harness import Mailsink

__all__ = ["mailsink", "mailsink_server"]

CONFIG_OPTION = "--mailsink-config"
CONFIG_INI = "mailsink_config"
SECTION = "mailsink"

# The settings of --mailsink-config / mailsink_config (None: mailsink's defaults).
_SETTINGS = pytest.StashKey["Settings | None"]()
# The session's server, once a test has asked for `mailsink_server`.
_SERVER = pytest.StashKey["Mailsink"]()
# The `mailsink` view a test used, kept on its item for the failure report until its teardown.
_VIEW = pytest.StashKey["Mailsink"]()

_SHARED_MARK = "mailsink"
_FAULTS_MARK = "mailsink_faults"
_MARKS = (_SHARED_MARK, _FAULTS_MARK)
_SHARED_ARGUMENTS = ("shared",)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailsink", "mailsink (a local SMTP sink for tests)")
    group.addoption(
        CONFIG_OPTION,
        dest="mailsink_config",
        metavar="FILE",
        default=None,
        help="a mailsink TOML config file (as `mailsink serve --config`) for the mailsink"
        " fixtures' servers; its host, ports and store are overridden. Relative to the"
        " current directory. Overrides the ini value mailsink_config.",
    )
    parser.addini(
        CONFIG_INI,
        help="a mailsink TOML config file for the mailsink fixtures' servers, relative to the"
        " directory of the ini file (else the rootdir)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_SHARED_MARK}(shared=False): shared=True makes the `mailsink` fixture a view of the"
        " session's `mailsink_server` (mail from the test's start only) instead of a server of"
        " its own",
    )
    config.addinivalue_line(
        "markers",
        f"{_FAULTS_MARK}(*rules, **rule): fault rules (the keys of a [[fault]] table) added to"
        " the test's `mailsink` before the test runs and removed after it",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    # Not at configure time: `pytest --help` configures too, and should not fail on a bad file.
    session.config.stash[_SETTINGS] = _load_settings(session.config)


def _load_settings(config: pytest.Config) -> Settings | None:
    """The config file's settings, loaded once for the whole run; UsageError for a bad file."""
    option = config.getoption("mailsink_config")
    if option:
        path, origin = config.invocation_params.dir / option, CONFIG_OPTION
    else:
        value = str(config.getini(CONFIG_INI)).strip()
        if not value:
            return None
        base = config.inipath.parent if config.inipath else config.rootpath
        path, origin = base / value, f"ini {CONFIG_INI}"
    from mailsink.config import load
    from mailsink.errors import ConfigError
    from mailsink.text import visible

    try:
        return load(path)
    except ConfigError as error:
        # The line `mailsink check-config FILE` prints, then where the file was named.
        raise pytest.UsageError(f"mailsink: {visible(str(error))} (from {origin})") from None


def _settings(config: pytest.Config) -> Settings | None:
    return config.stash.get(_SETTINGS, None)


@pytest.fixture(scope="session")
def mailsink_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mailsink]:
    """One mailsink server for the whole session (one per xdist worker); its view sees all its
    mail. Tests marked `@pytest.mark.mailsink(shared=True)` get views of it as `mailsink`."""
    from mailsink.harness import Mailsink

    server = Mailsink.start(tmp_path_factory.mktemp("mailsink"), settings=_settings(pytestconfig))
    pytestconfig.stash[_SERVER] = server
    try:
        yield server
    finally:
        del pytestconfig.stash[_SERVER]
        server.close()


@pytest.fixture
def mailsink(request: pytest.FixtureRequest) -> Iterator[Mailsink]:
    """A mailsink server of the test's own (store under tmp_path), stopped after the test; with
    `@pytest.mark.mailsink(shared=True)` a view of `mailsink_server` that sees only mail from
    the test's start. Rules of `@pytest.mark.mailsink_faults(...)` are in force during the test."""
    __tracebackhide__ = True  # a bad mark's UsageError is the whole story
    if _shared(request.node):
        server: Mailsink = request.getfixturevalue("mailsink_server")
        view = server.isolate()
    else:
        from mailsink.harness import Mailsink

        directory = request.getfixturevalue("tmp_path") / "mailsink"
        view = Mailsink.start(directory, settings=_settings(request.config))
    try:
        _add_marked_faults(view, request.node)
        request.node.stash[_VIEW] = view
        yield view
    finally:
        view.close()


def _shared(item: pytest.Item) -> bool:
    __tracebackhide__ = True
    mark = item.get_closest_marker(_SHARED_MARK)
    if mark is None:
        return False
    unknown = [name for name in mark.kwargs if name not in _SHARED_ARGUMENTS]
    if mark.args or unknown:
        given = ", ".join([*map(repr, mark.args), *unknown])
        raise pytest.UsageError(
            f"@pytest.mark.{_SHARED_MARK} on {item.nodeid}: takes only shared=True or"
            f" shared=False, got {given}"
        )
    shared = mark.kwargs.get("shared", False)
    if not isinstance(shared, bool):
        raise pytest.UsageError(
            f"@pytest.mark.{_SHARED_MARK} on {item.nodeid}: shared must be True or False,"
            f" got {shared!r}"
        )
    return shared


def _add_marked_faults(view: Mailsink, item: pytest.Item) -> None:
    """The rules of every mailsink_faults mark on the test, its class and its module (outermost
    first); a bad one fails the test's setup with what is wrong with it."""
    __tracebackhide__ = True
    from mailsink.errors import RuleError

    marks = list(item.iter_markers(_FAULTS_MARK))
    marks.reverse()  # iter_markers gives the closest first: the module's rules are tried first
    for mark in marks:
        tables: list[Any] = list(mark.args)
        if mark.kwargs:
            tables.append(mark.kwargs)
        if not tables:
            raise pytest.UsageError(
                f"@pytest.mark.{_FAULTS_MARK} on {item.nodeid}: give a rule, as a dict or as"
                " keywords, e.g. mailsink_faults(stage='rcpt', reply='452 4.2.2 Mailbox full')"
            )
        for number, table in enumerate(tables, 1):
            if not isinstance(table, Mapping):
                raise pytest.UsageError(
                    f"@pytest.mark.{_FAULTS_MARK} on {item.nodeid}: rule {number} is a"
                    f" {type(table).__name__}, not a dict of [[fault]] keys"
                )
            try:
                view.add_fault(table)
            except RuleError as error:
                raise pytest.UsageError(
                    f"@pytest.mark.{_FAULTS_MARK} on {item.nodeid}, rule {number}:"
                    f" {_rule_problem(error)}"
                ) from None


def _rule_problem(error: Exception) -> str:
    """The RuleError's text, led by the key it is about (as check-config puts it)."""
    text = str(error)
    key = getattr(error, "key", None)
    if key and not text.startswith(f"{key}:"):
        text = f"{key}: {text}"
    from mailsink.text import visible

    return visible(text)


def pytest_runtest_setup(item: pytest.Item) -> None:
    __tracebackhide__ = True
    # A mark put on a test that does not use the `mailsink` fixture would do nothing, silently:
    # with mailsink_server alone, say, its rules would never be in force. Only the test's own
    # marks: a module's or class's may well cover tests that send no mail.
    for mark in item.own_markers:
        if mark.name in _MARKS and "mailsink" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(
                f"@pytest.mark.{mark.name} on {item.nodeid}: the test does not use the"
                " `mailsink` fixture, so the mark would do nothing (add a `mailsink` parameter)"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if call.when == "teardown":
        # The view is closed and its reports are made: let it go (with its RunningSink and its
        # loop), as the session keeps every item to its end.
        if _VIEW in item.stash:
            del item.stash[_VIEW]
        return  # at teardown the servers are stopped; a failed call has been reported already
    if not report.failed:
        return
    if "mailsink.harness" not in sys.modules:
        return  # no test has started a mailsink server
    views = _views_used(item)
    if views:
        report.sections.append((SECTION, "\n\n".join(_section_text(*view) for view in views)))


def _views_used(item: pytest.Item) -> list[tuple[str, Mailsink]]:
    """(heading, view) for the test's `mailsink` view, and for the session's server when the
    test asked for it and it is another server (a shared `mailsink` is a view of it already)."""
    views = []
    view = item.stash.get(_VIEW, None)
    server = item.config.stash.get(_SERVER, None)
    if view is not None:
        if server is not None and view.running is server.running:
            views.append(("mailsink: this test's view of the session's server", view))
        else:
            views.append(("mailsink: this test's server", view))
    if (
        server is not None
        and "mailsink_server" in getattr(item, "fixturenames", ())
        and (view is None or view.running is not server.running)
    ):
        views.append(("mailsink_server: the session's server, all its mail", server))
    return views


def _section_text(heading: str, view: Mailsink) -> str:
    try:
        where = f"SMTP {view.host}:{view.port}, HTTP {view.url}"
        listing = view.arrivals()
    except Exception as error:  # the report must not hide the test's own failure
        from mailsink.text import visible

        return f"{heading}\n(could not read what arrived: {visible(repr(error))})"
    return f"{heading} ({where})\n{listing}"
