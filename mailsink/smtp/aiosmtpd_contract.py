"""Every place mailsink leans on aiosmtpd's insides, in one list; tests/test_aiosmtpd_contract.py
checks each entry against the installed aiosmtpd and scans mailsink/smtp/ so the list stays whole.

mailsink/smtp/protocol.py subclasses aiosmtpd's SMTP and, beyond its public API, overrides, reads
and calls about twenty private names, turns five assigned attributes into live settings, and
replaces whole methods with its own copies. aiosmtpd is therefore pinned exactly (pyproject.toml).
To upgrade: install the new version in a scratch venv and run the contract test. Each failure
names what moved (a renamed attribute, a changed signature, an upstream method that changed under
a copy of it); re-port, update the entries here, then move the pin.

Upstream after 1.4.6, reviewed against the methods mailsink replaces (see PINNED_METHODS):
- PyPI has no 1.4.7 (1.4.6, 2024-05-18, is the newest release). Upstream master (aio-libs/aiosmtpd
  44c0159, __version__ still "1.4.6", NEWS "1.4.7 (aiosmtpd-next)") changes aiosmtpd/smtp.py in
  two places since v1.4.6:
  - smtp_DATA (PR #567): `asyncio.iscoroutinefunction` -> `inspect.iscoroutinefunction` in the
    fallback to the deprecated `handler.process_message`. Does not apply: mailsink's smtp_DATA
    calls handle_DATA only (SmtpHandler has no process_message), and asyncio's function is only
    deprecated from Python 3.14.
  - Session.peer's annotation (PR #522, a type only): mailsink's format_peer already takes the
    2- and 4-tuples and strings it describes.
- Fixes in released versions that mailsink carries:
  - 1.4.5 (SMTP smuggling): DATA ends only at CRLF.CRLF. mailsink's smtp_DATA reads a CRLF
    client's message up to `_END_OF_DATA = b"\\r\\n.\\r\\n"` and never splits it at a bare
    LF or CR. Only a client whose DATA line itself ended in a bare LF gets its message ended by
    a "." line ending in LF (README, "What the server speaks": a sink relays nothing, so no
    second message can be smuggled on).
  - 1.4.6 (PR #380, STARTTLS command injection): plaintext pipelined behind STARTTLS is discarded
    in connection_made, which mailsink extends (it calls aiosmtpd's first), so the fix is
    inherited rather than ported.
  Both are checked on the wire by the contract test.
- Left out of aiosmtpd's _handle_client on purpose: the PROXY protocol and command_call_limit
  (mailsink passes neither), command_size_limits (mailsink has its own per verb), strict-ASCII
  arguments (SMTPUTF8 is always on).
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosmtpd

PINNED = "1.4.6"

# How mailsink uses a name of aiosmtpd's SMTP.
REPLACE = "replace"  # mailsink's method stands in for aiosmtpd's whole (no super() call)
EXTEND = "extend"  # mailsink's override calls aiosmtpd's
READ = "read"
CALL = "call"
# aiosmtpd's __init__ assigns it; mailsink's live_setting property answers every read from the
# server's current settings, so a config reload applies to open connections too.
LIVE = "live"


@dataclass(frozen=True)
class Use:
    name: str
    how: str
    why: str
    # Methods: aiosmtpd's signature (annotations left out) that mailsink's calls and overrides fit.
    signature: str | None = None
    # Attributes: the SMTP methods that assign it (checked in aiosmtpd's source).
    assigned_in: tuple[str, ...] = ()
    # The SMTP methods whose use of the name makes mailsink's override, or its live value, matter.
    used_by: tuple[str, ...] = ()


PRIVATE: tuple[Use, ...] = (
    Use(
        "_handle_client",
        REPLACE,
        "the command loop: every line into the transcript, mailsink's line limits and refusals, "
        "faults at connect, replies to commands pipelined before the client's EOF, shutdown",
        "(self)",
        used_by=("connection_made",),
    ),
    Use(
        "_create_envelope",
        REPLACE,
        "SinkEnvelope: a null sender and per-recipient parameters",
        "(self)",
        used_by=("_set_post_data_state",),
    ),
    Use(
        "_call_handler_hook",
        CALL,
        "mailsink's MAIL, RCPT and DATA call the handler's hooks as aiosmtpd's do",
        "(self, command, *args)",
    ),
    Use(
        "_set_post_data_state",
        CALL,
        "a new envelope after DATA, also when the handler raised",
        "(self)",
    ),
    Use(
        "_authenticate",
        CALL,
        "CRAM-MD5 (auth_CRAM__MD5, mailsink's) hands the client's answer to the authenticator as "
        "aiosmtpd's PLAIN and LOGIN do",
        "(self, mechanism, auth_data)",
    ),
    Use(
        "_strip_command_keyword",
        CALL,
        "FROM: and TO: taken off MAIL and RCPT",
        "(self, keyword, arg)",
    ),
    Use(
        "_getaddr",
        EXTEND,
        "plain <local@domain> by a regular expression, the rest by aiosmtpd's parser (ten "
        "times slower); aiosmtpd's VRFY uses it too",
        "(self, arg)",
        used_by=("smtp_VRFY",),
    ),
    Use(
        "_reset_timeout",
        CALL,
        "the idle timeout restarted after each command and a fault's delay, and with the time "
        "left while DATA keeps arriving",
        "(self, duration=None)",
    ),
    Use(
        "_timeout_cb",
        EXTEND,
        "421 before the close; in DATA the timeout runs from the last bytes received",
        "(self)",
        used_by=("_reset_timeout",),
    ),
    Use(
        "_timeout_handle",
        READ,
        "cancelled to pause the idle timeout while mailsink waits (a fault's delay, a commit)",
        assigned_in=("__init__", "_reset_timeout"),
    ),
    Use(
        "_timeout_duration",
        LIVE,
        "[smtp] timeout",
        assigned_in=("__init__",),
        used_by=("_reset_timeout",),
    ),
    Use(
        "_auth_require_tls",
        LIVE,
        "[auth] allow_insecure; TLS from STARTTLS or the implicit-TLS listener",
        assigned_in=("__init__",),
        used_by=("smtp_EHLO", "smtp_AUTH"),
    ),
    Use(
        "_reader",
        READ,
        "command lines, AUTH responses and DATA blocks are read from it; feed_eof at EOF",
        assigned_in=("_cb_client_connected",),
    ),
    Use(
        "_writer",
        CALL,
        "write (replies sent from callbacks) and close",
        assigned_in=("_cb_client_connected",),
    ),
    Use(
        "_smtp_methods",
        READ,
        "verb -> bound smtp_ method, built in __init__ from dir(self)",
        assigned_in=("__init__",),
    ),
    Use(
        "_tls_protocol",
        READ,
        "whether STARTTLS is done, for [tls] require",
        assigned_in=("__init__", "smtp_STARTTLS"),
    ),
    Use(
        "_tls_handshake_okay",
        READ,
        "a handle_STARTTLS hook's verdict, honoured as aiosmtpd does",
        assigned_in=("__init__", "connection_made"),
    ),
    Use(
        "_original_transport",
        READ,
        "tells the TLS re-entry into connection_made after STARTTLS from a new connection; "
        "closed when the handshake fails",
        assigned_in=("__init__", "smtp_STARTTLS"),
        used_by=("connection_made",),
    ),
)

# Public names aiosmtpd assigns in __init__ that mailsink turns into live settings.
LIVE_PUBLIC: tuple[Use, ...] = (
    Use(
        "hostname",
        LIVE,
        "[smtp] hostname",
        assigned_in=("__init__",),
        used_by=("smtp_HELO", "smtp_EHLO"),
    ),
    Use(
        "data_size_limit",
        LIVE,
        "[smtp] max_message_size: EHLO's SIZE, MAIL's SIZE=, DATA",
        assigned_in=("__init__",),
        used_by=("smtp_EHLO",),
    ),
    Use(
        "require_starttls",
        LIVE,
        "[tls] require, when STARTTLS is offered",
        assigned_in=("__init__",),
        used_by=("_handle_client",),
    ),
)

# Public methods aiosmtpd calls on itself, so that mailsink's override is what runs, or that
# mailsink calls: their signatures are part of the contract.
HOOKS: tuple[Use, ...] = (
    Use(
        "push",
        EXTEND,
        "enhanced status codes, one write per multi-line reply, the transcript, fault replies "
        "sent exactly as configured",
        "(self, status)",
        used_by=("smtp_EHLO", "smtp_AUTH", "smtp_HELP", "smtp_QUIT", "smtp_STARTTLS"),
    ),
    Use(
        "handle_exception",
        REPLACE,
        "451 and a transcript note, not aiosmtpd's 500 quoting the exception",
        "(self, error)",
        used_by=("_handle_client",),
    ),
    Use(
        "challenge_auth",
        REPLACE,
        "an AUTH response over the buffer is thrown away to its end, not read on as a command; "
        "mailsink's CRAM-MD5 sends its challenge with it too",
        "(self, challenge, encode_to_b64=True, log_client_response=False)",
        used_by=("auth_PLAIN", "auth_LOGIN"),
    ),
    Use(
        "check_auth_needed",
        REPLACE,
        "[auth] mode = required, read live",
        "(self, caller_method)",
        used_by=("smtp_HELP", "smtp_VRFY"),
    ),
    Use(
        "check_helo_needed",
        CALL,
        "MAIL, RCPT or DATA before HELO, with [smtp] helo_required only (mailsink's smtp_MAIL, "
        "smtp_RCPT and smtp_DATA ask it; aiosmtpd's smtp_AUTH still needs EHLO first)",
        "(self, helo='HELO')",
    ),
    Use(
        "eof_received",
        REPLACE,
        "answer what came before the client's EOF; aiosmtpd cancels the session there",
        "(self)",
    ),
    Use("connection_made", EXTEND, "session id and start; TLS noted", "(self, transport)"),
    Use("connection_lost", EXTEND, "end reason, the session's last write", "(self, error)"),
    Use("smtp_HELO", EXTEND, "control characters refused", "(self, hostname)"),
    Use("smtp_EHLO", EXTEND, "control characters refused", "(self, hostname)"),
    Use("smtp_STARTTLS", EXTEND, "refused inside TLS (asyncio cannot nest it)", "(self, arg)"),
    Use("smtp_AUTH", EXTEND, "[auth] mode = off; faults at auth", "(self, arg)"),
    Use("smtp_MAIL", REPLACE, "the null sender, ESMTP parameters checked", "(self, arg)"),
    Use("smtp_RCPT", REPLACE, "DSN parameters kept per recipient", "(self, arg)"),
    Use(
        "smtp_DATA",
        REPLACE,
        "read in blocks up to CRLF.CRLF; 552 5.3.4; the envelope reset even when the handler fails",
        "(self, arg)",
    ),
)

# SMTP.__init__'s keyword parameters mailsink passes (mailsink/smtp/server.py).
INIT_KEYWORDS = (
    "hostname",
    "enable_SMTPUTF8",
    "decode_data",
    "ident",
    "tls_context",
    "authenticator",
    "loop",
)

# Class attributes mailsink sets that aiosmtpd reads in the named method.
CLASS_ATTRIBUTES: tuple[Use, ...] = (
    Use(
        "line_length_limit",
        EXTEND,
        "64 KiB: the StreamReader's buffer, so DATA arrives in big blocks",
        used_by=("__init__",),
    ),
    Use(
        "AuthLoginUsernameChallenge",
        EXTEND,
        'AUTH LOGIN\'s prompt "Username:" (base64 "VXNlcm5hbWU6"), not "User Name\\0"',
        used_by=("auth_LOGIN",),
    ),
    Use(
        "AuthLoginPasswordChallenge",
        EXTEND,
        'AUTH LOGIN\'s prompt "Password:" (base64 "UGFzc3dvcmQ6"), not "Password\\0"',
        used_by=("auth_LOGIN",),
    ),
)

# Private names of asyncio's StreamReader (self._reader) that mailsink reads and writes, as
# aiosmtpd's own connection_made does.
ASYNCIO_PRIVATE: tuple[Use, ...] = (
    Use(
        "_buffer",
        READ,
        "bytes received: a CRLF put in front before DATA, what came behind the DATA line "
        "counted, an unfinished DATA's line ends inspected",
    ),
)

# What an upgrade could change without renaming anything, each checked by the contract test.
SILENT: tuple[str, ...] = (
    "SMTP.__init__ finds smtp_ and auth_ methods with dir(self) / inspect.getmembers(self), and "
    "handle_ and auth_ hooks with dir(handler); SmtpConnection.__dir__ and SmtpHandler.__dir__ "
    "answer just those prefixes from a cache (a third of the loop's time otherwise). A new "
    "prefix looked up that way would be hidden.",
    "SMTP.__init__ calls inspect.signature(handler.handle_EHLO): five parameters are the "
    "current form (SmtpHandler.handle_EHLO carries a precomputed __signature__).",
    "Hooks are called as hook(server, session, envelope, *args), with the arguments per verb "
    "that aiosmtpd's and mailsink's callers pass.",
    "The authenticator is called as (server, session, envelope, mechanism, auth_data) and "
    "returns AuthResult(success, handled, auth_data); auth_data is a LoginPassword(login, "
    "password) for PLAIN and LOGIN (mailsink's CRAM-MD5 gives a CramMd5Response).",
    "SMTP.__init__ names an auth_ method's mechanism after it, '__' read as '-' "
    "(auth_CRAM__MD5 is CRAM-MD5), and EHLO announces them all, sorted, on its AUTH line; an "
    "auth_ method returning AuthResult(handled=True) has sent its own reply.",
    "@syntax(text, extended=None, when=None) feeds HELP; when='tls_context' hides STARTTLS.",
    "_call_handler_hook returns the MISSING sentinel when the handler has no such hook.",
    "smtp_QUIT cancels the session task; mailsink's loop closes the writer on CancelledError.",
    "aiosmtpd logs to the 'mail.log' logger, which mailsink silences below ERROR.",
    "local_part_limit is 0 (unlimited): mailsink's fast address path does not check it.",
    "SMTP.__init__ looks up the machine's name (socket.getfqdn, a blocking DNS query) only "
    "when no hostname= is given; mailsink always gives one.",
    "connection_made, after STARTTLS, drops plaintext pipelined behind the STARTTLS line "
    "(1.4.6); mailsink extends connection_made and relies on it.",
    "Envelope and Session attribute names mailsink reads: mail_from, mail_options, smtp_utf8, "
    "content, original_content, rcpt_tos; peer, host_name, extended_smtp, authenticated, "
    "auth_data.",
)


@dataclass(frozen=True)
class Pinned:
    """An aiosmtpd method mailsink replaces or extends, and each upstream version of it reviewed:
    {source_digest: what was done about it}. A version not listed fails the contract test."""

    how: str
    reviewed: dict[str, str]


_PORTED = "1.4.6: mailsink's copy follows it"
_EXTENDED = "1.4.6: mailsink's override fits it"

PINNED_METHODS: dict[str, Pinned] = {
    "_handle_client": Pinned(REPLACE, {"63a64d8348244bd3": _PORTED}),
    "smtp_MAIL": Pinned(REPLACE, {"2e80d8c9e8bf5552": _PORTED}),
    "smtp_RCPT": Pinned(REPLACE, {"2bfa30c43f6c2e40": _PORTED}),
    "smtp_DATA": Pinned(
        REPLACE,
        {
            "0e713d68566021f4": _PORTED + " (with 1.4.5's CRLF.CRLF fix)",
            "ae5e1168353b6bb8": "master 44c0159 (1.4.7.dev): inspect.iscoroutinefunction in the "
            "process_message fallback; does not apply, see the module docstring",
        },
    ),
    "challenge_auth": Pinned(REPLACE, {"d73f70c0ab7bd794": _PORTED}),
    "eof_received": Pinned(REPLACE, {"631941e89494a4ae": _PORTED}),
    "check_auth_needed": Pinned(REPLACE, {"19520de7a661554c": _PORTED}),
    "handle_exception": Pinned(REPLACE, {"496bfc372b9f7b16": _PORTED}),
    "_create_envelope": Pinned(REPLACE, {"27a0d7abf6886e17": _PORTED}),
    "__init__": Pinned(EXTEND, {"b552594b4473629f": _EXTENDED}),
    "connection_made": Pinned(
        EXTEND, {"6f660663b41c0951": _EXTENDED + " (its STARTTLS buffer clear included)"}
    ),
    "connection_lost": Pinned(EXTEND, {"e08ca93cff12f993": _EXTENDED}),
    "_timeout_cb": Pinned(EXTEND, {"6896e6253077a019": _EXTENDED}),
    "_getaddr": Pinned(EXTEND, {"019cfeec3edfda62": _EXTENDED}),
    "push": Pinned(EXTEND, {"f46d15450f63804c": _EXTENDED}),
    "smtp_HELO": Pinned(EXTEND, {"dfe712a26fe89bdf": _EXTENDED}),
    "smtp_EHLO": Pinned(EXTEND, {"e0ed0e9dd025590b": _EXTENDED}),
    "smtp_STARTTLS": Pinned(EXTEND, {"befbe67c0318a17b": _EXTENDED}),
    "smtp_AUTH": Pinned(EXTEND, {"0a4741bd86fcffd1": _EXTENDED}),
}


def source_digest(source: str) -> str:
    """What PINNED_METHODS holds of a method: a hash of its source (decorators included) without
    indentation, blank lines or comment-only lines."""
    lines = textwrap.dedent(source).splitlines()
    kept = [line.rstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


# ---- live settings: loud if aiosmtpd stops assigning them

# Classes whose first connection showed aiosmtpd's __init__ assigning every live setting.
_CONFIRMED: set[type] = set()


def live_setting(read: Callable[[Any], Any]) -> property:
    """A setting read from the server's current config at each use, so a reload applies to the
    next command of open connections too. aiosmtpd's __init__ assigns it and the value is not
    kept; on a class's first connection the assignment is recorded (confirm_live_settings)."""

    def assigned(connection: Any, value: Any) -> None:
        seen = connection.__dict__.get("_live_seen")  # only during a first connection
        if seen is not None:
            seen.add(setting)

    assigned.live_setting = True  # type: ignore[attr-defined]
    setting = property(read, assigned)
    return setting


def live_settings(cls: type) -> dict[str, property]:
    """The live settings of a connection class, by attribute name."""
    found = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, property) and getattr(value.fset, "live_setting", False):
                found[name] = value
            else:
                found.pop(name, None)  # shadowed
    return found


def watch_live_settings(connection: Any) -> bool:
    """Call before aiosmtpd's __init__; True on the first connection of its class, whose live
    setting assignments are then recorded for confirm_live_settings (once per class: a set
    lookup per connection after that)."""
    if type(connection) in _CONFIRMED:
        return False
    connection._live_seen = set()
    return True


def confirm_live_settings(connection: Any) -> None:
    """After aiosmtpd's __init__ on a class's first connection: raise RuntimeError naming each
    live setting it did not assign. aiosmtpd has then renamed or dropped the attribute, and its
    own code would no longer see mailsink's live value."""
    cls = type(connection)
    seen = connection.__dict__.pop("_live_seen", set())
    missing = [name for name, setting in live_settings(cls).items() if setting not in seen]
    if missing:
        names = ", ".join(f"{cls.__name__}.{name}" for name in missing)
        raise RuntimeError(
            f"aiosmtpd {aiosmtpd.__version__} no longer assigns {names} in SMTP.__init__: "
            f"mailsink reads these live from its settings, and aiosmtpd's own code would not "
            f"see them. mailsink is tested with aiosmtpd {PINNED}; see "
            f"mailsink/smtp/aiosmtpd_contract.py"
        )
    _CONFIRMED.add(cls)
