"""The upstream a release goes to, in tests: a second real mailsink on loopback, with STARTTLS
and implicit TLS under a certificate of the test's own CA (trustme), AUTH, and fault rules to
make it answer 550, 421 or nothing in time.

    with Upstream(tmp_path) as up:
        relay_toml = up.relay_toml(allowed=["*@example.test"])   # a [relay] table for it
        ...
        assert up.raw_messages() == [stored_bytes]

`relay_toml(...)` writes `tls = "starttls"`, the CA file (verify on), the login; pass
`tls="none"` / `"implicit"`, `verify=False`, `auth=False` or extra keys to vary it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trustme

from mailsink.testing import RunningSink

USER = "relayuser"
PASSWORD = "relay-Secret-7f3a9c"  # a test greps logs and transcripts for it


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


class Upstream:
    """A mailsink that plays the real mail server. `port` speaks plain SMTP with STARTTLS
    offered (not required, unless `require_tls`), `implicit_port` TLS from the first byte;
    AUTH PLAIN/LOGIN with USER / PASSWORD (required when `require_auth`)."""

    def __init__(
        self,
        directory: Path,
        *,
        require_auth: bool = False,
        require_tls: bool = False,
        config: str = "",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca_file = self.directory / "upstream-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = self.directory / "upstream-cert.pem"
        self.key_file = self.directory / "upstream-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(self.cert_file))
        leaf.private_key_pem.write_to_path(str(self.key_file))
        self.implicit_port = _free_port()
        mode = "required" if require_auth else "optional"
        self.config_file = self.directory / "upstream.toml"
        self.config_file.write_text(
            f"[tls]\nstarttls = true\nrequire = {str(require_tls).lower()}\n"
            f'implicit_port = {self.implicit_port}\ncert = "{self.cert_file}"\n'
            f'key = "{self.key_file}"\n'
            f'[auth]\nmode = "{mode}"\nallow_insecure = true\nusers = {{ {USER} = "{PASSWORD}" }}\n'
            f"{config}"
        )
        self.running = RunningSink(self.directory / "upstream.db", config=self.config_file)
        self.host = "127.0.0.1"
        self.port = 0

    def __enter__(self) -> Upstream:
        self.running.start()
        self.port = self.running.port
        return self

    def __exit__(self, *_: object) -> None:
        self.running.stop()

    def relay_toml(
        self,
        allowed: Iterable[str] = ("*@example.test",),
        *,
        tls: str = "starttls",
        verify: bool = True,
        auth: bool = True,
        **extra: Any,
    ) -> str:
        """A [relay] table that points at this upstream."""
        port = self.implicit_port if tls == "implicit" else self.port
        lines = [
            "[relay]",
            f'host = "{self.host}"',
            f"port = {port}",
            f'tls = "{tls}"',
            f"verify = {str(verify).lower()}",
            f"allowed_recipients = {_toml_list(allowed)}",
            "timeout = 5",
        ]
        if verify and tls != "none":
            lines.append(f'ca_file = "{self.ca_file}"')
        if auth:
            lines += [f'username = "{USER}"', f'password = "{PASSWORD}"']
        for key, value in extra.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            elif isinstance(value, int | float):
                lines.append(f"{key} = {value}")
            elif isinstance(value, list | tuple):
                lines.append(f"{key} = {_toml_list(value)}")
            else:
                lines.append(f'{key} = "{value}"')
        return "\n".join(lines) + "\n"

    def add_fault(self, **table: Any) -> None:
        """A run-time fault rule on the upstream (e.g. stage="rcpt", action="reply",
        reply="550 5.1.1 no such user")."""
        self.running.call(self.running.faults.add_rule, table)

    def clear_faults(self) -> None:
        def remove_all() -> None:
            for state in self.running.faults.rules():
                if state.origin == "runtime":  # (presets and the config's are not removable)
                    self.running.faults.remove_rule(state.name)

        self.running.call(remove_all)

    def raw_messages(self) -> list[bytes]:
        """The accepted messages' bytes as the upstream stored them, oldest first."""
        with self.running.reader() as reader:
            records = reader.list_messages(limit=1000)
            return [reader.get_raw(record.id) or b"" for record in reversed(records)]

    def envelopes(self) -> list[tuple[str, list[str]]]:
        """(MAIL FROM, RCPT TOs) of the accepted messages, oldest first."""
        with self.running.reader() as reader:
            records = reader.list_messages(limit=1000)
            return [
                (record.envelope.mail_from, list(record.envelope.rcpt_to))
                for record in reversed(records)
            ]

    def sessions(self) -> list[Any]:
        with self.running.reader() as reader:
            return reader.list_sessions(limit=1000)

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[bytes]:
        self.running.wait_for(
            lambda reader: len(reader.list_messages(limit=count)) >= count or None, timeout
        )
        return self.raw_messages()


class SilentServer:
    """A TCP listener that accepts and never says a word: a release to it times out."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.host, self.port = self.listener.getsockname()[:2]
        self.accepted: list[socket.socket] = []

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()
