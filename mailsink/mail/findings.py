"""Findings: what the SMTP envelope says against what the headers say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailsink.mail.addresses import aligned, domain_of, normalize, syntax_error
from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import HeaderSummary

# Every kind of finding, with its severity and what it means: README's findings table (a test
# keeps the two the same), the CLI's `--findings KIND` and the TUI's help read it. A finding of a
# kind not listed here is a bug.
KINDS: dict[str, tuple[str, str]] = {
    # envelope against headers
    "hidden_recipient": ("warning", "in RCPT TO, not in To or Cc (a Bcc recipient)"),
    "undelivered_header_recipient": ("warning", "in To or Cc, never given in RCPT TO"),
    "refused_recipient": (
        "warning",
        "given in RCPT TO and refused (a fault rule, address validation, bad syntax); "
        "the reply is quoted",
    ),
    "bcc_header_present": (
        "error",
        "the message carries a Bcc header that every recipient can read",
    ),
    "sender_mismatch": ("info", "MAIL FROM is neither the From nor the Sender address"),
    "domain_misaligned": (
        "warning",
        "MAIL FROM's domain is neither From's domain nor a parent or subdomain of it "
        "(relaxed DMARC alignment)",
    ),
    "null_sender": ("info", "MAIL FROM:<>"),
    "missing_header": ("warning", "no From or Date (warning), no Message-ID (info)"),
    "invalid_address": (
        "error",
        "an envelope, From, To or Cc address fails email-validator's syntax check "
        "(no DNS; localhost and .local style domains are fine)",
    ),
    "parse_defect": (
        "warning",
        "what Python's email parser reported as broken, or a check that could not finish "
        "(the message is stored and shown all the same)",
    ),
    # hygiene: what a production server would do with this mail
    "bare_lf": (
        "warning",
        "lines end in a bare LF, not CRLF (RFC 5322 2.3): Postfix 3.9+ normalises or refuses "
        "them, Gmail and Exchange refuse them",
    ),
    "bare_cr": ("warning", "a CR not followed by LF (RFC 5322 2.3)"),
    "long_line": ("warning", "a line over 998 octets (RFC 5322 2.1.1): servers fold or refuse it"),
    "eight_bit_without_8bitmime": (
        "warning",
        "8-bit bytes in the body without BODY=8BITMIME (RFC 6152)",
    ),
    "non_ascii_header": (
        "warning",
        "non-ASCII bytes in a header without SMTPUTF8 (RFC 6532; else RFC 2047 encoded words), "
        "or not UTF-8 with it",
    ),
    "non_ascii_address": (
        "warning",
        "a non-ASCII MAIL FROM or RCPT TO address without SMTPUTF8 (RFC 6531)",
    ),
    "invalid_message_id": (
        "warning",
        "a Message-ID that is not <id-left@id-right> (RFC 5322 3.6.4)",
    ),
    "invalid_date": (
        "warning",
        "a Date that is not an RFC 5322 date-time (3.3): no zone, no such day or time, the "
        "wrong day of the week",
    ),
    "future_date": ("warning", "a Date more than 24 hours after the message arrived"),
    "multiple_from_without_sender": (
        "warning",
        "several From addresses and no Sender (RFC 5322 3.6.2)",
    ),
    "size_mismatch": (
        "warning",
        "MAIL FROM's SIZE= differs from the real size by more than 5 % and 100 octets (RFC 1870)",
    ),
    "html_without_text": (
        "info",
        "an HTML part and no text/plain part at all (RFC 2046 5.1.4 multipart/alternative)",
    ),
    "encoding_mismatch": (
        "warning",
        "a Content-Transfer-Encoding the content contradicts: 7bit with 8-bit bytes, base64 "
        "outside its alphabet, an unknown encoding (RFC 2045)",
    ),
}


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    detail: str
    address: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "address": self.address,
            "detail": self.detail,
        }


def findings(
    envelope: Envelope, headers: HeaderSummary, check_addresses: bool = True
) -> list[Finding]:
    """Every disagreement between envelope and headers, plus header and syntax problems."""
    found: list[Finding] = []
    found += _sender_findings(envelope, headers)
    found += _recipient_findings(envelope, headers)
    found += _missing_headers(headers)
    if check_addresses:
        found += _invalid_addresses(envelope, headers)
    found += [Finding("parse_defect", "warning", defect) for defect in headers.defects]
    return found


def _sender_findings(envelope: Envelope, headers: HeaderSummary) -> list[Finding]:
    if not envelope.mail_from:
        return [
            Finding(
                "null_sender",
                "info",
                "MAIL FROM:<> (the null sender): bounces and auto-replies use it; "
                "nothing can be sent back to this message",
            )
        ]
    sender = normalize(envelope.mail_from)
    header_senders = [normalize(a) for a in headers.from_addrs]
    if headers.sender_addr:
        header_senders.append(normalize(headers.sender_addr))
    if not header_senders or sender in header_senders:
        return []
    shown = ", ".join(headers.from_addrs) or headers.sender_addr or ""
    found = [
        Finding(
            "sender_mismatch",
            "info",
            f"envelope sender {envelope.mail_from} differs from the From header ({shown}); "
            "bounces go to the envelope sender",
            envelope.mail_from,
        )
    ]
    header_domain = domain_of(headers.from_addrs[0]) if headers.from_addrs else ""
    if header_domain and not aligned(domain_of(sender), header_domain):
        found.append(
            Finding(
                "domain_misaligned",
                "warning",
                f"envelope sender domain {domain_of(sender)} is not aligned with the From domain "
                f"{header_domain}: SPF alignment under DMARC would fail",
                envelope.mail_from,
            )
        )
    return found


def _recipient_findings(envelope: Envelope, headers: HeaderSummary) -> list[Finding]:
    found: list[Finding] = []
    visible = {normalize(a) for a in headers.to_addrs + headers.cc_addrs}
    delivered = {normalize(a) for a in envelope.rcpt_to}
    for address in envelope.rcpt_to:
        if normalize(address) not in visible:
            found.append(
                Finding(
                    "hidden_recipient",
                    "warning",
                    f"{address} received the message but is not in To or Cc (a Bcc recipient)",
                    address,
                )
            )
    refused = _refused_recipients(envelope, delivered)
    found += refused.values()
    seen: set[str] = set()
    for address in headers.to_addrs + headers.cc_addrs:
        key = normalize(address)
        if key not in delivered and key not in seen and key not in refused:
            seen.add(key)
            found.append(
                Finding(
                    "undelivered_header_recipient",
                    "warning",
                    f"{address} is in To or Cc but was never given in RCPT TO: "
                    "it did not receive this message",
                    address,
                )
            )
    if headers.bcc_present:
        listed = ", ".join(headers.bcc_addrs) or "(empty)"
        found.append(
            Finding(
                "bcc_header_present",
                "error",
                f"the message carries a Bcc header ({listed}): every recipient can read it; "
                "Bcc recipients belong only in RCPT TO",
            )
        )
    return found


_REFUSED_BECAUSE = {
    "fault_rule": "a fault rule",
    "validation": '[validation] addresses = "reject"',
    "syntax": "its syntax",
    "parameters": "its parameters",
    "other": "the session's state or a limit",
}


def _refused_recipients(envelope: Envelope, delivered: set[str]) -> dict[str, Finding]:
    """A refused_recipient finding by normalised address, in the order first given. A recipient
    given again and then accepted did receive the message; one refused twice is told once, with
    the last reply (the server's final word)."""
    found: dict[str, Finding] = {}
    for refusal in envelope.rcpt_refused:
        key = normalize(refusal.address)
        if key in delivered:
            continue
        reply = " / ".join(line.strip() for line in refusal.reply.splitlines()) or "(no reply)"
        if refusal.rule:
            because = f'rule "{refusal.rule}"'
        else:
            because = _REFUSED_BECAUSE.get(refusal.reason, refusal.reason)
        found[key] = Finding(
            "refused_recipient",
            "warning",
            f"{refusal.address} was given in RCPT TO and refused with {reply} ({because}); "
            "it did not receive this message",
            refusal.address,
        )
    return found


def _missing_headers(headers: HeaderSummary) -> list[Finding]:
    found = []
    if not headers.from_:
        found.append(Finding("missing_header", "warning", "no From header (RFC 5322 requires one)"))
    if not headers.date:
        found.append(Finding("missing_header", "warning", "no Date header (RFC 5322 requires one)"))
    if not headers.message_id:
        found.append(
            Finding("missing_header", "info", "no Message-ID header (replies cannot thread)")
        )
    return found


def _invalid_addresses(envelope: Envelope, headers: HeaderSummary) -> list[Finding]:
    found = []
    checked: set[str] = set()
    candidates = [("envelope sender", envelope.mail_from)] if envelope.mail_from else []
    candidates += [("RCPT TO", a) for a in envelope.rcpt_to]
    candidates += [("From", a) for a in headers.from_addrs]
    candidates += [("To", a) for a in headers.to_addrs] + [("Cc", a) for a in headers.cc_addrs]
    for where, address in candidates:
        if address in checked:
            continue
        checked.add(address)
        error = syntax_error(address)
        if error:
            found.append(
                Finding("invalid_address", "error", f"{where} address {address}: {error}", address)
            )
    return found
