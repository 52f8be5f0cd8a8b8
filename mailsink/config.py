"""Settings: TOML loading with tomllib and validation that names the file and key in every error."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """A config problem, phrased for the user: where it is and what is allowed."""

    def __init__(self, message: str, *, file: Path | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ", ".join(part for part in (str(file) if file else "", key or "") if part)
        super().__init__(f"{where}: {message}" if where else message)


def parse_size(value: int | str) -> int:
    """'25MiB' -> 26214400; plain integers are bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 25MiB or 1000000")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(
            f"{value!r} is not a size; use a number with B, KB, KiB, MB, MiB, GB or GiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: int | float | str) -> float:
    """'5m' -> 300.0; '250ms' -> 0.25; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use a number with ms, s, m or h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


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


@dataclass(frozen=True)
class StorageSettings:
    path: str = ""
    max_messages: int = 50_000


@dataclass(frozen=True)
class Settings:
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    source: Path | None = None

    def with_overrides(
        self, *, host: str | None = None, port: int | None = None, db: str | None = None
    ) -> Settings:
        """Command-line options win over the file."""
        smtp = self.smtp
        if host is not None:
            smtp = dataclasses.replace(smtp, host=host)
        if port is not None:
            smtp = dataclasses.replace(smtp, port=port)
        storage = self.storage if db is None else dataclasses.replace(self.storage, path=db)
        return dataclasses.replace(self, smtp=smtp, storage=storage)


# section -> key -> (converter raising ValueError, what is allowed)
_SCHEMA: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "smtp": (
        SmtpSettings,
        {
            "host": _host,
            "port": _port,
            "hostname": _hostname,
            "max_message_size": _positive_size,
            "timeout": _positive_duration,
        },
    ),
    "storage": (StorageSettings, {"path": _store_path, "max_messages": _max_messages}),
}


def parse(data: dict[str, Any], file: Path | None = None) -> Settings:
    """Validate a decoded TOML document into Settings."""
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            allowed = ", ".join(f"[{name}]" for name in _SCHEMA)
            raise ConfigError(f"unknown section; allowed: {allowed}", file=file, key=f"[{section}]")
        if not isinstance(body, dict):
            raise ConfigError("expected a table", file=file, key=f"[{section}]")
        cls, converters = _SCHEMA[section]
        values = {}
        for key, raw in body.items():
            dotted = f"{section}.{key}"
            if key not in converters:
                allowed = ", ".join(converters)
                raise ConfigError(
                    f"unknown key; allowed in [{section}]: {allowed}", file=file, key=dotted
                )
            try:
                values[key] = converters[key](raw)
            except ValueError as error:
                raise ConfigError(str(error), file=file, key=dotted) from None
        sections[section] = cls(**values)
    return Settings(**sections, source=file)


def load(path: str | Path) -> Settings:
    """Read and validate a TOML config file."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read: {error}", file=file) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid TOML: {error}", file=file) from None
    return parse(data, file)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
