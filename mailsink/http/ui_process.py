"""One browser tab's UI: a `mailsink tui --attach` process under Textual's web driver, spoken to
over its pipes in textual-serve's packet protocol (what textual.js's WebSocket messages become).

Server side (`UiProcess`): start, the packets both ways, and a stop that always ends the process
(quit, then SIGTERM, then SIGKILL, each after a bounded wait, then reaped): textual-serve never
kills a child that ignores quit and waits for it with no timeout.

Child side (`guard_browser_tab`): the process ends with its server (PR_SET_PDEATHSIG, and a
watch on its parent and on stdin, which the server closes when the tab goes).

Packets: one type byte, a 4-byte big-endian length, the payload. To the child: `D` (what the
user typed, UTF-8) and `M` (JSON meta: resize, focus, blur, quit). From the child, after a first
line `__GANGLION__`: `D` (terminal output), `M` (JSON meta: exit, open_url, deliver_file_start)
and `P` (packed file chunks, not used here).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("mailsink")

WEB_UI_ENV = "MAILSINK_WEB_UI"
PARENT_PID_ENV = "MAILSINK_PARENT_PID"
READY_LINE = b"__GANGLION__\n"
# Lines a child may print before it is ready (a warning of Python's); more is not a Textual app.
READY_LINES = 10
READY_SECONDS = 30.0  # a cold start of Python and Textual on a loaded machine: ~1 s usually
QUIT_SECONDS = 2.0  # from quit (and stdin closed) to SIGTERM
TERM_SECONDS = 2.0  # from SIGTERM to SIGKILL
KILL_SECONDS = 2.0  # from SIGKILL to giving up on the exit status (the loop's watcher reaps it)
# Input written to the child and not read by it yet. A child that reads its input takes a
# paste of the largest frame a tab may send (web_ui.WS_MESSAGE_LIMIT) with room to spare; past
# this it is stopped or stuck, and what the tab sends would only pile up in the server.
INPUT_BACKLOG = 256 * 1024
STDERR_KEPT = 16 * 1024  # the end of what a child wrote on stderr, for the log when it fails
PACKET_LIMIT = 16 * 1024 * 1024  # a larger packet from the child is a protocol error
# The child side: how often the guard looks at its parent and its stdin, and how long an app
# asked to end by it may take before the process ends itself.
GUARD_SECONDS = 0.5
GUARD_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


# The only URLs the app opens in a browser tab (message_detail, screens.main): the server's
# view of a message's HTML, a part as a download (web_ui.part_download), the message as a
# download (Mailpit's raw with dl=1). Exactly these: nothing the app is made to say (by a
# message's text) sends the browser elsewhere; "/\host" and "/<TAB>/host" are other sites
# to a browser's URL parser.
OPEN_URLS = re.compile(
    r"/view/[0-9]{1,19}\.html"
    r"|/ui/part/[0-9]{1,19}/[0-9]{1,9}"
    r"|/api/v1/message/[0-9]{1,19}/raw\?dl=1"
)


class InputBacklogged(Exception):
    """The child has not read INPUT_BACKLOG bytes of input: it is stopped or stuck."""


def encode_packet(kind: bytes, payload: bytes) -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def may_open(url: object) -> bool:
    """Whether the app's open_url may go to the browser: one of OPEN_URLS, exactly."""
    return isinstance(url, str) and OPEN_URLS.fullmatch(url) is not None


class UiProcess:
    """`await start()`, then `send_input` / `resize` / `focus` / `blur`; what the child says comes
    to `on_output(bytes)` and `on_open_url(url, new_tab)`; `on_exit()` is called once when the
    child has gone (exit meta, end of its output, or a failure). `await stop()` ends it."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        *,
        on_output: Callable[[bytes], Awaitable[None]],
        on_open_url: Callable[[str, bool], Awaitable[None]],
        on_exit: Callable[[], Awaitable[None]],
    ) -> None:
        self.command = command
        self.env = env
        self.on_output = on_output
        self.on_open_url = on_open_url
        self.on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._stderr = bytearray()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Task[int | None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            limit=PACKET_LIMIT,
        )
        self._tasks = [
            asyncio.create_task(self._read_output(), name=f"mailsink-ui-{self.pid}-out"),
            asyncio.create_task(self._read_stderr(), name=f"mailsink-ui-{self.pid}-err"),
        ]

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        stderr = self.process.stderr
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await stderr.read(4096):
                self._stderr += chunk
                del self._stderr[:-STDERR_KEPT]

    async def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        try:
            for _ in range(READY_LINES):
                line = await asyncio.wait_for(stdout.readline(), READY_SECONDS)
                if not line or line == READY_LINE:
                    break
            if line == READY_LINE:
                self.ready.set()
                while True:
                    kind = await stdout.readexactly(1)
                    size = int.from_bytes(await stdout.readexactly(4), "big")
                    if size > PACKET_LIMIT:
                        log.warning("UI process %s: a packet of %d bytes: ended", self.pid, size)
                        break
                    payload = await stdout.readexactly(size)
                    if kind == b"D":
                        await self.on_output(payload)
                    elif kind == b"M" and not await self._meta(payload):
                        break
                    # b"P": packed file chunks (Textual's deliver_binary), not offered here
        except (asyncio.IncompleteReadError, ConnectionResetError, TimeoutError, OSError):
            pass  # the child has gone (or never started): on_exit says so
        except asyncio.CancelledError:
            return
        except Exception as error:  # the browser's end failed: the tab is being closed
            log.debug("UI process %s: %s", self.pid, error)
        await self.on_exit()

    async def _meta(self, payload: bytes) -> bool:
        """False when the child says it exits."""
        try:
            meta = json.loads(payload)
            kind = meta.get("type")
        except (ValueError, AttributeError):
            log.debug("UI process %s: meta that is not a JSON object", self.pid)
            return True
        if kind == "exit":
            return False
        if kind == "open_url":
            url, new_tab = meta.get("url"), meta.get("new_tab", True)
            if may_open(url):
                await self.on_open_url(str(url), bool(new_tab))
            else:
                log.debug("UI process %s: not opening %r", self.pid, str(url)[:200])
        else:  # deliver_file_start and anything newer: downloads are not served here
            log.debug("UI process %s: meta %r not supported", self.pid, kind)
        return True

    @property
    def input_backlog(self) -> int:
        """Bytes written to the child's stdin that it has not read yet."""
        stdin = self.process.stdin if self.process is not None else None
        if stdin is None or stdin.is_closing():
            return 0
        return stdin.transport.get_write_buffer_size()

    async def _write(self, packet: bytes) -> bool:
        """False when the child has gone; InputBacklogged when it does not read. Never waits
        for the child (no drain): a child that does not read must not stop the tab's reader
        (its pings) or the server's stop. The backlog is bounded instead."""
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return False
        if self.input_backlog + len(packet) > INPUT_BACKLOG:
            raise InputBacklogged(f"{self.input_backlog} bytes of input not read")
        try:
            process.stdin.write(packet)
        except (OSError, RuntimeError):  # the child has gone
            return False
        return True

    async def send_input(self, text: str) -> bool:
        return await self._write(encode_packet(b"D", text.encode("utf-8", "replace")))

    async def send_meta(self, meta: dict[str, Any]) -> bool:
        return await self._write(encode_packet(b"M", json.dumps(meta).encode("utf-8")))

    async def resize(self, width: int, height: int) -> bool:
        return await self.send_meta({"type": "resize", "width": width, "height": height})

    async def focus(self) -> bool:
        return await self.send_meta({"type": "focus"})

    async def blur(self) -> bool:
        return await self.send_meta({"type": "blur"})

    def stop(self) -> Awaitable[int | None]:
        """Ends the child, however it behaves, and reaps it; the exit status (None if it never
        started). One stop at a time whoever asks (the tab's end, the server's stop), and
        shielded: a cancelled caller does not leave the child half-stopped."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return asyncio.shield(self._stopping)

    async def _stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(InputBacklogged):  # a child that does not read: SIGTERM
                await self.send_meta({"type": "quit"})
        if process.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                process.stdin.close()  # its end of the pipe: EOF once it has read the rest
        code = await self._wait(QUIT_SECONDS)
        if code is None:
            log.warning("UI process %s did not quit within %gs: terminated", self.pid, QUIT_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            code = await self._wait(TERM_SECONDS)
        if code is None:
            log.warning("UI process %s ignored SIGTERM: killed", self.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # a stopped (SIGSTOP) process dies of it too
        # Input it never read is dropped (a closed pipe with unsent bytes stays open until
        # they are sent), and so is output nobody will show: then every pipe is closed and
        # the exit is seen, however the child and the tab behaved.
        if process.stdin is not None and process.stdin.transport.get_write_buffer_size():
            process.stdin.transport.abort()  # (with nothing left to send it is closed already)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if code is None:
            code = await self._wait(KILL_SECONDS)
        if code is None:
            log.warning("UI process %s: no exit status %gs after SIGKILL", self.pid, KILL_SECONDS)
        return code

    async def _wait(self, seconds: float) -> int | None:
        """The exit status within `seconds`, else None. An exited child whose output is not
        all read yet (the tab is slow to take it) has its status already: that counts."""
        process = self.process
        assert process is not None
        try:
            return await asyncio.wait_for(process.wait(), seconds)
        except TimeoutError:
            return process.returncode


# ---- the child's side


def guard_browser_tab() -> None:
    """In a browser tab's UI process (MAILSINK_WEB_UI=1; nothing otherwise): the process ends
    when its server does, SIGKILLed included (PR_SET_PDEATHSIG on Linux, and a check of the
    parent's pid, which also covers a server gone before the prctl), and when its stdin ends
    (the server closed it: the tab has gone). Textual's web driver only stops reading at EOF."""
    if os.environ.get(WEB_UI_ENV) != "1":
        return
    parent = _expected_parent()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        raise SystemExit(1)  # the server is gone already: nobody to show anything to
    watch = threading.Thread(
        target=_watch_parent_and_input, args=(parent,), name="mailsink-tab-guard", daemon=True
    )
    watch.start()


def _expected_parent() -> int | None:
    try:
        return int(os.environ.get(PARENT_PID_ENV, ""))
    except ValueError:
        return None


def _watch_parent_and_input(parent: int | None) -> None:
    poller = select.poll()
    with contextlib.suppress(OSError, ValueError):
        poller.register(sys.__stdin__.fileno() if sys.__stdin__ else 0, 0)  # hang-ups only
    while True:
        time.sleep(GUARD_SECONDS)
        gone = parent is not None and os.getppid() != parent
        try:
            hung_up = any(flags & (select.POLLHUP | select.POLLERR) for _, flags in poller.poll(0))
        except OSError:
            hung_up = True
        if gone or hung_up:
            break
    # The app's own SIGTERM handling quits it as `q` would; if that does not end the process,
    # nothing will be shown to anyone again: end it.
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GUARD_GRACE_SECONDS)
    os._exit(1)
