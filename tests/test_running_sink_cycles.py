"""A RunningSink started and stopped again and again leaves nothing behind: no thread, no
process (writer, extractor), no open file or socket, no listening port. The pytest plugin starts
one per test (issue 16), so a leak here would grow with every test of a user's suite."""

from __future__ import annotations

import os
import select
import smtplib
import socket
import threading
from pathlib import Path

import pytest

from mailsink.testing import Mailsink, RunningSink

CYCLES = 50

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir() or not hasattr(os, "pidfd_open"),
    reason="counts processes and descriptors through Linux's /proc and pidfd",
)


def _open_files() -> dict[str, str]:
    """This process's descriptors and what each one is (the listing's own left out)."""
    directory = "/proc/self/fd"
    found = {}
    for fd in os.listdir(directory):
        try:
            found[fd] = os.readlink(f"{directory}/{fd}")
        except FileNotFoundError:  # the listing's own, closed by now
            continue
    return found


def _children() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        if fields[0] != "Z":  # a zombie is gone but for its exit status
            parents.setdefault(int(fields[1]), []).append(int(entry))
    return parents


def _descendants() -> set[int]:
    """Every live process below this one (the spawn helper, writers, their extractors)."""
    children, found, todo = _children(), set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _ended(pid: int, timeout: float) -> bool:
    """Whether process `pid` ends within `timeout` seconds (woken by its end, not polled)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([handle], [], [], timeout)[0])
    finally:
        os.close(handle)


def _cycle(directory: Path) -> RunningSink:
    """Start, put the whole server to work (SMTP, the writer and its extractor, the sink's
    reader thread, HTTP), stop."""
    running = RunningSink(directory / "mail.db").start()
    try:
        _send_one(running)
        assert running.sink is not None
        sink = running.sink
        assert [m.envelope.rcpt_to for m in running.run(sink.messages())] == [["ann@x.test"]]
        _ask_http(running)
    finally:
        running.stop()
    return running


def _fixture_cycle(directory: Path) -> RunningSink:
    """The same through what the `mailsink` fixture uses (its Reader on this thread too)."""
    view = Mailsink.start(directory)
    try:
        _send_one(view.running)
        assert [m.rcpt_to for m in view.messages] == [["ann@x.test"]]
        _ask_http(view.running)
    finally:
        view.close()
    return view.running


def _send_one(running: RunningSink) -> None:
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.sendmail("app@x.test", ["ann@x.test"], b"Subject: one\r\n\r\nbody\r\n")


def _ask_http(running: RunningSink) -> None:
    with socket.create_connection(("127.0.0.1", running.http_port), timeout=10) as http:
        http.sendall(b"GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert http.recv(12).startswith(b"HTTP/1.1 200")


def test_many_starts_and_stops_leave_no_thread_process_descriptor_or_port(tmp_path):
    # The first start makes what a process keeps for all its stores (the spawn helper that
    # forks the writers): what is there after it is the baseline.
    _cycle(tmp_path / "first")
    threads, processes, files = set(threading.enumerate()), _descendants(), _open_files()

    last = None
    for number in range(CYCLES):  # RunningSink itself, and the fixture's Mailsink, in turn
        cycle = _fixture_cycle if number % 2 else _cycle
        last = cycle(tmp_path / str(number))
        assert last.loop.is_closed()

    # A reader thread told to stop, and a writer process whose end the server has just seen,
    # may take a moment more to be gone: each is waited for (joined, or its end awaited).
    new_threads = [thread for thread in threading.enumerate() if thread not in threads]
    for thread in new_threads:
        thread.join(5)
    assert [thread.name for thread in new_threads if thread.is_alive()] == []
    new_processes = _descendants() - processes
    assert [pid for pid in new_processes if not _ended(pid, 5)] == []
    assert _descendants() <= processes  # the helper, and nothing more
    assert processes, "the spawn helper was expected to be kept for the next store"
    leaked = {fd: what for fd, what in _open_files().items() if files.get(fd) != what}
    assert leaked == {}
    assert last is not None
    for port in (last.port, last.http_port):
        with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
            probe.connect(("127.0.0.1", port))
