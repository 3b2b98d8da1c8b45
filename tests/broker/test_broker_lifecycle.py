"""Revocation, rotation and reload, the CLI, and TLS/mutual TLS on real Mosquitto brokers."""

from __future__ import annotations

import asyncio
import json
import stat
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from brokerkit import SecureBroker, connected, run, wait_connack
from rawmqtt import DISCONNECT, PUBACK, RawClient
from support import wait_for_async

from broker import certs, identity
from broker.identity import CredentialStore
from control.cli import main
from control.stack import Mosquitto, free_port
from edge.settings import EdgeSettings
from safecity.errors import MqttError
from safecity.mqtt import FleetClient
from safecity.registry import default_city
from safecity.secrets import read_secrets
from simulators import fleet
from simulators.settings import SimulatorSettings

NOT_AUTHORIZED = 0x87


def test_revoked_device_is_cut_off_and_others_stay(secure: SecureBroker) -> None:
    victim, bystander = secure.devices[20], secure.devices[21]
    secret = secure.secrets[victim]
    live = RawClient(secure.mosquitto.host, secure.mosquitto.port)
    assert live.connect(victim, victim, secret).reason == 0

    async def scenario() -> tuple[int, bool, bool]:
        other = await connected(secure.settings(bystander), bystander)
        assert (await other.publish(secure.topic(bystander), b"{}")).ok
        secure.store.revoke(victim)
        secure.store.save()
        secure.mosquitto.apply({victim: None})
        # Deleting the account through $CONTROL closes its connection at once.
        closing = live.read()
        assert closing is None or closing.kind == DISCONNECT, closing
        wait_connack(secure, victim, secret, NOT_AUTHORIZED)
        # The bystander kept its one connection (no reconnect: generation still 1).
        still_ok = (await other.publish(secure.topic(bystander), b"{}")).ok
        generation = other.generation
        connected_now = other.connected.is_set()
        await other.disconnect()
        return generation, still_ok, connected_now

    generation, still_ok, connected_now = run(scenario())
    live.close()
    assert generation == 1 and still_ok and connected_now
    assert not secure.store.accounts[victim].active


def test_rotated_secret_replaces_the_old_one(secure: SecureBroker) -> None:
    device = secure.devices[22]
    old = secure.secrets[device]
    new = secure.store.rotate(device)
    secure.store.save()
    secure.mosquitto.apply({device: new})
    wait_connack(secure, device, old, NOT_AUTHORIZED)
    wait_connack(secure, device, new, 0)
    assert new != old and secure.store.check(device, new) and not secure.store.check(device, old)


def test_a_store_hashed_at_another_iteration_count_is_renewed_and_logs_in(
    tmp_path: Path,
) -> None:
    city = default_city()
    device = city.devices[0].id
    first = identity.LocalIdentities(tmp_path / "identity", city)
    secret = first.secrets[device]
    old = identity.hash_password(secret, iterations=1000)  # the store's earlier default
    store = CredentialStore(tmp_path / "identity")
    store.accounts[device] = replace(store.accounts[device], password_hash=old)
    store.save()
    broker = Mosquitto(tmp_path / "mosquitto", city=city, identity_dir=tmp_path / "identity")
    broker.start()
    try:
        renewed = broker.identities.store.accounts[device].password_hash
        assert renewed is not None and renewed.startswith(f"$7${identity.PBKDF2_ITERATIONS}$")
        assert broker.identities.secrets[device] == secret  # the device's secret is kept
        client = RawClient(broker.host, broker.port)
        try:
            assert client.connect(device, device, secret).reason == 0
        finally:
            client.close()
    finally:
        broker.stop()


def test_cli_provision_rotate_revoke_list(
    fresh: SecureBroker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    identity_dir = str(fresh.store.directory)
    broker = f"{fresh.mosquitto.host}:{fresh.mosquitto.port}"
    device = fresh.devices[30]
    secrets_file = tmp_path / "fleet-secrets.json"
    common = ["--identity-dir", identity_dir, "--broker", broker]

    # Everything is provisioned already: provisioning again issues nothing new.
    assert main(["devices", "provision", *common]) == 0
    assert "provisioned 0 new account(s)" in capsys.readouterr().err

    assert main(["devices", "rotate", *common, "--secrets-file", str(secrets_file), device]) == 0
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    new_secret = json.loads(secrets_file.read_text())[device]
    wait_connack(fresh, device, new_secret, 0)
    wait_connack(fresh, device, fresh.secrets[device], NOT_AUTHORIZED)

    store_text = (fresh.store.directory / "credentials.json").read_text()
    assert new_secret not in store_text and "$7$" in store_text
    for name in ("credentials.json", "dynamic-security.json", "admin.json"):
        assert stat.S_IMODE((fresh.store.directory / name).stat().st_mode) == 0o600

    assert main(["devices", "revoke", *common, "--secrets-file", str(secrets_file), device]) == 0
    wait_connack(fresh, device, new_secret, NOT_AUTHORIZED)
    assert device not in json.loads(secrets_file.read_text())

    capsys.readouterr()
    assert main(["devices", "list", "--identity-dir", identity_dir]) == 0
    listing = capsys.readouterr().out
    assert f"{device}" in listing and "revoked" in listing and "$7$" not in listing

    # An id that is not in the registry is refused, named, and nothing changes.
    assert main(["devices", "provision", *common, "--device", "no-such-device"]) == 2
    assert "no-such-device" in capsys.readouterr().err


def test_tls_with_the_right_ca_is_accepted(secure: SecureBroker) -> None:
    device = secure.devices[40]

    async def scenario() -> int:
        client = await connected(secure.tls_settings(device, secure.certs_dir / "ca.crt"), device)
        result = await client.publish(secure.topic(device), b"{}")
        await client.disconnect()
        return result.reason_code

    assert run(scenario()) < 0x80


def test_tls_with_a_wrong_ca_is_refused(secure: SecureBroker, tmp_path: Path) -> None:
    device = secure.devices[41]
    other = certs.init_ca(tmp_path / "other-ca")
    with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        run(connected(secure.tls_settings(device, other.cert), device))


def test_tls_still_needs_a_password(secure: SecureBroker) -> None:
    settings = secure.tls_settings(None, secure.certs_dir / "ca.crt")
    with pytest.raises(MqttError, match="Not authorized"):
        run(connected(settings, "tls-anon"))


def test_mutual_tls_uses_the_certificate_cn_as_username(mutual: SecureBroker) -> None:
    device, other = mutual.devices[50], mutual.devices[51]
    client_cert = certs.issue_client(mutual.certs_dir, device)
    settings = mutual.tls_settings(
        None, mutual.certs_dir / "ca.crt", tls_cert=client_cert.cert, tls_key=client_cert.key
    )

    async def scenario() -> tuple[int, int]:
        client = await connected(settings, "mtls")
        own = await client.publish(mutual.topic(device), b"{}")
        foreign = await client.publish(mutual.topic(other), b"{}")
        await client.disconnect()
        return own.reason_code, foreign.reason_code

    own, foreign = run(scenario())
    # The ACL's %u is the CN: its own topic is allowed, another device's is not.
    assert own < 0x80
    assert foreign == NOT_AUTHORIZED


def test_mutual_tls_refuses_missing_or_foreign_client_certificates(
    mutual: SecureBroker, tmp_path: Path
) -> None:
    device = mutual.devices[52]
    ca = mutual.certs_dir / "ca.crt"
    # A password alone is not enough on the mutual-TLS listener.
    # TLS 1.3 finishes the client's side of the handshake before the broker checks for a
    # certificate, so the refusal shows as a closed connection: no CONNACK ever comes.
    with pytest.raises(MqttError, match="no CONNACK"):
        run(connected(mutual.tls_settings(device, ca, connect_timeout=2), device))
    # A certificate for the same CN from another CA is refused in the handshake.
    rogue_dir = tmp_path / "rogue"
    certs.init_ca(rogue_dir)
    rogue = certs.issue_client(rogue_dir, device)
    settings = mutual.tls_settings(
        None, ca, tls_cert=rogue.cert, tls_key=rogue.key, connect_timeout=2
    )
    with pytest.raises(MqttError, match="no CONNACK"):
        run(connected(settings, "mtls-rogue"))
    log = mutual.mosquitto.log_path.read_text()
    assert "peer did not return a certificate" in log
    assert "certificate verify failed" in log


def test_mutual_tls_client_id_is_the_certificate_cn(mutual: SecureBroker) -> None:
    device, victim = mutual.devices[53], mutual.devices[54]
    client_cert = certs.issue_client(mutual.certs_dir, device)
    settings = mutual.tls_settings(
        None, mutual.certs_dir / "ca.crt", tls_cert=client_cert.cert, tls_key=client_cert.key
    )
    live = RawClient(mutual.mosquitto.host, mutual.mosquitto.port)
    assert live.connect(victim, victim, mutual.secrets[victim]).reason == 0

    async def scenario() -> int:
        # It asks for the victim's client id; the broker gives it its own (the CN).
        client = await connected(settings, victim)
        own = await client.publish(mutual.topic(device), b"{}")
        await client.disconnect()
        return own.reason_code

    try:
        assert run(scenario()) < 0x80
        answer = live.publish(mutual.topic(victim), b"{}")
        assert answer is not None and answer.kind == PUBACK and answer.reason < 0x80
    finally:
        live.close()
    log = mutual.mosquitto.log_path.read_text()
    assert f"as {device} " in log


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_cli_revoked_stays_revoked_until_reinstated(
    fresh: SecureBroker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = fresh.devices[32]
    secrets_file = tmp_path / "fleet-secrets.json"
    common = [
        "--identity-dir",
        str(fresh.store.directory),
        "--broker",
        f"{fresh.mosquitto.host}:{fresh.mosquitto.port}",
    ]
    code, err = _cli(capsys, "devices", "revoke", *common, device)
    assert code == 0 and f"revoked {device}" in err and "applied to the broker" in err
    wait_connack(fresh, device, fresh.secrets[device], NOT_AUTHORIZED)
    code, err = _cli(capsys, "devices", "revoke", *common, device)
    assert code == 0 and f"{device}: already revoked since" in err and "unchanged" in err

    # rotate does not bring it back: refused, named, nothing changes.
    code, err = _cli(
        capsys, "devices", "rotate", *common, "--secrets-file", str(secrets_file), device
    )
    assert code == 2 and "is revoked" in err and "reinstate" in err
    assert not secrets_file.exists()
    # provision --device says exactly why it did nothing.
    code, err = _cli(capsys, "devices", "provision", *common, "--device", device)
    assert code == 0
    assert f"{device}: revoked since" in err and f"`devices reinstate {device}`" in err
    assert "provisioned 0 new account(s)" in err
    assert not CredentialStore(fresh.store.directory).accounts[device].active

    # reinstate: a new secret, live at once; the old one stays dead.
    code, err = _cli(
        capsys, "devices", "reinstate", *common, "--secrets-file", str(secrets_file), device
    )
    assert code == 0 and f"reinstated {device}: new secret issued" in err
    new = json.loads(secrets_file.read_text())[device]
    wait_connack(fresh, device, new, 0)
    wait_connack(fresh, device, fresh.secrets[device], NOT_AUTHORIZED)
    code, err = _cli(capsys, "devices", "reinstate", *common, device)
    assert code == 2 and "is not revoked" in err

    # An active one: provision says so; a new service account is provisioned and named.
    code, err = _cli(capsys, "devices", "provision", *common, "--device", device)
    assert code == 0 and f"{device}: already provisioned and active; unchanged" in err
    code, err = _cli(
        capsys, "devices", "provision", *common, "--secrets-file", str(secrets_file),
        "--service", "console",
    )  # fmt: skip
    assert code == 0 and "provisioned _console (new account)" in err
    assert "provisioned 1 new account(s)" in err


def test_a_running_device_picks_up_its_rotated_secret(
    fresh: SecureBroker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = fresh.devices[33]
    secrets_file = tmp_path / "fleet-secrets.json"
    identity.write_secrets(secrets_file, {device: fresh.secrets[device]})
    asked: list[str | None] = []

    def source() -> str | None:
        # As the simulated fleet does: the secrets file, re-read after a refusal.
        asked.append(read_secrets(secrets_file).get(device))
        return asked[-1]

    async def scenario() -> tuple[int, int]:
        client = FleetClient(
            fresh.settings(None), device, username=device, password=source, backoff_min=0.05
        )
        client.start()
        assert await client.wait_connected(10)
        code, err = await asyncio.to_thread(
            _cli, capsys, "devices", "rotate", "--identity-dir", str(fresh.store.directory),
            "--broker", f"{fresh.mosquitto.host}:{fresh.mosquitto.port}",
            "--secrets-file", str(secrets_file), device,
        )  # fmt: skip
        assert code == 0 and f"rotated {device}" in err

        async def reconnected() -> bool:
            return client.connects >= 2

        await wait_for_async(reconnected, 20, "the device back with its new secret", 0.05)
        connects, failures = client.connects, client.failures
        await client.stop()
        return connects, failures

    connects, failures = run(scenario())
    new = json.loads(secrets_file.read_text())[device]
    # Kicked by the rotation, refused with the old secret, back with the new one.
    assert connects == 2 and failures >= 1
    assert asked[0] == fresh.secrets[device] and asked[-1] == new


def test_cli_with_an_unreachable_broker_keeps_the_secret_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = CredentialStore(tmp_path / "identity")
    store.provision("dev-9", city="tashkent")
    store.save()
    secrets_file = tmp_path / "fleet-secrets.json"
    code, err = _cli(
        capsys, "devices", "rotate", "--identity-dir", str(tmp_path / "identity"),
        "--broker", f"127.0.0.1:{free_port()}", "--secrets-file", str(secrets_file), "dev-9",
    )  # fmt: skip
    assert code == 2 and "was NOT changed" in err and "next start" in err
    # The new secret was handed out before the broker was tried, and it is the stored one.
    new = json.loads(secrets_file.read_text())["dev-9"]
    assert CredentialStore(tmp_path / "identity").check("dev-9", new)


def test_the_simulated_fleet_rereads_a_refused_secret_from_its_file(tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.json"
    identity.write_secrets(secrets_file, {"dev-1": "old"})
    settings = SimulatorSettings(
        edge=EdgeSettings(spool_dir=tmp_path / "spool", secrets_file=secrets_file)
    )
    sim = SimpleNamespace(device=SimpleNamespace(id="dev-1"))
    source = fleet._secret_source(settings, sim, {"dev-1": "old"})  # type: ignore[arg-type]
    assert source() == "old"  # the secret read once at start
    identity.write_secrets(secrets_file, {"dev-1": "rotated"})
    assert source() == "rotated"  # asked again after a refusal: the file, read afresh
