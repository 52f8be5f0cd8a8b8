"""How a view of a store finds the server that serves it, and (ServerLink) talks to it over its
HTTP API: the fault rules switched there, live sessions and transcripts followed through its
event stream. An attached TUI (`mailsink tui --attach`, each browser tab's UI) is then as
capable as the one in the server's own process.

A serving sink's HTTP service writes `<store>.server` beside the store once it listens: its
URL (an address this machine can connect to) and a token that authenticates as `[http] users`
would, readable by the store's owner only (0600: whoever can read it can read the store's mail
anyway). It is removed when the service stops; one left by a server that died is ignored (its
lock is free, or its pid is gone). A UI process the server starts itself is given both in its
environment (URL_ENV, TOKEN_ENV) instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mailsink")

URL_ENV = "MAILSINK_SERVER_URL"
TOKEN_ENV = "MAILSINK_SERVER_TOKEN"
SUFFIX = ".server"


@dataclass(frozen=True)
class ServerAddress:
    """Where a store's server answers HTTP, and the token it takes (Authorization: Bearer)."""

    url: str
    token: str


def new_token() -> str:
    return secrets.token_urlsafe(32)


def server_file(store_path: str) -> Path:
    """The file beside the store (its real path, as the lock is) naming its server."""
    return Path(os.path.realpath(store_path) + SUFFIX)


def write_server_file(store_path: str, address: ServerAddress) -> None:
    """Written whole or not at all (a temporary file renamed over it), mode 0600."""
    target = server_file(store_path)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    data = json.dumps({"pid": os.getpid(), "url": address.url, "token": address.token})
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(data)
        os.replace(temporary, target)
    except OSError as error:  # a viewer then finds no server: said, not fatal
        log.warning("cannot write %s (attached UIs will not find the HTTP API): %s", target, error)
        with contextlib.suppress(OSError):
            temporary.unlink()


def remove_server_file(store_path: str) -> None:
    """Removed only if it is this process's (a newer server's is left alone)."""
    target = server_file(store_path)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(target.read_text()).get("pid") == os.getpid():
            target.unlink()


def find_server(store_path: str) -> ServerAddress | None:
    """The server of the store at `store_path`: from the environment when this process was
    started by it (a browser tab's UI), else from its file when the server that wrote it still
    holds the store's lock. None when no server is to be found."""
    url, token = os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV)
    if url and token:
        return ServerAddress(url, token)
    from mailsink.store.schema import server_running

    try:
        data = json.loads(server_file(store_path).read_text())
        pid, url, token = int(data["pid"]), str(data["url"]), str(data["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if server_running(store_path) is False:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: it exists
    return ServerAddress(url, token)
