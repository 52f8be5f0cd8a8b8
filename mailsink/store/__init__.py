"""The store: SQLite is the single source of truth for messages and sessions.

Layers, each importing only those before it in this list:

- schema: the schema and its migrations, connections, SQLite's errors in the user's words;
- operations: every change to the rows (what the writer runs), and run_here, which runs one in
  a transaction of its own for a store no server in this process writes;
- wire: the framing between a server and its writer process;
- spawn: the helper that forks writer processes;
- writer: the writer process (group commit, retention) and the server's side of it;
- facade: Store, the server's side of a store;
- reader: Reader, the read side (schema only; it never writes).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from mailsink.errors import StoreError, StoreFileError, StoreLocked, WriterLost
    from mailsink.store import operations
    from mailsink.store.facade import Store
    from mailsink.store.operations import (
        IncomingMessage,
        Operation,
        Stored,
        committed_message,
        over_limit,
        run_here,
    )
    from mailsink.store.reader import MessageRecord, Reader, Serving, SessionRecord
    from mailsink.store.schema import (
        MEMORY,
        SCHEMA_VERSION,
        SessionEvent,
        default_path,
        resolve_path,
        server_running,
    )

# Each name from the module that defines it, imported when first asked for: a CLI command that
# only reads (`mailsink list`) starts without the writer's modules (asyncio, the hygiene checks),
# a third of its start-up.
_HOMES = {
    "StoreError": "mailsink.errors",
    "StoreFileError": "mailsink.errors",
    "StoreLocked": "mailsink.errors",
    "WriterLost": "mailsink.errors",
    "Store": "mailsink.store.facade",
    "IncomingMessage": "mailsink.store.operations",
    "Operation": "mailsink.store.operations",
    "Stored": "mailsink.store.operations",
    "committed_message": "mailsink.store.operations",
    "over_limit": "mailsink.store.operations",
    "run_here": "mailsink.store.operations",
    "MessageRecord": "mailsink.store.reader",
    "Reader": "mailsink.store.reader",
    "Serving": "mailsink.store.reader",
    "SessionRecord": "mailsink.store.reader",
    "MEMORY": "mailsink.store.schema",
    "SCHEMA_VERSION": "mailsink.store.schema",
    "SessionEvent": "mailsink.store.schema",
    "default_path": "mailsink.store.schema",
    "resolve_path": "mailsink.store.schema",
    "server_running": "mailsink.store.schema",
}


def __getattr__(name: str) -> object:
    if name == "operations":
        return _importlib.import_module("mailsink.store.operations")
    if name not in _HOMES:
        raise AttributeError(f"module 'mailsink.store' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "MEMORY",
    "SCHEMA_VERSION",
    "IncomingMessage",
    "MessageRecord",
    "Operation",
    "Reader",
    "Serving",
    "SessionEvent",
    "SessionRecord",
    "Store",
    "StoreError",
    "StoreFileError",
    "StoreLocked",
    "Stored",
    "WriterLost",
    "committed_message",
    "default_path",
    "operations",
    "over_limit",
    "resolve_path",
    "run_here",
    "server_running",
]
