"""HTTPS for the web server: the user's certificate, or a self-signed one.

Phone browsers open the camera only on a secure page, so the server speaks HTTPS
unless ``--http`` is given. With ``server.cert_file`` and ``server.key_file`` set,
those are used. Otherwise a self-signed certificate (ECDSA P-256, valid 825 days,
named for ``localhost``, this host's name and the given addresses) is made on
first run in ``state_dir/tls/`` (both files 0600, like everything in the state
directory: the certificate is public, but one rule is easier to audit) and reused
while it is valid, so its fingerprint stays the same: users compare it with the one
printed at start. A stored pair that is damaged (a file unreadable or not PEM, or the
key not the certificate's) is made anew with a warning, since phones then ask to
accept a certificate whose fingerprint changed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from facecore.config import Settings, ensure_private_dir
from facecore.errors import ConfigError

__all__ = [
    "CertificatePair",
    "ensure_certificate",
    "fingerprint",
    "make_self_signed",
    "server_ssl_context",
]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALID_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=7)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertificatePair:
    cert: Path
    key: Path
    self_signed: bool


def ensure_certificate(settings: Settings, addresses: Sequence[str] = ()) -> CertificatePair:
    """The user's certificate and key when both are set, else the self-signed pair
    in ``state_dir/tls`` (made now if missing, about to expire or damaged)."""
    server = settings.server
    if (server.cert_file is None) != (server.key_file is None):
        given = "server.cert_file" if server.cert_file is not None else "server.key_file"
        raise ConfigError(
            "a certificate needs both --cert and --key (or neither, for a self-signed one)",
            key=given,
            value=str(server.cert_file or server.key_file),
            origin=settings.origins.get(given),
        )
    if server.cert_file is not None and server.key_file is not None:
        return CertificatePair(server.cert_file, server.key_file, self_signed=False)
    directory = settings.state_dir / "tls"
    pair = CertificatePair(directory / CERT_FILE, directory / KEY_FILE, self_signed=True)
    try:
        if _stored_pair_usable(pair):
            os.chmod(pair.cert, 0o600)  # one made by an older version was 0644
        else:
            ensure_private_dir(directory)
            make_self_signed(pair.cert, pair.key, addresses)
    except OSError as exc:
        raise ConfigError(f"cannot write a self-signed certificate in {directory}: {exc}") from exc
    return pair


def _stored_pair_usable(pair: CertificatePair) -> bool:
    """Whether the self-signed ``pair`` can be used again: not when it is missing or
    about to expire, nor when it is damaged (said in a warning: the next one has
    another fingerprint, which phones ask to accept)."""
    if not pair.cert.exists():
        return False
    if fault := _pair_fault(pair):
        log.warning(
            "%s: it was replaced by a new self-signed certificate and key; phones will ask "
            "to accept the new certificate, and its SHA-256 fingerprint has changed", fault
        )
        return False
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    return cert.not_valid_after_utc - RENEW_BEFORE > dt.datetime.now(dt.UTC)


def _pair_fault(pair: CertificatePair) -> str | None:
    """What keeps ``pair`` from loading, naming the file at fault; None if it loads."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    except OSError as exc:
        return f"cannot read the certificate {pair.cert}: {exc.strerror}"
    except ValueError:
        return f"the certificate {pair.cert} is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except OSError as exc:
        return f"cannot read the key {pair.key}: {exc.strerror}"
    except TypeError:  # cryptography's word for a key that needs a passphrase
        return f"the key {pair.key} is encrypted: give it without a passphrase"
    except (ValueError, UnsupportedAlgorithm):
        return f"the key {pair.key} is not a PEM private key"
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return f"the key {pair.key} does not match the certificate {pair.cert}"
    return None


def make_self_signed(cert_path: Path, key_path: Path, addresses: Sequence[str] = ()) -> None:
    """Write a new key and a self-signed certificate (both 0600) for ``localhost``,
    this host's name, 127.0.0.1, ::1 and ``addresses``."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    ips = dict.fromkeys(["127.0.0.1", "::1", *addresses])
    names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "facestream"),
            x509.NameAttribute(NameOID.COMMON_NAME, hostname or "localhost"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the (first) certificate, as browsers show it: ``AB:CD:...``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate {cert_path}: {exc}") from exc
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def server_ssl_context(pair: CertificatePair) -> ssl.SSLContext:
    """A TLS server context for ``pair``; a pair that does not load (a file missing or
    not PEM, the key not the certificate's) raises ``ConfigError`` naming the file at
    fault (OpenSSL says only "PEM lib")."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(pair.cert, pair.key)
    except (OSError, ssl.SSLError) as exc:
        fault = _pair_fault(pair)
        if fault is None:  # cryptography reads them: OpenSSL's own words, then
            fault = f"cannot use the certificate {pair.cert} with the key {pair.key}: {exc}"
        raise ConfigError(fault) from exc
    return context
