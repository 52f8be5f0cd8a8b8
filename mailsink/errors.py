"""Every error mailsink raises for the user to read, in one tree.

    MailsinkError                 caught once, in the CLI: one line on stderr, exit status 1
    ├── ConfigError               a config file or option: FILE:LINE: key: what is wrong
    │   └── RuleError             one fault rule (a [[fault]] table or a run-time rule)
    ├── StoreError                a store that cannot be opened or used
    │   ├── StoreLocked           another server is using the store
    │   ├── StoreFileError        what SQLite found wrong with the file (also sqlite3.DatabaseError)
    │   └── WriterLost            the writer process ended before answering an operation
    ├── ListenError               cannot listen on HOST:PORT
    ├── QueryError                a search query that does not parse: names the term
    ├── ExportError               nothing was exported
    │   └── ExportInterrupted     a signal stopped the export; what it made is gone
    └── ReleaseError              a message could not be released to the [relay] server
        ├── RelayNotConfigured    no [relay] host: releasing is off
        ├── NoSuchMessage         no such message (deleted, or never stored)
        ├── RecipientsRefused     recipients outside allowed_recipients (none was sent to)
        └── UpstreamError         the upstream refused, failed or timed out: its reply quoted

Each message is phrased for the user: it names the file, key, address or id concerned.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = [
    "ConfigError",
    "ExportError",
    "ExportInterrupted",
    "ListenError",
    "MailsinkError",
    "NoSuchMessage",
    "QueryError",
    "RecipientsRefused",
    "RelayNotConfigured",
    "ReleaseError",
    "RuleError",
    "StoreError",
    "StoreFileError",
    "StoreLocked",
    "UpstreamError",
    "WriterLost",
]


class MailsinkError(Exception):
    """Something the user can act on; `str()` is the whole explanation."""


class ConfigError(MailsinkError):
    """A config problem, phrased for the user: FILE:LINE: key: what is wrong and what is allowed."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | None = None,
        key: str | None = None,
        line: int | None = None,
    ):
        self.file = file
        self.key = key
        self.line = line
        self.reason = message
        where = f"{file}:{line}" if file and line else str(file or "")
        parts = [part for part in (where, key or "", message) if part]
        super().__init__(": ".join(parts))


class RuleError(ConfigError, ValueError):
    """A malformed rule; `key` says which part (e.g. 'stage', 'match.peer'). Also a ValueError,
    so that it reads like any other bad value to the config loader."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class StoreError(MailsinkError):
    """A store that cannot be opened or used, phrased for the user."""


class StoreLocked(StoreError):
    """Another mailsink server holds the store's lock."""


class StoreFileError(StoreError, sqlite3.DatabaseError):
    """What SQLite found wrong with the store's file (damaged, another program's, read-only),
    phrased for the user. Still an sqlite3.DatabaseError, so that code handling SQLite's errors
    (the TUI's notices) goes on handling it, now with the clearer words."""


class WriterLost(StoreError):
    """The writer process ended before answering: the operation may or may not have committed."""


class ListenError(MailsinkError):
    """The SMTP server cannot listen where it was told to (port in use, no such address)."""


class QueryError(MailsinkError, ValueError):
    """A malformed search query; `term` is the term at fault (None: the query as a whole). The
    message names it and, for an unknown prefix, lists the prefixes."""

    def __init__(self, message: str, *, term: str | None = None):
        super().__init__(message)
        self.term = term


class ExportError(MailsinkError):
    """Nothing was exported; the message says why."""


class ExportInterrupted(ExportError):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the export, and what it had made is gone."""


class ReleaseError(MailsinkError):
    """A release that did not happen (or not wholly): why, phrased for the user."""


class RelayNotConfigured(ReleaseError):
    """No `[relay] host` in the settings: mailsink relays nothing until one is configured."""


class NoSuchMessage(ReleaseError, LookupError):
    """The message to release is not in the store."""


class RecipientsRefused(ReleaseError, ValueError):
    """Recipients outside `[relay] allowed_recipients` (or not addresses): nothing was sent.
    `recipients` names them."""

    def __init__(self, message: str, recipients: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.recipients = recipients


class UpstreamError(ReleaseError):
    """The upstream server refused the release, or could not be reached or spoken to in time.
    `code` is its reply code (None: no reply, e.g. a refused connection, a TLS failure or a
    timeout), `stage` what was being done (connect, tls, ehlo, auth, mail, rcpt, data, quit),
    `timed_out` whether the timeout ended it. `str()` quotes the upstream's reply."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        stage: str = "",
        timed_out: bool = False,
        record: object = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.stage = stage
        self.timed_out = timed_out
        self.record = record  # the mailsink.relay.ReleaseRecord written for it, when there is one
