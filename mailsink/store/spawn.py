"""Starting worker processes quickly and cleanly: a small fork server.

A new interpreter per store costs about 200 ms (start-up and imports), and a plain fork of the
server would copy its threads and locks. So the first store of a process starts a small helper
(`python -c` running `serve` below), which imports its target once and then forks one worker
per request (a few ms each), handing it the request's socket. Unlike multiprocessing's fork
server it never runs the user's `__main__` module again, and it needs no resource-tracker
process.

The target is named as "module:function" rather than imported here: the helper is another
program, and this module stays below the one it starts (the store's writer, writer.py, which
imports this one).

The helper ends when the server does (its control socket closes); each worker ends when its
own socket closes, after finishing what it was sent.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailsink.errors import StoreError

START_TIMEOUT = 30.0

# The helper's program: argv is the control socket's descriptor, the target, the preloads.
_HELPER = (
    "import sys; from mailsink.store.spawn import serve;"
    " serve(int(sys.argv[1]), sys.argv[2], sys.argv[3:])"
)


class Spawner:
    """The server's handle on a helper that forks workers running `target`
    ("module:function", called as function(*args, channel)); `preload` names modules the
    helper imports once, before its first fork, so that no worker pays for them."""

    def __init__(self, target: str, preload: Sequence[str] = ()) -> None:
        self.target = target
        self.preload = tuple(preload)
        self._lock = threading.Lock()  # stores may open from several threads
        self._control: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | None = None

    def spawn(self, args: tuple[Any, ...], channel: socket.socket) -> int:
        """Fork a worker running the target with `args` and `channel`; returns its pid."""
        request = pickle.dumps(args)
        with self._lock:
            pid = self._ask(request, channel)
            if pid is None:  # the helper has gone away (or hangs): replace it, once
                self._stop_helper()
                pid = self._ask(request, channel)
            if pid is None:
                self._stop_helper()
                raise StoreError("the store's writer could not be started")
            return pid

    def _ask(self, request: bytes, channel: socket.socket) -> int | None:
        control = self._running_helper()
        try:
            socket.send_fds(control, [request], [channel.fileno()])
            control.settimeout(START_TIMEOUT)
            answer = control.recv(64)
        except OSError:
            return None
        return int(answer) if answer else None

    def _running_helper(self) -> socket.socket:
        if self._control is not None:
            return self._control
        ours, theirs = socket.socketpair()
        # The helper runs in "/" and must import this very mailsink, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        try:
            self._helper = subprocess.Popen(
                [sys.executable, "-c", _HELPER, str(theirs.fileno()), self.target, *self.preload],
                env={**os.environ, "PYTHONPATH": path},
                pass_fds=[theirs.fileno()],
                cwd="/",  # holds no directory of the caller's in use
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its errors come back over the store's socket; a terminal UI owns the screen.
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the server, which stops the writers
            )
        except OSError as error:
            ours.close()
            raise StoreError(f"the store's writer could not be started: {error}") from None
        finally:
            theirs.close()
        self._control = ours
        return ours

    def _stop_helper(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._helper is not None:
            self._helper.kill()  # it may be stuck rather than gone; its writers live on
            self._helper.wait()
            self._helper = None


# ---- the helper process ------------------------------------------------------------------------


def serve(control_fd: int, target: str, preload: Sequence[str]) -> None:
    """The helper: fork a worker running `target` for each request on the control socket."""
    control = socket.socket(fileno=control_fd)
    for name in preload:
        importlib.import_module(name)
    module, function = target.split(":")
    run = getattr(importlib.import_module(module), function)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped as they end
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 64 * 1024, 1)
        except OSError:
            return
        if not data or not fds:
            return  # the server is gone
        args = pickle.loads(data)
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                run(*args, socket.socket(fileno=fds[0]))
                code = 0
            finally:
                os._exit(code)
        os.close(fds[0])
        control.sendall(str(pid).encode())
