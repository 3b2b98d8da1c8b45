"""Device certificates: provisioning reuses good ones; revocation and rotation keep the CRL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from broker import certs
from control.cli import main as safecity_main
from safecity import instance
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
    # A revoked device stays revoked: provisioning skips it, nothing issues it one...
    assert certs.ensure_clients(tmp_path, ["dev-a", "dev-b"]) == []
    assert not certs.client_paths(tmp_path, "dev-a").cert.exists()
    assert set(certs.revoked_devices(tmp_path)) == {"dev-a"}  # a rotated one is not revoked
    with pytest.raises(ConfigError, match=r"'dev-a' is revoked .*certs reinstate dev-a"):
        certs.issue_client(tmp_path, "dev-a")
    with pytest.raises(ConfigError, match="'dev-a' is revoked"):
        certs.rotate_client(tmp_path, "dev-a")
    with pytest.raises(ConfigError, match="'dev-b' is not revoked"):
        certs.reinstate_client(tmp_path, "dev-b")
    # ...until it is reinstated: a new certificate, the old serials stay in the CRL.
    back = certs.reinstate_client(tmp_path, "dev-a")
    assert _serial(back.cert) not in {a, b}
    assert {r.serial_number for r in _crl(tmp_path)} == {a, b}
    assert certs.revoked_devices(tmp_path) == {}
    assert certs.ensure_clients(tmp_path, ["dev-a", "dev-b"]) == []
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


def test_a_revoked_device_stays_revoked_through_provision_until_reinstated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = default_city().devices[0].id
    base = ["--dir", str(tmp_path)]
    assert safecity_main(["certs", "init", *base]) == 0
    assert safecity_main(["certs", "provision", *base, "--device", device]) == 0
    capsys.readouterr()
    assert safecity_main(["certs", "revoke", *base, device]) == 0
    assert "no certificate until reinstated" in capsys.readouterr().out
    assert safecity_main(["certs", "provision", *base, "--device", device]) == 0
    out, err = capsys.readouterr()
    assert "0 client certificate(s) issued, 0 reused, 1 revoked device(s) skipped" in out
    assert f"revoked, no certificate (`certs reinstate` them): {device}" in err
    assert not certs.client_paths(tmp_path, device).cert.exists()
    assert safecity_main(["certs", "client", *base, device]) != 0
    assert f"certs reinstate {device}" in capsys.readouterr().err
    assert safecity_main(["certs", "reinstate", *base, device]) == 0
    assert f"reinstated: {device}" in capsys.readouterr().err
    assert certs.client_paths(tmp_path, device).cert.exists()


def _server_names(directory: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate((directory / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }


def test_certs_init_beside_a_running_instance_keeps_its_broker_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAFECITY_HOME", str(tmp_path))
    where = instance.layout(tmp_path)
    assert safecity_main(["certs", "init"]) == 0
    before = (where.certs_dir / "server.crt").read_bytes()
    state = instance.Running(
        pid=os.getpid(), mqtt_host="127.0.0.1", mqtt_port=1, influx_url="http://x", api_url="x"
    )
    instance.record(where, state)
    capsys.readouterr()
    # A running instance's broker certificate is not replaced unasked.
    assert safecity_main(["certs", "init", "--host", "other.example"]) != 0
    assert "--reissue-server" in capsys.readouterr().err
    assert (where.certs_dir / "server.crt").read_bytes() == before
    # Names it has already: nothing to change, nothing refused.
    assert safecity_main(["certs", "init", "--host", "127.0.0.1"]) == 0
    assert (where.certs_dir / "server.crt").read_bytes() == before
    # Asked explicitly: the new name, and every name the instance is reached by.
    assert safecity_main(["certs", "init", "--host", "other.example", "--reissue-server"]) == 0
    assert _server_names(where.certs_dir) >= {"other.example", "localhost", "127.0.0.1", "::1"}
    where.state_file.unlink()
    # Not running: the instance's directory still keeps its local names.
    assert safecity_main(["certs", "init", "--host", "region.example"]) == 0
    assert _server_names(where.certs_dir) >= {"region.example", "localhost", "127.0.0.1"}
    # Another directory gets exactly the names asked for.
    other = tmp_path / "region-ca"
    assert safecity_main(["certs", "init", "--dir", str(other), "--host", "region.example"]) == 0
    assert _server_names(other) == {"region.example"}
