"""Hygiene findings: what a production server would do with this mail, found at ingest.

This runs in the writer for every message, so the common case is a handful of scans at C
speed over the raw bytes (isascii, bytes.count/find/translate, compiled regexes that begin with
a literal byte), and nothing is done per line or per header field in Python except for the few
that are at fault (at most MAX_REPORTED names, and _MAX_BAD_FIELDS fields, per header block).
The MIME structure is walked only as far as the message has one, as the stdlib's feedparser
reads it (where a header block ends, which boundary a Content-Type names, which lines are
delimiters), without recursion and within parse.py's limits (MAX_PARTS parts, MAX_DEPTH
levels) plus a bound on the bytes searched for boundaries, so a hostile message costs a small
multiple of reading it.

`hygiene_findings` never raises: a check that fails becomes a parse_defect finding saying so,
and the message is stored all the same.
"""

from __future__ import annotations

import bisect
import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from mailsink.mail.envelope import Envelope
from mailsink.mail.findings import KINDS, Finding
from mailsink.mail.parse import (
    MAX_DEPTH,
    MAX_HEADER_BLOCK,
    MAX_PARTS,
    MAX_STRUCTURED,
    HeaderSummary,
    _parameters,
)

MAX_LINE = 998  # octets in a line, its CRLF not counted (RFC 5322 2.1.1)
# Characters of a Date value read as a date-time: the longest real ones, with a zone comment
# such as "(Coordinated Universal Time)", are under 100.
MAX_DATE = 256
FUTURE_DATE_SECONDS = 24 * 3600  # a Date further ahead of the arrival than this is flagged
# A declared SIZE= is wrong when it is off by more than both of these: clients count a little
# differently (a final CRLF, a header added on the way), never by this much.
SIZE_TOLERANCE = 0.05
SIZE_SLACK = 100
MAX_REPORTED = 10  # findings of one kind about parts, headers or addresses, per message
# Boundary searches in nested multiparts cover the same bytes again at each level: past this
# many times the message's size (plus MAX_HEADER_BLOCK), no deeper level is looked into.
SEARCH_BUDGET = 8
# Header fields at fault read in one header block: the names a finding lists are theirs. A
# block of thousands of fields of the same few names would otherwise cost a step each.
_MAX_BAD_FIELDS = 1000

_KNOWN_ENCODINGS = {"", "7bit", "8bit", "binary", "quoted-printable", "base64"}
_SEVEN_BIT = {"", "7bit", "quoted-printable"}  # content that must be ASCII (base64: its alphabet)
_CONTAINER_ENCODINGS = {"", "7bit", "8bit", "binary"}  # RFC 2045 6.4, RFC 2046 5.2.1

# Line ends are counted at C speed: one translate keeps the CRs and LFs alone to count, and
# only a message with CRs looks further (see _bare_line_ends). Only a message with bare LFs is
# searched for where its first one is.
_BARE_LF = re.compile(rb"\n[^\n]*+(?<!\r)\n")  # a line after the first that ends in a bare LF
_BARE_CR = re.compile(rb"\r(?!\n)")
_NOT_LINE_END = bytes(byte for byte in range(256) if byte not in b"\r\n")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\r\n \t]")
_BASE64_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n \t"
_CHUNK = 64 * 1024  # isascii this much at a time, then a regex in the chunk only

# A header line as the stdlib's feedparser tells one (its headerRE): a continuation, a field
# name and its colon, or an mbox "From " line. The header block ends at the first line that is
# not one, a line being what follows a LF (or, when the message has any, a lone CR, at which
# the feedparser splits lines too); a blank line there is dropped.
_HEADER_START = rb"[ \t]|[!-9;-~]*+:|From "
_HEADER_LINE = re.compile(_HEADER_START)
_NOT_HEADER_AFTER_LF = re.compile(rb"\n(?!" + _HEADER_START + rb")(?:\r\n|\r|\n)?")
_NOT_HEADER_AFTER_CR = re.compile(rb"\r(?!\n|" + _HEADER_START + rb")")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# The rest of a header field from anywhere in it: its line and the continuation lines after.
_FIELD_REST = re.compile(rb"[^\n]*+(?:\n[ \t][^\n]*+)*+")
# Where the field that holds a byte begins: the last line start before it that is no
# continuation (matched from a field start up to the byte, so it backtracks over one field).
_LAST_FIELD_START = re.compile(rb"(?s:.*)\n(?=[^ \t])")
# A Content-Type of a type and its boundary alone, quoted or not, as nearly every mailer writes
# it: read here as Message.get_boundary reads it (it costs 20 µs, this one 1). Anything else
# (more parameters, RFC 2231, quoted pairs, 8-bit bytes) is the stdlib's to read.
_SIMPLE_BOUNDARY = re.compile(
    rb'[^;"\\*]*;[ \t\r\n]*boundary[ \t\r\n]*=[ \t\r\n]*'
    rb'(?:"([ !#-\[\]-~]*)"|([!#-:<-\[\]-~]*))[ \t\r\n]*',
    re.IGNORECASE,
)
# A parameter that gives a boundary, or a piece of one (RFC 2231 3, 4), and how much of a long
# Content-Type is read for them (see _boundary).
_BOUNDARY_NAME = re.compile(r"[ \t]*boundary(?:\*[0-9]*)?\*?[ \t]*=", re.IGNORECASE)
_MAX_CONTENT_TYPE = 2 * MAX_STRUCTURED
_MAX_BOUNDARY_PIECES = 64  # as parse.py keeps of a long value's parameters
# After "--" and the boundary, a delimiter line has "--" if it closes, then only spaces and
# tabs (the feedparser's boundaryre: any number of them) up to its line ending.
_PADDING = re.compile(rb"[ \t]*+(?:\r\n|\r|\n|\Z)")

_ATEXT_ASCII = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"  # RFC 5322 3.2.3
_COMMENT = r"(?:\([^()]*\)[ \t]*)?"


def _message_id_pattern(atext: str) -> re.Pattern[str]:
    dot_atom = rf"[{atext}]+(?:\.[{atext}]+)*"
    return re.compile(rf"[ \t]*{_COMMENT}<{dot_atom}@(?:{dot_atom}|\[[!-Z^-~]*\])>[ \t]*{_COMMENT}")


_MESSAGE_ID = _message_id_pattern(_ATEXT_ASCII)
_MESSAGE_ID_UTF8 = _message_id_pattern(_ATEXT_ASCII + "\u0080-\U0010ffff")  # RFC 6532 3.2

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# RFC 5322 4.3's obsolete zones, in minutes east of UTC. Its military letters are "-0000" (their
# sign was botched in RFC 822): no offset, as with "-0000".
_ZONES = {
    "UT": 0,
    "GMT": 0,
    "EST": -300,
    "EDT": -240,
    "CST": -360,
    "CDT": -300,
    "MST": -420,
    "MDT": -360,
    "PST": -480,
    "PDT": -420,
}
# RFC 5322 3.3 date-time with 4.3's obsolete forms (two- and three-digit years, white space
# around the colons; comments are taken out first): [day-of-week ","] day month year
# hour ":" minute [":" second] zone. The zone is optional here only to say that it is missing.
_DATE_TIME = re.compile(
    r"[ \t]*(?:([A-Za-z]{3})[ \t]*,[ \t]*)?([0-9]{1,2})[ \t]*([A-Za-z]{3})[ \t]*([0-9]{2,9})[ \t]+"
    r"([0-9]{2})[ \t]*:[ \t]*([0-9]{2})(?:[ \t]*:[ \t]*([0-9]{2}))?"
    r"(?:[ \t]+([+-][0-9]{4}|[A-Za-z]+))?[ \t]*"
)
# The same groups for the form nearly every mailer writes (email.utils.formatdate's), read in
# half the time.
_USUAL_DATE = re.compile(
    r"(?:([A-Z][a-z]{2}), )?([0-9]{1,2}) ([A-Z][a-z]{2}) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})"
)
_DAY_CACHE: dict[tuple[str | None, str, str, str, str | None], int] = {}  # see _date_seconds
_DATE_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")  # an innermost comment


def hygiene_findings(
    raw: bytes, envelope: Envelope, headers: HeaderSummary, received_at: int
) -> list[Finding]:
    """What a production server would refuse, rewrite or frown at in this message.

    `raw` is the message as stored (dot-unstuffed), `headers` what parse_headers made of it,
    `received_at` milliseconds since the epoch."""
    try:
        message = _Message(raw, envelope)
    except Exception as error:
        return [_failed("hygiene", error)]
    found: list[Finding] = []
    for name, check in _CHECKS:
        try:
            found += check(message, headers, received_at)
        except Exception as error:
            found.append(_failed(name, error))
    return found


def _failed(name: str, error: Exception) -> Finding:
    return Finding(
        "parse_defect",
        KINDS["parse_defect"][0],
        f"the {name} check could not finish: {type(error).__name__}: {error}",
    )


def _finding(kind: str, detail: str, address: str | None = None) -> Finding:
    return Finding(kind, KINDS[kind][0], detail, address)


def _plural(count: int, what: str) -> str:
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def _shown(value: bytes | str, limit: int = 80) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text if len(text) <= limit else text[:limit] + "…"


class _Message:
    """The raw message and what several checks need of it, each worked out once, when first
    needed: inside the check that needs it, so that what fails there fails that check alone."""

    def __init__(self, raw: bytes, envelope: Envelope):
        self.raw = raw
        self.envelope = envelope
        self.smtputf8 = self.eight_bit_body = False
        self.size: str | None = None  # SIZE='s digits as given (the server took no other)
        for option in envelope.mail_options:
            option = option.upper()
            if option == "SMTPUTF8":
                self.smtputf8 = True
            elif option == "BODY=8BITMIME":
                self.eight_bit_body = True
            elif option.startswith("SIZE=") and option[5:].isascii() and option[5:].isdigit():
                self.size = option[5:]
        self.ascii = raw.isascii()
        # (position, its line number) already counted: each new one counts on from the nearest
        # before it, so that line numbers deep in a big message do not each count from the top.
        self._known_lines: list[tuple[int, int]] = [(0, 1)]
        # functools.cached_property takes a lock on every first access before 3.12: these are
        # worked out by hand, as the properties below first need them.
        self._line_ends: tuple[int, int] | None = None
        self._head: tuple[int, int] | None = None
        self._lowered_head: bytes | None = None
        self._encoded_words: bool | None = None

    @property
    def line_ends(self) -> tuple[int, int]:
        """(LFs without a CR before them, CRs without a LF after them)."""
        if self._line_ends is None:
            self._line_ends = _bare_line_ends(self.raw)
        return self._line_ends

    @property
    def head(self) -> tuple[int, int]:
        """(end of the top header lines, start of the body)."""
        if self._head is None:
            self._head = _header_block(self.raw, 0, len(self.raw), self.line_ends[1] > 0)
        return self._head

    @property
    def lowered_head(self) -> bytes:
        """The top header block in lower case, after a LF: a field is found by a LF and its
        name and colon."""
        if self._lowered_head is None:
            self._lowered_head = b"\n" + _lines_of(self.raw[: self.head[0]], self).lower()
        return self._lowered_head

    @property
    def encoded_words(self) -> bool:
        """Whether the top header block has anything like an RFC 2047 encoded word."""
        if self._encoded_words is None:
            self._encoded_words = b"=?" in self.lowered_head
        return self._encoded_words

    def line(self, position: int) -> int:
        """The line number (from 1) of the byte at `position`."""
        index = bisect.bisect_right(self._known_lines, (position, 1 << 62)) - 1
        known, number = self._known_lines[index]
        number += self.raw.count(b"\n", known, position)
        self._known_lines.insert(index + 1, (position, number))
        return number


def _lines_of(head: bytes, message: _Message) -> bytes:
    """A header block with its lone CRs made LFs (same length, same positions): the feedparser
    ends a line at either, and the fields are found after a LF."""
    return _BARE_CR.sub(b"\n", head) if message.line_ends[1] else head


def _bare_line_ends(raw: bytes) -> tuple[int, int]:
    """(LFs without a CR before them, CRs without a LF after them)."""
    ends = raw.translate(None, _NOT_LINE_END)  # the CRs and LFs alone: counted at once
    lf, cr = ends.count(b"\n"), ends.count(b"\r")
    if not cr:
        return lf, 0
    # As many LFs as CRs and no CR without its LF: every line ends in CRLF. That search is the
    # quicker where CRs are few but takes a step for each CR; where they are many (a million
    # short lines), counting the CRLFs is.
    if lf == cr and cr < len(raw) >> 4 and _BARE_CR.search(raw) is None:
        return 0, 0
    crlf = raw.count(b"\r\n")
    return lf - crlf, cr - crlf


def _header_block(raw: bytes, start: int, end: int, bare_cr: bool) -> tuple[int, int]:
    """(end of the header lines, start of the body) of the entity in raw[start:end], as the
    stdlib's feedparser reads it: the header lines run up to the first line that is not one,
    a blank line (dropped) or, in a malformed message, the first line of the body. Past
    MAX_HEADER_BLOCK octets (parse_headers' limit) the rest is taken for the body."""
    limit = min(end, start + MAX_HEADER_BLOCK)
    if start and raw[start - 1] == 0x0A:  # (a part) the LF before it tells of its first line
        found = _NOT_HEADER_AFTER_LF.search(raw, start - 1, limit)
    elif _HEADER_LINE.match(raw, start, limit):
        found = _NOT_HEADER_AFTER_LF.search(raw, start, limit)
    else:
        blank = _LINE_END.match(raw, start, limit)
        return start, blank.end() if blank else start
    if bare_cr:
        lone = _NOT_HEADER_AFTER_CR.search(raw, start, found.start() + 1 if found else limit)
        if lone is not None:
            blank = _LINE_END.match(raw, lone.end(), limit)
            return lone.end(), blank.end() if blank else lone.end()
    return (found.start() + 1, found.end()) if found else (limit, limit)


def _first_non_ascii(raw: bytes, start: int, end: int) -> int:
    """Where raw[start:end] has its first byte over 127, -1 if nowhere. isascii a chunk at a
    time (a regex tests each byte, twenty times slower), the regex only in the chunk found."""
    for chunk_start in range(start, end, _CHUNK):
        chunk = raw[chunk_start : min(end, chunk_start + _CHUNK)]
        if not chunk.isascii():
            match = _NON_ASCII.search(chunk)
            return chunk_start + match.start() if match else -1
    return -1


def _first_outside_base64(raw: bytes, start: int, end: int) -> int:
    """Where raw[start:end] has its first byte outside base64 and white space, -1 if nowhere:
    one translate over the whole (0.8 ns an octet; a regex takes ten times that), the regex
    only where it found one."""
    if not raw[start:end].translate(None, _BASE64_BYTES):
        return -1
    match = _NOT_BASE64.search(raw, start, end)
    return match.start() if match else -1


def _unfolded(value: bytes) -> bytes:
    return value.replace(b"\r", b"").replace(b"\n", b"")


def _field_end(data: bytes, start: int, end: int | None = None) -> int:
    """Where the header field that holds data[start] ends: the LF of its last line, or `end`."""
    found = _FIELD_REST.match(data, start, len(data) if end is None else end)
    return found.end() if found else start


def _top_field(message: _Message, name: bytes) -> bytes | None:
    """The first `name` field of the top header block as written (unfolded), None if none."""
    at = message.lowered_head.find(b"\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 1  # `lowered_head` is one octet ahead of raw
    head = _lines_of(message.raw[: message.head[0]], message)
    return _unfolded(head[start : _field_end(head, start)])


# ---- lines


def _lines(message: _Message, _headers: HeaderSummary, _received_at: int) -> list[Finding]:
    raw = message.raw
    found: list[Finding] = []
    bare_lf, bare_cr = message.line_ends
    if bare_lf:
        lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
        first = raw.find(b"\n")
        if first > 0 and raw[first - 1] == 0x0D:
            match = _BARE_LF.search(raw, first)
            first = match.end() - 1 if match else first
        found.append(
            _finding(
                "bare_lf",
                f"lines end in a bare LF, not CRLF (RFC 5322 2.3, RFC 5321 2.3.8): line "
                f"{message.line(first)} first, {bare_lf} of {_plural(lines, 'line')}; "
                "Postfix 3.9+ normalises or, with smtpd_forbid_bare_newline = reject, refuses "
                "with 550 'bare <LF> received'; Gmail and Exchange refuse such mail",
            )
        )
    if bare_cr:
        # The first CR left once each CRLF is made two LFs (same length, same positions): a
        # regex would try every CR, and a message of CRs has millions.
        first = raw.replace(b"\r\n", b"\n\n").find(b"\r")
        where = f"line {message.line(first)} first, " if first >= 0 else ""
        found.append(
            _finding(
                "bare_cr",
                f"a CR not followed by LF (RFC 5322 2.3 allows CR only in CRLF): {where}"
                f"{_plural(bare_cr, 'bare CR')}; servers refuse such mail or take the "
                "CR for a line break",
            )
        )
    found += _long_lines(message)
    return found


def _long_lines(message: _Message) -> list[Finding]:
    raw = message.raw
    count, first, first_length = 0, 0, 0
    start = 0  # the start of a line
    while len(raw) - start > MAX_LINE:
        # The last LF in the next MAX_LINE + 1 octets: the line after it may be long, none
        # before it is. memrchr skips nearly a window a step: ten times a regex's speed.
        newline = raw.rfind(b"\n", start, start + MAX_LINE + 1)
        if newline >= 0:
            start = newline + 1
            continue
        end = raw.find(b"\n", start)
        if end < 0:
            end = len(raw)
        length = end - start - (1 if raw[end - 1] == 0x0D else 0)
        if length > MAX_LINE:
            if not count:
                first, first_length = start, length
            count += 1
        start = end + 1
    if not count:
        return []
    more = f" ({_plural(count, 'line')} over it in all)" if count > 1 else ""
    return [
        _finding(
            "long_line",
            f"line {message.line(first)} is {first_length} octets long, over the {MAX_LINE} "
            f"RFC 5322 2.1.1 allows{more}; servers fold such lines (which breaks DKIM "
            "signatures) or refuse the message",
        )
    ]


# ---- 8-bit bytes and non-ASCII


def _eight_bit(message: _Message, _headers: HeaderSummary, _received_at: int) -> list[Finding]:
    if message.ascii or message.eight_bit_body:
        return []
    position = _first_non_ascii(message.raw, message.head[1], len(message.raw))
    if position < 0:
        return []
    return [
        _finding(
            "eight_bit_without_8bitmime",
            f"8-bit bytes in the body (line {message.line(position)} first) but MAIL FROM had "
            "no BODY=8BITMIME (RFC 6152): a server may refuse the message or must convert it, "
            "and a relay without 8BITMIME mangles it",
        )
    ]


def _first_bad_header_byte(message: _Message, start: int, end: int) -> int:
    """Where raw[start:end] first has a byte a header may not have: any over 127, or with
    SMTPUTF8 one that is not UTF-8; -1 if none. The whole range is decoded at once: it stops at
    the first bad byte."""
    if not message.smtputf8:
        match = _NON_ASCII.search(message.raw, start, end)
        return match.start() if match else -1
    try:
        codecs.utf_8_decode(memoryview(message.raw)[start:end], "strict", True)
    except UnicodeDecodeError as error:
        return start + error.start
    return -1


def _field_name(raw: bytes, position: int, start: int, end: int) -> str:
    """The name of the header field that holds raw[position], in a block that has a field
    beginning at `start` and no field beginning between `start` and that field."""
    line = raw.rfind(b"\n", start, position) + 1 or start
    if raw[line : line + 1] in (b" ", b"\t"):  # a continuation: its field began further up
        found = _LAST_FIELD_START.match(raw, start, line)
        line = found.end() if found else start
    colon = raw.find(b":", line, _field_end(raw, line, end))
    name = raw[line:colon].strip() if colon >= 0 else b""
    return _shown(name, 40) or "(unnamed)"


def _bad_header_names(message: _Message, start: int, end: int) -> tuple[list[str], int, bool]:
    """The names of the header fields in raw[start:end] that are not ASCII (with SMTPUTF8: not
    UTF-8), in order, as far as the first MAX_REPORTED + 1 different ones; the line number of
    the first; and whether fields at fault were left unread (past _MAX_BAD_FIELDS)."""
    raw = message.raw
    names: dict[str, None] = {}  # a set that keeps its order
    first = 0
    position = start  # a field's start: nothing before it is left to read
    for _ in range(_MAX_BAD_FIELDS):
        bad = _first_bad_header_byte(message, position, end)
        if bad < 0:
            return list(names), first, False
        first = first or message.line(bad)
        names.setdefault(_field_name(raw, bad, position, end), None)
        if len(names) > MAX_REPORTED:
            return list(names), first, False
        position = _field_end(raw, bad, end) + 1
    return list(names), first, _first_bad_header_byte(message, position, end) >= 0


def _header_detail(
    message: _Message, names: list[str], first: int, cut: bool, part: str = ""
) -> str:
    """What is wrong with the header fields `names` (of the part described, if one is)."""
    listed = ", ".join(names[:MAX_REPORTED])
    if len(names) > MAX_REPORTED:
        listed += " and more"
    which = f"{listed} {'header' if len(names) == 1 else 'headers'} (line {first}"
    which += f"; only the first {_MAX_BAD_FIELDS} at fault were read)" if cut else ")"
    which = f"{part}: its {which}" if part else f"the {which}"
    if message.smtputf8:
        return f"{which}: not valid UTF-8, which SMTPUTF8 requires (RFC 6532 3.2)"
    return (
        f"{which}: non-ASCII bytes but MAIL FROM had no SMTPUTF8 (RFC 6532); without it they "
        "must be RFC 2047 encoded words (RFC 2231 for parameters)"
    )


def _non_ascii_header(
    message: _Message, _headers: HeaderSummary, _received_at: int
) -> list[Finding]:
    header_end = message.head[0]
    if message.ascii or message.raw[:header_end].isascii():
        return []
    names, first, cut = _bad_header_names(message, 0, header_end)
    if not names:
        return []
    return [_finding("non_ascii_header", _header_detail(message, names, first, cut))]


def _non_ascii_address(
    message: _Message, _headers: HeaderSummary, _received_at: int
) -> list[Finding]:
    envelope = message.envelope
    if message.smtputf8 or (envelope.mail_from + "".join(envelope.rcpt_to)).isascii():
        return []
    given = [("MAIL FROM", envelope.mail_from)] + [("RCPT TO", a) for a in envelope.rcpt_to]
    found = []
    for where, address in given:
        if not address.isascii():
            found.append(
                _finding(
                    "non_ascii_address",
                    f"{where} address {address} is not ASCII but MAIL FROM had no SMTPUTF8 "
                    "(RFC 6531 3.4): servers refuse it with 553 5.6.7",
                    address,
                )
            )
            if len(found) == MAX_REPORTED:
                break
    return found


# ---- header fields


def _written(message: _Message, name: bytes, decoded: str | None) -> str | None:
    """The top header block's first `name` field as written: unfolded, not decoded (an encoded
    word is not allowed in these fields, RFC 2047 5). What parse_headers read when the block
    has no encoded word at all (then it is the same), or when the field is not found here."""
    if not message.encoded_words:
        return decoded
    value = _top_field(message, name)
    return decoded if value is None else value.decode("utf-8", "replace").strip(" \t")


def _message_id(message: _Message, headers: HeaderSummary, _received_at: int) -> list[Finding]:
    value = _written(message, b"message-id", headers.message_id)
    pattern = _MESSAGE_ID_UTF8 if message.smtputf8 else _MESSAGE_ID
    if not value or pattern.fullmatch(value):
        return []  # an absent or empty one is missing_header's
    return [
        _finding(
            "invalid_message_id",
            f"Message-ID {_shown(value)} is not <id-left@id-right> (RFC 5322 3.6.4): replies "
            "cannot thread on it, and spam filters score it",
        )
    ]


def _date(message: _Message, headers: HeaderSummary, received_at: int) -> list[Finding]:
    value = _written(message, b"date", headers.date)
    if not value:
        return []  # missing_header's
    try:
        seconds = _date_seconds(value)
    except ValueError as error:
        return [_finding("invalid_date", f"Date {_shown(value)} {error}")]
    ahead = seconds - received_at / 1000
    if ahead <= FUTURE_DATE_SECONDS:
        return []
    hours = ahead / 3600
    told = f"{hours:.0f} hours" if hours < 72 else f"{hours / 24:.0f} days"
    return [
        _finding(
            "future_date",
            f"Date {_shown(value)} is {told} after the message arrived (more than a day): a "
            "wrong clock or time zone; mail clients sort it above everything else",
        )
    ]


def _date_seconds(value: str) -> int:
    """The time an RFC 5322 date-time (3.3, with 4.3's obsolete forms) names, in seconds since
    the epoch ("-0000" and the military zones, zone unknown, as UTC). Raises ValueError saying
    what is wrong (after "Date <value> ") where the value is not one, or names no such time.

    The stdlib's parsedate_to_datetime is not asked: it takes a Date without a zone, "23.10.00",
    "27 November", a year 0050 (as 2050) and a wrong day of the week."""
    match = _USUAL_DATE.fullmatch(value)
    if match is None and len(value) > MAX_DATE:
        # The comment search below tries each "(" of an unclosed comment anew: bounded here.
        raise ValueError(f"is {len(value)} characters long: no RFC 5322 date-time (3.3) is")
    if match is None:
        text = value
        for _ in range(8):  # comments, innermost first (they nest)
            if "(" not in text:
                break
            text = _DATE_COMMENT.sub(" ", text)
        match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(
            "is not an RFC 5322 date-time (3.3): [day,] day month year hh:mm[:ss] zone, such "
            "as 'Fri, 27 Nov 2026 23:10:00 +0000'"
        )
    weekday, day, month, year, hour, minute, second, zone = match.groups()
    key = (weekday, day, month, year, zone)
    known = _DAY_CACHE.get(key)
    if known is None:
        known = _day_and_zone(weekday, day, month, year, zone)
        if len(_DAY_CACHE) > 1000:
            _DAY_CACHE.clear()
        _DAY_CACHE[key] = known  # a sink's messages come from a few days and zones
    hours, minutes, seconds = int(hour), int(minute), int(second or 0)
    if hours > 23 or minutes > 59 or seconds > 60:  # 60: a leap second
        raise ValueError(
            f"names {hour}:{minute}{':' + second if second else ''}, no time of day "
            "(RFC 5322 3.3: 00:00:00 to 23:59:60)"
        )
    return known + hours * 3600 + minutes * 60 + seconds


def _day_and_zone(
    weekday: str | None, day_text: str, month_name: str, year_text: str, zone: str | None
) -> int:
    """The seconds from the epoch to the day's midnight in the zone; raises ValueError (as
    _date_seconds) for no such day, month, year or zone."""
    month = _MONTHS.get(month_name.title())
    if month is None:
        raise ValueError(f"has no month RFC 5322 3.3 names ({month_name}: Jan to Dec)")
    year = int(year_text)
    if len(year_text) == 2:
        year += 2000 if year < 50 else 1900  # RFC 5322 4.3
    elif len(year_text) == 3:
        year += 1900
    elif year < 1900:
        raise ValueError(f"has the year {year_text}; RFC 5322 3.3 requires 1900 or later")
    day = int(day_text)
    if not 1 <= day <= _month_length(year, month):
        raise ValueError(f"names {day} {month_name} {year}, a day that does not exist")
    days = _days_from_epoch(year, month, day)
    named = _DAY_NAMES[(days + 3) % 7]  # 1 January 1970 was a Thursday
    if weekday is not None and weekday.title() != named:
        raise ValueError(
            f"says {weekday} but {day} {month_name} {year} is a {named} (RFC 5322 3.3: the "
            "day of the week must be the date's)"
        )
    return days * 86400 - _zone(zone)


def _zone(zone: str | None) -> int:
    """A Date's zone in seconds east of UTC; raises ValueError for none or one not RFC 5322's."""
    if zone is None:
        raise ValueError("has no zone (RFC 5322 3.3 requires one, such as +0000)")
    if zone[0] in "+-":
        if zone[3] > "5":
            raise ValueError(f"has the zone {zone}: its minutes are over 59 (RFC 5322 3.3)")
        offset = int(zone[1:3]) * 3600 + int(zone[3:]) * 60
        return offset if zone[0] == "+" else -offset
    known = _ZONES.get(zone.upper())
    if known is not None:
        return known * 60
    if len(zone) == 1 and zone not in "Jj":
        return 0  # a military zone
    raise ValueError(
        f"has the zone {zone}, which RFC 5322 does not name (3.3: +hhmm or -hhmm; 4.3: UT, "
        "GMT, EST, EDT, CST, CDT, MST, MDT, PST, PDT)"
    )


def _month_length(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_epoch(year: int, month: int, day: int) -> int:
    """Days from 1 January 1970 to the date (proleptic Gregorian, any year)."""
    year -= month <= 2  # count the year from March, so that February comes last
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _from(_message: _Message, headers: HeaderSummary, _received_at: int) -> list[Finding]:
    if len(headers.from_addrs) < 2 or headers.sender_addr:
        return []
    # The stdlib makes words of a display name it cannot parse into "addresses" without an @
    # ("[bold] Boom <a@x.test>"): invalid_address tells of those; they are no second author.
    mailboxes = [address for address in headers.from_addrs if "@" in address]
    if len(mailboxes) < 2:
        return []
    listed = ", ".join(mailboxes[:MAX_REPORTED])
    return [
        _finding(
            "multiple_from_without_sender",
            f"From has {len(mailboxes)} addresses ({listed}) and there is no Sender "
            "header: RFC 5322 3.6.2 requires one naming the mailbox that sent it",
        )
    ]


def _size(message: _Message, _headers: HeaderSummary, _received_at: int) -> list[Finding]:
    if message.size is None:
        return []
    digits = message.size.lstrip("0") or "0"
    # More digits than any message has octets: int() would refuse past 4300 of them.
    declared = int(digits) if len(digits) <= 20 else 10**20
    if not _size_differs(declared, len(message.raw)):
        return []
    # SIZE counts the message as sent, every line ending in CRLF (RFC 1870): a stored bare LF
    # stands for two octets. Either count may be the client's.
    canonical = len(message.raw) + message.line_ends[0]
    if not _size_differs(declared, canonical):
        return []
    off = abs(declared - canonical) / max(canonical, 1) * 100
    return [
        _finding(
            "size_mismatch",
            f"MAIL FROM declared SIZE={_shown(message.size, 30)} but the message is "
            f"{canonical} octets ({f'{off:.0f} %' if off < 10_000 else 'far'} off; RFC 1870 "
            "counts it as sent, CRLFs included, dot-stuffing not): a server that sizes its "
            "limit on SIZE= accepts what it cannot take, or refuses what it could",
        )
    ]


def _size_differs(declared: int, real: int) -> bool:
    difference = abs(declared - real)
    return difference > SIZE_SLACK and difference > SIZE_TOLERANCE * real


# ---- MIME structure


@dataclass(slots=True)
class _Part:
    start: int  # its first header line
    header_end: int
    body_start: int
    end: int
    depth: int
    parent: int  # its container's index in the walk, -1 for the message itself
    enclosed: bool  # inside a message/* part: another message's body, not this one's
    content_type: str = "text/plain"
    encoding: str = ""
    attachment: bool = False
    boundary: bytes | None = None


def _content_type(lowered: bytes) -> str:
    """The type a Content-Type value (in lower case) gives, as Message.get_content_type has
    it: what comes before the first ";", text/plain if that has not exactly one "/"."""
    kind = lowered.split(b";", 1)[0]
    if b"\n" in kind:
        kind = _unfolded(kind)
    kind = kind.strip()
    return kind.decode("ascii", "replace") if kind.count(b"/") == 1 else "text/plain"


def _boundary(value: bytes) -> bytes | None:
    """The boundary a multipart's Content-Type value gives, as Message.get_boundary reads it
    (quoted strings, quoted pairs, RFC 2231 continuations and charsets); None if it gives none,
    or one that is not ASCII (the stdlib then finds no delimiter either).

    get_boundary takes time that grows with the square of a value's semicolons: it is given
    the type and the boundary parameters alone (parse.py's quote-aware split, which is
    linear), from the value's first _MAX_CONTENT_TYPE characters, and nothing if they are
    still long or hold many semicolons (no boundary has one: RFC 2046 5.1.1 bchars)."""
    simple = _SIMPLE_BOUNDARY.fullmatch(value)
    if simple:
        return (simple[1] if simple[1] is not None else simple[2]).rstrip()
    kind, *params = _parameters(_unfolded(value[:_MAX_CONTENT_TYPE]).decode("ascii", "replace"))
    text = "; ".join([kind, *(param for param in params if _BOUNDARY_NAME.match(param))])
    if len(text) > MAX_STRUCTURED or text.count(";") > _MAX_BOUNDARY_PIECES:
        return None
    header = Message()
    header.set_raw("Content-Type", text)
    boundary = header.get_boundary()
    return boundary.encode("ascii") if boundary is not None and boundary.isascii() else None


# The fields of a part's header block (in lower case, after a LF) that the walk reads, each
# with its whole value (its continuation lines too): one scan finds them all.
_MIME_FIELD = re.compile(
    rb"\ncontent-(type|transfer-encoding|disposition):([^\n]*+(?:\n[ \t][^\n]*+)*+)"
)


def _read_headers(raw: bytes, part: _Part, default_type: str, lowered: bytes) -> None:
    """Content-Type (its type, a multipart's boundary), Content-Transfer-Encoding and
    Content-Disposition of the part, the first of each (as Message.get has them); no
    Content-Type is the default type. `lowered` is the part's header block in lower case after
    a LF, one octet ahead of raw[part.start:]."""
    kind = encoding = disposition = None
    for name, value in _MIME_FIELD.findall(lowered):
        if name == b"type":
            kind = value if kind is None else kind
        elif name == b"transfer-encoding":
            encoding = value if encoding is None else encoding
        elif disposition is None:
            disposition = value
    if kind is None:
        part.content_type = default_type
    else:
        known = _TYPES.get(kind)
        if known is None:
            known = _content_type(kind)
            if not known.startswith("multipart/"):  # a multipart's value is its boundary's
                _remember(_TYPES, kind, known)
        part.content_type = known
        if known.startswith("multipart/"):
            # the boundary as written, from raw: `lowered` is one octet ahead of it
            written = part.start + lowered.find(b"\ncontent-type:") + 13
            part.boundary = _boundary(raw[written : written + len(kind)])
    if encoding is not None:
        known = _ENCODINGS.get(encoding)
        if known is None:
            known = encoding.split(b"(", 1)[0].strip().decode("ascii", "replace")
            _remember(_ENCODINGS, encoding, known)
        part.encoding = known
    if disposition is not None:
        part.attachment = disposition.split(b";", 1)[0].strip() == b"attachment"


# The types and encodings of the values read most (a mailer writes the same ones in every
# message): a dictionary look-up is a tenth of reading one again.
_TYPES: dict[bytes, str] = {}
_ENCODINGS: dict[bytes, str] = {}


def _remember(known: dict[bytes, str], value: bytes, read: str) -> None:
    if len(value) <= 200:
        if len(known) >= 500:
            known.clear()
        known[value] = read


@dataclass(slots=True)
class _Budget:
    """What the boundary searches of one message may still take, all multiparts together."""

    octets: int  # searched for delimiters (nested multiparts search the same bytes again)
    lines: int  # that begin like a delimiter (most are one; the others cost a step each)


def _delimiter_line(raw: bytes, line: int, dash: int, end: int) -> tuple[int, bool] | None:
    """(where the next line starts, whether it closes) if the line at `line`, which begins with
    "--" and the boundary (`dash` octets), is a delimiter line: "--" if it closes, then only
    spaces and tabs up to its line ending (RFC 2046 5.1.1; the feedparser takes any number of
    them). None if it is not one."""
    after = line + dash
    if raw.startswith(b"\r\n", after, end):
        return after + 2, False  # the usual one, at once
    closing = raw.startswith(b"--", after, end)
    padding = _PADDING.match(raw, after + 2 if closing else after, end)
    return (padding.end(), closing) if padding else None  # "--Bx", "--B--x": none


def _body_parts(
    raw: bytes, start: int, end: int, boundary: bytes, budget: _Budget, bare_cr: bool
) -> list[tuple[int, int]]:
    """(start, end) of each body part of the multipart whose body is raw[start:end] (RFC 2046
    5.1.1), as the feedparser splits it and as far as the budget goes. Delimiter lines that
    follow one another make no empty part between them, as in the feedparser, and in a message
    with bare CRs a line may begin after one."""
    dash = b"--" + boundary
    length = len(dash)
    lines = budget.lines  # counted here, told back when done
    spans: list[tuple[int, int]] = []
    part_start = -1
    line = start if raw.startswith(dash, start, end) else _next_line(raw, dash, start, end, bare_cr)
    while line >= 0 and lines > 0:
        lines -= 1
        search_from = line + length
        delimited = _delimiter_line(raw, line, length, end)
        if delimited is not None:
            next_line, closing = delimited
            if part_start >= 0:
                part_end = line - 1  # the line ending before a delimiter belongs to it
                if raw[part_end] == 0x0A and part_end > part_start and raw[part_end - 1] == 0x0D:
                    part_end -= 1
                spans.append((part_start, max(part_start, part_end)))
            if closing or len(spans) >= MAX_PARTS:
                budget.octets -= line - start
                budget.lines = lines
                return spans
            while lines > 0 and raw.startswith(dash, next_line, end):
                again = _delimiter_line(raw, next_line, length, end)
                if again is None:
                    break
                lines -= 1
                next_line = again[0]
            part_start = search_from = next_line
        line = _next_line(raw, dash, search_from, end, bare_cr)
    budget.octets -= end - start
    budget.lines = lines
    if part_start >= 0:
        spans.append((part_start, end))  # no closing delimiter: the last part runs to the end
    return spans


def _next_line(raw: bytes, dash: bytes, start: int, end: int, bare_cr: bool) -> int:
    """Where the next line in raw[start:end] that begins with `dash` begins, -1 if none."""
    found = raw.find(b"\n" + dash, start, end)
    if bare_cr:
        after_cr = raw.find(b"\r" + dash, start, found if found >= 0 else end)
        found = after_cr if after_cr >= 0 else found
    return found + 1 if found >= 0 else -1


def _walk(message: _Message) -> list[_Part]:
    """The message's entities, each container before its parts (the stdlib's walk order)."""
    raw = message.raw
    bare_cr = message.line_ends[1] > 0
    parts: list[_Part] = []
    header_end, body_start = message.head
    root = _Part(0, header_end, body_start, len(raw), 0, -1, False)
    _read_headers(raw, root, "text/plain", message.lowered_head)
    pending: list[_Part] = [root]
    budget: _Budget | None = None  # made for the first multipart
    while pending and len(parts) < MAX_PARTS:
        part = pending.pop()
        index = len(parts)
        parts.append(part)
        kind = part.content_type
        if part.depth >= MAX_DEPTH:
            continue
        child_type = "text/plain"
        if kind.startswith("multipart/"):
            if part.boundary is None:
                continue
            if budget is None:
                budget = _Budget(SEARCH_BUDGET * len(raw) + MAX_HEADER_BLOCK, 4 * MAX_PARTS)
            if budget.octets <= 0:
                continue
            spans = _body_parts(raw, part.body_start, part.end, part.boundary, budget, bare_cr)
            if kind == "multipart/digest":
                child_type = "message/rfc822"  # RFC 2046 5.1.5
        # The feedparser reads any message/* but delivery-status (header blocks, no body) as a
        # message, whatever its encoding: so does the walk. (message/global may come in base64,
        # RFC 6532 3.5: the "message" read is then one part of base64 text, ASCII, no header
        # line, enclosed: it makes no finding.)
        elif kind.startswith("message/") and kind != "message/delivery-status":
            spans = [(part.body_start, part.end)]
        else:
            continue
        enclosed = part.enclosed or kind.startswith("message/")
        depth = part.depth + 1
        for start, end in reversed(spans[: MAX_PARTS - len(parts) - len(pending)]):
            header_end, body_start = _header_block(raw, start, end, bare_cr)
            child = _Part(start, header_end, body_start, end, depth, index, enclosed)
            lowered = b"\n" + _lines_of(raw[start:header_end], message).lower()
            _read_headers(raw, child, child_type, lowered)
            pending.append(child)
    return parts


def _where(message: _Message, part: _Part) -> str:
    if part.parent < 0:
        return f"the message's {part.content_type} body"
    return f"the {part.content_type} part at line {message.line(part.start)}"


def _mime(message: _Message, _headers: HeaderSummary, _received_at: int) -> list[Finding]:
    parts = _walk(message)
    found: list[Finding] = []
    encodings = headers = 0
    for part in parts:
        if encodings < MAX_REPORTED:
            problem = _encoding_problem(message, part)
            if problem:
                found.append(_finding("encoding_mismatch", f"{_where(message, part)} {problem}"))
                encodings += 1
        if part.parent >= 0 and not message.ascii and headers < MAX_REPORTED:
            header = _part_header_problem(message, part)
            if header:
                found.append(header)
                headers += 1
    html = _html_without_text(parts)
    if html is not None:
        found.append(
            _finding(
                "html_without_text",
                f"{_where(message, html)} has no text/plain alternative: the message has no "
                "text/plain part (multipart/alternative, RFC 2046 5.1.4); text-only clients "
                "show nothing readable, and spam filters score it (SpamAssassin MIME_HTML_ONLY)",
            )
        )
    return found


def _encoding_problem(message: _Message, part: _Part) -> str | None:
    raw, encoding, kind = message.raw, part.encoding, part.content_type
    if encoding in ("8bit", "binary") or (message.ascii and encoding in ("", "7bit")):
        return None  # the usual part, at once: nothing in it to contradict
    named = f"Content-Transfer-Encoding: {_shown(encoding, 40)}"
    if kind.startswith("multipart/") or kind == "message/rfc822":
        if encoding in _CONTAINER_ENCODINGS:
            return None
        return (
            f"declares {named}; a {kind.split('/')[0]} may only be 7bit, 8bit or binary "
            "(RFC 2045 6.4, RFC 2046 5.2.1)"
        )
    if encoding not in _KNOWN_ENCODINGS and not encoding.startswith("x-"):
        return (
            f"declares {named}, which is none of 7bit, 8bit, binary, quoted-printable and "
            "base64 (RFC 2045 6.1)"
        )
    if encoding == "base64":
        position = _first_outside_base64(raw, part.body_start, part.end)
        if position < 0:
            return None
        return (
            f"is base64 but line {message.line(position)} holds characters outside its "
            "alphabet (RFC 2045 6.8)"
        )
    if encoding in _SEVEN_BIT and not message.ascii:
        position = _first_non_ascii(raw, part.body_start, part.end)
        if position < 0:
            return None
        said = named if encoding else "no Content-Transfer-Encoding (so 7bit)"
        return (
            f"declares {said} but holds 8-bit bytes (line {message.line(position)} first; "
            "RFC 2045 2.7, 6.2)"
        )
    return None


def _part_header_problem(message: _Message, part: _Part) -> Finding | None:
    if message.raw[part.start : part.header_end].isascii():
        return None
    names, first, cut = _bad_header_names(message, part.start, part.header_end)
    if not names:
        return None
    return _finding(
        "non_ascii_header",
        _header_detail(message, names, first, cut, _where(message, part)),
    )


def _html_without_text(parts: list[_Part]) -> _Part | None:
    """The first HTML body part, when the message has no text/plain body part at all (as
    SpamAssassin's MIME_HTML_ONLY has it: a text/plain beside it in a multipart/mixed counts).
    Attachments, and the parts of a message forwarded inside this one, are not its body."""
    html = None
    for part in parts:
        if part.attachment or part.enclosed:
            continue
        if part.content_type == "text/plain":
            return None
        if part.content_type == "text/html" and html is None:
            html = part
    return html


_Check = Callable[[_Message, HeaderSummary, int], list[Finding]]
_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("line", _lines),
    ("8-bit body", _eight_bit),
    ("non-ASCII header", _non_ascii_header),
    ("non-ASCII address", _non_ascii_address),
    ("Message-ID", _message_id),
    ("Date", _date),
    ("From", _from),
    ("SIZE", _size),
    ("MIME structure", _mime),
)
