"""`mailsink wait`: exit 0 as soon as N messages match a query, printing them as `mailsink list`
does; exit 1 at the timeout. For shell scripts and the CI of any language.

Two ways to watch, both woken by the server's commits, neither reading the store on a timer:
- `--url` (or MAILSINK_URL): the HTTP API's `GET /api/mailsink/wait`, asked again while the time
  left is longer than one request may wait, and while nothing listens yet (`mailsink serve &`
  then `mailsink wait`: the server may not have bound its port when the wait starts);
- the store (`--db`, `--config`'s, else the default one `mailsink list` reads): a
  `Sink.attached` view, whose StoreChanged events say when another process has committed; a
  store that does not exist yet is waited for.

`--ready` waits for the server instead of for mail (CI: `mailsink serve &`, then this, then
the app): over HTTP until the API answers as a mailsink does (it listens once SMTP does); on a
store until a server holds the store and has recorded where its SMTP server listens. Neither
is a commit to be woken by, so both look again every RETRY_SECONDS.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mailsink.cli_http import ApiTarget
    from mailsink.config import Settings
    from mailsink.query import Query
    from mailsink.store import MessageRecord

MAX_ID = 2**63 - 1  # SQLite's largest integer
# The HTTP wait's limits (http/live_api.py: WAIT_MAX_COUNT, WAIT_MAX_SECONDS); a test checks
# they agree. The store mode takes the same count, so a script can switch modes unchanged.
MAX_COUNT = 1000
REQUEST_SECONDS = 300.0  # what one request may wait: a longer wait is several, `since` kept
# How long past the server's own timeout a request may go unanswered before it counts as lost.
ANSWER_GRACE_SECONDS = 10.0
# How soon a server that is not listening yet is tried again, and a store not there yet looked
# for again (as an attached sink looks at the store: sink.ATTACHED_POLL_SECONDS).
RETRY_SECONDS = 0.1


@dataclass(frozen=True)
class Wanted:
    query: str  # as given
    count: int
    since: int
    seconds: float

    def progress(self, found: int) -> str:
        """`1 of 2 messages matching 'to:ann@x.test'` (made visible)."""
        from mailsink.text import visible

        text = f"{found} of {self.count} message{'s' * (self.count != 1)}"
        if self.query.strip():
            text += f" matching '{visible(self.query)}'"
        if self.since:
            text += f" with an id above {self.since}"
        return text


@dataclass
class Progress:
    """How many matched at the last look (what an interrupted wait says)."""

    found: int = 0


class TimedOut(Exception):
    """The time is up: `found` matched at the last look, or `why` nothing could be looked at."""

    def __init__(self, found: int = 0, why: str | None = None) -> None:
        super().__init__(why)
        self.found = found
        self.why = why


@click.command("wait")
@click.pass_context
@click.argument("query", required=False, default="")
@click.option(
    "--count",
    "-n",
    type=click.IntRange(1, MAX_COUNT),
    default=1,
    show_default=True,
    help="How many matching messages to wait for.",
)
@click.option(
    "--timeout",
    "-t",
    default="10s",
    show_default=True,
    metavar="DURATION",
    help="How long to wait: 500ms, 10s, 2m, 1h (0 looks once).",
)
@click.option(
    "--since",
    type=click.IntRange(0, MAX_ID),
    default=0,
    metavar="ID",
    help="Count only messages with a greater id (the newest id you know).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON array, as `mailsink list --json`.")
@click.option(
    "--ready",
    is_flag=True,
    help="Wait for the server, not for mail: exit 0, printing nothing, as soon as its HTTP API"
    " answers (--url) or a server has the store and listens (--db).",
)
@click.option(
    "--url",
    metavar="URL",
    help="Ask this server's HTTP API (http://HOST:PORT, http://USER:PASSWORD@HOST:PORT for"
    " Basic auth) [env: MAILSINK_URL].",
)
@click.option("--db", help="Watch this store [default: the config's, else user data dir].")
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False),
    help="TOML config file (for its [storage] path).",
)
def wait(
    ctx: click.Context,
    query: str,
    count: int,
    timeout: str,
    since: int,
    as_json: bool,
    ready: bool,
    url: str | None,
    db: str | None,
    config: str | None,
) -> None:
    """Wait until COUNT messages match QUERY (the language of `mailsink list --search`; none:
    any message), then print them, newest first, as `mailsink list` does, and exit 0.

    At the timeout: one line on stderr and exit 1; a bad query or duration: exit 2; Ctrl-C:
    exit 130. Messages already there count; --since ID counts only newer ones.

    With --ready: wait until the server is up instead (no QUERY, --count, --since, --json)."""
    import asyncio  # (here: every other command would pay for it)

    from mailsink.cli import CliError, CliInterrupted
    from mailsink.cli_http import ApiFailure

    if url is not None and (db is not None or config is not None):
        raise click.UsageError(
            "wait: --url asks a server, --db and --config name a store: give one"
        )
    source = "--url"
    if url is None and db is None and config is None and os.environ.get("MAILSINK_URL"):
        url, source = os.environ["MAILSINK_URL"], "$MAILSINK_URL"
    if ready:
        _refuse_mail_options(ctx, query)
        _wait_ready(
            _seconds(timeout),
            _target(url, source) if url is not None else None,
            None if url is not None else _store_settings(config, db),
        )
        return
    parsed = _parsed_query(query)
    wanted = Wanted(query, count, since, _seconds(timeout))
    target = _target(url, source) if url is not None else None
    progress = Progress()
    records: list[MessageRecord] | None = None
    try:
        if target is not None:
            summaries = wait_over_http(target, wanted, progress)
        else:
            records = asyncio.run(
                wait_in_store(_store_settings(config, db), parsed, wanted, progress)
            )
            summaries = [record.summary_json() for record in records]
    except TimedOut as timed_out:
        why = timed_out.why or wanted.progress(timed_out.found)
        raise CliError(f"timed out after {wanted.seconds:g}s: {why}") from None
    except ApiFailure as failure:
        assert target is not None
        problem = f"wait: {target.base}: {failure}"
        # Every parameter was checked here: a 400 is the server's reading of the query.
        raise (click.UsageError if failure.status == 400 else CliError)(problem) from None
    except KeyboardInterrupt:
        raise CliInterrupted(f"wait interrupted: {wanted.progress(progress.found)}") from None
    _print(summaries, records, as_json)


def _refuse_mail_options(ctx: click.Context, query: str) -> None:
    """--ready waits for no mail: what says which mail is a mistake, not ignored."""
    from click.core import ParameterSource

    given = [f"QUERY {query!r}"] if query else []
    for name, option in (("count", "--count"), ("since", "--since"), ("as_json", "--json")):
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            given.append(option)
    if given:
        raise click.UsageError(
            f"wait: --ready waits for the server, not for mail: it takes no {', '.join(given)}"
        )


def _print(
    summaries: list[dict[str, Any]], records: list[MessageRecord] | None, as_json: bool
) -> None:
    from mailsink import output

    if as_json:
        click.echo(output.to_json(summaries))
    else:
        click.echo(output.message_table(records if records is not None else _records(summaries)))


def _parsed_query(text: str) -> Query | None:
    from mailsink.errors import QueryError
    from mailsink.query import parse_query

    try:
        return parse_query(text) or None
    except QueryError as error:
        raise click.UsageError(f"wait: query: {error}") from None


def _seconds(timeout: str) -> float:
    """The same parser as the HTTP wait's `timeout`."""
    from mailsink.units import parse_duration

    try:
        return parse_duration(timeout)
    except ValueError as error:
        raise click.UsageError(f"wait: --timeout: {error}") from None


def _target(url: str, source: str) -> ApiTarget:
    from mailsink.cli_http import ApiTarget

    try:
        return ApiTarget.parse(url)
    except ValueError as error:
        raise click.UsageError(f"wait: {source}: {error}") from None


def _store_settings(config: str | None, db: str | None) -> Settings:
    from mailsink.config import Settings, load

    return (load(config) if config else Settings()).with_overrides(db=db)


# ---- through the HTTP API


def wait_over_http(target: ApiTarget, wanted: Wanted, progress: Progress) -> list[dict[str, Any]]:
    """The summaries (newest first) of the matching messages, as soon as there are enough;
    TimedOut at the deadline. Refused connections and a server stopping (503) are tried again
    until then."""
    import urllib.parse

    from mailsink.cli_http import Unreachable

    deadline = time.monotonic() + wanted.seconds
    params: dict[str, Any] = {"count": wanted.count}
    if wanted.query.strip():
        params["query"] = wanted.query
    if wanted.since:
        params["since"] = wanted.since
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        seconds = min(remaining, REQUEST_SECONDS)
        last = seconds >= remaining  # this request's answer is the last word
        ask = urllib.parse.urlencode({**params, "timeout": f"{int(seconds * 1000)}ms"})
        try:
            status, data = target.request(
                "GET",
                f"/api/mailsink/wait?{ask}",
                timeout=seconds + ANSWER_GRACE_SECONDS,
                accept=(200, 408, 503),
            )
        except Unreachable as error:
            status, data = 0, f"nothing answered at {target.base} ({error})"
        if status == 200:
            return _summaries(data)
        if status == 408:
            messages = data.get("messages") if isinstance(data, dict) else None
            if isinstance(messages, list):
                progress.found = len(messages)
            if last or time.monotonic() >= deadline:
                raise TimedOut(progress.found)
            continue
        why = data if status == 0 else f"the server at {target.base} is stopping (503)"
        if time.monotonic() >= deadline:
            raise TimedOut(progress.found, why)
        time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))


def _summaries(data: Any) -> list[dict[str, Any]]:
    from mailsink.cli_http import ApiFailure

    if not isinstance(data, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), int) for item in data
    ):
        raise ApiFailure("not a mailsink wait answer (a JSON array of message summaries)")
    return data


def _records(summaries: list[dict[str, Any]]) -> list[MessageRecord]:
    """The summaries as the records `mailsink list` prints, so that both modes print alike."""
    from datetime import datetime

    from mailsink.cli_http import ApiFailure
    from mailsink.mail.envelope import Envelope
    from mailsink.store import MessageRecord

    records = []
    for summary in summaries:
        try:
            received = datetime.fromisoformat(summary["received_at"])
            records.append(
                MessageRecord(
                    id=summary["id"],
                    session_id=0,  # (not in a summary; the table does not show it)
                    received_at=round(received.timestamp() * 1000),
                    status=str(summary["status"]),
                    reply=summary["reply"],
                    size=int(summary["size"]),
                    envelope=Envelope(
                        str(summary["mail_from"]), [str(r) for r in summary["rcpt_to"]]
                    ),
                    headers={
                        "from": [str(a) for a in summary["from"]],
                        "to": [str(a) for a in summary["to"]],
                        "subject": summary["subject"] and str(summary["subject"]),
                    },
                    findings=[{"kind": str(kind)} for kind in summary["findings"]],
                    reply_rule=summary["reply_rule"],
                    seen=bool(summary["read"]),
                    tags=[str(tag) for tag in summary["tags"]],
                )
            )
        except (KeyError, TypeError, ValueError):
            raise ApiFailure("not a mailsink wait answer (a message summary lacks a key)") from None
    return records


# ---- watching the store


async def wait_in_store(
    settings: Settings, query: Query | None, wanted: Wanted, progress: Progress
) -> list[MessageRecord]:
    """The matching messages (newest first) as soon as there are enough, read through an
    attached sink each time another process commits; TimedOut at the deadline."""
    import asyncio
    import contextlib

    from mailsink import events
    from mailsink.sink import Sink
    from mailsink.store import Reader, resolve_path

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wanted.seconds
    path = resolve_path(settings.storage.path)
    while (missing := await asyncio.to_thread(_not_there_yet, path)) is not None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimedOut(0, missing)
        await asyncio.sleep(min(RETRY_SECONDS, remaining))

    def newest(reader: Reader) -> list[MessageRecord]:
        # The HTTP wait's read: the same messages, whichever way a script waits.
        return reader.newest_above(query=query, above=wanted.since, limit=wanted.count)

    async with Sink.attached(settings) as sink:
        with sink.subscribe(events.StoreChanged) as changes:
            # The sink's watch takes the store's first data_version on its first turn: let it
            # (its read is then ahead of ours on the one reader thread), or a commit between
            # our read and that first look would wake nobody.
            await asyncio.sleep(0)
            while True:
                found = await sink.read(newest)
                progress.found = len(found)
                if len(found) >= wanted.count:
                    return found
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimedOut(len(found))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changes.get(), remaining)
                changes.pending()  # a burst of commits costs one read


def _not_there_yet(path: str) -> str | None:
    """Why the store at `path` cannot be waited on yet (None: it can): not made yet, or made by
    a server that has not written its tables yet. What else is wrong with it is left to the
    Reader to say, at once."""
    import sqlite3

    from mailsink.errors import StoreError
    from mailsink.store.schema import MEMORY, connect

    if path == MEMORY:
        raise StoreError("--db :memory: keeps nothing: there is no store to wait on")
    if not os.path.exists(path):
        return f"no store at {path} (start `mailsink serve` or pass --db)"
    conn = connect(path, must_exist=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError:
        return None  # not SQLite, damaged: the Reader says so
    finally:
        conn.close()
    if version == 0 and tables == 0:
        return f"{path} is empty: no mailsink server has written to it yet"
    return None


# ---- --ready: the server, not mail


def _wait_ready(seconds: float, target: ApiTarget | None, settings: Settings | None) -> None:
    """Return as soon as the server is up; CliError at the deadline or for an answer that
    says it cannot be used (401, not a mailsink), CliInterrupted at Ctrl-C."""
    from mailsink.cli import CliError, CliInterrupted
    from mailsink.cli_http import ApiFailure
    from mailsink.store import resolve_path

    state = NotReady("nothing looked at yet")
    try:
        if target is not None:
            ready_over_http(target, seconds, state)
        else:
            assert settings is not None
            ready_in_store(resolve_path(settings.storage.path), seconds, state)
    except TimedOut as timed_out:
        raise CliError(f"timed out after {seconds:g}s: {timed_out.why}") from None
    except ApiFailure as failure:
        assert target is not None
        raise CliError(f"wait: {target.base}: {failure}") from None
    except KeyboardInterrupt:
        raise CliInterrupted(f"wait interrupted: {state.why}") from None


@dataclass
class NotReady:
    """Why the server was not up at the last look (what a timeout or Ctrl-C says)."""

    why: str


def ready_over_http(target: ApiTarget, seconds: float, state: NotReady) -> None:
    """Until the API answers as a mailsink (the wait endpoint, told not to wait: one read of
    the newest message id); the HTTP API starts listening once SMTP does. TimedOut at the
    deadline; ApiFailure for an answer that says this server cannot be used (401, an error
    status, not mailsink's JSON)."""
    from mailsink.cli_http import ApiFailure, Unreachable

    deadline = time.monotonic() + seconds
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            status, data = target.request(
                "GET",
                "/api/mailsink/wait?timeout=0",
                # The answer is at once; a server that takes the connection and says nothing
                # keeps the wait to its time all the same.
                timeout=max(remaining, RETRY_SECONDS),
                accept=(200, 408, 503),
            )
        except Unreachable as error:
            state.why = f"nothing answered at {target.base} ({error})"
        else:
            if status == 200 and isinstance(data, list):
                return  # (messages there)
            if status == 408 and isinstance(data, dict) and "messages" in data:
                return  # (none yet: still an answer)
            if status != 503:
                raise ApiFailure("not a mailsink wait answer: is this a mailsink?", status)
            state.why = f"the server at {target.base} is stopping (503)"
        if time.monotonic() >= deadline:
            raise TimedOut(why=state.why)
        time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))


def ready_in_store(path: str, seconds: float, state: NotReady) -> None:
    """Until a server holds the store at `path` (its lock) and has recorded where it listens,
    which it does once its SMTP server listens. TimedOut at the deadline; StoreError at once
    for what no server can fix (not a store)."""
    deadline = time.monotonic() + seconds
    while (why := _store_not_ready(path)) is not None:
        state.why = why
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut(why=why)
        time.sleep(min(RETRY_SECONDS, remaining))


def _store_not_ready(path: str) -> str | None:
    """Why the store at `path` has no server ready to take mail (None: it has).

    A server takes the store's lock some 300 ms before its SMTP server listens and replaces
    the previous server's row (where that one listened): until then a look finds the lock
    held and the old row. So the row must also be the running server's: the process that
    wrote it is alive. (A server in another pid namespace, a container, wrote a pid that is
    most likely some live process on this side: ready once it holds the lock, as if there
    were no such check.)"""
    from mailsink.store import Reader

    missing = _not_there_yet(path)
    if missing is not None:
        return missing
    with Reader(path) as reader:
        serving = reader.serving()
        # (Serving has no pid: whether a server runs is the lock's to say, see schema.py)
        row = (
            reader.conn.execute("SELECT pid FROM server").fetchone() if serving.addresses else None
        )
    if serving.running is None:
        return f"cannot tell whether a server runs on {path} (its lock file is out of reach)"
    if not serving.running:
        return f"no mailsink server is running on {path}"
    if row is None or not _process_alive(int(row[0])):
        return f"a server has taken {path} but does not listen yet"
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    except OSError:
        return False
    return True
