"""Findings: what the SMTP envelope says against what the headers say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailsink.mail.addresses import aligned, domain_of, normalize, syntax_error
from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import HeaderSummary

# Every kind of finding, with its severity and what it means: README's findings table, the
# CLI's `--findings KIND` and the TUI's help read it. A finding of a kind not listed here is a bug.
KINDS: dict[str, tuple[str, str]] = {
    # envelope against headers
    "hidden_recipient": ("warning", "in RCPT TO, not in To or Cc (a Bcc recipient)"),
    "undelivered_header_recipient": ("warning", "in To or Cc, never given in RCPT TO"),
    "refused_recipient": ("warning", "given in RCPT TO and refused by the server"),
    "bcc_header_present": ("error", "the message carries a Bcc header every recipient can read"),
    "sender_mismatch": ("info", "MAIL FROM is neither the From nor the Sender address"),
    "domain_misaligned": ("warning", "MAIL FROM's domain is not aligned with From's (DMARC)"),
    "null_sender": ("info", "MAIL FROM:<>"),
    "missing_header": ("warning", "no From or Date (warning), no Message-ID (info)"),
    "invalid_address": ("error", "an envelope, From, To or Cc address fails the syntax check"),
    "parse_defect": ("warning", "what Python's email parser reported as broken"),
    # hygiene: what a production server would do with this mail
    "bare_lf": ("warning", "lines end in a bare LF, not CRLF"),
    "bare_cr": ("warning", "a CR not followed by LF"),
    "long_line": ("warning", "a line over 998 octets (RFC 5322 2.1.1)"),
    "eight_bit_without_8bitmime": ("warning", "8-bit bytes in the body without BODY=8BITMIME"),
    "non_ascii_header": ("warning", "non-ASCII header bytes, neither RFC 2047 nor SMTPUTF8"),
    "non_ascii_address": ("warning", "a non-ASCII envelope address without SMTPUTF8"),
    "invalid_message_id": ("warning", "a Message-ID that is not <id-left@id-right>"),
    "invalid_date": ("warning", "a Date header that does not parse (RFC 5322 3.3)"),
    "future_date": ("warning", "a Date far in the future"),
    "multiple_from_without_sender": ("warning", "several From addresses and no Sender"),
    "size_mismatch": ("warning", "the declared SIZE= differs from the real size"),
    "html_without_text": ("info", "an HTML part with no text alternative"),
    "encoding_mismatch": ("warning", "a Content-Transfer-Encoding the content contradicts"),
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
    seen: set[str] = set()
    for address in headers.to_addrs + headers.cc_addrs:
        key = normalize(address)
        if key not in delivered and key not in seen:
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
