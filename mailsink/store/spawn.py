"""Starting writer processes quickly and cleanly.

A new interpreter per store costs about 200 ms (start-up and imports), and a plain fork of the
server would copy its threads and locks. So the first store of a process starts a small helper,
`python -m mailsink.store.spawn`, which imports the writer once and then forks one writer per
request (a few ms each), handing it the store's socket. Unlike multiprocessing's fork server it
never runs the user's `__main__` module again, and it needs no resource-tracker process.

The helper ends when the server does (its control socket closes); each writer ends when its own
socket closes, after finishing what it was sent.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from mailsink.store.db import StoreError

START_TIMEOUT = 30.0


class _Spawner:
    """The server's handle on the helper process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # stores may open from several threads
        self._control: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | None = None

    def spawn(self, path: str, max_messages: int, channel: socket.socket) -> int:
        """Fork a writer for the store at `path`, talking over `channel`; returns its pid."""
        # Absolute: the helper keeps the directory it started in, not the caller's current one.
        request = pickle.dumps((os.path.abspath(path), max_messages))
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
                [sys.executable, "-m", __name__, str(theirs.fileno())],
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


_spawner = _Spawner()


def spawn_writer(path: str, max_messages: int, channel: socket.socket) -> int:
    return _spawner.spawn(path, max_messages, channel)


# ---- the helper process ------------------------------------------------------------------------


def _serve(control: socket.socket) -> None:
    # Imported now, so that no writer pays for it with its first message.
    import email_validator  # noqa: F401

    from mailsink.store.writer import writer_main

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # writers are reaped as they end
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 64 * 1024, 1)
        except OSError:
            return
        if not data or not fds:
            return  # the server is gone
        path, max_messages = pickle.loads(data)
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                writer_main(path, max_messages, socket.socket(fileno=fds[0]))
                code = 0
            finally:
                os._exit(code)
        os.close(fds[0])
        control.sendall(str(pid).encode())


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
