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
