"""Address syntax checks with email-validator (syntax only: no DNS, ever)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# email-validator refuses special-use domains; developers point apps at exactly these.
_LOCAL_DOMAINS = ("localhost", "local", "localdomain", "internal", "lan", "home.arpa")
_STAND_IN_DOMAIN = "example.test"
# C0 controls (tab included), DEL and C1 controls: no address, HELO name or parameter has them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control_character(text: str) -> bool:
    """True when `text` holds a C0 control (tab included), DEL or a C1 control."""
    return _CONTROL.search(text) is not None


def normalize(address: str) -> str:
    """Comparison key: addresses compare case-insensitively, display names ignored."""
    return address.strip().strip("<>").lower()


def domain_of(address: str) -> str:
    return normalize(address).rpartition("@")[2]


@lru_cache(maxsize=4096)
def syntax_error(address: str) -> str | None:
    """Why `address` is not a valid address, or None when it is."""
    if not address:
        return "the address is empty"
    local, at, domain = address.rpartition("@")
    candidate = address
    if at and domain.lower().rstrip(".").endswith(_LOCAL_DOMAINS):
        # Check the local part against a stand-in domain; the local name itself is fine.
        candidate = f"{local}@{_STAND_IN_DOMAIN}"
    from email_validator import EmailNotValidError

    try:
        _validated(candidate)
    except EmailNotValidError as error:
        return str(error)
    return None


def _validated(address: str) -> Any:
    """email-validator's answer for `address`, syntax only (no DNS), everything SMTP allows."""
    # Deferred: email-validator takes a noticeable share of a CLI command's start-up.
    from email_validator import validate_email

    return validate_email(
        address,
        check_deliverability=False,
        globally_deliverable=False,
        test_environment=True,
        allow_smtputf8=True,
        allow_quoted_local=True,
        allow_domain_literal=True,
    )


@lru_cache(maxsize=4096)
def comparable(address: str) -> str:
    """`address` in the form two spellings of one address share: email-validator's normal form
    (needless quotes of the local part dropped, the domain IDNA-encoded), case-folded; an
    address it refuses (`ann@localhost`), case-folded as given."""
    if "@" not in address:
        return address.casefold()
    from email_validator import EmailNotValidError

    try:
        valid = _validated(address)
    except (EmailNotValidError, ValueError, UnicodeError):
        return address.casefold()
    return f"{valid.local_part}@{valid.ascii_domain}".casefold()


def aligned(domain_a: str, domain_b: str) -> bool:
    """Relaxed alignment: one domain equals the other or is a subdomain of it."""
    a, b = domain_a.lower().rstrip("."), domain_b.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)
