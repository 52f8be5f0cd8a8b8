"""250 means stored: kill -9 the server while clients send; every acknowledged message is there."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time

from conftest import free_port, mailsink_process, message, wait_for_port

from mailsink.store.queries import Reader


def test_sigkill_while_four_clients_send_loses_no_acknowledged_message(tmp_path):
    port = free_port()
    db = tmp_path / "durable.db"
    process = mailsink_process("serve", "--port", str(port), "--db", str(db))
    wait_for_port(port)
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    while not stop.is_set():
                        subject = f"w{worker}-{n}"
                        n += 1
                        client.ehlo_or_helo_if_needed()
                        client.mail("app@x.test")
                        client.rcpt(f"user{worker}@x.test")
                        code, reply = client.data(message(subject=subject))
                        if code == 250:
                            with lock:
                                acknowledged[int(reply.rsplit(b" ", 1)[1])] = subject
            except (OSError, smtplib.SMTPException):
                if stop.is_set():
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(acknowledged) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(10)

    assert len(acknowledged) >= 50, "the clients barely got going"
    with Reader(str(db)) as reader:
        for message_id, subject in acknowledged.items():
            record = reader.get_message(message_id)
            assert record is not None, f"message {message_id} was acknowledged but is gone"
            assert record.headers["subject"] == subject
            assert reader.get_raw(message_id) == message(subject=subject)
