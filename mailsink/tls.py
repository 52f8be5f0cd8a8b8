"""TLS for STARTTLS and implicit-TLS listeners; by default a self-signed localhost certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from mailsink.config import ConfigError, TlsSettings

CERT_NAME = "mailsink-localhost-cert.pem"
KEY_NAME = "mailsink-localhost-key.pem"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost, 127.0.0.1 and ::1, made once and kept in `directory`."""
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    # Deferred: cryptography is only needed the first time TLS is switched on.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(alt_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(settings: TlsSettings, directory: Path) -> ssl.SSLContext:
    """The server's SSL context from [tls] cert/key, or from a generated self-signed pair."""
    if bool(settings.cert) != bool(settings.key):
        raise ConfigError(
            "set both cert and key, or neither (a certificate is generated)", key="tls.cert"
        )
    if settings.cert:
        cert_path, key_path = Path(settings.cert).expanduser(), Path(settings.key).expanduser()
    else:
        cert_path, key_path = self_signed(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot load {cert_path} / {key_path}: {error}", key="tls.cert"
        ) from None
    return context
