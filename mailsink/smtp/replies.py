"""Reply texts, and enhanced status codes (RFC 3463) for the replies aiosmtpd phrases itself."""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:[ -]|$)")

# The most fitting enhanced code for each basic code aiosmtpd answers with.
_ENHANCED_FOR = {
    "211": "2.0.0",
    "214": "2.0.0",
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}

MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
STORE_FAILED = "451 4.3.0 Error: the message could not be stored; try again later"
INTERNAL_ERROR = "451 4.3.0 Error: internal server error; try again later"
TIMEOUT = "421 4.4.2 {hostname} Error: timeout exceeded"
SHUTTING_DOWN = "421 4.3.2 {hostname} Service shutting down, try again later"
LINE_TOO_LONG = "500 5.5.2 Error: command line too long"
BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
NOT_RECOGNIZED = '500 5.5.2 Error: command "{command}" not recognized'
NOT_RECOGNIZED_WITHHELD = "500 5.5.2 Error: command not recognized"  # see SmtpConnection._withheld
NOT_UTF8 = "501 5.5.2 Error: the command is not valid UTF-8"
TLS_ACTIVE = "503 5.5.1 Error: TLS already active"
HELO_CONTROL = "501 5.5.4 Syntax: {command} hostname, without control characters"
TOO_MANY_BAD = "421 4.7.0 Too many unrecognized commands, closing connection"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
# Postfix's reply with smtpd_forbid_bare_newline = reject (its code 550 is the default of
# smtpd_forbid_bare_newline_reject_code), hostname included as Postfix words it.
BARE_LF = "550 5.5.2 {hostname} Error: bare <LF> received"


class Decided(str):
    """A reply the handler decided, and who decided it: `reason` is one of
    mailsink.mail.envelope.REFUSAL_REASONS, `rule` the name of the fault rule that answered.
    The connection sends it like any reply and records who refused what it refuses."""

    reason: str
    rule: str | None

    def __new__(cls, text: str, reason: str, rule: str | None = None) -> Decided:
        reply = super().__new__(cls, text)
        reply.reason = reason
        reply.rule = rule
        return reply


def queued(message_id: int) -> str:
    return f"250 2.0.0 Ok: queued as {message_id}"


def printable(text: str) -> str:
    """A reply line as printable text. What a reply echoes of the client's line may hold NUL,
    CR, ESC, C1, bidi or line-separator characters: each is shown as its Python escape (`\\x00`,
    `\\r`, `\\u2028`), so no reply carries a bare CR or drives the client's terminal."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def with_enhanced_code(reply: str) -> str:
    """Give a reply line an enhanced status code if it has none."""
    if len(reply) < 4 or _HAS_ENHANCED.match(reply) or not reply[:3].isdigit():
        return reply
    code, separator, text = reply[:3], reply[3], reply[4:]
    enhanced = _ENHANCED_FOR.get(code, f"{code[0]}.0.0")
    return f"{code}{separator}{enhanced} {text}" if text else f"{code}{separator}{enhanced}"
