"""Hygiene findings: what a production server would do with this mail, found at ingest.

This runs in the writer for every message, so the common case is a handful of scans at C
speed over the raw bytes (isascii, bytes.count/find, compiled regexes that begin with a literal
byte). The MIME structure is walked only as far as the message has one, without recursion and
within parse.py's limits (MAX_PARTS parts, MAX_DEPTH levels) plus a bound on the bytes searched
for boundaries, so a hostile message costs a small multiple of reading it.

`hygiene_findings` never raises: a check that fails becomes a parse_defect finding saying so,
and the message is stored all the same.
"""

from __future__ import annotations

import bisect
import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date
from email.utils import parsedate_to_datetime

from mailsink.mail.envelope import Envelope
from mailsink.mail.findings import KINDS, Finding
from mailsink.mail.parse import MAX_DEPTH, MAX_HEADER_BLOCK, MAX_PARTS, HeaderSummary

MAX_LINE = 998  # octets in a line, its CRLF not counted (RFC 5322 2.1.1)
FUTURE_DATE_SECONDS = 24 * 3600  # a Date further ahead of the arrival than this is flagged
# A declared SIZE= is wrong when it is off by more than both of these: clients count a little
# differently (a final CRLF, a header added on the way), never by this much.
SIZE_TOLERANCE = 0.05
SIZE_SLACK = 100
MAX_REPORTED = 10  # findings of one kind about parts, headers or addresses, per message
# Boundary searches in nested multiparts cover the same bytes again at each level: past this
# many times the message's size (plus MAX_HEADER_BLOCK), no deeper level is looked into.
SEARCH_BUDGET = 8

_KNOWN_ENCODINGS = {"", "7bit", "8bit", "binary", "quoted-printable", "base64"}
_SEVEN_BIT = {"", "7bit", "quoted-printable"}  # content that must be ASCII (base64: its alphabet)
_CONTAINER_ENCODINGS = {"", "7bit", "8bit", "binary"}  # RFC 2045 6.4, RFC 2046 5.2.1
_EIGHT_BIT_BODIES = ("BODY=8BITMIME", "BODY=BINARYMIME")

# A message that ends every line in CRLF has as many CRs as LFs and no CR without its LF: one
# translate keeps the CRs and LFs alone to count, and a search with a literal prefix looks for
# a CR without its LF, both at C speed. Only a message that fails that is searched for where
# its first bare LF is.
_BARE_LF = re.compile(rb"\n[^\n]*+(?<!\r)\n")  # a line after the first that ends in a bare LF
_BARE_CR = re.compile(rb"\r(?!\n)")
_NOT_LINE_END = bytes(byte for byte in range(256) if byte not in b"\r\n")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\r\n \t]")
_BASE64_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n \t"
_CHUNK = 64 * 1024  # isascii / translate this much at a time, then a regex in the chunk only

# The first line of a header block as the stdlib's feedparser tells it (its headerRE): a field
# name and its colon, or an mbox "From " line.
_HEADER_LINE = re.compile(rb"From |[!-9;-~]*:")
_BOUNDARY = re.compile(
    rb'[; \t\r\n]boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^; \t\r\n"]{1,200}))', re.I
)
_MEDIA_TYPE = re.compile(rb"[!-~]+/[!-~]+")
_MESSAGES = ("message/rfc822", "message/global")  # a whole message inside a part
_MAX_PADDING = 100  # octets of spaces or tabs tolerated after a boundary on its line

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"  # RFC 5322 3.2.3, RFC 6532 3.2
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_COMMENT = r"(?:\([^()]*\)\s*)?"
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
# "Fri, 27 Nov 2026 23:10:00 +0000". A year below 1000 is the stdlib's (it reads 0050 as 2050),
# as is anything else.
_USUAL_DATE = re.compile(
    r"(?:[A-Za-z]{3}, )?([0-9]{1,2}) ([A-Z][a-z]{2}) ([1-9][0-9]{3}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)
_EPOCH_DAY = date(1970, 1, 1)
_MONTH_CACHE: dict[tuple[str, str], tuple[int, int]] = {}  # see _month
_MESSAGE_ID = re.compile(rf"\s*{_COMMENT}<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])>\s*{_COMMENT}")


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
    """The raw message and what several checks need of it, each worked out once."""

    def __init__(self, raw: bytes, envelope: Envelope):
        self.raw = raw
        self.envelope = envelope
        self.smtputf8 = self.eight_bit_body = False
        self.size: int | None = None
        for option in envelope.mail_options:
            option = option.upper()
            if option == "SMTPUTF8":
                self.smtputf8 = True
            elif option in _EIGHT_BIT_BODIES:
                self.eight_bit_body = True
            elif option.startswith("SIZE=") and option[5:].isdigit():
                self.size = int(option[5:])
        self.ascii = raw.isascii()
        self.header_end, self.body_start = _header_block(raw, 0, len(raw))
        # LFs without a CR before them, CRs without a LF after them
        self.bare_lf, self.bare_cr = _bare_line_ends(raw)
        # (position, its line number) already counted: each new one counts on from the nearest
        # before it, so that line numbers deep in a big message do not each count from the top.
        self._known_lines: list[tuple[int, int]] = [(0, 1)]

    def line(self, position: int) -> int:
        """The line number (from 1) of the byte at `position`."""
        index = bisect.bisect_right(self._known_lines, (position, 1 << 62)) - 1
        known, number = self._known_lines[index]
        number += self.raw.count(b"\n", known, position)
        self._known_lines.insert(index + 1, (position, number))
        return number


def _bare_line_ends(raw: bytes) -> tuple[int, int]:
    """(LFs without a CR before them, CRs without a LF after them)."""
    ends = raw.translate(None, _NOT_LINE_END)  # the CRs and LFs alone: counted at once
    lf, cr = ends.count(b"\n"), ends.count(b"\r")
    if not cr:
        return lf, 0
    if lf == cr and _BARE_CR.search(raw) is None:
        return 0, 0  # every CR has its LF, and there are as many LFs: each has its CR
    crlf = raw.count(b"\r\n")
    return lf - crlf, cr - crlf


def _header_block(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header lines, start of the body) of the entity in raw[start:end]: up to the
    first blank line, none at all when the first line is not a header line (the stdlib's
    feedparser then takes it for the body)."""
    if not _HEADER_LINE.match(raw, start, end):
        for blank in (b"\r\n", b"\n"):  # no header at all, as RFC 2046 5.1.1 allows a part
            if raw.startswith(blank, start):
                return start, min(end, start + len(blank))
        return start, start
    limit = min(end, start + MAX_HEADER_BLOCK)
    crlf = raw.find(b"\n\r\n", start, limit)
    lf = raw.find(b"\n\n", start, crlf + 1 if crlf >= 0 else limit)
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return limit, limit


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
    """Where raw[start:end] has its first byte outside base64 and white space, -1 if nowhere."""
    for chunk_start in range(start, end, _CHUNK):
        chunk = raw[chunk_start : min(end, chunk_start + _CHUNK)]
        if chunk.translate(None, _BASE64_BYTES):
            match = _NOT_BASE64.search(chunk)
            return chunk_start + match.start() if match else -1
    return -1


# ---- lines


def _lines(message: _Message, _headers: HeaderSummary, _received_at: int) -> list[Finding]:
    raw = message.raw
    found: list[Finding] = []
    if message.bare_lf:
        lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
        first = raw.find(b"\n")
        if first > 0 and raw[first - 1] == 0x0D:
            match = _BARE_LF.search(raw, first)
            first = match.end() - 1 if match else first
        found.append(
            _finding(
                "bare_lf",
                f"lines end in a bare LF, not CRLF (RFC 5322 2.3, RFC 5321 2.3.8): line "
                f"{message.line(first)} first, {message.bare_lf} of {_plural(lines, 'line')}; "
                "Postfix 3.9+ normalises or, with smtpd_forbid_bare_newline = reject, refuses "
                "with 550 'bare <LF> received'; Gmail and Exchange refuse such mail",
            )
        )
    if message.bare_cr:
        match = _BARE_CR.search(raw)
        where = f"line {message.line(match.start())} first, " if match else ""
        found.append(
            _finding(
                "bare_cr",
                f"a CR not followed by LF (RFC 5322 2.3 allows CR only in CRLF): {where}"
                f"{_plural(message.bare_cr, 'bare CR')}; servers refuse such mail or take the "
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
    position = _first_non_ascii(message.raw, message.body_start, len(message.raw))
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


def _bad_header_names(message: _Message, start: int, end: int) -> tuple[list[str], int]:
    """The names of the header fields in raw[start:end] that are not ASCII (with SMTPUTF8: not
    UTF-8), and the line number of the first of them."""
    names: list[str] = []
    first = 0
    name = b""
    offset = start
    for line in message.raw[start:end].split(b"\n"):
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].strip()
        bad = not line.isascii()
        if bad and message.smtputf8:
            try:
                line.decode("utf-8")
                bad = False
            except UnicodeDecodeError:
                pass
        if bad:
            shown = _shown(name, 40) or "(unnamed)"
            if shown not in names:
                names.append(shown)
            first = first or message.line(offset)
        offset += len(line) + 1
    return names, first


def _header_detail(message: _Message, names: list[str], first: int, part: str = "") -> str:
    """What is wrong with the header fields `names` (of the part described, if one is)."""
    listed = ", ".join(names[:MAX_REPORTED]) + (" and more" if len(names) > MAX_REPORTED else "")
    which = f"{listed} {'header' if len(names) == 1 else 'headers'} (line {first})"
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
    if message.ascii or message.raw[: message.header_end].isascii():
        return []
    names, first = _bad_header_names(message, 0, message.header_end)
    if not names:
        return []
    return [_finding("non_ascii_header", _header_detail(message, names, first))]


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


def _message_id(_message: _Message, headers: HeaderSummary, _received_at: int) -> list[Finding]:
    value = headers.message_id
    if not value or _MESSAGE_ID.fullmatch(value):
        return []  # an absent or empty one is missing_header's
    return [
        _finding(
            "invalid_message_id",
            f"Message-ID {_shown(value)} is not <id-left@id-right> (RFC 5322 3.6.4): replies "
            "cannot thread on it, and spam filters score it",
        )
    ]


def _date(_message: _Message, headers: HeaderSummary, received_at: int) -> list[Finding]:
    value = headers.date
    if not value:
        return []  # missing_header's
    try:
        seconds = _date_seconds(value)
    except Exception:  # ValueError mostly; anything it raises on hostile text means the same
        return [
            _finding(
                "invalid_date",
                f"Date {_shown(value)} does not parse as an RFC 5322 date (3.3), such as "
                "'Fri, 27 Nov 2026 23:10:00 +0000'",
            )
        ]
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


def _date_seconds(value: str) -> float:
    """The time Date names, in seconds since the epoch ("-0000", zone unknown, as UTC); raises
    where parsedate_to_datetime does. The form nearly every client writes (formatdate's) is
    read here in a third of the time, to the same result."""
    match = _USUAL_DATE.fullmatch(value)
    month = _month(match.group(3), match.group(2)) if match else None
    if match is None or month is None:
        moment = parsedate_to_datetime(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    first_day, length = month
    day, hour, minute, second = int(match[1]), int(match[4]), int(match[5]), int(match[6])
    offset = int(match[8]) * 3600 + int(match[9]) * 60
    if not (1 <= day <= length and hour < 24 and minute < 60 and second < 60 and offset < 86400):
        raise ValueError(f"no such time: {value}")  # as datetime() and timezone() would
    seconds = (first_day + day - 1) * 86400 + hour * 3600 + minute * 60 + second
    return seconds - (offset if match[7] == "+" else -offset)


def _month(year: str, name: str) -> tuple[int, int] | None:
    """(days from the epoch to the month's first day, its number of days), None for no month."""
    key = (year, name)
    known = _MONTH_CACHE.get(key)
    if known is None and name in _MONTHS:
        number = _MONTHS[name]
        first = date(int(year), number, 1)
        known = ((first - _EPOCH_DAY).days, calendar.monthrange(int(year), number)[1])
        if len(_MONTH_CACHE) > 1000:
            _MONTH_CACHE.clear()
        _MONTH_CACHE[key] = known
    return known


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
    declared = message.size
    if declared is None or not _size_differs(declared, len(message.raw)):
        return []
    # SIZE counts the message as sent, every line ending in CRLF (RFC 1870): a stored bare LF
    # stands for two octets. Either count may be the client's.
    canonical = len(message.raw) + message.bare_lf
    if not _size_differs(declared, canonical):
        return []
    off = abs(declared - canonical) / max(canonical, 1) * 100
    return [
        _finding(
            "size_mismatch",
            f"MAIL FROM declared SIZE={declared} but the message is {canonical} octets "
            f"({off:.0f} % off; RFC 1870 counts it as sent, CRLFs included, dot-stuffing not): "
            "a server that sizes its limit on SIZE= accepts what it cannot take, or refuses "
            "what it could",
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
    enclosed: bool  # inside a message/rfc822 part: another message's body, not this one's
    content_type: str = "text/plain"
    encoding: str = ""
    attachment: bool = False
    boundary: bytes | None = None


def _field_end(lowered: bytes, start: int) -> int:
    """Where the field whose value begins at `start` ends: the LF of its last line."""
    end = lowered.find(b"\n", start)
    while end >= 0 and lowered[end + 1 : end + 2] in (b" ", b"\t"):
        end = lowered.find(b"\n", end + 1)
    return end if end >= 0 else len(lowered)


def _read_headers(raw: bytes, part: _Part, default_type: str) -> None:
    """Content-Type (its type, a multipart's boundary), Content-Transfer-Encoding and
    Content-Disposition of the part, the first of each; a missing or malformed type is the
    default, as the stdlib has it."""
    lowered = b"\n" + raw[part.start : part.header_end].lower()
    part.content_type = default_type
    at = lowered.find(b"\ncontent-type:")
    if at >= 0:
        start = at + 14
        end = _field_end(lowered, start)
        given = lowered[start:end].split(b";", 1)[0].strip()
        if _MEDIA_TYPE.fullmatch(given):
            part.content_type = given.decode("ascii")
        if part.content_type.startswith("multipart/"):
            # the boundary as written, from raw: `lowered` is one byte ahead of raw[part.start:]
            written = raw[part.start + start - 1 : part.start + end - 1]
            boundary = _BOUNDARY.search(b";" + written)
            if boundary:
                part.boundary = boundary.group(1) or boundary.group(2)
    at = lowered.find(b"\ncontent-transfer-encoding:")
    if at >= 0:
        value = lowered[at + 27 : _field_end(lowered, at + 27)]
        part.encoding = value.split(b"(", 1)[0].strip().decode("ascii", "replace")
    at = lowered.find(b"\ncontent-disposition:")
    if at >= 0:
        value = lowered[at + 21 : _field_end(lowered, at + 21)]
        part.attachment = value.split(b";", 1)[0].strip() == b"attachment"


@dataclass(slots=True)
class _Budget:
    """What the boundary searches of one message may still take, all multiparts together."""

    octets: int  # searched for delimiters (nested multiparts search the same bytes again)
    lines: int  # that begin like a delimiter (most are one; the others cost a step each)


def _body_parts(
    raw: bytes, start: int, end: int, boundary: bytes, budget: _Budget
) -> list[tuple[int, int]]:
    """(start, end) of each body part of the multipart whose body is raw[start:end] (RFC 2046
    5.1.1), as far as the budget goes."""
    dash = b"--" + boundary
    delimiter = b"\n" + dash
    spans: list[tuple[int, int]] = []
    part_start = -1
    if raw.startswith(dash, start):
        line = start
    else:
        found = raw.find(delimiter, start, end)
        line = found + 1 if found >= 0 else -1
    while line >= 0 and budget.lines > 0:
        budget.lines -= 1
        after = line + len(dash)
        closing = raw.startswith(b"--", after)
        rest = after + 2 if closing else after
        line_end = raw.find(b"\n", rest, min(end, rest + _MAX_PADDING))
        if line_end < 0 and rest + _MAX_PADDING >= end:
            line_end = end
        # only transport padding may follow a boundary on its line
        if line_end >= 0 and not raw[rest:line_end].strip(b" \t\r"):
            if part_start >= 0:
                part_end = line - 1  # the CRLF before a delimiter belongs to it
                if part_end > part_start and raw[part_end - 1] == 0x0D:
                    part_end -= 1
                spans.append((part_start, max(part_start, part_end)))
            if closing or len(spans) >= MAX_PARTS:
                budget.octets -= line - start
                return spans
            part_start = min(end, line_end + 1)
        found = raw.find(delimiter, after, end)
        line = found + 1 if found >= 0 else -1
    budget.octets -= end - start
    if part_start >= 0:
        spans.append((part_start, end))  # no closing delimiter: the last part runs to the end
    return spans


def _walk(message: _Message) -> list[_Part]:
    """The message's entities, each container before its parts (the stdlib's walk order)."""
    raw = message.raw
    parts: list[_Part] = []
    root = _Part(0, message.header_end, message.body_start, len(raw), 0, -1, False)
    pending: list[tuple[_Part, str]] = [(root, "text/plain")]
    budget: _Budget | None = None  # made for the first multipart
    while pending and len(parts) < MAX_PARTS:
        part, default_type = pending.pop()
        _read_headers(raw, part, default_type)
        index = len(parts)
        parts.append(part)
        kind = part.content_type
        if part.depth >= MAX_DEPTH or not (kind.startswith("multipart/") or kind in _MESSAGES):
            continue
        child_type = "text/plain"
        if kind in _MESSAGES:
            # message/global may come encoded (RFC 6532 3.5): then there is no message to read
            readable = part.body_start < part.end and part.encoding in _CONTAINER_ENCODINGS
            spans = [(part.body_start, part.end)] if readable else []
        elif part.boundary:
            if budget is None:
                budget = _Budget(SEARCH_BUDGET * len(raw) + MAX_HEADER_BLOCK, 4 * MAX_PARTS)
            if budget.octets <= 0:
                continue
            spans = _body_parts(raw, part.body_start, part.end, part.boundary, budget)
            if kind == "multipart/digest":
                child_type = "message/rfc822"  # RFC 2046 5.1.5
        else:
            continue
        enclosed = part.enclosed or kind in _MESSAGES
        for start, end in reversed(spans[: MAX_PARTS - len(parts) - len(pending)]):
            header_end, body_start = _header_block(raw, start, end)
            child = _Part(start, header_end, body_start, end, part.depth + 1, index, enclosed)
            pending.append((child, child_type))
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
    if encoding in ("7bit", "8bit") and message.ascii:
        return None  # the usual single part, at once
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
    names, first = _bad_header_names(message, part.start, part.header_end)
    if not names:
        return None
    return _finding(
        "non_ascii_header", _header_detail(message, names, first, _where(message, part))
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
