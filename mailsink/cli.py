"""Command line: `mailsink` (server + TUI), `serve`, `tui --attach`, and the store commands.

Errors are one plain line on stderr and a non-zero exit; tracebacks only with MAILSINK_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mailsink import __version__
from mailsink.cli_faults import faults
from mailsink.cli_release import release
from mailsink.cli_wait import wait
from mailsink.config import Settings, allowed_host, load

if TYPE_CHECKING:
    from mailsink.query import Query

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
MAX_ID = 2**63 - 1  # SQLite's largest integer
ID = click.IntRange(1, MAX_ID)


class CliError(click.ClickException):
    """An error the user can act on; printed as one line."""


class CliInterrupted(CliError):
    exit_code = 130  # as for any command stopped by Ctrl-C


def _settings(
    config: str | None, host: str | None = None, port: int | None = None, db: str | None = None
) -> Settings:
    settings = load(config) if config else Settings()
    return settings.with_overrides(host=host, port=port, db=db)


def _overrides(
    host: str | None,
    port: int | None,
    db: str | None,
    http_port: int | None,
    no_http: bool,
    http_host: str | None = None,
    http_allowed_hosts: tuple[str, ...] = (),
    no_web_ui: bool = False,
) -> dict[str, Any]:
    """The command line's settings, which win over the config file (also when reloaded);
    --http-allowed-host adds to the file's names."""
    return {
        "host": host,
        "port": port,
        "db": db,
        "http_port": http_port,
        "http_host": http_host,
        "http": False if no_http else None,
        "http_allowed_hosts": http_allowed_hosts or None,
        "web_ui": False if no_web_ui else None,
    }


def _server_settings(config: str | None, overrides: dict[str, Any]) -> Settings:
    settings = load(config) if config else Settings()
    return settings.with_overrides(**overrides)


def _address(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    """--host and --http-host: "" would listen on every interface, which must be asked for."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter(
            "expected a host name or IP address, got an empty one"
            " (0.0.0.0 listens on every interface)"
        )
    return value.strip()


def _allowed_host_names(
    context: click.Context, parameter: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        return tuple(allowed_host(name) for name in value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def server_options(function: F) -> F:
    options = [
        click.option(
            "--config",
            "-c",
            type=click.Path(dir_okay=False),
            help="TOML config file; edits to it apply while the server runs.",
        ),
        click.option(
            "--host",
            callback=_address,
            help="Address to listen on [default: 127.0.0.1, loopback only].",
        ),
        click.option(
            "--port",
            "-p",
            type=click.IntRange(0, 65535),
            help="SMTP port [default: 1025; 0 picks a free one].",
        ),
        click.option("--db", help="Store path; ':memory:' keeps nothing [default: user data dir]."),
        click.option(
            "--http-port",
            type=click.IntRange(0, 65535),
            help="HTTP API port [default: 8025; 0 picks a free one].",
        ),
        click.option(
            "--http-host",
            callback=_address,
            help="Address the HTTP API listens on [default: 127.0.0.1, loopback only].",
        ),
        click.option(
            "--http-allowed-host",
            "http_allowed_hosts",
            metavar="NAME",
            multiple=True,
            callback=_allowed_host_names,
            help="A name the HTTP API answers to beyond IP addresses, localhost and this"
            " machine's names, e.g. a compose service's (repeatable; added to [http]"
            " allowed_hosts; *.example.test: every name under it).",
        ),
        click.option(
            "--no-http",
            is_flag=True,
            help="Serve no HTTP API (wins over the --http-* options).",
        ),
        click.option(
            "--no-web-ui",
            is_flag=True,
            help="Serve the HTTP API without the UI in a browser at / ([http] ui = false).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def store_options(function: F) -> F:
    function = click.option("--db", help="Store path [default: the config's, else user data dir].")(
        function
    )
    return click.option(
        "--config",
        "-c",
        type=click.Path(dir_okay=False),
        help="TOML config file (for its [storage] path).",
    )(function)


def _reader(config: str | None, db: str | None):
    from mailsink.store.reader import Reader

    return Reader(_settings(config, db=db).storage.path)


def _run_server(config: str | None, overrides: dict[str, Any]) -> None:
    from mailsink.run import run

    run(_server_settings(config, overrides), overrides)


# What a browser tab's UI process runs under (mailsink.http.web_ui starts it so): Textual's web
# driver speaks to the server over the pipes, which are then the tab's terminal.
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"


def _has_terminal() -> bool:
    if os.environ.get("TEXTUAL_DRIVER") == WEB_DRIVER:
        return True
    return sys.stdin.isatty() and sys.stdout.isatty()


def _run_tui(config: str | None, overrides: dict[str, Any], attach: bool = False) -> None:
    from mailsink.tui.app import run

    run(_server_settings(config, overrides), overrides, attach=attach)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@server_options
@click.version_option(__version__, prog_name="mailsink")
@click.pass_context
def cli(
    ctx: click.Context,
    config: str | None,
    host: str | None,
    port: int | None,
    db: str | None,
    http_port: int | None,
    http_host: str | None,
    http_allowed_hosts: tuple[str, ...],
    no_http: bool,
    no_web_ui: bool,
) -> None:
    """A local SMTP sink for development: point your app at 127.0.0.1:1025.

    Without a command, runs the server with the terminal UI (`mailsink tui`); without a
    terminal (a pipe, a container), the server alone (`mailsink serve`).
    """
    if ctx.invoked_subcommand is not None:
        # click parses them here, before the command, and the command never sees them: a
        # config with [http] users would silently not apply.
        before = [
            next(o for o in param.opts if o.startswith("--"))
            for param in ctx.command.params
            if isinstance(param, click.Option)
            and param.name is not None
            and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE
        ]
        if before:
            command = ctx.invoked_subcommand
            raise click.UsageError(
                f"{', '.join(before)} before the command {command!r} would not apply: options go"
                f" after the command (`mailsink {command} {before[0]} …`; `mailsink {command}"
                " --help` lists them)"
            )
        return
    if ctx.invoked_subcommand is None:
        overrides = _overrides(
            host, port, db, http_port, no_http, http_host, http_allowed_hosts, no_web_ui
        )
        if _has_terminal():
            _run_tui(config, overrides)
        else:
            click.echo("mailsink: no terminal for the UI; running the server alone", err=True)
            _run_server(config, overrides)


@cli.command()
@server_options
def serve(
    config: str | None,
    host: str | None,
    port: int | None,
    db: str | None,
    http_port: int | None,
    http_host: str | None,
    http_allowed_hosts: tuple[str, ...],
    no_http: bool,
    no_web_ui: bool,
) -> None:
    """Run the SMTP server and the HTTP API without a UI; one log line per session and per
    message."""
    overrides = _overrides(
        host, port, db, http_port, no_http, http_host, http_allowed_hosts, no_web_ui
    )
    _run_server(config, overrides)


@cli.command()
@server_options
@click.option(
    "--attach",
    is_flag=True,
    help="Only show the store (--db) that a running `mailsink serve` writes; start no server.",
)
def tui(
    config: str | None,
    host: str | None,
    port: int | None,
    db: str | None,
    http_port: int | None,
    http_host: str | None,
    http_allowed_hosts: tuple[str, ...],
    no_http: bool,
    no_web_ui: bool,
    attach: bool,
) -> None:
    """The SMTP server, the HTTP API and the terminal UI in one process (what bare `mailsink`
    does)."""
    from mailsink.http.ui_process import guard_browser_tab

    guard_browser_tab()  # a browser tab's UI process: ends with its server and its tab
    if not _has_terminal():
        raise CliError("the UI needs a terminal; use `mailsink serve` to run without one")
    given = (host, port, http_port, http_host)
    if attach and (any(value is not None for value in given) or http_allowed_hosts):
        raise CliError(
            "--attach starts no server: --host, --port, --http-host, --http-port and"
            " --http-allowed-host do not apply"
        )
    overrides = _overrides(
        host, port, db, http_port, no_http, http_host, http_allowed_hosts, no_web_ui
    )
    _run_tui(config, overrides, attach)


@cli.command("list")
@store_options
@click.option("--json", "as_json", is_flag=True, help="JSON array of message summaries.")
@click.option("--limit", "-n", type=ID, default=50, show_default=True)
@click.option(
    "--search",
    "-s",
    metavar="QUERY",
    help='Only messages the query matches: words, "phrases", prefixes such as from:,'
    " rcpt:, tag:, is:unread, has:attachment, after:2h (see README, Search).",
)
@click.option(
    "--findings",
    "findings",
    is_flag=False,
    flag_value="",  # bare --findings: any kind
    multiple=True,
    metavar="[KIND]",
    help="Only messages with findings; with KIND, with a finding of that kind (repeatable).",
)
@click.option("--all", "include_rejected", is_flag=True, help="Include rejected messages.")
def list_messages(
    config: str | None,
    db: str | None,
    as_json: bool,
    limit: int,
    search: str | None,
    findings: tuple[str, ...],
    include_rejected: bool,
) -> None:
    """List messages, newest first."""
    from mailsink import output

    kinds = _finding_kinds(findings)
    query = _query(search)
    with _reader(config, db) as reader:
        records = reader.list_messages(
            limit=limit,
            query=query,
            findings_only=bool(findings),
            include_rejected=include_rejected,
            finding_kinds=kinds,
        )
        # Exactly when this query may have missed a message the index has not reached yet.
        if query is not None and (missed := reader.unsearched(query)):
            click.echo(_unsearched_notice(reader, missed), err=True)
    if as_json:
        _print_json([r.summary_json() for r in records])
    else:
        click.echo(output.message_table(records))


def _unsearched_notice(reader: Any, missed: int) -> str:
    from mailsink.store.schema import SEARCH_SINCE

    were = "was" if missed == 1 else "were"
    messages = f"{missed} message{'s' * (missed != 1)}"
    if reader.version < SEARCH_SINCE:  # only a server migrates: the index is not there at all
        return (
            f"mailsink: {messages} {were} not fully searched: this store has no search index"
            f" yet (schema {reader.version}; a server of this version builds it)"
        )
    indexed, total = reader.index_progress()
    return (
        f"mailsink: {messages} {'is' if missed == 1 else 'are'} not in the search index yet and"
        f" {were} not fully searched (the index covers {indexed} of {total})"
    )


def _query(text: str | None) -> Query | None:
    """--search's query; a malformed one is a usage error (exit 2) naming the term."""
    from mailsink.errors import QueryError
    from mailsink.query import parse_query

    try:
        query = parse_query(text or "")
    except QueryError as error:
        raise click.UsageError(f"search: {error}") from None
    return query or None


def _finding_kinds(given: tuple[str, ...]) -> list[str]:
    """The kinds named with --findings (a bare --findings names none), each one of KINDS."""
    kinds = [kind for kind in given if kind]
    if not kinds:
        return kinds  # (findings.py imports the MIME parser: not for a list that needs none)
    from mailsink.mail.findings import KINDS

    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise click.UsageError(
            f"--findings: unknown finding kind {unknown[0]!r}; the kinds are {', '.join(KINDS)}"
        )
    return kinds


def _message_id(reader: Any, ident: str) -> int:
    if ident == "latest":
        latest = reader.latest_id()
        if latest is None:
            raise CliError("the store has no messages")
        return latest
    if not (ident.isascii() and ident.isdigit()) or not 0 < int(ident) <= MAX_ID:
        raise CliError(f"{ident!r} is not a message id (a number, or 'latest')")
    return int(ident)


@cli.command()
@click.argument("ident", metavar="ID|latest")
@store_options
@click.option("--json", "view", flag_value="json", help="The message as JSON.")
@click.option("--raw", "view", flag_value="raw", help="The bytes exactly as received.")
@click.option("--headers", "view", flag_value="headers", help="All header fields, decoded.")
@click.option("--session", "view", flag_value="session", help="The SMTP session that delivered it.")
def show(ident: str, config: str | None, db: str | None, view: str | None) -> None:
    """Show one message: envelope beside headers, findings, parts and text. Marks it read
    (but for --session, which shows its session)."""
    from mailsink import output

    with _reader(config, db) as reader:
        message_id = _message_id(reader, ident)
        record = reader.get_message(message_id)
        if record is None:
            raise CliError(f"no message {message_id}")
        if view != "session" and not record.seen:
            record.seen = _mark_shown_read(reader, message_id)
        if view == "raw":
            raw = reader.get_raw(message_id) or b""
            if sys.stdout.isatty():
                from mailsink.text import visible_block

                click.echo(visible_block(raw.decode("utf-8", "replace")), nl=False)
            else:
                sys.stdout.buffer.write(raw)
                sys.stdout.flush()
            return
        if view == "session":
            session = reader.get_session(record.session_id)
            if session is None:
                raise CliError(f"session {record.session_id} of message {message_id} was pruned")
            click.echo(output.transcript(session))
            return
        parsed = reader.get_parsed(message_id)
        releases = reader.releases(message_id) if view != "headers" else []
    assert parsed is not None
    if view == "json":
        _print_json(output.message_json(record, parsed, releases))
    elif view == "headers":
        click.echo(output.header_lines(parsed))
    else:
        click.echo(output.message_text(record, parsed, releases))


def _mark_shown_read(reader: Any, message_id: int) -> bool:
    """Record that the message was shown; whether it is now read. A store that cannot record
    it is shown all the same: a read-only file (an archive, someone else's store) silently,
    any other failure (a lock held too long, damage, a trigger of another program's that
    refuses) with one line on stderr."""
    import sqlite3

    from mailsink.errors import StoreError
    from mailsink.store import operations, run_here
    from mailsink.store.schema import SEARCH_SINCE
    from mailsink.text import visible

    if reader.version < SEARCH_SINCE or not _writable(reader.path):
        return False  # (an older store keeps no read state until a server migrates it)
    try:
        # This process is no server: its own transaction, taking turns with a server's writer.
        run_here(reader.path, operations.mark_read, [message_id])
    except (StoreError, sqlite3.Error) as error:
        click.echo(f"mailsink: message {message_id} stays unread: {visible(str(error))}", err=True)
        return False
    return True


def _writable(path: str) -> bool:
    """Whether the store file may be written: for root, os.access says yes to any file, so its
    mode says too (a `chmod 444` archive stays as it is, for root as for anyone)."""
    try:
        return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)
    except OSError:
        return False


def _message_ids(reader: Any, idents: tuple[str, ...]) -> list[int]:
    return list(dict.fromkeys(_message_id(reader, ident) for ident in idents))


def _no_such(missing: list[int]) -> None:
    """One line for each id that names no message, then exit 1 (after what did work)."""
    for message_id in missing:
        click.echo(f"mailsink: no message {message_id}", err=True)
    if missing:
        raise click.exceptions.Exit(EXIT_ERROR)


@cli.command()
@click.argument("idents", nargs=-1, required=True, metavar="ID|latest...")
@store_options
@click.option("--add", "-a", multiple=True, metavar="TAG", help="Add this tag (repeatable).")
@click.option(
    "--remove", "-r", multiple=True, metavar="TAG", help="Remove this tag, any case (repeatable)."
)
def tag(
    idents: tuple[str, ...],
    config: str | None,
    db: str | None,
    add: tuple[str, ...],
    remove: tuple[str, ...],
) -> None:
    """Add or remove tags on messages; prints each message's tags afterwards.

    A tag holds ASCII letters, digits, spaces and - _ . @ (as Mailpit's); a message, 50 tags at
    most."""
    from mailsink.store import operations, run_here
    from mailsink.text import visible

    if not (add or remove):
        raise click.UsageError("tag: nothing to do: give --add TAG or --remove TAG")
    try:
        operations.change_tags_check(add, remove)
    except ValueError as error:
        raise click.UsageError(f"tag: {error}") from None
    with _reader(config, db) as reader:
        wanted = _message_ids(reader, idents)
        before = reader.messages_by_id(wanted)
        path = reader.path
    found = [message_id for message_id in wanted if message_id in before]
    if found:
        try:
            run_here(path, operations.change_tags, found, add, remove)
        except ValueError as error:  # a message would hold too many: nothing was changed
            raise CliError(f"tag: {error}") from None
        with _reader(config, db) as reader:
            after = reader.messages_by_id(found)
        for message_id in found:
            tags = after[message_id].tags if message_id in after else []
            same = "" if tags != before[message_id].tags else "  (unchanged)"
            shown = ", ".join(visible(tag) for tag in tags) or "no tags"
            click.echo(f"{message_id}: {shown}{same}")
    _no_such([message_id for message_id in wanted if message_id not in before])


@cli.command()
@click.argument("idents", nargs=-1, metavar="[ID|latest]...")
@store_options
@click.option("--unread", is_flag=True, help="Mark them unread instead.")
@click.option("--all", "every", is_flag=True, help="Mark every message read.")
def mark(
    idents: tuple[str, ...], config: str | None, db: str | None, unread: bool, every: bool
) -> None:
    """Mark messages read (as showing them does), or unread with --unread; --all marks every
    message read."""
    from mailsink.store import operations, run_here

    if every and (idents or unread):
        raise click.UsageError("mark: --all marks every message read; it takes no ID or --unread")
    if not (idents or every):
        raise click.UsageError("mark: give message IDs, or --all")
    state = "unread" if unread else "read"
    with _reader(config, db) as reader:
        path = reader.path
        if every:
            wanted, known = [], []
        else:
            wanted = _message_ids(reader, idents)
            known = list(reader.messages_by_id(wanted))
    if every:
        changed = run_here(path, operations.mark_all_read)
    else:
        changed = run_here(path, operations.mark_read, known, not unread) if known else 0
    click.echo(f"marked {changed} message(s) {state}")
    _no_such([message_id for message_id in wanted if message_id not in known])


@cli.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="JSON array of sessions.")
@click.option("--limit", "-n", type=ID, default=50, show_default=True)
@click.option(
    "--refusals",
    is_flag=True,
    help="Only sessions in which the server refused something (MAIL, a RCPT, DATA, ...).",
)
def sessions(config: str | None, db: str | None, as_json: bool, limit: int, refusals: bool) -> None:
    """List SMTP sessions, newest first (including those that delivered nothing)."""
    from mailsink import output
    from mailsink.store.schema import REFUSALS_SINCE

    with _reader(config, db) as reader:
        records = reader.list_sessions(limit=limit, with_refusals=refusals)
        version = reader.version
    if refusals and version < REFUSALS_SINCE:  # "none" would be a guess: nothing counted them
        click.echo(
            f"mailsink: this store was written before mailsink counted refusals (schema"
            f" {version}); a newer server counts them in the sessions it serves",
            err=True,
        )
    if as_json:
        _print_json([r.as_json() for r in records])
    else:
        empty = "no sessions with refusals" if refusals else "no sessions"
        click.echo(output.session_table(records, empty=empty))


@cli.command()
@click.argument("session_id", type=ID)
@store_options
@click.option("--json", "as_json", is_flag=True, help="The session and its transcript as JSON.")
def session(session_id: int, config: str | None, db: str | None, as_json: bool) -> None:
    """Show one session's transcript: every line each way, timestamped."""
    from mailsink import output

    with _reader(config, db) as reader:
        record = reader.get_session(session_id)
    if record is None:
        raise CliError(f"no session {session_id}")
    if as_json:
        _print_json(record.as_json(with_events=True))
    else:
        click.echo(output.transcript(record))


@cli.command()
@click.argument("ids", nargs=-1, type=ID, metavar="[ID]...")
@store_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["eml", "mbox", "maildir"]),
    default="eml",
    show_default=True,
)
@click.option(
    "--out", "-o", required=True, type=click.Path(), help="Directory (eml, maildir) or file (mbox)."
)
def export(ids: tuple[int, ...], config: str | None, db: str | None, fmt: str, out: str) -> None:
    """Export messages (all accepted ones when no ID is given) as .eml files, mbox or Maildir.

    Never replaces a file or follows a link at a name it writes; appends to an existing mbox."""
    from mailsink.export import ExportError, ExportInterrupted, export_messages
    from mailsink.text import visible

    if not out:  # Path("") would be the current directory
        raise CliError("--out is empty: give a directory (eml, maildir) or a file (mbox)")
    with _reader(config, db) as reader:
        try:
            count = export_messages(reader, list(ids), fmt, Path(out))
        except ExportError as error:
            failure = CliInterrupted if isinstance(error, ExportInterrupted) else CliError
            raise failure(str(error)) from None
    click.echo(f"exported {count} message(s) to {visible(out)} ({fmt})")


@cli.command()
@store_options
def clear(config: str | None, db: str | None) -> None:
    """Delete every message and every finished session in the store."""
    from mailsink.store import operations, run_here

    # In a transaction of its own: a server may be writing to the store meanwhile (SQLite's
    # lock makes them take turns), and this process has no writer of its own to hand it to.
    count = run_here(_settings(config, db=db).storage.path, operations.clear)
    click.echo(f"deleted {count} message(s)")


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file: str) -> None:
    """Validate a config file; print the effective settings and the fault rules in order."""
    from mailsink import output

    click.echo(output.settings_text(load(file)))


cli.add_command(wait)  # mailsink/cli_wait.py
cli.add_command(faults)  # mailsink/cli_faults.py
cli.add_command(release)  # mailsink/cli_release.py


def _print_json(data: Any) -> None:
    from mailsink.output import to_json

    click.echo(to_json(data))


def main(argv: list[str] | None = None) -> None:
    """Entry point: click without its standalone mode, so every error is one line."""
    from mailsink.errors import MailsinkError
    from mailsink.text import visible  # errors quote paths, keys and values as given

    try:
        code = cli.main(args=argv, prog_name="mailsink", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.format_message(), err=True)
        code = 2
    except click.ClickException as error:
        hint = " (see mailsink --help)" if isinstance(error, click.UsageError) else ""
        message = " ".join(error.format_message().split())
        click.echo(f"mailsink: {visible(message)}{hint}", err=True)
        code = error.exit_code
    except MailsinkError as error:
        click.echo(f"mailsink: {visible(str(error))}", err=True)
        code = EXIT_ERROR
    except click.Abort:
        code = 130
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # A closed pipe (`mailsink list | head`): not an error worth a message.
        sys.stderr.close()
        code = 0
    except Exception as error:
        if os.environ.get("MAILSINK_DEBUG"):
            raise
        click.echo(
            f"mailsink: internal error: {type(error).__name__}: {visible(str(error))}", err=True
        )
        code = 70
    sys.exit(code if isinstance(code, int) else 0)
