"""The object a test uses: one server's mail as the test sees it, in three lines per test.

    with Mailsink.start(tmp_path / "mailsink") as mailsink:
        app.send_welcome(smtp_host=mailsink.host, smtp_port=mailsink.port)
        mailsink.assert_sent(to="ann@x.test", subject="Welcome")

    with mailsink.fault(stage="rcpt", reply="452 4.2.2 Mailbox full", times=1) as full:
        app.send_welcome(...)                       # the app gets a 452 once, and retries
    assert full.hits == 1
    mailsink.wait_for(to="ann@x.test")

A `Mailsink` is a *view*: it sees the messages and sessions with an id above its watermark (0 for
the server it started), and when it is closed it puts the fault rules back as they were when it
was made (the run-time rules added since removed, whoever added them, the switches put back);
`isolate()` makes another view of the same server that sees only what arrives from then on (a
suite that shares one server gives each test its own). Mail is read on the test's thread with
a `Reader` of the view's own (SELECT only); the server's state (fault rules, events) is touched
on its loop through `RunningSink.call` / `RunningSink.run`. `wait_for` is woken by the sink's
events, never polls (`wait_for_async` waits on a thread, for an async test).

Every failure says what arrived (`arrivals()`), with the envelope apart from the headers, refused
recipients, rejected messages, findings and the sessions that delivered nothing or met a refusal
or a fault, all made visible with mailsink.text: a subject is untrusted text and reaches the
test's terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import functools
import math
import re
import shutil
import socket
import tempfile
import threading
import unittest
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from mailsink import events as ev
from mailsink.config import Settings, load
from mailsink.errors import RuleError
from mailsink.faults.controls import FaultControls, RulesSnapshot, RuleState
from mailsink.mail.addresses import comparable
from mailsink.mail.envelope import Envelope
from mailsink.mail.parse import Attachment, ParsedMessage, parse_message
from mailsink.query import PREFIXES, Query, QueryError, Term, describe, parse_query
from mailsink.sink import Sink, live_record
from mailsink.store import MessageRecord, Reader, SessionRecord
from mailsink.testing import RunningSink
from mailsink.text import visible

__all__ = ["CaughtMessage", "FaultHandle", "Mailsink", "MailsinkTestCase"]

T = TypeVar("T")

# What wakes a wait: a message committed, deleted or changed (read state, tags), or another
# process's change to the store (`mailsink clear` run by the test). The HTTP wait's kinds.
WAKING_KINDS: tuple[type, ...] = (
    ev.MessageStored,
    ev.MessagesDeleted,
    ev.MessagesChanged,
    ev.StoreChanged,
)
SEVERITIES = ("info", "warning", "error")  # each worse than the one before
LISTED = 20  # messages (and sessions) an arrival listing shows, the newest
EXPLAINED = 10  # near misses an assert_sent failure explains, at most
CONSIDERED = 500  # the newest messages looked at for near misses
EVERYTHING = -1  # SQLite's LIMIT for "no limit"
# A test's server has nobody left to be polite to: a session held by a DATA-stage delay (or a
# client mid-DATA) would otherwise hold the test's teardown for RunningSink.stop's 10 s.
STOP_GRACE = 0.2
# The longest wait a test may ask for (a day): past it, a typo or inf (whose OverflowError in
# threading would be a traceback).
MAX_TIMEOUT = 86400.0
_ANY_STATUS = Term("status", "choice", "any", typed="status:any")
_REJECTED = Term("status", "choice", "rejected", typed="status:rejected")
# A filter's value is quoted when the query language would split or read it otherwise.
_NEEDS_QUOTES = re.compile(r'[\s":]')
# Kinds whose parsed value is the text as given, so a value the language cannot write (one with
# a double quote: it has no escape) can be put into the term after the rest has been checked.
_VERBATIM_KINDS = ("text", "exact", "glob")


# ---- the server a view reads


class _Server:
    """What every view of one server shares: the RunningSink and one Reader, opened at the first
    read (a view that reads nothing costs no open) and used on whichever thread the test runs."""

    def __init__(self, running: RunningSink, *, owned: bool):
        self.running = running
        self.owned = owned  # stopped when its owning view closes
        self._reader: Reader | None = None
        # One connection for every view: SQLite statements from two threads at once would
        # interleave on it (a test that reads from a thread of its own while waiting).
        self._lock = threading.Lock()
        # Counts views made and rule changes: which view is older, which change came after.
        self._clock = 0
        # The handles of each rule name: whichever view removes the rule, every handle of it
        # keeps its last state (until a restore brings the rule back). Weak: a handle nobody
        # holds needs none.
        self._handles: dict[str, weakref.WeakSet[FaultHandle]] = {}
        # The last change of each rule through the harness: (the view's number, when).
        self._changes: dict[str, tuple[int, int]] = {}

    def tick(self) -> int:
        self._clock += 1
        return self._clock

    def register(self, handle: FaultHandle) -> None:
        self._handles.setdefault(handle.name, weakref.WeakSet()).add(handle)

    def changed(self, name: str, view: Mailsink) -> None:
        self._changes[name] = (view._number, self.tick())

    def settle(self, name: str, final: RuleState) -> None:
        """The rule `name` is gone: each of its handles keeps `final`."""
        for handle in list(self._handles.get(name, ())):
            if handle._final is None:
                handle._final = final

    def revive(self, name: str, before: int) -> None:
        """The rule `name` is back (a restore): its handles made before `before` read it live
        again."""
        for handle in list(self._handles.get(name, ())):
            if handle._made < before:
                handle._final = None

    def others_changes(self, view: Mailsink) -> set[str]:
        """The rules another view (older or newer, open or closed since) added, removed or
        switched after `view` was made: theirs to undo, not `view`'s."""
        return {
            name
            for name, (changer, when) in self._changes.items()
            if changer != view._number and when > view._number
        }

    def restore(
        self,
        view: Mailsink,
        snapshot: RulesSnapshot,
        taken_at: int,
        *,
        keep: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> None:
        """Put the rules back as `snapshot` (taken at the tick `taken_at`) has them, but `keep`
        (FaultControls.restore), in one call on the server's loop; the changes are `view`'s."""
        faults = self.faults

        def restore() -> tuple[dict[str, RuleState], dict[str, RuleState]]:
            before = {state.name: state for state in faults.rules()}
            faults.restore(snapshot, keep=keep, only=only)
            return before, {state.name: state for state in faults.rules()}

        before, after = self.running.call(restore)
        for name in before.keys() - after.keys():
            self.settle(name, before[name])
        for name in after.keys() - before.keys():
            self.revive(name, taken_at)
        for name in before.keys() | after.keys():
            old, new = before.get(name), after.get(name)
            if old is None or new is None or _unhit(old) != _unhit(new):
                self.changed(name, view)

    @property
    def sink(self) -> Sink:
        sink = self.running.sink
        if sink is None:
            raise RuntimeError("the mailsink server has stopped (its Mailsink was closed)")
        return sink

    @property
    def faults(self) -> FaultControls:
        faults = self.sink.faults
        assert faults is not None  # a serving sink always has its controls
        return faults

    def read(self, query: Callable[[Reader], T]) -> T:
        with self._lock:
            if self._reader is None:
                # Autocommit and no open statement between reads: the reader holds back neither
                # the writer nor a checkpoint, so it can stay open as long as the view.
                self._reader = Reader(self.running.db)
            return query(self._reader)

    def close_reader(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


# ---- one message


class CaughtMessage:
    """One stored message: the summary as stored (envelope, header summary, findings), and the
    raw message read from the store on the test's thread when first asked for, then parsed on
    demand (`parsed`, `message`, `text`, `html`, `attachments`)."""

    def __init__(self, record: MessageRecord, server: _Server):
        self.record = record
        self._server = server
        self.id: int = record.id
        self.status: str = record.status  # "accepted" | "rejected" (at the end of DATA)
        self.reply: str | None = record.reply  # a rejected message's reply
        self.reply_rule: str | None = record.reply_rule  # the fault rule that gave it
        self.received_at: int = record.received_at  # ms since the epoch
        self.size: int = record.size
        self.seen: bool = record.seen
        self.tags: list[str] = record.tags
        self.session_id: int = record.session_id
        self.envelope: Envelope = record.envelope
        self.headers: dict[str, Any] = record.headers
        self.findings: list[dict[str, Any]] = record.findings

    @property
    def mail_from(self) -> str:
        """The envelope sender (MAIL FROM); "" for the null sender <>."""
        return self.envelope.mail_from

    @property
    def rcpt_to(self) -> list[str]:
        """The envelope recipients the server accepted (RCPT TO), in the order given."""
        return self.envelope.rcpt_to

    @property
    def subject(self) -> str | None:
        return self.headers.get("subject")

    @functools.cached_property
    def raw(self) -> bytes:
        """The message exactly as it was received."""
        raw = self._server.read(lambda reader: reader.get_raw(self.id))
        if raw is None:
            raise LookupError(f"message #{self.id} is no longer in the store (deleted or cleared)")
        return raw

    @functools.cached_property
    def parsed(self) -> ParsedMessage:
        """mailsink's parse (the one the TUI and `mailsink show` use: bounded, never raises)."""
        return parse_message(self.raw)

    @functools.cached_property
    def message(self) -> EmailMessage:
        """The standard library's parse, with `email.policy.default` (for any header)."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)  # what policy.default makes
        return parsed

    @property
    def text(self) -> str | None:
        return self.parsed.text

    @property
    def html(self) -> str | None:
        return self.parsed.html

    @property
    def attachments(self) -> list[Attachment]:
        return self.parsed.attachments

    def header(self, name: str) -> str | None:
        """The first `name` header field's value, decoded; None when there is none."""
        try:
            value = self.message[name]
        except Exception:  # a field the standard parser's policy cannot read: mailsink's can
            lowered = name.lower()
            return next((v for n, v in self.parsed.header_lines if n.lower() == lowered), None)
        return None if value is None else str(value)

    def __repr__(self) -> str:
        subject = _shown(self.subject) if self.subject is not None else "(no subject)"
        sender = visible(self.mail_from, emoji=False) or "<>"
        recipients = visible(", ".join(self.rcpt_to), emoji=False) or "nobody"
        status = "" if self.status == "accepted" else f" [{visible(self.status)}]"
        return f"<CaughtMessage #{self.id}{status} {subject} {sender} → {recipients}>"


# ---- fault rules


class FaultHandle:
    """A fault rule in force: one a view added (`add_fault`, `fault`), or any rule by name
    (`rule`). Its hits and state are read live from the server's controls; once removed, by
    whichever view, they are what they were at the removal (`with mailsink.fault(...) as rule:`
    then `assert rule.hits == 1` after the block)."""

    def __init__(
        self, mailsink: Mailsink, name: str, *, origin: str = "runtime", owned: bool = True
    ):
        self._mailsink = mailsink
        self.name = name
        self._origin = origin  # a preset's or config rule is switched, never removed
        self._owned = owned  # added by its view (removed by its block), else found by rule()
        self._final: RuleState | None = None  # set when removed
        # A found rule's block puts it back as it was at the start (the rules then, and when).
        self._at_start: tuple[RulesSnapshot, int] | None = None
        self._made = mailsink._server.tick()
        mailsink._server.register(self)

    @property
    def removed(self) -> bool:
        return self._final is not None

    def state(self) -> RuleState:
        """The rule as the server has it now (as it was when removed)."""
        if self._final is not None:
            return self._final
        server = self._mailsink._server
        try:
            return server.running.call(server.faults.rule, self.name)
        except KeyError:
            raise LookupError(f"fault rule {self.name!r} is no longer in force") from None

    @property
    def hits(self) -> int:
        return self.state().hits

    @property
    def last_fired_at(self) -> int | None:
        """When it last fired (ms since the epoch); None if it has not."""
        return self.state().last_fired_at

    @property
    def enabled(self) -> bool:
        return self.state().enabled

    def enable(self) -> None:
        self._switch(True)

    def disable(self) -> None:
        """Off from the next SMTP command on; its hits stay."""
        self._switch(False)

    def _switch(self, enabled: bool) -> None:
        if self._final is not None:
            raise LookupError(f"fault rule {self.name!r} was removed")
        server = self._mailsink._server
        try:
            server.running.call(server.faults.set_enabled, self.name, enabled)
        except KeyError:
            raise LookupError(f"fault rule {self.name!r} is no longer in force") from None
        server.changed(self.name, self._mailsink)

    def remove(self) -> None:
        """Remove the rule (nothing happens if it is removed already). RuleError for a preset or
        a config file's rule: switch those off (`disable()`)."""
        if self._final is None:
            self._mailsink._remove_rules([self.name])

    def __enter__(self) -> FaultHandle:
        if not self._owned:
            server = self._mailsink._server
            self._at_start = (server.running.call(server.faults.snapshot), server.tick())
        return self

    def __exit__(self, *_: object) -> None:
        """A rule added by the view is removed; one found by `rule(name)` is put back as it was
        at the start of the block (switched back; a run-time rule removed or replaced in the
        block brought back)."""
        if self._owned:
            self.remove()
        elif self._at_start is not None:
            snapshot, taken_at = self._at_start
            self._at_start = None
            self._mailsink._server.restore(self._mailsink, snapshot, taken_at, only={self.name})

    def __repr__(self) -> str:
        return f"<FaultHandle {visible(self.name)!r}{' removed' if self.removed else ''}>"


def _named_rule_error(error: RuleError) -> RuleError:
    """The error with the key in its message (`stage: 'bogus' is not a stage; …`), as
    check-config and the HTTP API word it; `.key` and `.reason` kept."""
    if not error.key:
        return error
    named = RuleError(error.key, error.reason)
    named.args = (f"{error.key}: {error.reason}",)
    return named


# ---- filters: keywords -> terms of the query language


def _keyword(prefix: str) -> str:
    """The keyword that gives `prefix` (`from` -> from_, `reply-to` -> reply_to)."""
    name = prefix.replace("-", "_")
    return f"{name}_" if name in ("from", "is") else name


def _filter_names() -> str:
    return ", ".join(_keyword(name) for name in PREFIXES)


# The keyword filters whose value may be a whole address, and the header summary's fields that
# have the addresses (none: the envelope's, rcpt= and mailfrom=).
_ADDRESS_FIELDS: dict[str, tuple[str, ...]] = {
    "to": ("to",),
    "cc": ("cc",),
    "bcc": ("bcc",),
    "from": ("from",),
    "reply-to": ("reply_to",),
    "addressed": ("from", "to", "cc", "bcc", "reply_to"),
    "rcpt": (),
    "mailfrom": (),
}
_WHOLE_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")
# addressed='x.test': its own example is a domain, which then is one whole too.
_DOMAIN = re.compile(r"[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)+")


@dataclasses.dataclass(frozen=True)
class _Whole:
    """A keyword filter whose value is a whole address (or, for addressed=, a domain): the
    query's substring term finds the candidates, this keeps those with it whole, any case."""

    term: Term  # the narrowing term
    value: str  # compared form (_address)
    domain: bool = False

    def addresses(self, message: CaughtMessage) -> list[str]:
        if self.term.prefix == "rcpt":
            return message.envelope.rcpt_to
        if self.term.prefix == "mailfrom":
            return [message.envelope.mail_from]
        return [
            address
            for key in _ADDRESS_FIELDS[self.term.prefix]
            for address in _header_addresses(_header_values(message.headers, key))
        ]

    def keeps(self, message: CaughtMessage) -> bool:
        found = {_address(address) for address in self.addresses(message)}
        if self.domain:
            return any(address.rpartition("@")[2] == self.value for address in found)
        return self.value in found


@dataclasses.dataclass(frozen=True)
class _Filter:
    """What `search`, `wait_for` and `assert_sent` look for: the query (None: everything), and
    the whole addresses its terms must have."""

    query: Query | None = None
    whole: tuple[_Whole, ...] = ()


def _given_address(what: str, value: str) -> str:
    """The address a value names: 'Ann <ann@x.test>' and '<ann@x.test>' are ann@x.test; any
    other value as given (stripped). TypeError for two addresses in one string."""
    text = value.strip()
    if "<" not in text and "," not in text:
        return text
    found = [address for _name, address in getaddresses([text]) if address]
    if len(found) > 1 and any("@" in address for address in found):
        raise TypeError(
            f"{what}: {value!r} holds {len(found)} addresses; give a list, one address each:"
            f" {what}={found!r}"
        )
    return found[0] if len(found) == 1 and "@" in found[0] else text


def _filter_term(keyword: str, value: object) -> tuple[Term, _Whole | None]:
    name = keyword.removesuffix("_").replace("_", "-")
    prefix = PREFIXES.get(name)
    # The trailing _ only where Python needs it (from_, is_): from__= and reply_to_= are typos.
    if prefix is None or keyword not in (_keyword(name), name.replace("-", "_")):
        raise TypeError(f"unknown filter {keyword!r}; the filters are {_filter_names()}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"filter {keyword}= takes a str or an int, got {value!r}")
    text = str(value)
    whole: str | None = None
    domain = False
    narrow = None  # the substring the store looks for, when the whole value's is too strict
    if name in _ADDRESS_FIELDS and isinstance(value, str):
        address = _given_address(keyword, value)
        if _WHOLE_ADDRESS.fullmatch(address):
            text, whole = address, _address(address)
            # The stored text may write it otherwise ("ann"@x.test, an IDN as Unicode or as
            # xn--): the local part narrows, the whole comparison decides.
            narrow = _narrowing(whole.rpartition("@")[0])
        elif name == "addressed" and _DOMAIN.fullmatch(address):
            text, whole, domain = address, _domain(address), True
            if not address.isascii() or "xn--" in whole:
                narrow = "@"
    term = _value_term(name, prefix.kind, text)
    if narrow is not None and narrow.casefold() != text.casefold():
        # The typed text stays the value as given: failures show what the test asked for.
        term = dataclasses.replace(_value_term(name, prefix.kind, narrow), typed=term.typed)
    return term, _Whole(term, whole, domain) if whole is not None else None


def _narrowing(local: str) -> str:
    """What every way of writing a local part has in it: the unquoted text."""
    core = local[1:-1] if len(local) > 1 and local[0] == local[-1] == '"' else local
    return core.replace("\\", "") or "@"


def _value_term(name: str, kind: str, text: str) -> Term:
    if '"' not in text:
        written = f'"{text}"' if _NEEDS_QUOTES.search(text) or not text else text
        (term,) = parse_query(f"{name}:{written}").terms  # (an empty value: QueryError)
        return term
    # The query language has no way to write a double quote: the value is checked with each
    # one as a ' instead, then put into the term as given (the store matches it as it is).
    typed = f"{name}:{text}"
    if kind not in (*_VERBATIM_KINDS, "header"):
        raise QueryError(f"{typed!r}: {name}: cannot hold a double quote", term=typed)
    (checked,) = parse_query(f'{name}:"{text.replace(chr(34), chr(39))}"').terms
    if kind == "header":
        header, equals, wanted = text.partition("=")
        if '"' in header:
            raise QueryError(f"{typed!r}: header: a header name has no double quote", term=typed)
        return dataclasses.replace(
            checked, value=(header.strip(), wanted.strip() if equals else None), typed=typed
        )
    return dataclasses.replace(checked, value=text.strip(), typed=typed)


def _terms(keyword: str, value: object) -> list[tuple[Term, _Whole | None]]:
    """A list or tuple of values is one term each (ANDed: `tag=["a", "b"]`)."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(
                f"{keyword}=[]: an empty list would match every message; give at least one"
                " value, or leave the filter out"
            )
        return [_filter_term(keyword, one) for one in value]
    return [_filter_term(keyword, value)]


def _query(query: str | None, filters: Mapping[str, object]) -> _Filter:
    """The query and the filters, ANDed (a query of None when neither says anything)."""
    if query is not None and not isinstance(query, str):
        raise TypeError(f"the query is a str such as 'to:ann@x.test', got {query!r}")
    parsed = parse_query(query) if query else Query()
    terms = list(parsed.terms)
    wholes = []
    for keyword, value in filters.items():
        for term, whole in _terms(keyword, value):
            terms.append(term)
            if whole is not None:
                wholes.append(whole)
    if not terms:
        return _Filter()
    return _Filter(Query(tuple(terms), " ".join(term.typed for term in terms)), tuple(wholes))


# ---- addresses


def _address(text: str) -> str:
    """An address as compared: `<Ann@X.test>`, ` ann@x.test` and `"ann"@x.test` are the same,
    and so are `bob@bücher.test` and `bob@xn--bcher-kva.test`."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return comparable(text)


def _domain(text: str) -> str:
    """A domain as compared: IDNA-encoded, case-folded (as given when it cannot be encoded)."""
    return comparable(f"a@{text}").partition("@")[2]


def _header_addresses(values: Iterable[str]) -> list[str]:
    """The addr-specs of a header summary's entries ('"Ann, A" <ann@x.test>' -> ann@x.test)."""
    found = []
    for value in values:
        pairs = getaddresses([value])
        addresses = [address for _name, address in pairs if address]
        found += addresses or [value]
    return found


def _header_values(headers: Mapping[str, Any], key: str) -> list[str]:
    value = headers.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]


# ---- the arrival listing


def _shown(text: str | None) -> str:
    """Untrusted text, quoted and visible (no escape sequence reaches the terminal). Not repr():
    its backslashes would double those of text the server has escaped already."""
    return f"'{visible(text)}'" if text is not None else "(none)"


def _addr(text: str) -> str:
    return visible(text, emoji=False)


def _first_line(reply: str | None) -> str:
    return visible((reply or "").split("\n")[0])


def _cause(rule: str | None, reason: str | None = None) -> str:
    if rule:
        return f" (rule {_shown(rule)})"
    return f" ({visible(reason)})" if reason and reason != "fault_rule" else ""


def _message_lines(message: CaughtMessage) -> list[str]:
    envelope, headers = message.envelope, message.headers
    rcpt = ",".join(f"<{_addr(a)}>" for a in envelope.rcpt_to) or "(none accepted)"
    parts = [
        f"#{message.id} {visible(message.status)}",
        f"MAIL FROM:<{_addr(envelope.mail_from)}> RCPT TO:{rcpt}",
    ]
    for label, key in (("From", "from"), ("To", "to"), ("Cc", "cc"), ("Bcc", "bcc")):
        values = _header_values(headers, key)
        if values or key in ("from", "to"):
            parts.append(f"{label}: {_addr(', '.join(_header_addresses(values))) or '(none)'}")
    parts.append(f"Subject: {_shown(message.subject)}")
    lines = ["  ".join(parts)]
    for refused in envelope.rcpt_refused:
        lines.append(
            f"    refused <{_addr(refused.address)}>: {_first_line(refused.reply)}"
            f"{_cause(refused.rule, refused.reason)}"
        )
    if message.status != "accepted":
        lines.append(
            f"    rejected at DATA: {_first_line(message.reply)}{_cause(message.reply_rule)}"
        )
    if message.findings:
        kinds = dict.fromkeys(f"{f['kind']} ({f['severity']})" for f in message.findings)
        lines.append(f"    findings: {visible(', '.join(kinds))}")
    return lines


def _session_line(session: SessionRecord) -> str:
    state = (
        f"ended {_shown(session.end_reason)}"
        if session.end_reason
        else f"still connected (at {visible(session.state or 'connect')})"
    )
    parts = [f"session #{session.id} from {visible(session.peer)}"]
    if session.helo:
        parts[0] += f" (HELO {_shown(session.helo)})"
    details = [state]
    if session.message_count:
        ids = session.message_ids
        listed = f" ({', '.join(f'#{i}' for i in ids)})" if 0 < len(ids) <= 5 else ""
        details.append(_plural(session.message_count, "message") + listed)
    else:
        details.append("no message")
    if session.last_reply and session.last_reply[:1] in ("4", "5"):  # (else: 221 to QUIT)
        details.append(f"last reply {_shown(_first_line(session.last_reply))}")
    if session.refusals:
        last = f", last: {_shown(session.last_refusal)}" if session.last_refusal else ""
        details.append(f"{session.refusals} refused{last}")
    if session.faults:
        details.append(f"{session.faults} fault{'s' if session.faults != 1 else ''}")
    return f"{parts[0]}: {', '.join(details)}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


async def _woken(subscription: Any, timeout: float) -> bool:
    """Wait for the next event (True) or `timeout` (False); a burst of them is one wake."""
    try:
        await asyncio.wait_for(subscription.get(), timeout)
    except (TimeoutError, StopAsyncIteration):  # (closed: the server is stopping)
        return False
    subscription.pending()
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _test_settings(settings: Settings | None) -> Settings:
    """`settings` for a test's server: loopback only, the config file not watched."""
    base = settings or Settings()
    tls = base.tls
    if tls.implicit_port:  # a fixed port would clash between parallel workers
        tls = dataclasses.replace(tls, implicit_port=_free_port())
    return dataclasses.replace(
        base,
        smtp=dataclasses.replace(base.smtp, host="127.0.0.1"),
        http=dataclasses.replace(base.http, host="127.0.0.1", enabled=True),
        tls=tls,
        source=None,  # a server with a source watches it (hot reload): a test's does not
    )


# ---- the view


class Mailsink:
    """One server's mail as a test sees it: see the module's documentation.

    `Mailsink.start(directory)` starts a server (its view sees everything and stops it when
    closed); `Mailsink(running)` is a view of a RunningSink started elsewhere (not stopped);
    `isolate()` a new view that sees only what arrives from then on. Every view notes the
    rules in force when it is made, and puts them back so when it is closed."""

    def __init__(
        self, running: RunningSink, *, _server: _Server | None = None, _primary: bool = True
    ) -> None:
        self._server = _server or _Server(running, owned=False)
        self._primary = _primary  # the view that made its _Server: closes its reader
        self.running = running
        self._above_message = 0  # the watermarks: this view sees ids above them
        self._above_session = 0
        self._handles: list[FaultHandle] = []  # the rules this view added
        self._closed = False
        # The rules in force when the view was made, put back at its close (None: made before
        # its server started, with nothing to put back).
        self._rules_at_start: RulesSnapshot | None = None
        if running.sink is not None:
            self._rules_at_start = running.call(self._server.faults.snapshot)
        self._number = self._server.tick()

    @classmethod
    def start(cls, directory: str | Path, *, settings: Settings | None = None) -> Mailsink:
        """A new server with its store in `directory` (made if missing), on free loopback ports
        (SMTP and HTTP). `settings` (e.g. `mailsink.config.load("mailsink.toml")`) give the
        fault rules, auth, validation …; the host, the ports and the store are this one's."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        running = RunningSink(folder / "mailsink.db", _test_settings(settings), http=True)
        running.start()
        return cls(running, _server=_Server(running, owned=True))

    # ---- views

    def isolate(self) -> Mailsink:
        """A new view of the same server: the mail and sessions that arrive from now on, and
        fault rules of its own (when it is closed, the rules are put back as they were when it
        was made). Closing it leaves the server."""
        self._check_open()
        server = self._server
        # Live sessions first: one that ends meanwhile is stored by the time the store is read.
        live = server.running.call(server.sink.live_sessions)

        def latest(reader: Reader) -> tuple[int, int]:
            newest = reader.list_sessions(limit=1)
            return reader.latest_id() or 0, newest[0].id if newest else 0

        message, session = server.read(latest)
        view = Mailsink(self.running, _server=server, _primary=False)
        view._above_message = message
        view._above_session = max([session, *(s.id for s in live)])
        return view

    def close(self) -> None:
        """Put the fault rules back as they were when this view was made: the run-time rules
        added since removed (by this view, the HTTP API, `mailsink faults`, Mailpit's chaos),
        the presets and config rules switched back; not what an older view still open did.
        The view that started the server also stops it (with a short grace: a session held
        by a delay fault does not hold the test)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.running.sink is not None and self._rules_at_start is not None:
                self._restore_rules(self._rules_at_start)
        finally:
            if self._primary:
                self._server.close_reader()  # (a view still open reopens it if it reads)
            if self._primary and self._server.owned:
                self.running.stop(STOP_GRACE)

    def _restore_rules(self, at_start: RulesSnapshot) -> None:
        server = self._server
        # What another view did since this one was made (the session's view, a sibling still
        # open, one closed meanwhile) is that view's to keep or undo.
        server.restore(self, at_start, self._number, keep=server.others_changes(self))
        if any(handle._final is None for handle in self._handles):
            names = {state.name for state in self.running.call(server.faults.rules)}
            for handle in self._handles:  # removed by someone else before (over HTTP, say)
                if handle._final is None and handle.name not in names:
                    server.settle(handle.name, _gone(handle.name))
        self._handles = []

    def __enter__(self) -> Mailsink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Mailsink is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"smtp {self.host}:{self.port}"
        view = f", ids above {self._above_message}" if self._above_message else ""
        return f"<Mailsink {state}{view}>"

    # ---- where it listens

    @property
    def sink(self) -> Sink:
        return self._server.sink

    @property
    def host(self) -> str:
        return self.running.host

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def url(self) -> str:
        """The HTTP API's base URL, http://127.0.0.1:PORT."""
        return self.running.url

    @property
    def since(self) -> int:
        """The view's watermark: it sees the messages with an id above it (0: all). `url` is
        the whole server's API: `/api/mailsink/wait?since=ID` asks it for this view's mail."""
        return self._above_message

    @property
    def smtp_settings(self) -> dict[str, Any]:
        """`smtplib.SMTP(**mailsink.smtp_settings)`."""
        return {"host": self.host, "port": self.port}

    @property
    def django_settings(self) -> dict[str, Any]:
        """Django's email settings for this server (`settings.EMAIL_HOST` …)."""
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": self.port,
            "EMAIL_HOST_USER": "",
            "EMAIL_HOST_PASSWORD": "",
            "EMAIL_USE_TLS": False,
            "EMAIL_USE_SSL": False,
            "EMAIL_TIMEOUT": 10,
        }

    @property
    def flask_settings(self) -> dict[str, Any]:
        """Flask-Mail's configuration for this server (`app.config.update(...)`)."""
        return {
            "MAIL_SERVER": self.host,
            "MAIL_PORT": self.port,
            "MAIL_USE_TLS": False,
            "MAIL_USE_SSL": False,
            "MAIL_USERNAME": None,
            "MAIL_PASSWORD": None,
            # Flask-Mail's default is TESTING's value: under test it would send nothing.
            "MAIL_SUPPRESS_SEND": False,
        }

    # ---- mail

    def _caught(self, records: Iterable[MessageRecord]) -> list[CaughtMessage]:
        return [CaughtMessage(record, self._server) for record in records]

    def _read(
        self, query: Query | None, limit: int = EVERYTHING, whole: Sequence[_Whole] = ()
    ) -> list[CaughtMessage]:
        """This view's messages matching `query`, oldest first (of the newest `limit`), those
        with the `whole` addresses only."""
        above = self._above_message
        records = self._server.read(
            lambda reader: reader.newest_above(query=query, above=above, limit=limit)
        )
        found = self._caught(reversed(records))
        return [m for m in found if all(w.keeps(m) for w in whole)] if whole else found

    @property
    def messages(self) -> list[CaughtMessage]:
        """The accepted messages, oldest first."""
        self._check_open()
        return self._read(None)

    @property
    def rejected(self) -> list[CaughtMessage]:
        """The messages refused at the end of DATA (a fault rule), oldest first."""
        self._check_open()
        return self._read(Query((_REJECTED,), _REJECTED.typed))

    @property
    def sessions(self) -> list[SessionRecord]:
        """The SMTP sessions, oldest first: as stored, or as their connection knows them when
        the store does not have their last row yet (a session just ended is never missing)."""
        self._check_open()
        return self._sessions()

    def _sessions(self) -> list[SessionRecord]:
        server, above = self._server, self._above_session
        # Live ones first: one that ends between the two reads is then still live here or
        # already stored there (the server keeps it until its last row has committed).
        live = {s.id: live_record(s) for s in server.running.call(server.sink.live_sessions)}

        def stored(reader: Reader) -> list[SessionRecord]:
            found: list[SessionRecord] = []
            while True:
                page = reader.list_sessions(limit=100, offset=len(found))
                found += [record for record in page if record.id > above]
                if len(page) < 100 or page[-1].id <= above:
                    break
            return found

        merged = {record.id: record for record in server.read(stored)}
        merged.update((sid, record) for sid, record in live.items() if sid > above)
        return [merged[sid] for sid in sorted(merged)]

    def search(self, query: str | None = None, **filters: Any) -> list[CaughtMessage]:
        """The messages matching `query` (the search language of `mailsink list --search`) and
        the filters (`to="ann@x.test"`, `from_=…`, `is_="unread"`: the prefixes as keywords),
        now, oldest first. Rejected ones only with a `status:` term. An address filter given a
        whole address (`rcpt="ann@x.test"`) matches that address whole, any case; given part of
        one (`rcpt="@x.test"`), or in the query (`"rcpt:ann@x.test"`), a substring."""
        self._check_open()
        wanted = _query(query, filters)
        return self._read(wanted.query, whole=wanted.whole)

    def wait_for(
        self,
        query: str | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
        **filters: Any,
    ) -> list[CaughtMessage]:
        """Every matching message (as `search`), as soon as there are `count` of them; woken by
        the sink's events. AssertionError on timeout, saying what arrived."""
        __tracebackhide__ = True  # a failure points at the test, not at this method
        return self._wait(query, count, timeout, filters, None)

    def _wait(
        self,
        query: str | None,
        count: int,
        timeout: float,
        filters: Mapping[str, Any],
        cancel: _Cancel | None,
    ) -> list[CaughtMessage]:
        __tracebackhide__ = True  # a failure points at the test, not at this method
        self._check_open()
        filtered = _query(query, filters)
        parsed = filtered.query
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count: expected a whole number of messages from 1, got {count!r}")
        _check_timeout(timeout)
        found = self._until(
            lambda: self._read(parsed, whole=filtered.whole),
            lambda found: len(found) >= count,
            timeout,
            cancel,
        )
        if len(found) >= count:
            return found
        wanted = f"{_plural(count, 'message')}" + (
            f" matching {_shown(describe(parsed))}" if parsed else ""
        )
        hints = self._envelope_hints(filtered, found)
        raise AssertionError(
            f"timed out after {timeout:g}s waiting for {wanted}: {len(found)} matched"
            f"{_ids(found)}\n{hints}{self.arrivals()}"
        )

    async def wait_for_async(
        self,
        query: str | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
        **filters: Any,
    ) -> list[CaughtMessage]:
        """`wait_for` for an async test (`await mailsink.wait_for_async(...)`): the wait runs
        on a thread of its own, so the test's event loop, and an app sending from it, runs on
        meanwhile (`wait_for` there would block the loop, and the mail would never be sent).
        Cancelled (`asyncio.wait_for(..., 1)`, a task group failing), the wait ends at once:
        its thread is the harness's, not the loop's default executor, and does not outlive it."""
        __tracebackhide__ = True  # a failure points at the test, not at this method
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[CaughtMessage]] = loop.create_future()
        cancel = _Cancel()

        def settle(result: list[CaughtMessage] | None, error: BaseException | None) -> None:
            if answer.done():
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result or [])

        def wait() -> None:
            result, error = None, None
            try:
                result = self._wait(query, count, timeout, filters, cancel)
            except _Cancelled:
                return
            except BaseException as raised:  # handed to the awaiting test, whatever it is
                error = raised
            with contextlib.suppress(RuntimeError):  # (the test's loop is gone)
                loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=wait, name="mailsink wait_for_async", daemon=True).start()
        try:
            return await answer
        finally:
            cancel.cancel()  # (done already: nothing to end)

    def _envelope_hints(self, wanted: _Filter, found: list[CaughtMessage]) -> str:
        """to:, cc: and bcc: are the headers: say so when the envelope has the address."""
        hints = []
        wholes = {id(whole.term): whole for whole in wanted.whole}
        for term in wanted.query.terms if wanted.query else ():
            if term.prefix in ("to", "cc", "bcc") and not term.negated:
                given = term.typed.partition(":")[2]  # (as given: the value may be narrowed)
                envelope = Term("rcpt", "text", term.value, typed=f"rcpt:{given}")
                whole = wholes.get(id(term))
                exact = [_Whole(envelope, whole.value)] if whole is not None else []
                matched = {m.id for m in found}
                others = [
                    m for m in self._read(Query((envelope,)), whole=exact) if m.id not in matched
                ]
                if others:
                    hints.append(
                        f"  note: {term.prefix}: is the header {term.prefix.capitalize()};"
                        f" {_shown(envelope.typed)} (the envelope) matches{_ids(others)}\n"
                    )
        return "".join(hints)

    def _until(
        self,
        read: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float,
        cancel: _Cancel | None = None,
    ) -> T:
        """`read()` until `done` says its result will do, or `timeout` seconds have passed;
        `_Cancelled` as soon as `cancel` is cancelled."""
        __tracebackhide__ = True  # a failure points at the test, not at this method
        result = read()
        if done(result) or timeout <= 0:
            return result
        running, sink = self.running, self.sink
        loop = running.loop
        deadline = loop.time() + timeout
        # Subscribed before the next read: what commits after it wakes the wait.
        subscription = running.call(sink.subscribe, *WAKING_KINDS)

        def close() -> None:
            with contextlib.suppress(RuntimeError):  # (the loop is closed: nothing to close)
                loop.call_soon_threadsafe(subscription.close)

        if cancel is not None:
            # Closing the subscription wakes the blocked wait (its get() stops).
            cancel.on_cancel(close)
        try:
            while True:
                if cancel is not None and cancel.cancelled:
                    raise _Cancelled
                result = read()
                remaining = deadline - loop.time()
                if done(result) or remaining <= 0:
                    return result
                if not running.run(_woken(subscription, remaining), timeout=remaining + 10):
                    if cancel is not None and cancel.cancelled:
                        raise _Cancelled
                    return read()
        finally:
            close()

    # ---- assertions

    def assert_sent(
        self,
        *,
        to: str | Sequence[str] | None = None,
        mail_from: str | None = None,
        from_: str | None = None,
        subject: str | re.Pattern[str] | None = None,
        count: int | None = None,
        timeout: float = 0.0,
        **filters: Any,
    ) -> list[CaughtMessage]:
        """Assert that a message (exactly `count` of them, with `count`) was sent with these
        envelope recipients (`to`: each one accepted at RCPT TO, whole address, any case),
        envelope sender (`mail_from`; "" is the null sender), header From address (`from_`)
        and subject (equal, or `.search` for a pattern), matching the filters as `search`.
        An address may be given with a name ("Ann <ann@x.test>"); a list gives several.
        `timeout`: wait up to that long for it to hold (a 250 means the mail is stored, so 0
        is right for a synchronous sender). Returns the matching messages."""
        __tracebackhide__ = True  # a failure points at the test, not at this method
        self._check_open()
        wanted = _Wanted.make(to, mail_from, from_, subject, _query(None, filters))
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise TypeError(f"count: expected a whole number or None, got {count!r}")
        if count is not None and count < 0:
            raise ValueError(f"count: expected 0 or more, got {count}")
        _check_timeout(timeout)

        def matching() -> list[CaughtMessage]:
            return [m for m in self._read(wanted.query, whole=wanted.whole) if wanted.matches(m)]

        def holds(found: list[CaughtMessage]) -> bool:
            # More than `count` cannot become `count` (mail is not taken back): done, failed.
            return len(found) >= count if count is not None else bool(found)

        found = self._until(matching, holds, timeout)
        if (count is None and found) or len(found) == count:
            return found
        if count is None:
            head = f"no message {wanted.describe()}"
        else:
            head = (
                f"expected {_plural(count, 'message')} {wanted.describe()},"
                f" found {len(found)}{_ids(found)}"
            )
        if timeout > 0:
            head += f" (waited {timeout:g}s)"
        lines = [head, *self._near_misses(wanted, found)]
        raise AssertionError("\n".join(lines) + "\n" + self.arrivals())

    def _near_misses(self, wanted: _Wanted, found: list[CaughtMessage]) -> list[str]:
        """Why the messages that come closest do not match (those one criterion away), and the
        sessions that refused a wanted recipient and delivered nothing."""
        matched = {message.id for message in found}
        everything = self._read(_with_any_status(wanted.query), limit=CONSIDERED)
        candidates = [message for message in everything if message.id not in matched]
        passing = (
            {
                m.id
                for m in self._read(
                    _with_any_status(wanted.query, keep=True), CONSIDERED, wanted.whole
                )
            }
            if wanted.query
            else None
        )
        lines: list[str] = []
        for message in candidates:
            misses = wanted.misses(message, passing)
            if len(misses) == 1:
                lines.append(f"  near miss: {misses[0]}")
        lines = lines[-EXPLAINED:]
        sessions = self._sessions() if wanted.to else []
        for address in wanted.to:
            for session in sessions:
                refusal = session.last_refusal or ""
                if not session.message_count and f"<{address}>" in refusal.casefold():
                    lines.append(
                        f"  {_addr(address)} was refused in session #{session.id}, which"
                        f" delivered nothing: {_shown(refusal)}"
                    )
        return lines

    def assert_no_findings(self, severity: str = "error") -> None:
        """No finding of `severity` or worse ("info" < "warning" < "error") on this view's
        accepted messages; the AssertionError lists each one."""
        __tracebackhide__ = True  # a failure points at the test, not at this method
        self._check_open()
        if severity not in SEVERITIES:
            raise ValueError(f"severity: expected one of {', '.join(SEVERITIES)}, got {severity!r}")
        worst = SEVERITIES[SEVERITIES.index(severity) :]
        lines = [
            f"  #{message.id} {_shown(message.subject)}: {visible(str(finding['kind']))}"
            f" ({visible(str(finding['severity']))}) {visible(str(finding.get('detail', '')))}"
            for message in self._read(None)
            for finding in message.findings
            if finding.get("severity") in worst
        ]
        if lines:
            which = severity if severity == "error" else f"{severity} or worse"
            raise AssertionError(
                f"{_plural(len(lines), 'finding')} of severity {which}:\n"
                + "\n".join(lines)
                + "\n"
                + self.arrivals()
            )

    def clear(self) -> None:
        """Delete every message and finished session of the server (every view's). The
        watermarks stay valid: ids never come back."""
        self._check_open()
        self.running.run(self.sink.clear())

    def arrivals(self) -> str:
        """What arrived in this view, for a developer whose test just failed: the newest
        messages (envelope, headers, refusals, rejections, findings) oldest first, then the
        sessions that delivered nothing or met a refusal or a fault (the app that got 452 at
        RCPT, sent RSET and tried again); every piece of untrusted text made visible."""
        self._check_open()
        above = self._above_message
        everything = Query((_ANY_STATUS,), _ANY_STATUS.typed)

        def newest(reader: Reader) -> tuple[int, list[MessageRecord]]:
            total = len(reader.message_index(include_rejected=True, above=above))
            return total, reader.newest_above(query=everything, above=above, limit=LISTED)

        total, records = self._server.read(newest)
        messages = self._caught(reversed(records))
        noted = [s for s in self._sessions() if not s.message_count or s.refusals or s.faults]
        if not messages and not noted:
            return "(nothing arrived)"
        rejected = sum(message.status != "accepted" for message in messages)
        summary = _plural(total, "message") + (f" ({rejected} rejected)" if rejected else "")
        idle = sum(not session.message_count for session in noted)
        if idle:
            summary += f", {_plural(idle, 'session')} that delivered nothing"
        if len(noted) > idle:
            summary += f", {_plural(len(noted) - idle, 'session')} with refusals or faults"
        lines = [f"arrived: {summary}"]
        for message in messages:
            lines += [f"  {line}" for line in _message_lines(message)]
        if total > len(messages):
            lines.append(f"  … and {total - len(messages)} more, older")
        for session in noted[-LISTED:]:
            lines.append(f"  {_session_line(session)}")
        if len(noted) > LISTED:
            lines.append(f"  … and {len(noted) - LISTED} more sessions, older")
        return "\n".join(lines)

    # ---- faults

    def add_fault(self, rule: Mapping[str, Any] | None = None, /, **keys: Any) -> FaultHandle:
        """Add a run-time fault rule: the keys of a [[fault]] table (`stage="rcpt", reply="452
        4.2.2 Mailbox full", match={"recipient": "ann@x.test"}`), as a dict and/or keywords,
        checked as the config file's (RuleError naming the key). Removed when this view closes."""
        self._check_open()
        if rule is not None and not isinstance(rule, Mapping):
            raise TypeError(f"a fault rule is a dict of [[fault]] keys, got {rule!r}")
        table = {**(rule or {}), **keys}
        server = self._server
        try:
            state = server.running.call(server.faults.add_rule, table)
        except RuleError as error:
            raise _named_rule_error(error) from None
        handle = FaultHandle(self, state.name)
        self._handles.append(handle)
        server.changed(state.name, self)
        return handle

    def fault(self, rule: Mapping[str, Any] | None = None, /, **keys: Any) -> FaultHandle:
        """`add_fault`, for a block: `with mailsink.fault(stage="data", reply="451 4.3.0 Try
        again") as rule:` removes it at the end of the block."""
        return self.add_fault(rule, **keys)

    def remove_fault(self, rule: FaultHandle | str) -> None:
        """Remove a run-time rule, by handle or name (every handle of it keeps its last state).
        LookupError when no rule has that name; RuleError for a preset's or the config
        file's (switch those off instead)."""
        self._check_open()
        if isinstance(rule, FaultHandle):
            rule.remove()
            return
        handled = any(True for _handle in self._server._handles.get(rule, ()))
        if not self._remove_rules([rule]) and not handled:  # (handled: removed over HTTP)
            raise LookupError(f"no fault rule {rule!r} in force")

    def _remove_rules(self, names: Sequence[str]) -> dict[str, RuleState]:
        """Remove the rules `names` still in force, in one call on the server's loop; every
        handle of each keeps its last state (a rule already gone: nothing known). Returns the
        states of those removed."""
        faults = self._server.faults

        def remove() -> dict[str, RuleState]:
            finals = {}
            for name in names:
                try:
                    state = faults.rule(name)
                except KeyError:  # removed by someone else (by name, or the HTTP API)
                    continue
                faults.remove_rule(name)  # (RuleError: a preset's or the config's)
                finals[name] = state
            return finals

        try:
            finals = self.running.call(remove)
        except RuleError as error:
            raise _named_rule_error(error) from None
        server = self._server
        views = {h._mailsink for name in names for h in server._handles.get(name, ())}
        for name in names:
            server.settle(name, finals.get(name) or _gone(name))
            if name in finals:
                server.changed(name, self)
        for view in views:
            view._handles = [h for h in view._handles if not h.removed]
        return finals

    def rule(self, name: str) -> FaultHandle:
        """A handle on any rule in force by name: a preset (`preset: 452 4.3.1 no storage`), the
        config file's, or a run-time one (added over HTTP, say). `disable()` / `enable()`
        switch it (put back when this view closes); in a `with` block, its switch is put back
        at the end (a run-time rule is removed). LookupError naming the rules in force."""
        self._check_open()
        states = self.faults
        state = next((state for state in states if state.name == name), None)
        if state is None:
            names = ", ".join(_shown(state.name) for state in states)
            raise LookupError(f"no fault rule {_shown(name)} in force; the rules in force: {names}")
        return FaultHandle(self, name, origin=state.origin, owned=False)

    def reset_faults(self) -> None:
        """Zero every rule's hits, `times` budgets and rate windows (the rules stay)."""
        self._check_open()
        self.running.call(self._server.faults.reset)

    @property
    def faults(self) -> list[RuleState]:
        """Every rule in force (presets, the config's, run-time ones), in the order tried, with
        hits."""
        self._check_open()
        return self.running.call(self._server.faults.rules)


class _Cancelled(Exception):
    """A wait_for_async's wait ended by its cancellation."""


class _Cancel:
    """A wait's cancellation, set on the test's loop, seen on the wait's thread: a flag, and
    what wakes the wait when it is set (closing its subscription)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self._wake: Callable[[], None] | None = None

    def on_cancel(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wake = wake
            cancelled = self.cancelled
        if cancelled:
            wake()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            wake = self._wake
        if wake is not None:
            wake()


def _unhit(state: RuleState) -> RuleState:
    """A rule's state without its counts: what a change is."""
    return dataclasses.replace(state, hits=0, last_fired_at=None)


def _gone(name: str) -> RuleState:
    """The state of a rule someone else removed before this view could: nothing known."""
    return RuleState(
        name=name,
        stage="",
        action="",
        reply=None,
        delay=0.0,
        enabled=False,
        origin="runtime",
        preset_key=None,
        hits=0,
        last_fired_at=None,
        summary="removed elsewhere",
    )


def _check_timeout(timeout: float) -> None:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 <= timeout <= MAX_TIMEOUT
    ):
        raise ValueError(
            f"timeout: expected seconds from 0 to {MAX_TIMEOUT:g} (a day), got {timeout!r}"
        )


def _ids(found: Sequence[CaughtMessage]) -> str:
    return f" ({', '.join(f'#{m.id}' for m in found)})" if found else ""


def _with_any_status(query: Query | None, *, keep: bool = False) -> Query:
    """`query` over every status: without its terms (`keep=False`: every message), or with its
    terms other than status (`keep=True`: which messages the filters let through)."""
    terms = [t for t in (query.terms if query and keep else ()) if t.prefix != "status"]
    terms.append(_ANY_STATUS)
    return Query(tuple(terms), " ".join(t.typed for t in terms))


@dataclasses.dataclass(frozen=True)
class _Wanted:
    """What assert_sent looks for."""

    to: tuple[str, ...]  # compared forms (_address)
    shown_to: tuple[str, ...]
    mail_from: str | None
    from_: str | None
    subject: str | re.Pattern[str] | None
    query: Query | None
    whole: tuple[_Whole, ...]

    @classmethod
    def make(
        cls,
        to: str | Sequence[str] | None,
        mail_from: str | None,
        from_: str | None,
        subject: str | re.Pattern[str] | None,
        filters: _Filter,
    ) -> _Wanted:
        recipients = [to] if isinstance(to, str) else list(to or ())
        if to is not None and not isinstance(to, str) and not recipients:
            raise ValueError("to=[]: an empty list asks for no recipient; leave `to` out")
        for value, name in ((mail_from, "mail_from"), (from_, "from_")):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name}: expected an address (str), got {value!r}")
        if any(not isinstance(address, str) or not address.strip() for address in recipients):
            raise TypeError(f"to: expected addresses (str), got {to!r}")
        if subject is not None and not isinstance(subject, str | re.Pattern):
            raise TypeError(f"subject: expected a str or a re.Pattern, got {subject!r}")
        if isinstance(subject, re.Pattern) and not isinstance(subject.pattern, str):
            raise TypeError(
                f"subject: {subject!r} is a bytes pattern, and a subject is text: use"
                f" re.compile({subject.pattern.decode(errors='replace')!r})"
            )
        addresses = [_given_address("to", address) for address in recipients]
        sender = _given_address("mail_from", mail_from) if mail_from is not None else None
        return cls(
            to=tuple(_address(a) for a in addresses),
            shown_to=tuple(addresses),
            mail_from=(sender if _address(sender) else "") if sender is not None else None,
            from_=_given_address("from_", from_) if from_ is not None else None,
            subject=subject,
            query=filters.query,
            whole=filters.whole,
        )

    def describe(self) -> str:
        parts = []
        if self.shown_to:
            parts.append(f"to {', '.join(map(_addr, self.shown_to))} (envelope)")
        if self.mail_from is not None:
            parts.append(f"with MAIL FROM:<{_addr(self.mail_from)}>")
        if self.from_ is not None:
            parts.append(f"From {_addr(self.from_)}")
        if isinstance(self.subject, re.Pattern):
            parts.append(f"a Subject matching {_shown(self.subject.pattern)}")
        elif self.subject is not None:
            parts.append(f"Subject {_shown(self.subject)}")
        if self.query:
            parts.append(f"matching {_shown(describe(self.query))}")
        return " ".join(parts) if parts else "at all"

    def matches(self, message: CaughtMessage) -> bool:
        return not self.misses(message, None)

    def misses(self, message: CaughtMessage, passing: set[int] | None) -> list[str]:
        """Each reason `message` is not what is wanted (none: it matches). `passing`: the ids
        the filters let through, None when they have been applied already."""
        misses = []
        number = f"#{message.id}"
        if message.status != "accepted" and (
            self.query is None or self.query.status not in (message.status, "any")
        ):
            misses.append(
                f"{number} was rejected at DATA: {_first_line(message.reply)}"
                f"{_cause(message.reply_rule)}"
            )
        envelope = message.envelope
        accepted = {_address(a) for a in envelope.rcpt_to}
        shown_rcpt = ", ".join(map(_addr, envelope.rcpt_to)) or "none accepted"
        for address, shown in zip(self.to, self.shown_to, strict=True):
            if address in accepted:
                continue
            refused = [r for r in envelope.rcpt_refused if _address(r.address) == address]
            in_header = [
                label
                for label, key in (("To", "to"), ("Cc", "cc"), ("Bcc", "bcc"))
                if address
                in {_address(a) for a in _header_addresses(_header_values(message.headers, key))}
            ]
            if refused:
                last = refused[-1]
                misses.append(
                    f"{_addr(shown)} was refused at RCPT for {number}: {_first_line(last.reply)}"
                    f"{_cause(last.rule, last.reason)}"
                )
            elif in_header:
                misses.append(
                    f"{_addr(shown)} is in the header {'/'.join(in_header)} of {number} but was"
                    f" never an envelope recipient (RCPT TO: {shown_rcpt})"
                )
            else:
                misses.append(
                    f"{_addr(shown)} is not a recipient of {number} (RCPT TO: {shown_rcpt})"
                )
        if self.mail_from is not None and _address(envelope.mail_from) != _address(self.mail_from):
            misses.append(
                f"{number} has MAIL FROM:<{_addr(envelope.mail_from)}>,"
                f" not <{_addr(self.mail_from)}>"
            )
        if self.from_ is not None:
            authors = _header_addresses(_header_values(message.headers, "from"))
            if _address(self.from_) not in {_address(a) for a in authors}:
                shown = ", ".join(map(_addr, authors)) or "(none)"
                misses.append(f"{number} is From {shown}, not {_addr(self.from_)}")
        if self.subject is not None:
            actual = message.subject
            if isinstance(self.subject, re.Pattern):
                if actual is None or not self.subject.search(actual):
                    misses.append(
                        f"{number} has Subject {_shown(actual)}, which does not match"
                        f" {_shown(self.subject.pattern)}"
                    )
            elif actual != self.subject:
                misses.append(f"{number} has Subject {_shown(actual)}, not {_shown(self.subject)}")
        if passing is not None and message.id not in passing:
            assert self.query is not None
            misses.append(f"{number} does not match {_shown(describe(self.query))}")
        return misses


# ---- unittest


class MailsinkTestCase(unittest.TestCase):
    """A TestCase whose every test has `self.mailsink`, a server of its own (stopped after the
    test, failed or not). `mailsink_settings` (Settings) or `mailsink_config` (a TOML file, read
    once for the class) give its fault rules, auth, validation …

        class SignupTest(MailsinkTestCase):
            def test_welcome(self):
                signup("ann@x.test", smtp_port=self.mailsink.port)
                self.mailsink.assert_sent(to="ann@x.test", subject="Welcome")

    A subclass that overrides setUp calls super().setUp() first."""

    mailsink_settings: ClassVar[Settings | None] = None
    mailsink_config: ClassVar[str | Path | None] = None
    mailsink: Mailsink
    _mailsink_loaded: ClassVar[dict[tuple[type, str], Settings]] = {}

    @classmethod
    def _mailsink_settings(cls) -> Settings | None:
        if cls.mailsink_config is None:
            return cls.mailsink_settings
        if cls.mailsink_settings is not None:
            raise TypeError(f"{cls.__name__}: set mailsink_settings or mailsink_config, not both")
        key = (cls, str(cls.mailsink_config))
        if key not in MailsinkTestCase._mailsink_loaded:
            MailsinkTestCase._mailsink_loaded[key] = load(cls.mailsink_config)
        return MailsinkTestCase._mailsink_loaded[key]

    def setUp(self) -> None:
        super().setUp()
        settings = self._mailsink_settings()
        directory = tempfile.mkdtemp(prefix="mailsink-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.mailsink = Mailsink.start(directory, settings=settings)
        self.addCleanup(self.mailsink.close)
