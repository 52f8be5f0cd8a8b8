"""A bounded SMTP protocol fuzz run from a fixed seed, over raw sockets, plain and TLS.

Sessions are scripts of ordinary commands (EHLO, MAIL, RCPT, DATA, STARTTLS, ...), a share of
them mutated (NUL, CR, ESC, C1, bidi and line-separator characters, bytes that are not UTF-8,
odd case and spacing, over-long lines), AUTH lines in many spellings with a unique secret each,
and sessions of binary junk. What must hold whatever was sent:

- every reply line is printable text (UTF-8), ends in CRLF and holds no other CR or LF;
- every line is answered within a few seconds, and every session ends;
- STARTTLS is never accepted inside TLS;
- a session of junk lines is closed by the tenth;
- nothing of a secret sent on an AUTH line is in a reply or in the store's files;
- no HELO name or envelope field in the store holds a control character;
- mailsink (and asyncio, and aiosmtpd) log no traceback and no error.

A failure names the seed and the line; the run is the same every time for a given seed.
"""

from __future__ import annotations

import base64
import logging
import random
import re
import socket
import ssl
import time

from conftest import free_port

from mailsink.testing import RunningSink

SEED = 20261127
SESSIONS = 160
JUNK_EVERY = 8  # every eighth session is binary junk
REPLY_TIMEOUT = 3.0
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Bytes that broke mailsink before (issue 10) or that parsers tend to trip over.
INTERESTING = [
    b"\x00",
    b"\x1b",
    b"\x1b[31m",
    b"\x1b]0;x\x07",
    b"\x07",
    b"\r",
    b"\t",
    b"\x7f",
    b"\x9b",
    b"\xc2\x85",  # U+0085, a C1 control in UTF-8
    b"\xc2\x9b",
    b"\xe2\x80\xa8",  # U+2028 LINE SEPARATOR
    b"\xe2\x80\xae",  # U+202E RIGHT-TO-LEFT OVERRIDE
    b"\xff",
    b"\xc3",
    b" ",
    b"   ",
    b"<",
    b">",
    b":",
    b"=",
    b'"',
    b"@",
]
EXTRAS = [
    b"NOOP",
    b"RSET",
    b"HELP",
    b"HELP MAIL",
    b"VRFY <a@x.test>",
    b"VRFY <<junk",
    b"EXPN list",
    b"STARTTLS",
    b"STARTTLS",
    b"EHLO again.test",
    b"AUTH LOGIN",
    b"AUTH PLAIN",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME",
    b"RCPT TO:<d@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;d@y.test",
    b"DATA",
]
AUTH_SPELLINGS = [
    "AUTH PLAIN {}",
    "auth plain {}",
    "AUTH\tPLAIN\t{}",
    "AUTH=PLAIN {}",
    "AUTHPLAIN {}",
    "  AUTH PLAIN {}",
    "\x00AUTH PLAIN {}",
    "AuTh LOGIN {}",
    "AUTH PLAIN {}\x1b",
    "AUTH PLAIN\x00{}",
    "AUTH XOAUTH2 {}",
    "AUTH PLAIN {}" + "A" * 1200,
]
MESSAGE = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: fuzz\r\n\r\nbody\r\n.\r\n"


def mutate(rng: random.Random, line: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(8)
        at = rng.randint(0, len(line))
        if kind <= 1:
            line = line[:at] + rng.choice(INTERESTING) + line[at:]
        elif kind == 2 and line:
            line = line[:at] + rng.choice(INTERESTING) + line[at + 1 :]
        elif kind == 3:
            line = line[:at] + line[at + rng.randint(1, 4) :]
        elif kind == 4:
            line = line.swapcase() if rng.random() < 0.5 else line.lower()
        elif kind == 5:
            line = line * rng.randint(2, 80)  # some over the command length limits
        elif kind == 6:
            line = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        else:
            line = line[:at]
    return line.replace(b"\n", b"\r")  # one line sent, one reply expected


def junk_line(rng: random.Random) -> bytes:
    first = bytes([rng.randrange(0x80, 0x100)])  # never an ASCII verb
    rest = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
    return (first + rest).replace(b"\n", b"")


class Fuzzer:
    def __init__(self, sink: RunningSink, implicit_port: int, seed: int):
        self.sink = sink
        self.implicit_port = implicit_port
        self.rng = random.Random(seed)
        self.seed = seed
        self.secrets: list[bytes] = []
        self.replies: list[str] = []
        self.lines = 0
        self.context = ssl.create_default_context()
        self.context.check_hostname, self.context.verify_mode = False, ssl.CERT_NONE

    def fail(self, why: str, line: bytes = b"") -> None:
        raise AssertionError(f"seed {self.seed}, line {self.lines} {line!r}: {why}")

    def connect(self, implicit: bool) -> tuple[socket.socket, bool]:
        port = self.implicit_port if implicit else self.sink.port
        sock = socket.create_connection((self.sink.host, port), timeout=REPLY_TIMEOUT)
        if implicit:
            sock = self.context.wrap_socket(sock, server_hostname="localhost")
        return sock, implicit

    def read_reply(self, sock: socket.socket, file, line: bytes) -> list[str] | None:
        """One reply, each of its lines checked; None when the server closed the connection."""
        lines = []
        while True:
            try:
                raw = file.readline(100_000)
            except TimeoutError:
                self.fail(f"no reply within {REPLY_TIMEOUT} s", line)
            except (ConnectionError, ssl.SSLError):
                return None
            if not raw:
                return None if not lines else self.fail("reply cut short", line)
            if not raw.endswith(b"\r\n") or b"\r" in raw[:-2] or b"\n" in raw[:-2]:
                self.fail(f"reply line with a bare CR or LF: {raw!r}", line)
            try:
                text = raw[:-2].decode("utf-8")
            except UnicodeDecodeError:
                self.fail(f"reply line is not UTF-8: {raw!r}", line)
            if not text.isprintable() or not re.match(r"\d{3}[ -]", text):
                self.fail(f"reply line is not printable text: {raw!r}", line)
            self.replies.append(text)
            lines.append(text)
            if text[3] == " ":
                return lines

    def session_script(self) -> list[bytes]:
        rng = self.rng
        script = [rng.choice([b"EHLO client.test", b"HELO client.test"])]
        for _ in range(rng.randint(1, 3)):
            recipients = [b"RCPT TO:<r%d@y.test>" % n for n in range(rng.randint(1, 3))]
            script += [b"MAIL FROM:<a@x.test>", *recipients, b"DATA"]
        for _ in range(rng.randint(0, 6)):
            script.insert(rng.randint(1, len(script)), rng.choice(EXTRAS))
        script = [mutate(rng, line) if rng.random() < 0.35 else line for line in script]
        for _ in range(rng.randint(0, 2)):  # unmutated: the secret must stay whole
            self.secrets.append(secret := b"pw-%06dX" % len(self.secrets))
            token = base64.b64encode(b"\0fuzz\0" + secret).decode()
            auth = rng.choice(AUTH_SPELLINGS).format(token).encode()
            self.secrets.append(token.encode())
            script.insert(rng.randint(1, len(script)), auth)
        if rng.random() < 0.5:
            script.append(b"QUIT")
        return script

    def run_session(self) -> None:
        sock, tls = self.connect(implicit=self.rng.random() < 0.25)
        try:
            file = sock.makefile("rb")
            if self.read_reply(sock, file, b"(greeting)") is None:
                self.fail("no greeting")
            for line in self.session_script():
                self.lines += 1
                sock.sendall(line + b"\r\n")
                reply = self.read_reply(sock, file, line)
                if reply is None:
                    return
                code = reply[-1][:3]
                if code == "354":
                    sock.sendall(MESSAGE)
                    reply = self.read_reply(sock, file, b"(message)")
                elif code == "334":
                    sock.sendall(b"*\r\n")
                    reply = self.read_reply(sock, file, b"(auth abort)")
                elif code == "220":
                    if tls:
                        self.fail("STARTTLS accepted inside TLS", line)
                    sock = self.context.wrap_socket(sock, server_hostname="localhost")
                    file, tls = sock.makefile("rb"), True
                if reply is None or reply[-1][:3] in ("221", "421"):
                    return
        finally:
            sock.close()

    def run_junk_session(self) -> None:
        sock, _ = self.connect(implicit=False)
        try:
            file = sock.makefile("rb")
            self.read_reply(sock, file, b"(greeting)")
            for count in range(1, 12):
                line = junk_line(self.rng)
                self.lines += 1
                try:
                    sock.sendall(line + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    reply = None
                else:
                    reply = self.read_reply(sock, file, line)
                if reply is None or reply[-1].startswith("421"):
                    if count > 10:
                        self.fail(f"a junk session was answered {count - 1} times", line)
                    return
            self.fail("a junk session was never closed")
        finally:
            sock.close()


def test_protocol_fuzz(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    config = tmp_path / "fuzz.toml"
    config.write_text(
        f'[smtp]\ntimeout = "3s"\nmax_message_size = "1MiB"\n'
        f"[tls]\nstarttls = true\nimplicit_port = {port}\n"
    )
    started = time.monotonic()
    with RunningSink(tmp_path / "fuzz.db", config=config) as sink:
        fuzzer = Fuzzer(sink, port, SEED)
        for number in range(SESSIONS):
            if number % JUNK_EVERY == JUNK_EVERY - 1:
                fuzzer.run_junk_session()
            else:
                fuzzer.run_session()
        deadline = time.monotonic() + 5
        while sink.live_sessions() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.live_sessions() == [], "sessions still open after every client left"
        ended = sink.wait_for(
            lambda r: (s := r.list_sessions(limit=SESSIONS)) and all(x.end_reason for x in s) and s
        )
        assert ended and len(ended) == SESSIONS
        with sink.reader() as reader:
            sessions = reader.list_sessions(limit=SESSIONS)
            messages = reader.list_messages(limit=10_000, include_rejected=True)
    elapsed = time.monotonic() - started
    assert fuzzer.lines > 1000 and messages, (fuzzer.lines, len(messages))

    stored = b"".join(p.read_bytes() for p in tmp_path.glob("fuzz.db*") if p.is_file())
    assert b"fuzz" in stored  # the files are searchable: messages are in them
    leaked = [s for s in fuzzer.secrets if s in stored or s.upper() in stored]
    assert not leaked, f"seed {SEED}: AUTH secrets in the store: {leaked[:5]}"
    echoed = [r for r in fuzzer.replies for s in fuzzer.secrets if s.decode().upper() in r.upper()]
    assert not echoed, f"seed {SEED}: AUTH secrets echoed: {echoed[:5]}"

    for session in sessions:
        assert not CONTROL.search(session.helo or ""), (SEED, session.id, session.helo)
    for record in messages:
        envelope = record.envelope
        fields = [
            envelope.mail_from,
            envelope.helo or "",
            *envelope.rcpt_to,
            *envelope.mail_options,
        ]
        fields += [option for options in envelope.rcpt_options for option in options]
        assert not [f for f in fields if CONTROL.search(f)], (SEED, record.id, fields)

    noisy = [
        f"{r.name}: {r.getMessage()[:200]}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR
    ]
    assert not noisy, f"seed {SEED}: errors logged: {noisy[:5]}"
    assert elapsed < 20, elapsed
