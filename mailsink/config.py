"""Settings: TOML loading with tomllib and validation that names the file and key in every error."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailsink.errors import ConfigError, RuleError
from mailsink.faults.rules import Rule, name_problem, parse_rule
from mailsink.units import parse_duration, parse_size


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"expected a port number 0-65535 (0 picks a free port), got {value!r}")
    return value


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a host name or IP address, got {value!r}")
    return value.strip()


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", value):
        raise ValueError(
            f"expected a host name without spaces (letters, digits, '.', '-'), got {value!r}"
        )
    return value


_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_ALLOWED_HOST_FORM = (
    'a host name such as "mailsink", or "*.example.test" for every name under'
    " example.test, or an IP address"
)

_LIST_THE_NAMES = (
    "a DNS-rebound one too: list the names"
    " ('*.example.test' stands for every name under example.test)"
)


def allowed_host(value: Any) -> str:
    """One name of `[http] allowed_hosts` (or `--http-allowed-host`) as the HTTP guard compares
    it: lower-case, an IP address in its usual spelling, a non-ASCII name in the punycode a
    browser sends. Ports are not part of it: a Host header's port is ignored."""
    if not isinstance(value, str):
        raise ValueError(f"expected {_ALLOWED_HOST_FORM}, got {value!r}")
    name = value.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if name == "*":
        raise ValueError(f"'*' would let any name in, {_LIST_THE_NAMES}")
    if ":" in name or "/" in name:
        raise ValueError(
            f"{value!r}: expected a host name alone, without a scheme or port (any port matches)"
        )
    domain = name.removeprefix("*.").removesuffix(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"expected {_ALLOWED_HOST_FORM}, got {value!r}") from None
    labels = domain.split(".")
    if len(domain) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"expected {_ALLOWED_HOST_FORM}, got {value!r}")
    if name.startswith("*.") and len(labels) == 1:
        # A whole top-level domain is as open as '*': anyone can register a name under it.
        top_level = name.removeprefix("*.").removesuffix(".")
        raise ValueError(f"{value!r} would let any name under .{top_level} in, {_LIST_THE_NAMES}")
    return f"*.{domain}" if name.startswith("*.") else domain


def allowed_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as allowed_host spells each, each once, in the order given."""
    return tuple(dict.fromkeys(allowed_host(name) for name in names))


def _allowed_hosts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(
            f'expected a list of host names such as ["mailsink", "*.example.test"], got {value!r}'
        )
    for number, name in enumerate(value, 1):
        try:
            allowed_host(name)
        except ValueError as error:
            raise ValueError(f"name {number}: {error}") from None
    return allowed_hosts(value)


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size < 1024:
        raise ValueError(f"expected at least 1KiB, got {value!r}")
    return size


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero such as 30s or 5m, got {value!r}")
    return seconds


def _store_path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f'expected a path string ("" = default location, ":memory:"), got {value!r}'
        )
    return value


def _ui_sessions(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise ValueError(f"expected a whole number of browser tabs from 1 to 64, got {value!r}")
    return value


def _max_messages(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of messages of at least 1, got {value!r}")
    return value


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 1025
    hostname: str = "mailsink"
    max_message_size: int = 25 * 1024 * 1024
    timeout: float = 300.0
    bare_lf: str = "accept"  # accept | reject: lines that end in LF alone (see README)
    helo_required: bool = False  # MAIL before HELO/EHLO is served, as Postfix does by default


@dataclass(frozen=True)
class StorageSettings:
    path: str = ""
    max_messages: int = 50_000


@dataclass(frozen=True)
class AuthSettings:
    mode: str = "optional"  # off | optional | required
    users: dict[str, str] = field(default_factory=dict)
    allow_insecure: bool = True


@dataclass(frozen=True)
class TlsSettings:
    starttls: bool = False
    require: bool = False
    implicit_port: int = 0
    cert: str = ""
    key: str = ""

    @property
    def enabled(self) -> bool:
        return self.starttls or self.require or bool(self.implicit_port)


@dataclass(frozen=True)
class ValidationSettings:
    addresses: str = "flag"  # off | flag | reject


@dataclass(frozen=True)
class FaultSettings:
    seed: int = 0


@dataclass(frozen=True)
class TagSettings:
    plus_addresses: bool = False  # user+signup@x tags the message "signup"


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025  # Mailpit's and MailHog's, so that their clients' defaults find mailsink
    users: dict[str, str] = field(default_factory=dict)  # HTTP Basic auth for every route
    # Host header names served beyond the built-in ones (IP addresses, localhost, this
    # machine's names): the defence against DNS rebinding (web_service._foreign).
    allowed_hosts: tuple[str, ...] = ()
    # The terminal UI in a browser at `/` of the same port (mailsink.http.web_ui), and how many
    # browser tabs may run one at once (each is a `mailsink tui --attach` process).
    ui: bool = True
    ui_sessions: int = 8


@dataclass(frozen=True)
class RelaySettings:
    """Where `mailsink release` (and the TUI, the HTTP API, auto release) sends a message: off
    until `host` is set. Never a relay for anything else: mailsink sends only on request, or
    with `auto` to `auto_recipients`, and only to `allowed_recipients`."""

    host: str = ""  # "" = not configured: releasing is off
    port: int = 0  # 0 = by `tls`: 587 (starttls), 465 (implicit), 25 (none)
    tls: str = "starttls"  # starttls | implicit | none
    verify: bool = True  # check the upstream's certificate and name
    ca_file: str = ""  # a PEM bundle to verify against instead of the system's
    username: str = ""
    # The secret: one of these three (the value itself, a file holding it, or the name of an
    # environment variable holding it). Never in a repr, a log line or a transcript.
    password: str = field(default="", repr=False)
    password_file: str = ""
    password_env: str = ""
    helo: str = ""  # "" = this machine's fully qualified name (socket.getfqdn())
    mail_from: str = ""  # "" = the message's own envelope sender
    allowed_recipients: tuple[str, ...] = ()  # globs; required: empty = nothing releasable
    timeout: float = 30.0  # each connect and each reply
    trace_header: bool = False  # prepend X-Mailsink-Released-From (off: bytes unchanged)
    auto: bool = False  # release matching mail by itself, after it is stored
    auto_recipients: tuple[str, ...] = ()  # globs: whose envelope recipients auto release
    auto_retries: int = 5  # tries of one auto release that failed temporarily, backoff between

    @property
    def configured(self) -> bool:
        return bool(self.host)

    @property
    def upstream(self) -> str:
        """host:port as connected to (the port chosen by `tls` when none is given)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.effective_port}"

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "implicit": 465}.get(self.tls, 25)


@dataclass(frozen=True)
class Settings:
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    tags: TagSettings = field(default_factory=TagSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    rules: tuple[Rule, ...] = ()
    source: Path | None = None

    def with_overrides(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        db: str | None = None,
        http_port: int | None = None,
        http_host: str | None = None,
        http: bool | None = None,
        http_allowed_hosts: Iterable[str] | None = None,
        web_ui: bool | None = None,
    ) -> Settings:
        """Command-line options win over the file (`http=False`: --no-http, `web_ui=False`:
        --no-web-ui); the names of
        `http_allowed_hosts` (--http-allowed-host) are added to the file's."""
        smtp = self.smtp
        if host is not None:
            smtp = dataclasses.replace(smtp, host=host)
        if port is not None:
            smtp = dataclasses.replace(smtp, port=port)
        storage = self.storage if db is None else dataclasses.replace(self.storage, path=db)
        web = self.http
        if http_port is not None:
            web = dataclasses.replace(web, port=http_port)
        if http_host is not None:
            web = dataclasses.replace(web, host=http_host)
        if http is not None:
            web = dataclasses.replace(web, enabled=http)
        if web_ui is not None:
            web = dataclasses.replace(web, ui=web_ui)
        if http_allowed_hosts:
            names = allowed_hosts([*web.allowed_hosts, *http_allowed_hosts])
            web = dataclasses.replace(web, allowed_hosts=names)
        return dataclasses.replace(self, smtp=smtp, storage=storage, http=web)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not allowed; use one of: {', '.join(allowed)}")
        return value

    return convert


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _users(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError('expected a table of login = "password" strings')
    return dict(value)


def _file_path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a file path string ("" = generated), got {value!r}')
    return value


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0 (0 = random), got {value!r}")
    return value


def _globs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            'expected a list of address globs such as ["*@example.test", "me+*@gmail.com"],'
            f" got {value!r}"
        )
    globs = []
    for number, item in enumerate(value, 1):
        glob = item.strip()
        if not glob or any(c.isspace() for c in glob) or "@" not in glob:
            raise ValueError(
                f"glob {number}: {item!r} is not an address glob (local@domain, '*' for any"
                " run of characters, '?' for one), such as \"*@example.test\""
            )
        globs.append(glob.lower())
    return tuple(dict.fromkeys(globs))


def _relay_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(
            f"expected a port number 1-65535 (0 = by tls: 587, 465 or 25), got {value!r}"
        )
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'expected an address such as "dev@example.test", got {value!r}')
    from mailsink.mail.addresses import syntax_error

    problem = syntax_error(value.strip())
    if problem:
        raise ValueError(f"{value!r} is not an address the upstream can take: {problem}")
    return value.strip()


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(
            f'expected an environment variable name such as "RELAY_PASSWORD", got {value!r}'
        )
    return value


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 20:
        raise ValueError(f"expected a whole number of tries from 1 to 20, got {value!r}")
    return value


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")  # never quoted: it is the secret
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def check_relay(relay: RelaySettings) -> tuple[str, str] | None:
    """What is wrong with a [relay] table as a whole: (key, problem), None when nothing."""
    if not relay.host:
        return ("host", "required in [relay]: the server to release messages to")
    secrets = [key for key in ("password", "password_file", "password_env") if getattr(relay, key)]
    if len(secrets) > 1:
        return (
            secrets[1],
            f"give one of password, password_file, password_env, not {' and '.join(secrets)}",
        )
    if secrets and not relay.username:
        return ("username", f"required with {secrets[0]}")
    if relay.username and not secrets:
        return ("username", "needs password, password_file or password_env beside it")
    if relay.password_file:
        problem = _unreadable(relay.password_file)
        if problem:
            return ("password_file", problem)
    if relay.auto and not relay.auto_recipients:
        return (
            "auto_recipients",
            "required with auto = true: the recipients to release to by themselves",
        )
    if relay.ca_file:
        problem = _unreadable(relay.ca_file)
        if problem:
            return ("ca_file", problem)
    return None


def _unreadable(path: str) -> str | None:
    try:
        with open(os.path.expanduser(path), "rb"):
            return None
    except OSError as error:
        return f"{path}: cannot read: {error.strerror or error}"


# section -> key -> converter raising ValueError with what is allowed
_SCHEMA: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "smtp": (
        SmtpSettings,
        {
            "host": _host,
            "port": _port,
            "hostname": _hostname,
            "max_message_size": _positive_size,
            "timeout": _positive_duration,
            "bare_lf": _choice("accept", "reject"),
            "helo_required": _flag,
        },
    ),
    "storage": (StorageSettings, {"path": _store_path, "max_messages": _max_messages}),
    "auth": (
        AuthSettings,
        {
            "mode": _choice("off", "optional", "required"),
            "users": _users,
            "allow_insecure": _flag,
        },
    ),
    "tls": (
        TlsSettings,
        {
            "starttls": _flag,
            "require": _flag,
            "implicit_port": _port,
            "cert": _file_path,
            "key": _file_path,
        },
    ),
    "validation": (ValidationSettings, {"addresses": _choice("off", "flag", "reject")}),
    "faults": (FaultSettings, {"seed": _seed}),
    "tags": (TagSettings, {"plus_addresses": _flag}),
    "http": (
        HttpSettings,
        {
            "enabled": _flag,
            "host": _host,
            "port": _port,
            "users": _users,
            "allowed_hosts": _allowed_hosts,
            "ui": _flag,
            "ui_sessions": _ui_sessions,
        },
    ),
    "relay": (
        RelaySettings,
        {
            "host": _host,
            "port": _relay_port,
            "tls": _choice("starttls", "implicit", "none"),
            "verify": _flag,
            "ca_file": _file_path,
            "username": _text,
            "password": _secret,
            "password_file": _file_path,
            "password_env": _env_name,
            "helo": _hostname,
            "mail_from": _address,
            "allowed_recipients": _globs,
            "timeout": _positive_duration,
            "trace_header": _flag,
            "auto": _flag,
            "auto_recipients": _globs,
            "auto_retries": _retries,
        },
    ),
}


def parse(data: dict[str, Any], file: Path | None = None, text: str = "") -> Settings:
    """Validate a decoded TOML document into Settings; `text` lets errors carry a line number."""

    def error(message: str, key: str, section: str, index: int | None = None) -> ConfigError:
        return ConfigError(message, file=file, key=key, line=locate(text, section, key, index))

    sections: dict[str, Any] = {}
    rules: list[Rule] = []
    for section, body in data.items():
        if section == "fault":
            rules = _parse_rules(body, error)
            continue
        if section not in _SCHEMA:
            allowed = ", ".join([*(f"[{name}]" for name in _SCHEMA), "[[fault]]"])
            raise error(f"unknown section; allowed: {allowed}", f"[{section}]", section)
        if not isinstance(body, dict):
            raise error("expected a table", f"[{section}]", section)
        cls, converters = _SCHEMA[section]
        values = {}
        for key, raw in body.items():
            dotted = f"{section}.{key}"
            if key not in converters:
                allowed = ", ".join(converters)
                raise error(f"unknown key; allowed in [{section}]: {allowed}", dotted, section)
            try:
                values[key] = converters[key](raw)
            except ValueError as invalid:
                raise error(str(invalid), dotted, section) from None
        sections[section] = cls(**values)
        if section == "relay":
            problem = check_relay(sections[section])
            if problem is None and "allowed_recipients" not in body:
                problem = (
                    "allowed_recipients",
                    "required in [relay]: the recipients a release may go to, as globs such as"
                    ' ["*@example.test"] ([] = none)',
                )
            if problem:
                raise error(problem[1], f"relay.{problem[0]}", section)
    names = [rule.name for rule in rules]
    for index, name in enumerate(names):
        clash = name_problem(name, names[:index])
        if clash:
            raise error(clash, f"fault[{index + 1}].name", "fault", index)
    return Settings(**sections, rules=tuple(rules), source=file)


def _parse_rules(body: Any, error: Callable[..., ConfigError]) -> list[Rule]:
    if not isinstance(body, list):
        raise error("write each rule as a [[fault]] table", "fault", "fault")
    rules = []
    for index, table in enumerate(body):
        try:
            rules.append(parse_rule(table, index))
        except RuleError as problem:
            key = f"fault[{index + 1}]" + (f".{problem.key}" if problem.key else "")
            raise error(str(problem), key, "fault", index) from None
    return rules


_TABLE_HEADER = re.compile(r"^\s*\[")
_MATCH_HEADER = re.compile(r"^\s*\[\s*fault\.match\s*\]")


def locate(text: str, section: str, key: str, index: int | None = None) -> int | None:
    """The line of `key` in `section` (the index-th [[fault]] for rules), else of the section."""
    if not text:
        return None
    lines = text.splitlines()
    leaf = key.rsplit(".", 1)[-1].split("[")[0].strip("[]")
    if section == "fault":
        header = re.compile(r"^\s*\[\[\s*fault\s*\]\]")
    else:
        header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*\]")
    starts = [number for number, line in enumerate(lines) if header.match(line)]
    if not starts:
        return None
    start = starts[min(index or 0, len(starts) - 1)]
    assignment = re.compile(rf"^\s*{re.escape(leaf)}\s*=")
    inline = re.compile(rf"[{{,]\s*{re.escape(leaf)}\s*=")
    nested = ".match." in key
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if _TABLE_HEADER.match(line) and not _MATCH_HEADER.match(line):
            break
        if assignment.match(line) or (nested and inline.search(line)):
            return number + 1
    return start + 1


# A config file is a few KiB; anything this large is a mistake (or /dev/zero), not a config.
MAX_CONFIG_SIZE = 1024 * 1024

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read(file: Path) -> bytes:
    """The file's bytes, refusing what is not a regular file or is over MAX_CONFIG_SIZE."""
    # O_NONBLOCK: opening a named pipe would otherwise wait for a writer for ever.
    descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
            raise ConfigError(f"not a regular file ({kind})", file=file)
        stream = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with stream:
        data = stream.read(MAX_CONFIG_SIZE + 1)  # bounded: the file may grow while it is read
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError("larger than 1 MiB, too large for a config file", file=file)
    return data


def load(path: str | Path) -> Settings:
    """Read and validate a TOML config file."""
    file = Path(path)
    try:
        text = _read(file).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read: {error}", file=file) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line = re.search(r"line (\d+)", str(error))
        raise ConfigError(
            f"invalid TOML: {error}", file=file, line=int(line.group(1)) if line else None
        ) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables by recursion
        raise ConfigError("invalid TOML: arrays or tables nested too deeply", file=file) from None
    return parse(data, file, text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
