"""`mailsink wait`: exit 0 as soon as N messages match a query, printing them as `mailsink list`
does; exit 1 at the timeout. For shell scripts and the CI of any language.

Two ways to watch:
- `--url` (or MAILSINK_URL): the HTTP API's `GET /api/mailsink/wait`, which the server answers
  the moment a commit of its own makes enough messages match; asked again while the time left
  is longer than one request may wait, and while nothing listens yet (`mailsink serve &` then
  `mailsink wait`: the server may not have bound its port when the wait starts);
- the store (`--db`, `--config`'s, else the default one `mailsink list` reads): a
  `Sink.attached` view, which reads the store's commit counter (PRAGMA data_version, one
  integer, no table read) every ATTACHED_POLL_SECONDS (0.1 s) and tells a change as a
  StoreChanged event; only then is the query run again. A store that does not exist yet is
  waited for.

The timeout is a hard limit: every request ends by it (a server that takes the request and
says nothing, or answers a byte at a time, is cut off), but for the last answer, which may come
up to ANSWER_GRACE_SECONDS after it (the server's own 408 at its timeout, with how many
matched). Requests are paced: a server that answers at once when asked to wait (a proxy's 502,
a stopping server's 503, an early 408) is asked again after PACE_SECONDS, doubled after each
such answer up to PACE_MAX_SECONDS.

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
    from mailsink.cli_http import ApiTarget, Check
    from mailsink.config import Settings
    from mailsink.query import Query
    from mailsink.store import MessageRecord

MAX_ID = 2**63 - 1  # SQLite's largest integer
# The HTTP wait's limits (http/live_api.py: WAIT_MAX_COUNT, WAIT_MAX_SECONDS); a test checks
# they agree. The store mode takes the same count, so a script can switch modes unchanged.
MAX_COUNT = 1000
REQUEST_SECONDS = 300.0  # what one request may wait: a longer wait is several, `since` kept
# How long past the deadline the last answer may come (the server's 408 at its own timeout,
# saying how many matched); then the request is cut off, whatever the server is doing.
ANSWER_GRACE_SECONDS = 1.0
# How soon a server that is not listening yet is tried again (a refused connection costs it
# nothing), and a store not there yet looked for again (as an attached sink looks at the
# store: sink.ATTACHED_POLL_SECONDS).
RETRY_SECONDS = 0.1
# Requests start at least PACE_SECONDS apart; after an answer that came at once when the server
# was asked to wait (an early 408, or a 502/503/504: a proxy in front, a server stopping), the
# next waits twice as long as the last such pause, up to PACE_MAX_SECONDS.
PACE_SECONDS = 0.1
PACE_MAX_SECONDS = 2.0
# What a proxy in front of the server, or a server stopping, answers: asked again until the
# deadline, as a refused connection is.
PASSING_STATUSES = (502, 503, 504)


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
    " Basic auth, with @ : / ? # % and spaces in them percent-encoded) [env: MAILSINK_URL].",
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
    settings = _store_settings(config, db) if target is None else None
    progress = Progress()
    records: list[MessageRecord] | None = None
    try:
        if settings is None:
            assert target is not None
            summaries = wait_over_http(target, wanted, progress)
            if not as_json:
                records = _records(summaries)
        else:
            records = asyncio.run(wait_in_store(settings, parsed, wanted, progress))
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
        assert records is not None
        click.echo(output.message_table(records))


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
    """The settings whose store is watched; a usage error for a store in memory, which no
    other process can see."""
    from mailsink.config import Settings, load
    from mailsink.store import resolve_path
    from mailsink.store.schema import MEMORY

    settings = (load(config) if config else Settings()).with_overrides(db=db)
    if resolve_path(settings.storage.path) == MEMORY:
        given = "--db :memory:" if db is not None else f"{config}: [storage] path = ':memory:'"
        raise click.UsageError(
            f"wait: {given} is a store in the serving process's memory, which no other process"
            " can watch: give the store's file, or ask the server with --url"
        )
    return settings


# ---- through the HTTP API


def wait_over_http(target: ApiTarget, wanted: Wanted, progress: Progress) -> list[dict[str, Any]]:
    """The summaries (newest first) of the matching messages, as soon as there are enough;
    TimedOut at the deadline (the last answer cut off ANSWER_GRACE_SECONDS after it). Refused
    connections, a server stopping or a proxy's 502/504 are tried again until then."""
    import urllib.parse

    from mailsink.cli_http import ApiFailure, NoAnswer, Unreachable

    deadline = time.monotonic() + wanted.seconds
    params: dict[str, Any] = {"count": wanted.count}
    if wanted.query.strip():
        params["query"] = wanted.query
    if wanted.since:
        params["since"] = wanted.since
    pace = _Pace()
    why: str | None = None  # what kept the last request from being an answer
    while True:
        started = time.monotonic()
        remaining = max(0.0, deadline - started)
        seconds = min(remaining, REQUEST_SECONDS)
        last = seconds >= remaining  # this request's answer is the last word
        ask = urllib.parse.urlencode({**params, "timeout": f"{int(seconds * 1000)}ms"})
        early = True  # answered at once, although asked to wait: the next request is paced
        pause = None  # (None: as the pace says)
        try:
            status, data = target.request(
                "GET",
                f"/api/mailsink/wait?{ask}",
                deadline=started + seconds + ANSWER_GRACE_SECONDS,
                accept=(200, 408),
            )
        except Unreachable as error:
            why, pause = f"nothing answered at {target.base} ({error})", RETRY_SECONDS
        except NoAnswer as error:
            why = str(error)
        except ApiFailure as failure:
            if failure.status == 408:  # (not JSON: a proxy's own)
                why = f"{target.base} answered HTTP 408 without the messages it found"
            elif failure.status in PASSING_STATUSES:
                why = _answered(target, failure)
            else:
                raise
        else:
            if status == 200:
                return _summaries(data)
            messages = data.get("messages") if isinstance(data, dict) else None
            if isinstance(messages, list):
                progress.found, why = len(messages), None
                if last:
                    raise TimedOut(progress.found)
                early = time.monotonic() - started < seconds / 2
            else:  # a 408 that is not mailsink's (a proxy's own)
                why = f"{target.base} answered HTTP 408 without the messages it found"
        now = time.monotonic()
        if now >= deadline:
            raise TimedOut(progress.found, why)
        if pause is None:
            pause = pace.after(started, now, early)
        time.sleep(min(pause, deadline - now))


@dataclass
class _Pace:
    """How long to wait before the next request (see PACE_SECONDS)."""

    backoff: float = 0.0  # the last pause after an answer at once; 0 after a proper one

    def after(self, started: float, now: float, early: bool) -> float:
        if not early:
            self.backoff = 0.0
            return max(0.0, started + PACE_SECONDS - now)
        self.backoff = min(PACE_MAX_SECONDS, max(PACE_SECONDS, self.backoff * 2))
        return self.backoff


def _answered(target: ApiTarget, failure: Exception) -> str:
    """`http://127.0.0.1:8025 answered HTTP 503: the server is stopping …`"""
    text = str(failure)
    status = getattr(failure, "status", None)
    if text.startswith("HTTP ") or status is None:
        return f"{target.base} answered {text}"
    return f"{target.base} answered HTTP {status}: {text}"


def _summary_checks() -> dict[str, Check]:
    """What `mailsink list` prints of a summary, as a mailsink gives it."""
    from mailsink.cli_http import FLAG, TEXT, TEXT_OR_NULL, TEXTS, WHOLE

    return {
        "id": WHOLE,
        "received_at": TEXT,
        "status": TEXT,
        "reply": TEXT_OR_NULL,
        "reply_rule": TEXT_OR_NULL,
        "mail_from": TEXT,
        "rcpt_to": TEXTS,
        "from": TEXTS,
        "to": TEXTS,
        "subject": TEXT_OR_NULL,
        "size": WHOLE,
        "findings": TEXTS,
        "read": FLAG,
        "tags": TEXTS,
    }


def _summaries(data: Any) -> list[dict[str, Any]]:
    """The wait's answer, checked to be what a mailsink sends (so that both outputs refuse
    the same): ApiFailure `not a mailsink answer: …` naming what is not."""
    from mailsink.cli_http import not_mailsink

    if not isinstance(data, list):
        raise not_mailsink("expected a JSON array of message summaries")
    for number, summary in enumerate(data, 1):
        problem = _summary_problem(summary)
        if problem is not None:
            raise not_mailsink(f"message summary {number}: {problem}")
    return data


def _summary_problem(summary: Any) -> str | None:
    from mailsink.cli_http import shape_problem

    problem = shape_problem(summary, _summary_checks())
    if problem is None and _received_ms(summary["received_at"]) is None:
        problem = f"'received_at' is {summary['received_at'][:40]!r}, not a time"
    return problem


def _received_ms(text: str) -> int | None:
    """An ISO time as ms since the epoch; None for what is not one (or out of range)."""
    from datetime import datetime

    try:
        return round(datetime.fromisoformat(text).timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None


def _records(summaries: list[dict[str, Any]]) -> list[MessageRecord]:
    """The (checked) summaries as the records `mailsink list` prints, so that both modes print
    alike."""
    from mailsink.mail.envelope import Envelope
    from mailsink.store import MessageRecord

    return [
        MessageRecord(
            id=summary["id"],
            session_id=0,  # (not in a summary; the table does not show it)
            received_at=_received_ms(summary["received_at"]) or 0,
            status=summary["status"],
            reply=summary["reply"],
            size=summary["size"],
            envelope=Envelope(summary["mail_from"], list(summary["rcpt_to"])),
            headers={
                "from": list(summary["from"]),
                "to": list(summary["to"]),
                "subject": summary["subject"],
            },
            findings=[{"kind": kind} for kind in summary["findings"]],
            reply_rule=summary["reply_rule"],
            seen=summary["read"],
            tags=list(summary["tags"]),
        )
        for summary in summaries
    ]


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

    from mailsink.store.schema import connect

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
    deadline (an answer still coming then is cut off ANSWER_GRACE_SECONDS after it);
    ApiFailure for an answer that says this server cannot be used (401, an error status, not
    mailsink's JSON). A server stopping or a proxy's 502/504 are asked again."""
    from mailsink.cli_http import ApiFailure, NoAnswer, Unreachable, not_mailsink

    deadline = time.monotonic() + seconds
    pace = _Pace()
    while True:
        started = time.monotonic()
        passing = False
        try:
            status, data = target.request(
                "GET",
                "/api/mailsink/wait?timeout=0",
                deadline=max(deadline, started) + ANSWER_GRACE_SECONDS,
                accept=(200, 408),
            )
        except Unreachable as error:
            state.why = f"nothing answered at {target.base} ({error})"
        except NoAnswer as error:
            state.why = str(error)
        except ApiFailure as failure:
            if failure.status not in PASSING_STATUSES:
                raise
            state.why, passing = _answered(target, failure), True
        else:
            # Checked as `wait` checks it: any server may answer 200 with some JSON array.
            if status == 200:
                _summaries(data)
                return  # (messages there)
            messages = data.get("messages") if isinstance(data, dict) else None
            if isinstance(messages, list):
                _summaries(messages)
                return  # (none yet: still an answer)
            raise not_mailsink(f"HTTP {status} without a wait's answer", status)
        now = time.monotonic()
        if now >= deadline:
            raise TimedOut(why=state.why)
        pause = pace.after(started, now, early=True) if passing else RETRY_SECONDS
        time.sleep(min(pause, deadline - now))


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
