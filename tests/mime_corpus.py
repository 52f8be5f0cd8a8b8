"""Odd and hostile messages, made in code, and a client that delivers them byte for byte.

smtplib rewrites every line ending to CRLF, so `deliver` speaks SMTP on a bare socket: what a
message holds here is what the server receives (after dot-stuffing, which the server undoes).
"""

from __future__ import annotations

import socket

SENDER = "corpus@sender.test"
RECIPIENT = "rcpt@x.test"

_HEAD = (
    b"From: Corpus <corpus@sender.test>\r\nTo: rcpt@x.test\r\n"
    b"Date: Fri, 27 Nov 2026 23:10:00 +0000\r\n"
)
_MIME = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "


def nested_multipart(depth: int) -> bytes:
    """`depth` multiparts, each the only part of the one around it."""
    opening = [
        f"Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n".encode()
        for level in range(depth)
    ]
    closing = [f"\r\n--b{level}--\r\n".encode() for level in reversed(range(depth))]
    innermost = b"Content-Type: text/plain\r\n\r\ninnermost"
    subject = f"Subject: {depth} nested multiparts\r\nMIME-Version: 1.0\r\n".encode()
    return _HEAD + subject + b"".join(opening) + innermost + b"".join(closing)


def nested_rfc822(depth: int) -> bytes:
    """`depth` message/rfc822 parts, each holding the next message."""
    levels = [
        f"Subject: level {level}\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: level{level + 1}@x.test\r\n".encode()
        for level in range(depth)
    ]
    innermost = b"Subject: innermost\r\n\r\ninnermost\r\n"
    return _HEAD + b"".join(levels) + innermost


def encoded_word_bomb(words: int = 100_000) -> bytes:
    """A Subject of `words` RFC 2047 words on one line (1.7 MB for 100 000)."""
    return _HEAD + b"Subject: " + b" ".join([b"=?utf-8?b?YQ==?="] * words) + b"\r\n\r\nbomb\r\n"


def many_parameters(count: int = 10_000, *, folded: bool = False) -> bytes:
    fold = "\r\n" if folded else ""
    params = "".join(f";{fold} p{index}=v{index}" for index in range(count))
    return (
        _HEAD
        + b"Subject: many parameters\r\nMIME-Version: 1.0\r\n"
        + f"Content-Type: text/plain{params}\r\n\r\nbody\r\n".encode()
    )


def many_named_cc(count: int = 10_000, *, folded: bool = False) -> bytes:
    cc = (",\r\n " if folded else ", ").join(
        f'"Person {index}, Dept." <p{index}@cc.test>' for index in range(count)
    )
    return _HEAD + f"Subject: many cc\r\nCc: {cc}\r\n\r\nbody\r\n".encode()


def long_content_types(parts: int = 100, params: int = 1_400) -> bytes:
    """`parts` parts, each with its own ~16 KiB Content-Type (1.6 MB for 100)."""
    body = b"".join(
        b"--B\r\nContent-Type: text/plain; "
        + "; ".join(f"p{i}=v{i}" for i in range(part, part + params)).encode()
        + b"\r\n\r\nx\r\n"
        for part in range(parts)
    )
    return _HEAD + b"Subject: long types\r\n" + _MIME + b"boundary=B\r\n\r\n" + body + b"--B--\r\n"


def many_parts(count: int = 100_000) -> bytes:
    """A multipart of `count` tiny parts, the text part last (3.5 MB for 100 000)."""
    body = b"".join(b"--B\r\nContent-Type: application/x-part\r\n\r\nx\r\n" for _ in range(count))
    text = b"--B\r\nContent-Type: text/plain\r\n\r\nthe text, last\r\n--B--\r\n"
    return _HEAD + b"Subject: many parts\r\n" + _MIME + b"boundary=B\r\n\r\n" + body + text


def boundary_after(padding: int) -> bytes:
    """A legitimate multipart whose boundary parameter comes after `padding` bytes of others."""
    params = "".join(f"; x{i}=y" for i in range(padding // 7))
    return (
        _HEAD
        + b"Subject: late boundary\r\nMIME-Version: 1.0\r\n"
        + f"Content-Type: multipart/mixed{params}; boundary=LATE\r\n\r\n".encode()
        + b"--LATE\r\nContent-Type: text/plain\r\n\r\nhello text\r\n"
        + b"--LATE\r\nContent-Type: application/pdf\r\n"
        + b'Content-Disposition: attachment; filename="a.pdf"\r\n\r\n%PDF\r\n--LATE--\r\n'
    )


def odd_messages() -> dict[str, bytes]:
    """Messages that a parse-and-regenerate round trip changes; an export must not."""
    return {
        "empty_boundary": _HEAD
        + b"Subject: empty boundary\r\n"
        + _MIME
        + b'boundary=""'
        + b"\r\n\r\n--\r\nContent-Type: text/plain\r\n\r\none\r\n----\r\n",
        "missing_closing_boundary": _HEAD
        + b"Subject: no close\r\n"
        + _MIME
        + b"boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        + b"--XX\r\nContent-Type: text/html\r\n\r\n"
        + b"<p>second, never closed</p>\r\n",
        "lf_only": _HEAD.replace(b"\r\n", b"\n") + b"Subject: lf\n\nline one\nline two\n",
        "mixed_line_ends": _HEAD
        + b"Subject: mixed\r\nX-Odd: a\n\r\ncrlf line\r\nlf line\nbare cr\rline\r\n",
        "cr_only": b"Subject: cr only\rFrom: a@x.test\r\rbody\r",
        "from_lines": _HEAD
        + b"Subject: From lines\r\n\r\nFrom the start\r\n>From quoted once\r\n>>From twice\r\n"
        + b"From\r\nFrom:not a separator\r\n From indented\r\n>>>>From deep\r\nFrom ",
        "starts_with_from": b"From someone@x.test Fri Nov 27 23:10:00 2026\r\n"
        + _HEAD
        + b"\r\nbody\r\n",
        ">From_at_start": b">From someone@x.test\r\n" + _HEAD + b"\r\nbody\r\n",
        "no_trailing_newline": _HEAD + b"Subject: no newline\r\n\r\nlast line",
        "eight_bit": _HEAD
        + b"Subject: caf\xe9 \xff\xfe\r\nX-Latin: J\xf6rg\r\n\r\n"
        + bytes(range(0x80, 0x100))
        + b"\r\n",
        "nul_bytes": _HEAD + b"Subject: nul\x00here\r\n\r\nbody\x00with\x00nuls\r\n\x00\r\n",
        "dot_lines": _HEAD + b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nx\r\n",
        "headers_only": b"Subject: no body at all\r\n",
        "empty_lines_at_end": _HEAD + b"Subject: blank tail\r\n\r\nbody\r\n\r\n\r\n\r\n",
        "broken_base64": _HEAD
        + b"Subject: b64\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not*base64===\r\n",
        "nested_multipart_300": nested_multipart(300),
        "nested_rfc822_300": nested_rfc822(300),
    }


def stuff(raw: bytes) -> bytes:
    """RFC 5321 dot-stuffing, as the server undoes it (after CRLF only)."""
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def deliver(
    host: str,
    port: int,
    messages: list[bytes],
    *,
    sender: str = SENDER,
    recipients: tuple[str, ...] = (RECIPIENT,),
    helo: bytes = b"corpus.test",
) -> list[str]:
    """Send each message in its own transaction on one connection; returns the final replies.

    A message that does not end in CRLF gets one before the dot, which the server keeps."""
    replies = []
    with socket.create_connection((host, port), timeout=30) as sock:
        file = sock.makefile("rb")

        def reply() -> str:
            while True:
                line = file.readline().decode("utf-8", "replace")
                if len(line) < 4 or line[3] != "-":
                    return line.rstrip("\r\n")

        def command(line: bytes) -> str:
            sock.sendall(line + b"\r\n")
            return reply()

        reply()
        command(b"EHLO " + helo)
        for raw in messages:
            assert command(f"MAIL FROM:<{sender}>".encode()).startswith("250")
            for recipient in recipients:
                assert command(f"RCPT TO:<{recipient}>".encode()).startswith("250")
            assert command(b"DATA").startswith("354")
            body = stuff(raw)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            sock.sendall(body + b".\r\n")
            replies.append(reply())
        command(b"QUIT")
        file.close()
    return replies
