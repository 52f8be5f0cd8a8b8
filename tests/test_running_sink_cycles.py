"""A RunningSink started and stopped again and again leaves nothing behind: no thread, no
process (writer, extractor) nor zombie, no open file or socket, no listening port, and beside
each store only the store and its lock (the log checkpointed into it and removed, as the last
connection to close does). The pytest plugin starts one per test (issue 16), so a leak here would
grow with every test of a user's suite. And a stop that ends the extractor in the middle of its
work loses none of it."""

from __future__ import annotations

import contextlib
import os
import select
import smtplib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mailsink.query import parse_query
from mailsink.testing import Mailsink, RunningSink

CYCLES = 50

linux_only = pytest.mark.skipif(
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


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: its parent and its state (Z: a zombie, ended and not reaped)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        found[int(entry)] = (int(fields[1]), fields[0])
    return found


def _descendants(*, zombies: bool = False) -> set[int]:
    """Every live process below this one (the spawn helper, writers, their extractors); or
    (`zombies`) those below it that have ended and that no parent reaped."""
    children: dict[int, list[int]] = {}
    dead = set()
    for pid, (parent, state) in _processes().items():
        children.setdefault(parent, []).append(pid)
        if state == "Z":
            dead.add(pid)
    found, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found & dead if zombies else found - dead


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "(gone)"


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
    _only_the_store_is_left(running)
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
    _only_the_store_is_left(view.running)
    return view.running


def _only_the_store_is_left(running: RunningSink) -> None:
    store = Path(running.db)
    assert sorted(os.listdir(store.parent)) == [store.name, f"{store.name}.lock"]


def _send_one(running: RunningSink) -> None:
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.sendmail("app@x.test", ["ann@x.test"], b"Subject: one\r\n\r\nbody\r\n")


def _ask_http(running: RunningSink) -> None:
    with socket.create_connection(("127.0.0.1", running.http_port), timeout=10) as http:
        http.sendall(b"GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert http.recv(12).startswith(b"HTTP/1.1 200")


@linux_only
def test_many_starts_and_stops_leave_no_thread_process_zombie_descriptor_file_or_port(tmp_path):
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
    # The helper, and nothing more. (/proc is read one process at a time, so a scan can meet
    # one mid-exit or mid-reparenting: what is left is whatever stays for 5 s.)
    deadline = time.monotonic() + 5
    while (strays := _descendants() - processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {pid: _cmdline(pid) for pid in strays} == {}
    assert _descendants(zombies=True) == set()  # (a zombie's end is "seen" by its pidfd too)
    assert processes, "the spawn helper was expected to be kept for the next store"
    leaked = {fd: what for fd, what in _open_files().items() if files.get(fd) != what}
    assert leaked == {}
    assert last is not None
    for port in (last.port, last.http_port):
        with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
            probe.connect(("127.0.0.1", port))


# Each about 400 kB of HTML: its text takes the extractor 30-70 ms to make, so that the stop
# that follows the last one's 250 finds most of them waiting for it.
HEAVY = 5
HTML = "".join(f"<p>line {number} of a long newsletter</p>" for number in range(10_000))


def test_a_stop_cuts_the_indexing_short_and_the_next_start_finishes_it(tmp_path):
    path = tmp_path / "mail.db"
    with (
        RunningSink(path, http=False) as running,
        smtplib.SMTP(running.host, running.port, timeout=10) as client,
    ):
        for number in range(HEAVY):
            body = f"<html><body><p>quince{number}</p>{HTML}</body></html>"
            headers = f"Subject: letter {number}\r\nContent-Type: text/html\r\n"
            client.sendmail("app@x.test", ["ann@x.test"], f"{headers}\r\n{body}\r\n".encode())
    # (Stopped at once: the writer ended its extractor in the middle of this work.)
    with running.reader() as reader:
        indexed, total = reader.index_progress()
    assert total == HEAVY and indexed < HEAVY

    with RunningSink(path, http=False) as running:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with running.reader() as reader:
                progress = reader.index_progress()
                made = reader.snippets(range(1, HEAVY + 1))
            if progress == (HEAVY, HEAVY) and len(made) == HEAVY:
                break
            time.sleep(0.02)
        assert progress == (HEAVY, HEAVY)
        assert sorted(made) == list(range(1, HEAVY + 1))
        assert all(text.startswith("quince") for text in made.values())
        with running.reader() as reader:
            assert reader.unsearched() == 0  # (found in the index, not by reading the mail)
            for number in range(HEAVY):
                found = reader.list_messages(query=parse_query(f"quince{number}"))
                assert [m.headers["subject"] for m in found] == [f"letter {number}"]
    with contextlib.closing(sqlite3.connect(path)) as conn:  # each text in the index, once
        texts = conn.execute("SELECT rowid, substr(body, 1, 7) FROM message_body ORDER BY 1")
        assert texts.fetchall() == [(number + 1, f"quince{number}") for number in range(HEAVY)]
