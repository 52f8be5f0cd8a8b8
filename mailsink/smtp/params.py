"""ESMTP parameters of MAIL FROM and RCPT TO.

Checked and normalised: keyword upper-case, value as sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailsink.mail.addresses import has_control_character
from mailsink.smtp.replies import TOO_BIG

_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_SEPARATOR = re.compile(r"[ \t]+")
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}


@dataclass
class Parsed:
    options: list[str] = field(default_factory=list)
    smtputf8: bool = False
    error: str | None = None  # the reply to send instead of accepting


def _split(text: str) -> list[tuple[str, str | None]] | None:
    pairs = []
    # Spaces and tabs separate parameters (str.split() would take \x1c-\x1f too); any other
    # control character inside one (ESC, NUL: stored, shown) makes it malformed.
    text = text.strip(" \t")
    for item in _SEPARATOR.split(text) if text else []:
        keyword, equals, value = item.partition("=")
        if not _KEYWORD.match(keyword) or (equals and not value) or has_control_character(value):
            return None
        pairs.append((keyword.upper(), value if equals else None))
    return pairs


def mail_params(text: str, *, max_size: int | None) -> Parsed:
    """SIZE, BODY, SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461), AUTH (RFC 4954)."""
    pairs = _split(text)
    if pairs is None:
        return Parsed(error="501 5.5.4 Syntax error in MAIL FROM parameters")
    result = Parsed()
    for keyword, value in pairs:
        if keyword == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()):
                return Parsed(error="501 5.5.4 SIZE takes a number of bytes")
            if max_size and int(value) > max_size:
                return Parsed(error=TOO_BIG)
        elif keyword == "BODY":
            if (value or "").upper() not in ("7BIT", "8BITMIME"):
                return Parsed(error="501 5.5.4 BODY must be 7BIT or 8BITMIME")
            value = value.upper() if value else value
        elif keyword == "SMTPUTF8":
            if value is not None:
                return Parsed(error="501 5.5.4 SMTPUTF8 takes no value")
            result.smtputf8 = True
        elif keyword == "RET":
            if (value or "").upper() not in ("FULL", "HDRS"):
                return Parsed(error="501 5.5.4 RET must be FULL or HDRS")
            value = value.upper() if value else value
        elif keyword in ("ENVID", "AUTH"):
            if value is None:
                return Parsed(error=f"501 5.5.4 {keyword} needs a value")
        else:
            return Parsed(error=f"555 5.5.4 MAIL FROM parameter {keyword} not recognized")
        result.options.append(keyword if value is None else f"{keyword}={value}")
    return result


def rcpt_params(text: str) -> Parsed:
    """NOTIFY and ORCPT (RFC 3461)."""
    pairs = _split(text)
    if pairs is None:
        return Parsed(error="501 5.5.4 Syntax error in RCPT TO parameters")
    result = Parsed()
    for keyword, value in pairs:
        if keyword == "NOTIFY":
            values = set((value or "").upper().split(","))
            if values != {"NEVER"} and not (values and values <= _NOTIFY):
                return Parsed(error="501 5.5.4 NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY")
            value = (value or "").upper()
        elif keyword == "ORCPT":
            if value is None or ";" not in value:
                return Parsed(error="501 5.5.4 ORCPT must be addr-type;address")
        else:
            return Parsed(error=f"555 5.5.4 RCPT TO parameter {keyword} not recognized")
        result.options.append(keyword if value is None else f"{keyword}={value}")
    return result
