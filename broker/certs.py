"""A local certificate authority for the broker's TLS listener and device client certificates.

`safecity certs init` makes a CA, a server certificate for the broker (SANs: the given
hosts and IPs) and, optionally, client certificates whose CN is the device id (the
broker's username under mutual TLS). Keys are EC P-256, written 0600. Device
certificates live in `<dir>/clients/<device id>.crt|.key`, where the fleet and the edge
agent find them; revoking or rotating one adds its serial to `<dir>/revoked.json` and
re-signs `<dir>/crl.pem`, the CRL the broker's TLS listener checks (`crlfile`).
Revoking a device also records the device itself in `<dir>/revoked-devices.json`: no
later command or start issues it a certificate until `safecity certs reinstate`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
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

__all__ = [
    "CertPaths",
    "client_paths",
    "ensure_clients",
    "ensure_crl",
    "ensure_server",
    "init_ca",
    "issue_client",
    "issue_server",
    "load_ca",
    "reinstate_client",
    "revoke_client",
    "revoked_devices",
    "rotate_client",
    "server_is_good",
    "write_crl",
]

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime common TLS clients still accept
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
# A CRL past its nextUpdate makes OpenSSL refuse every client certificate: long-lived,
# and re-signed by every issue/revoke and every local broker start when half used up.
CRL_DAYS = 365
CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"
REVOKED_DEVICES_FILE = "revoked-devices.json"


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
    days: float = LEAF_DAYS,
    not_before: dt.datetime | None = None,
) -> CertPaths:
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
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


def client_paths(directory: Path, device_id: str) -> CertPaths:
    """Where the client certificate and key of a device live."""
    return CertPaths(
        directory / "clients" / f"{device_id}.crt", directory / "clients" / f"{device_id}.key"
    )


def issue_client(
    directory: Path,
    device_id: str,
    *,
    days: float = LEAF_DAYS,
    not_before: dt.datetime | None = None,
) -> CertPaths:
    """Issue clients/<id>.crt/.key with CN = device id (the username under mutual TLS)."""
    # The CN becomes the username that the %u ACL patterns substitute: same rules.
    validate_username(device_id, Role.DEVICE)
    since = revoked_devices(directory).get(device_id)
    if since is not None:
        raise ConfigError(
            f"{device_id!r} is revoked (since {since}): "
            f"`safecity certs reinstate {device_id}` issues it a certificate again"
        )
    return _leaf(
        directory,
        f"clients/{device_id}",
        device_id,
        sans=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
        not_before=not_before,
    )


def _client_still_good(paths: CertPaths, ca_cert: x509.Certificate, revoked: set[int]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        serialization.load_pem_private_key(paths.key.read_bytes(), None)
        _verify_signed_by(cert, ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=30)
    return fresh and cert.serial_number not in revoked


def ensure_clients(directory: Path, device_ids: Sequence[str]) -> list[str]:
    """A good client certificate for every device (reused when still good); the ids issued now.

    Reissued when missing, not from this CA, revoked or expiring within 30 days: the
    provisioning step that puts certificates where the fleet and the edge agent find them.
    A revoked device (`revoked_devices`) is skipped: it stays without a certificate.
    """
    ca_cert, _ = load_ca(directory)
    revoked = set(_read_revoked(directory))
    refused = revoked_devices(directory)
    issued = []
    for device_id in device_ids:
        if device_id in refused:
            continue
        if not _client_still_good(client_paths(directory, device_id), ca_cert, revoked):
            issue_client(directory, device_id)
            issued.append(device_id)
    return issued


def revoked_devices(directory: Path) -> dict[str, str]:
    """The revoked devices {device id: revoked since}: none gets a certificate until reinstated."""
    path = directory / REVOKED_DEVICES_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {str(device): str(since) for device, since in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read the revoked devices {path}: {exc}") from exc


def _write_revoked_devices(directory: Path, devices: dict[str, str]) -> None:
    tmp = directory / f"{REVOKED_DEVICES_FILE}.tmp"
    _write(tmp, json.dumps(devices, indent=1, sort_keys=True).encode(), 0o644)
    tmp.replace(directory / REVOKED_DEVICES_FILE)


def _read_revoked(directory: Path) -> dict[int, dict[str, str]]:
    path = directory / REVOKED_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {int(serial, 16): dict(entry) for serial, entry in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read the revocation list {path}: {exc}") from exc


def _write_revoked(directory: Path, revoked: dict[int, dict[str, str]]) -> None:
    data = {f"{serial:x}": entry for serial, entry in sorted(revoked.items())}
    tmp = directory / f"{REVOKED_FILE}.tmp"
    _write(tmp, json.dumps(data, indent=1, sort_keys=True).encode(), 0o644)
    tmp.replace(directory / REVOKED_FILE)


def write_crl(directory: Path) -> Path:
    """Sign crl.pem: every revoked serial, valid CRL_DAYS; lastUpdate always moves forward.

    OpenSSL keeps every CRL the broker ever loaded and picks the one with the latest
    lastUpdate, so a CRL re-signed within the same second as the previous one would
    be ignored until a restart: hence the strictly increasing lastUpdate.
    """
    ca_cert, ca_key = load_ca(directory)
    path = directory / CRL_FILE
    now = _now().replace(microsecond=0)
    number = 1
    if path.exists():
        try:
            old = x509.load_pem_x509_crl(path.read_bytes())
            if old.issuer == ca_cert.subject:
                now = max(now, old.last_update_utc + dt.timedelta(seconds=1))
                ext = old.extensions.get_extension_for_class(x509.CRLNumber)
                number = ext.value.crl_number + 1
        except (ValueError, x509.ExtensionNotFound):
            pass
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial, entry in sorted(_read_revoked(directory).items()):
        when = dt.datetime.fromisoformat(entry["revoked"])
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = directory / f"{CRL_FILE}.tmp"
    _write(tmp, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    tmp.replace(path)
    return path


def ensure_crl(directory: Path) -> Path:
    """crl.pem signed by this CA and valid at least half its lifetime yet; re-signed if not."""
    ca_cert, _ = load_ca(directory)
    path = directory / CRL_FILE
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        good = (
            crl.issuer == ca_cert.subject
            and crl.next_update_utc is not None
            and crl.next_update_utc - _now() > dt.timedelta(days=CRL_DAYS / 2)
            and {r.serial_number for r in crl} == set(_read_revoked(directory))
        )
    except (OSError, ValueError):
        good = False
    return path if good else write_crl(directory)


def revoke_client(directory: Path, device_id: str) -> int:
    """Revoke the device: its certificate's serial into the CRL, cert and key deleted, and
    the device recorded as revoked (no certificate for it until `reinstate_client`).

    Returns the revoked serial. The broker refuses the certificate once it re-reads the
    CRL (SIGHUP); a live connection stays up until the device reconnects.
    """
    serial = _revoke_certificate(directory, device_id)
    devices = revoked_devices(directory)
    devices.setdefault(device_id, _now().isoformat())
    _write_revoked_devices(directory, devices)
    return serial


def reinstate_client(directory: Path, device_id: str) -> CertPaths:
    """A revoked device gets a new key and certificate (its old ones stay in the CRL)."""
    devices = revoked_devices(directory)
    if devices.pop(device_id, None) is None:
        raise ConfigError(f"{device_id!r} is not revoked: rotate its certificate instead")
    _write_revoked_devices(directory, devices)
    return issue_client(directory, device_id)


def _revoke_certificate(directory: Path, device_id: str) -> int:
    """The device's current certificate: serial into the CRL, cert and key deleted."""
    paths = client_paths(directory, device_id)
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no client certificate for {device_id!r} in {directory}: {exc}") from exc
    revoked = _read_revoked(directory)
    revoked[cert.serial_number] = {"device": device_id, "revoked": _now().isoformat()}
    _write_revoked(directory, revoked)
    write_crl(directory)
    for path in (paths.cert, paths.key):
        path.unlink(missing_ok=True)
    return cert.serial_number


def rotate_client(directory: Path, device_id: str) -> CertPaths:
    """A new key and certificate for the device; the previous certificate (if any) revoked.

    A revoked device is refused (reinstate it explicitly)."""
    since = revoked_devices(directory).get(device_id)
    if since is not None:
        raise ConfigError(
            f"{device_id!r} is revoked (since {since}): `safecity certs reinstate` it explicitly"
        )
    if client_paths(directory, device_id).cert.exists():
        _revoke_certificate(directory, device_id)
    return issue_client(directory, device_id)


def _verify_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise InvalidSignature unless cert was issued and signed by ca_cert."""
    ca_key = ca_cert.public_key()
    sig_hash = cert.signature_hash_algorithm
    if (
        cert.issuer != ca_cert.subject
        or not isinstance(ca_key, ec.EllipticCurvePublicKey)
        or sig_hash is None
    ):
        raise InvalidSignature("not issued by this CA")
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))


def _server_still_good(paths: CertPaths, ca_cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    """Whether an existing server certificate is from this CA, valid a while yet, for hosts."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        serialization.load_pem_private_key(paths.key.read_bytes(), None)
        _verify_signed_by(cert, ca_cert)
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


def server_is_good(directory: Path, hosts: Sequence[str]) -> bool:
    """Whether directory's server certificate is from its CA, valid a while yet, for hosts."""
    try:
        ca_cert, _ = load_ca(directory)
    except ConfigError:
        return False
    paths = CertPaths(directory / "server.crt", directory / "server.key")
    return _server_still_good(paths, ca_cert, hosts)


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
