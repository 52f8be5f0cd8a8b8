"""POST /api/v1/send: a message given as JSON in Mailpit's SendRequest shape (server/apiv1/
send.go, swaggerParams.go), built with the standard library's email package and stored as an
SMTP client's message is (SmtpServer.inject): envelope MAIL FROM = From.Email, RCPT TO = To, Cc
and Bcc in that order; Bcc only on the envelope, never in the bytes; Tags as Mailpit writes
them, an X-Tags header (which the store reads as it reads SMTP's); a session of its own whose
peer and HELO say it came from the HTTP API. Answers {"ID": "<id>"}.

Errors are 400 with Mailpit's words where it has them, as JSON with both `Error` (Mailpit's key)
and `error` (the rest of the API's); a message larger than [smtp] max_message_size is 413.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import mimetypes
import re
from dataclasses import dataclass
from email import policy
from email.errors import HeaderDefect
from email.headerregistry import Address, ContentTypeHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any, cast

from aiohttp import BasicAuth, web

from mailsink.http.request_params import containers_refused, too_many_containers
from mailsink.http.routing import ApiRoutes
from mailsink.mail.addresses import syntax_error
from mailsink.mail.envelope import Envelope
from mailsink.units import format_bytes

routes = ApiRoutes("Mailpit")

HELO = "mailsink HTTP API"  # the session's HELO: no client said one
ROUTE = "POST /api/v1/send"
# Mailpit refuses these in Headers (tools.InArray: any case); X-Tags too when Tags is given.
# The MIME headers are the builder's as well: one from the request would contradict the parts.
RESTRICTED = {
    "to",
    "from",
    "cc",
    "bcc",
    "reply-to",
    "date",
    "subject",
    "content-type",
    "mime-version",
    "content-transfer-encoding",
}
_HEADER_NAME = re.compile(r"[!-9;-~]{1,200}")  # RFC 5322 ftext
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_LINE_BREAKS = re.compile(r"[\r\n\x00]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON text that may hold a lone surrogate: an escape of one, or one written as raw bytes
# (json.loads decodes bytes with surrogatepass).
_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_HEADERS = HeaderRegistry()
# Arrays and objects a SendRequest may hold: one per address (To, Cc, ReplyTo), attachment,
# and Tags, Bcc, Headers, From: a message to 1000 recipients with 100 attachments has ~1100.
# 100 000 is about 40 ms of json.loads (each holds the GIL ~0.4 µs); brackets in strings
# (CSS in the HTML) do not count.
SEND_CONTAINERS = 100_000
_CANONICAL = {"from": "From", "to": "To", "cc": "Cc", "bcc": "Bcc", "replyto": "ReplyTo"}

_ADDRESS = {
    "type": "object",
    "required": ["Email"],
    "properties": {"Name": {"type": "string"}, "Email": {"type": "string"}},
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["From"],
    "properties": {
        "From": _ADDRESS,
        "To": {"type": "array", "items": _ADDRESS},
        "Cc": {"type": "array", "items": _ADDRESS},
        "Bcc": {"type": "array", "items": {"type": "string"}, "example": ["jack@example.com"]},
        "ReplyTo": {"type": "array", "items": _ADDRESS},
        "Subject": {"type": "string"},
        "Text": {"type": "string"},
        "HTML": {"type": "string"},
        "Attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["Content", "Filename"],
                "properties": {
                    "Content": {"type": "string", "description": "base64"},
                    "Filename": {"type": "string"},
                    "ContentType": {"type": "string"},
                    "ContentID": {"type": "string", "description": "set: attached inline"},
                },
            },
        },
        "Tags": {"type": "array", "items": {"type": "string"}},
        "Headers": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class SendError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Built:
    raw: bytes
    envelope: Envelope


def _field(data: dict[str, Any], key: str) -> Any:
    """A key as Go's encoding/json finds it: exactly, else in any case."""
    if key in data:
        return data[key]
    lowered = key.lower()
    return next((value for name, value in data.items() if name.lower() == lowered), None)


def _string(data: dict[str, Any], key: str, where: str) -> str:
    value = _field(data, key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SendError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = _field(data, key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SendError(f"{key}: expected an array, got {type(value).__name__}")
    return value


def _without_surrogates(data: Any) -> Any:
    """The decoded JSON with each lone surrogate replaced by U+FFFD, as Go's encoding/json
    decodes one: a string holding one cannot be encoded, and \\udc80-\\udcff would otherwise
    be written as the raw 8-bit bytes they stand for. (json.loads joins a pair into one
    character, so a surrogate left is a lone one.) Walked with a stack: no recursion."""

    def clean(value: Any) -> Any:
        return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value

    root = [clean(data)]
    stack: list[Any] = [root]
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            items = list(container.items())
            container.clear()
            for key, value in items:
                container[clean(key)] = value = clean(value)
                if isinstance(value, dict | list):
                    stack.append(value)
        else:
            for index, value in enumerate(container):
                container[index] = value = clean(value)
                if isinstance(value, dict | list):
                    stack.append(value)
    return root[0]


def _one_line(text: str, where: str) -> str:
    if _LINE_BREAKS.search(text):
        raise SendError(f"{where}: may not contain CR, LF or NUL")
    return text


def _address(item: Any, where: str, what: str) -> tuple[str, str]:
    """(name, email) of one {Email, Name}; a plain string is an address without a name."""
    if isinstance(item, str):
        name, email = "", item
    elif isinstance(item, dict):
        name = _string(item, "Name", f"{where}.Name")
        email = _string(item, "Email", f"{where}.Email")
    else:
        raise SendError(f"{where}: expected an object with Email and Name")
    email = _one_line(email.strip(), f"{where}.Email")
    given = email
    if email.endswith(">") and "<" in email:
        # "Ann <ann@x.test>", which Go's mail.ParseAddress (Mailpit's check) takes: the
        # address is what is inside the brackets, the name the one given, else this one.
        # Go refuses more than one ("Ann <a@x.test>, Bob <b@x.test>", "a@x.test <b@x.test>":
        # "expected single address"), where parseaddr would keep the first and drop the rest.
        found = getaddresses([email])
        if len(found) != 1 or not found[0][1]:
            raise SendError(f"invalid {what} address: {given} (expected a single address)")
        parsed_name, parsed_email = found[0]
        email, name = parsed_email, name or parsed_name
    problem = syntax_error(email)
    if problem:
        # Mailpit's words ("invalid To address: x"), then email-validator's reason.
        raise SendError(f"invalid {what} address: {given} ({problem})")
    return _one_line(name, f"{where}.Name"), email


def _header_address(name: str, email: str) -> Address:
    try:
        return Address(display_name=name, addr_spec=email)  # a quoted local part stays one
    except (ValueError, IndexError, HeaderDefect):
        pass
    # headerregistry's parser refuses a non-ASCII local part that email-validator accepted
    # (SMTPUTF8): given as its parts, it is written as it is.
    local, _, domain = email.rpartition("@")
    try:
        return Address(display_name=name, username=local, domain=domain)
    except (ValueError, IndexError) as error:
        raise SendError(f"invalid address: {email} ({error})") from None


def _media_type(value: str, where: str) -> tuple[str, dict[str, str]]:
    """`type/subtype; name=value...` (Mailpit sets the whole given value as the part's
    Content-Type): the media type, lower case, and its parameters."""
    media = value.partition(";")[0].strip()
    if not _CONTENT_TYPE.fullmatch(media):
        raise SendError(f"{where}: expected type/subtype, got {value[:80]!r}")
    _one_line(value, where)
    try:
        parsed = cast("ContentTypeHeader", _HEADERS("content-type", value))
        params = {str(k): str(v) for k, v in parsed.params.items()}
    except Exception:  # parameters email cannot read are left out, as a reader would
        params = {}
    return media.lower(), params


Attachment = tuple[bytes, str, dict[str, str], str, str]


def _attachment(item: Any, index: int) -> Attachment:
    where = f"Attachments[{index}]"
    if not isinstance(item, dict):
        raise SendError(f"{where}: expected an object with Content and Filename")
    filename = _one_line(_string(item, "Filename", f"{where}.Filename"), f"{where}.Filename")
    content = _string(item, "Content", f"{where}.Content")
    # As Mailpit: what JavaScript's readAsDataURL gives ("data:image/png;base64,...") works.
    encoded = re.sub(r"\s+", "", content.rsplit(",", 1)[-1])
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise SendError(f'error decoding base64 attachment "{filename}": {error}') from None
    given = _string(item, "ContentType", f"{where}.ContentType").strip()
    params: dict[str, str] = {}
    if given:
        content_type, params = _media_type(given, f"{where}.ContentType")
    else:
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    cid = _one_line(_string(item, "ContentID", f"{where}.ContentID"), f"{where}.ContentID")
    return data, content_type, params, filename, cid.strip().strip("<>")


def _content(text: str, html: str, inlines: list[Attachment]) -> MIMEPart:
    """The message's content as enmime lays it out (Mailpit's builder): text, or
    alternative(text, html), inside related(..., inlines) when there are inline parts; the
    attachments go around it (multipart/mixed) once it is the message's."""
    part = MIMEPart(policy=policy.default)
    # Mailpit always has a text part, empty or not. Non-ASCII text is quoted-printable, as
    # enmime writes it, never 8bit: the body is then ASCII however the message is carried.
    part.set_content(text, cte=None if text.isascii() else "quoted-printable")
    if html:
        part.add_alternative(
            html, subtype="html", cte=None if html.isascii() else "quoted-printable"
        )
    if not inlines:
        return part
    # The standard library cannot turn an alternative into a related part: made by hand.
    related = MIMEPart(policy=policy.default)
    related["Content-Type"] = "multipart/related"
    related.set_payload([part])
    for content, content_type, params, filename, cid in inlines:
        maintype, _, subtype = content_type.partition("/")
        related.add_related(
            content,
            maintype,
            subtype,
            cid=f"<{cid}>",
            filename=filename or None,
            disposition="inline",
            params=params or None,
        )
    return related


def _message(
    sender: tuple[str, str],
    recipients: dict[str, list[tuple[str, str]]],
    subject: str,
    tags: list[str],
    headers: dict[str, str],
    text: str,
    html: str,
    attachments: list[Attachment],
) -> EmailMessage:
    from_name, from_email = sender
    message = EmailMessage(policy=policy.default)
    message["From"] = _header_address(from_name, from_email)
    for key, header in (("To", "To"), ("Cc", "Cc"), ("ReplyTo", "Reply-To")):
        if recipients[key]:
            message[header] = [_header_address(n, e) for n, e in recipients[key]]
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=from_email.rpartition("@")[2] or "mailsink")
    if tags:
        message["X-Tags"] = ", ".join(_one_line(tag, "Tags") for tag in tags)
    try:
        for name, value in headers.items():
            del message[name]
            message[name] = value
    except (ValueError, TypeError) as error:
        raise SendError(f"Headers: {error}") from None
    content = _content(text, html, [item for item in attachments if item[4]])
    message["MIME-Version"] = "1.0"
    for name, value in content.items():
        message[name] = value
    message.set_payload(content.get_payload())
    for data, content_type, params, filename, cid in attachments:
        if not cid:
            maintype, _, subtype = content_type.partition("/")
            message.add_attachment(
                data, maintype, subtype, filename=filename or None, params=params or None
            )
    return message


def build(body: bytes, limit: int, peer: str, auth_user: str | None) -> Built:
    """The request body -> the message's bytes and its envelope; SendError saying what is
    wrong. Runs on a worker thread: JSON of up to ~35 MB, base64 and MIME are not the loop's."""
    # Before json.loads, which holds the GIL (and so the SMTP server's loop) while it builds
    # each array and object: 33 MB of `[[[[[]]]]]` took 8 s.
    if too_many_containers(body, SEND_CONTAINERS):
        raise SendError(containers_refused(SEND_CONTAINERS), 413)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise SendError(f"the body is not JSON: {error}"[:200]) from None
    if not isinstance(data, dict):
        raise SendError("expected a JSON object (Mailpit's SendRequest)")
    # (`in` first: a search of megabytes of base64 by the pattern would hold the GIL longer.)
    if (b"\\u" in body or b"\xed" in body) and _MAY_HOLD_SURROGATE.search(body):
        data = _without_surrogates(data)
    sender = _field(data, "From")
    if not isinstance(sender, dict | None):
        raise SendError("From: expected an object with Email and Name")
    recipients: dict[str, list[tuple[str, str]]] = {}
    for key, what in (("To", "To"), ("Cc", "Cc"), ("Bcc", "Bcc"), ("ReplyTo", "Reply-To")):
        recipients[key] = [
            _address(item, f"{key}[{index}]", what) for index, item in enumerate(_list(data, key))
        ]
    tags = _list(data, "Tags")
    if not all(isinstance(tag, str) for tag in tags):
        raise SendError("Tags: expected an array of strings")
    restricted = RESTRICTED | ({"x-tags"} if tags else set())
    headers = _field(data, "Headers") or {}
    if not isinstance(headers, dict):
        raise SendError("Headers: expected an object of names and values")
    for name, value in headers.items():
        if name.lower() in restricted:
            raise SendError(f'cannot overwrite header: "{name}"')
        if not _HEADER_NAME.fullmatch(name):
            raise SendError(f"Headers: {name[:80]!r} is not a header name")
        if not isinstance(value, str):
            raise SendError(f"Headers.{name}: expected a string")
        _one_line(value, f"Headers.{name}")
    attachments = [_attachment(item, i) for i, item in enumerate(_list(data, "Attachments"))]
    from_name, from_email = "", ""
    if sender:
        from_name = _one_line(_string(sender, "Name", "From.Name"), "From.Name")
        from_email = _one_line(_string(sender, "Email", "From.Email").strip(), "From.Email")
    subject = _one_line(_string(data, "Subject", "Subject"), "Subject")
    # enmime's Build refuses these, and Mailpit answers with its words.
    if not from_email:
        raise SendError("error building message: from not set")
    if not subject:
        raise SendError("error building message: subject not set")
    # Once each, whatever its case (as SMTP's RCPT list is checked): a hidden address given
    # twice is one recipient and one hidden_recipient finding.
    envelope_rcpts: list[str] = []
    seen: set[str] = set()
    for key in ("To", "Cc", "Bcc"):
        for _, email in recipients[key]:
            if email.casefold() not in seen:
                seen.add(email.casefold())
                envelope_rcpts.append(email)
    if not envelope_rcpts:
        raise SendError("error building message: no recipients (to, cc, bcc) set")
    problem = syntax_error(from_email)
    if problem:
        raise SendError(f"invalid From address: {from_email} ({problem})")
    text = _string(data, "Text", "Text")
    html = _string(data, "HTML", "HTML")

    utf8 = not all(address.isascii() for address in [from_email, *envelope_rcpts])
    try:
        raw = _message(
            (from_name, from_email), recipients, subject, tags, headers, text, html, attachments
        ).as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
    except SendError:
        raise
    except Exception as error:
        # The email package raises many kinds for what it cannot write; each is the request's
        # (enmime's Build and Encode errors, in Mailpit's words), never a 500.
        raise SendError(f"error building message: {error}"[:300]) from None
    if len(raw) > limit:
        raise SendError(
            f"the message ({format_bytes(len(raw))}) is larger than [smtp] max_message_size"
            f" ({format_bytes(limit)})",
            413,
        )
    envelope = Envelope(
        mail_from=from_email,
        rcpt_to=envelope_rcpts,
        mail_options=["SMTPUTF8"] if utf8 else [],
        rcpt_options=[[] for _ in envelope_rcpts],
        helo=HELO,
        peer=peer,
        auth_user=auth_user,
    )
    return Built(raw, envelope)


def _error(error: SendError) -> web.Response:
    from mailsink.http.web_service import json_response

    return json_response({"Error": error.message, "error": error.message}, error.status)


def _auth_user(request: web.Request) -> str | None:
    """The Basic auth login, as Mailpit records the HTTP user as the message's (the guard
    checked it already when [http] users is set)."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    try:
        return BasicAuth.decode(header).login or None
    except ValueError:
        return None


@routes.post(
    "/api/v1/send",
    "Mailpit: send a message (stored as SMTP stores one, in a session marked as the API's)",
    body=SCHEMA,
    responses={
        "400": "A bad field (named; Mailpit's words where it has them)",
        "413": "Larger than [smtp] max_message_size",
        "503": "The store cannot take it",
    },
)
async def send_message(request: web.Request) -> web.StreamResponse:
    from mailsink.http.web_service import SINK, json_response

    sink = request.app[SINK]
    if sink.server is None:
        return _error(SendError("no SMTP server here: this is a view of another's store", 503))
    limit = sink.settings.smtp.max_message_size
    body = await request.read()
    ip = request.remote or "unknown"
    try:
        built = await asyncio.to_thread(build, body, limit, f"http:{ip}", _auth_user(request))
    except SendError as error:
        return _error(error)
    del body  # the JSON's copy of a big message need not live through the commit
    stored = await sink.server.inject(
        built.raw, built.envelope, f"message given by {ROUTE} from {ip}"
    )
    return json_response({"ID": str(stored.id)})
