"""Config files: parsing, every sample config, errors that name file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from mailsink.config import (
    ConfigError,
    Settings,
    SmtpSettings,
    StorageSettings,
    load,
    parse_duration,
    parse_size,
)

SAMPLES = sorted((ROOT / "sample_configs").glob("*.toml"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("25MiB", 25 * 1024 * 1024),
        ("10 KB", 10_000),
        ("512", 512),
        ("1.5MiB", 1572864),
        (2048, 2048),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"), [("5m", 300.0), ("250ms", 0.25), ("30s", 30.0), ("2h", 7200.0), (7, 7.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 parsecs", "-1", "MiB", True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_there_are_sample_configs():
    assert {p.name for p in SAMPLES} >= {"default.toml"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_config_loads(path):
    settings = load(path)
    assert settings.source == path


def test_default_sample_lists_every_key_with_its_default():
    settings = load(ROOT / "sample_configs" / "default.toml")
    defaults = Settings()
    text = (ROOT / "sample_configs" / "default.toml").read_text()
    for section in ("smtp", "storage", "auth", "tls", "validation", "faults", "tags"):
        assert getattr(settings, section) == getattr(defaults, section), section
        for name in type(getattr(defaults, section)).__dataclass_fields__:
            assert f"\n{name} = " in text, f"{section}.{name}"
    # the example rule documents every rule key, and is off
    (example,) = settings.rules
    assert not example.enabled
    for key in ("name", "stage", "reply", "action", "delay", "probability", "times", "rate"):
        assert f"\n{key} = " in text, key


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailsink.toml"
    path.write_text(text)
    return path


def test_values_are_parsed(tmp_path):
    settings = load(
        write(
            tmp_path,
            '[smtp]\nport = 2525\nmax_message_size = "1MiB"\ntimeout = "30s"\n'
            '[storage]\npath = "/tmp/x.db"\nmax_messages = 10\n',
        )
    )
    assert settings.smtp.port == 2525
    assert settings.smtp.max_message_size == 1024 * 1024
    assert settings.smtp.timeout == 30.0
    assert settings.storage == StorageSettings(path="/tmp/x.db", max_messages=10)


def test_command_line_overrides_the_file():
    settings = Settings(smtp=SmtpSettings(port=2525)).with_overrides(port=3000, db=":memory:")
    assert settings.smtp.port == 3000 and settings.storage.path == ":memory:"
    assert settings.smtp.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("[smtp]\nprot = 25\n", "smtp.prot", "allowed in [smtp]: host, port"),
        ("[smpt]\nport = 25\n", "[smpt]", "allowed: [smtp], [storage]"),
        ("[smtp]\nport = 70000\n", "smtp.port", "0-65535"),
        ('[smtp]\nport = "25"\n', "smtp.port", "0-65535"),
        ('[smtp]\nmax_message_size = "lots"\n', "smtp.max_message_size", "MiB"),
        ('[smtp]\ntimeout = "soon"\n', "smtp.timeout", "ms, s, m or h"),
        ("[storage]\nmax_messages = 0\n", "storage.max_messages", "at least 1"),
        ("[storage]\npath = 3\n", "storage.path", "path string"),
        ('[smtp]\nhostname = "two words"\n', "smtp.hostname", "without spaces"),
    ],
)
def test_errors_name_file_key_and_what_is_allowed(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message and key in message and hint in message, message


def test_invalid_toml_names_the_line(tmp_path):
    path = write(tmp_path, "[smtp]\nport = \n")
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 2"):
        load(path)


def test_cli_config_error_is_one_line(tmp_path):
    path = write(tmp_path, "[smtp]\nport = -1\n")
    result = run_cli("serve", "--config", str(path))
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert result.err.startswith(f"mailsink: {path}:2: smtp.port: expected a port number")
    assert "Traceback" not in result.err


def test_cli_missing_config_file(tmp_path):
    result = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.code == 1
    assert result.err == f"mailsink: {tmp_path / 'nope.toml'}: file not found\n"


def test_the_web_ui_keys_and_their_bounds(tmp_path):
    config = tmp_path / "ui.toml"
    config.write_text('[http]\nui = false\nui_sessions = 3\nusers = { ci = "pw-never-shown" }\n')
    settings = load(config)
    assert (settings.http.ui, settings.http.ui_sessions) == (False, 3)
    assert Settings().http.ui and Settings().http.ui_sessions == 8
    assert settings.with_overrides(web_ui=None).http.ui is False  # the file's, unless given
    assert Settings().with_overrides(web_ui=False).http.ui is False  # --no-web-ui
    shown = run_cli("check-config", str(config))
    assert shown.code == 0
    assert "ui = false" in shown.out and "ui_sessions = 3" in shown.out
    assert "users = 1 user(s): ci" in shown.out and "pw-never-shown" not in shown.out
    for bad in ("0", "65", "true", '"8"'):
        config.write_text(f"[http]\nui_sessions = {bad}\n")
        result = run_cli("check-config", str(config))
        assert result.code == 1 and result.err.count("\n") == 1, bad
        assert "http.ui_sessions: expected a whole number of browser tabs" in result.err, bad
