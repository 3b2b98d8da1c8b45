"""Device certificates: provisioning reuses good ones; revocation and rotation keep the CRL."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from broker import certs
from control.cli import main as safecity_main
from safecity.errors import ConfigError
from safecity.registry import default_city


def _crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / certs.CRL_FILE).read_bytes())


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_provision_issues_once_then_reuses(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    assert certs.ensure_clients(tmp_path, ["dev-a", "dev-b"]) == ["dev-a", "dev-b"]
    before = _serial(certs.client_paths(tmp_path, "dev-a").cert)
    assert certs.ensure_clients(tmp_path, ["dev-a", "dev-b", "dev-c"]) == ["dev-c"]
    assert _serial(certs.client_paths(tmp_path, "dev-a").cert) == before
    key = certs.client_paths(tmp_path, "dev-a").key
    assert key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(certs.client_paths(tmp_path, "dev-c").cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "dev-c"


def test_revoke_and_rotate_keep_every_revoked_serial_in_a_fresh_crl(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    certs.ensure_clients(tmp_path, ["dev-a", "dev-b"])
    first = certs.ensure_crl(tmp_path)
    assert list(_crl(tmp_path)) == []
    a = _serial(certs.client_paths(tmp_path, "dev-a").cert)
    b = _serial(certs.client_paths(tmp_path, "dev-b").cert)
    updated = _crl(tmp_path).last_update_utc
    assert certs.revoke_client(tmp_path, "dev-a") == a
    assert not certs.client_paths(tmp_path, "dev-a").cert.exists()
    # Same second: lastUpdate still moves forward (OpenSSL keeps the newest CRL).
    assert _crl(tmp_path).last_update_utc > updated
    fresh = certs.rotate_client(tmp_path, "dev-b")
    assert _serial(fresh.cert) != b
    crl = _crl(tmp_path)
    assert {r.serial_number for r in crl} == {a, b}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert certs.ensure_crl(tmp_path) == first  # still good: not re-signed
    assert _crl(tmp_path).last_update_utc == crl.last_update_utc
    # A revoked certificate is never "good": provisioning issues a new one.
    assert certs.ensure_clients(tmp_path, ["dev-a", "dev-b"]) == ["dev-a"]
    with pytest.raises(ConfigError, match="no client certificate for 'dev-x'"):
        certs.revoke_client(tmp_path, "dev-x")


def test_certs_provision_command_covers_the_registry(tmp_path: Path, capsys) -> None:
    assert safecity_main(["certs", "init", "--dir", str(tmp_path)]) == 0
    city = default_city()
    some = [d.id for d in city.devices[:3]]
    args = ["certs", "provision", "--dir", str(tmp_path)]
    assert safecity_main([*args, *(f"--device={d}" for d in some)]) == 0
    assert "3 client certificate(s) issued" in capsys.readouterr().out
    assert {p.stem for p in (tmp_path / "clients").glob("*.crt")} == set(some)
    assert (tmp_path / certs.CRL_FILE).exists()
    assert safecity_main([*args, "--device", "no-such-device"]) != 0
    assert "not in the registry" in capsys.readouterr().err
