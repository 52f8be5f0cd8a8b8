"""`mailsink release ID… [--to ADDR…]`: send captured messages to the `[relay]` server.

With a server running for the store (found as an attached TUI finds it: `<store>.server`,
mailsink.server_link.find_server), the server releases them: its `[relay]`, its records, its
event stream (`POST /api/mailsink/messages/{id}/release`). Without one, this process does it
with `--config`'s `[relay]` (mailsink.sink.Sink.attached: the same checks, the delivery on a
thread, the record in a transaction of its own).

One line per message released; any failure (a recipient the upstream refused included) is one
line on stderr quoting the upstream, and exit 1 once every message has been tried.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mailsink.config import Settings
    from mailsink.relay import ReleaseRecord
    from mailsink.server_link import ServerAddress

# How long the server may take over one release: it bounds each step by its own [relay]
# timeout (connect, each reply), so this is only for a server that stopped answering.
ANSWER_SECONDS = 300.0
ROUTE = "/api/mailsink/messages/{id}/release"

# What one message's release came to: its record (None: nothing was sent), or why not.
Outcome = tuple[int, "ReleaseRecord | None", "Exception | None"]


@click.command()
@click.argument("idents", nargs=-1, required=True, metavar="ID|latest...")
@click.option(
    "--to",
    "recipients",
    multiple=True,
    metavar="ADDR",
    help="Send to this address (repeatable); each must match [relay] allowed_recipients."
    " Default: the message's envelope recipients that the list allows.",
)
@click.option("--json", "as_json", is_flag=True, help="The releases' records as a JSON array.")
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False),
    help="TOML config file: its [relay] (used when no server runs for the store) and its"
    " [storage] path.",
)
@click.option("--db", help="Store path [default: the config's, else user data dir].")
def release(
    idents: tuple[str, ...],
    recipients: tuple[str, ...],
    as_json: bool,
    config: str | None,
    db: str | None,
) -> None:
    """Release messages to the real mail server of [relay]: the stored bytes, unchanged, to
    allowed recipients only. Through the store's running server when there is one."""
    from mailsink.cli import _message_ids, _settings
    from mailsink.server_link import find_server
    from mailsink.store import Reader

    settings = _settings(config, db=db)
    with Reader(settings.storage.path) as reader:
        ids = _message_ids(reader, idents)
        path = reader.path
    wanted = list(recipients) or None
    address = find_server(path)
    if address is not None:
        outcomes: Iterator[Outcome] = _via_server(address, ids, wanted)
    else:
        outcomes = iter(asyncio.run(_here(settings, ids, wanted)))
    records: list[ReleaseRecord] = []
    failed = False
    for _message_id, record, error in outcomes:
        if record is not None:
            records.append(record)
        if error is not None:
            failed = True
            if _stops_all(error, given=wanted is not None):
                raise error
            _say(str(error))
        elif record is not None and record.outcome != "sent":
            failed = True
            _say(partial_text(record))
        elif record is not None and not as_json:
            click.echo(sent_text(record))
    if as_json:
        from mailsink.output import to_json

        click.echo(to_json([record.as_json() for record in records]))
    if failed:
        raise click.exceptions.Exit(1)


def _stops_all(error: Exception, *, given: bool) -> bool:
    """What no other message would fare better with: told once, for all of them."""
    from mailsink.cli import CliError
    from mailsink.errors import RecipientsRefused, RelayNotConfigured

    if isinstance(error, RelayNotConfigured | CliError):
        return True
    return isinstance(error, RecipientsRefused) and given


def _say(text: str) -> None:
    from mailsink.text import visible

    click.echo(f"mailsink: {visible(text)}", err=True)


def _reply(record: ReleaseRecord) -> str:
    """The upstream's last reply, its code first ("250 2.0.0 Ok: queued as X")."""
    if record.code is None or record.reply.startswith(str(record.code)):
        return record.reply
    return f"{record.code} {record.reply}".rstrip()


def sent_text(record: ReleaseRecord) -> str:
    """`released message 12 to a@x.test via smtp.x.test:587: 250 2.0.0 Ok: queued as X`."""
    from mailsink.text import visible

    to = visible(", ".join(record.recipients), emoji=False)
    return (
        f"released message {record.message_id} to {to} via {record.upstream}:"
        f" {visible(_reply(record))}"
    )


def partial_text(record: ReleaseRecord) -> str:
    """A release the upstream took for some recipients only: who was refused, with its reply,
    and who got the message."""
    refused = "; ".join(f"{rcpt} ({reply})" for rcpt, reply in record.refused.items())
    taken = [rcpt for rcpt in record.recipients if rcpt not in record.refused]
    got = f"{', '.join(taken)} got it: {_reply(record)}" if taken else "nobody got it"
    return (
        f"release of message {record.message_id} was partial: the upstream ({record.upstream})"
        f" refused {refused}; {got}"
    )


async def _here(settings: Settings, ids: list[int], wanted: list[str] | None) -> list[Outcome]:
    """Released by this process (no server runs for the store), one after another."""
    from mailsink.errors import ReleaseError, UpstreamError
    from mailsink.sink import Sink

    # The sink logs each release (a server's log wants it); here the command's own line on
    # stdout or stderr says it, and Python's last-resort handler would print it a second time.
    quiet = logging.NullHandler()
    logging.getLogger("mailsink").addHandler(quiet)
    outcomes: list[Outcome] = []
    async with Sink.attached(settings) as sink:
        for message_id in ids:
            try:
                record = await sink.release(message_id, wanted, trigger="cli")
            except UpstreamError as error:
                outcomes.append((message_id, _record_or_none(error.record), error))
            except ReleaseError as error:
                outcomes.append((message_id, None, error))
                if _stops_all(error, given=wanted is not None):
                    break
            else:
                outcomes.append((message_id, record, None))
    return outcomes


def _record_or_none(value: object) -> ReleaseRecord | None:
    from mailsink.relay import ReleaseRecord

    return value if isinstance(value, ReleaseRecord) else None


def _via_server(
    address: ServerAddress, ids: list[int], wanted: list[str] | None
) -> Iterator[Outcome]:
    """Released by the store's server, through its native API (authenticated by the token of
    its server file)."""
    from mailsink.cli_http import ApiTarget

    parsed = ApiTarget.parse(address.url)
    target = ApiTarget(parsed.base, f"Bearer {address.token}", parsed.loopback)
    body: dict[str, Any] = {"trigger": "cli"}
    if wanted is not None:
        body["to"] = wanted
    for message_id in ids:
        yield _ask(target, message_id, body)


def _ask(target: Any, message_id: int, body: dict[str, Any]) -> Outcome:
    from mailsink.cli import CliError
    from mailsink.cli_http import ApiFailure, NoAnswer, Unreachable
    from mailsink.errors import (
        NoSuchMessage,
        RecipientsRefused,
        RelayNotConfigured,
        UpstreamError,
    )

    path = ROUTE.format(id=urllib.parse.quote(str(message_id)))
    deadline = time.monotonic() + ANSWER_SECONDS
    try:
        status, data = target.request(
            "POST", path, body=body, deadline=deadline, accept=(200, 502, 504)
        )
    except Unreachable as error:
        raise CliError(
            f"release: cannot reach the store's server at {target.base}: {error}"
        ) from None
    except NoAnswer as failure:
        raise CliError(f"release: {failure} within {ANSWER_SECONDS:g}s") from None
    except ApiFailure as failure:
        kinds: dict[int | None, Callable[[str], Exception]] = {
            400: RecipientsRefused,
            404: NoSuchMessage,
            409: RelayNotConfigured,
        }
        kind = kinds.get(failure.status)
        if kind is None:
            raise CliError(f"release: {target.base}: {failure}") from None
        return message_id, None, kind(str(failure))
    record = _record_of(target, data)
    if status == 200:
        return message_id, record, None
    # 502 / 504: the upstream refused, failed or timed out; the server's words quote it.
    said = data.get("error") if isinstance(data, dict) else None
    text = said if isinstance(said, str) else f"release of message {message_id} failed"
    return message_id, record, UpstreamError(text, record=record)


def _record_of(target: Any, data: Any) -> ReleaseRecord:
    from mailsink.cli import CliError
    from mailsink.relay import ReleaseRecord

    try:
        return ReleaseRecord.from_json(data["release"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CliError(
            f"release: {target.base}: not a mailsink answer: no release record ({error})"
        ) from None
