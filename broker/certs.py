"""A local certificate authority for the broker's TLS listener and device client certificates.

`safecity certs init` makes a CA, a server certificate for the broker (SANs: the given
hosts and IPs) and, optionally, client certificates whose CN is the device id (the
broker's username under mutual TLS). Keys are EC P-256, written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.identity import Role, validate_username
from safecity.errors import ConfigError

__all__ = ["CertPaths", "ensure_server", "init_ca", "issue_client", "issue_server", "load_ca"]

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime common TLS clients still accept
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where a certificate and its key live."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create with the final mode so a private key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "safecity"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(directory: Path, *, cn: str = "safecity local CA", force: bool = False) -> CertPaths:
    """Create ca.crt/ca.key in directory (refuses to overwrite unless force)."""
    paths = CertPaths(directory / "ca.crt", directory / "ca.key")
    if paths.cert.exists() and not force:
        raise ConfigError(f"{paths.cert} exists; pass --force to replace the CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths.key, _key_pem(key), 0o600)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA certificate and key from directory."""
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the CA from {directory} (run `safecity certs init`): {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / 'ca.key'} is not an EC key")
    return cert, key


def _leaf(
    directory: Path,
    stem: str,
    cn: str,
    *,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> CertPaths:
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    paths = CertPaths(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write(paths.key, _key_pem(key), 0o600)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def issue_server(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> CertPaths:
    """Issue server.crt/server.key for the broker, valid for the given host names and IPs."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return _leaf(directory, "server", hosts[0], sans=sans, usage=ExtendedKeyUsageOID.SERVER_AUTH)


def issue_client(directory: Path, device_id: str) -> CertPaths:
    """Issue clients/<id>.crt/.key with CN = device id (the username under mutual TLS)."""
    # The CN becomes the username that the %u ACL patterns substitute: same rules.
    validate_username(device_id, Role.DEVICE)
    return _leaf(
        directory,
        f"clients/{device_id}",
        device_id,
        sans=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )


def _server_still_good(paths: CertPaths, ca_cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    """Whether an existing server certificate is from this CA, valid a while yet, for hosts."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        serialization.load_pem_private_key(paths.key.read_bytes(), None)
        ca_key = ca_cert.public_key()
        if cert.issuer != ca_cert.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey):
            return False
        sig_hash = cert.signature_hash_algorithm
        if sig_hash is None:
            return False
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))
        if cert.not_valid_after_utc - _now() < dt.timedelta(days=30):
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    names |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    return wanted <= names


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ensure_server(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS
) -> tuple[CertPaths, CertPaths]:
    """The CA and the broker's server certificate in directory, reused when still good.

    A missing CA is created; the server certificate is (re)issued when it is missing,
    not signed by this CA, expires within 30 days or does not cover `hosts`.
    Returns (ca, server).
    """
    ca = CertPaths(directory / "ca.crt", directory / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = init_ca(directory, force=True)
    ca_cert, _ = load_ca(directory)
    server = CertPaths(directory / "server.crt", directory / "server.key")
    if not _server_still_good(server, ca_cert, hosts):
        server = issue_server(directory, hosts)
    return ca, server
