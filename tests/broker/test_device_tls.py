"""Devices over TLS: the edge agent and the fleet client against real Mosquitto TLS listeners.

One broker verifies the server side only (devices log in with their passwords over
TLS); the other requires a client certificate whose CN becomes the username and
checks the CRL that `safecity certs revoke` re-signs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import mosquitto, wait_for, wait_for_async

from broker import certs
from control.cli import main as safecity_main
from control.stack import Mosquitto
from edge.agent import DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity.mqtt import FleetClient, MqttClient
from safecity.settings import MqttSettings

pytestmark = pytest.mark.timeout(180)

DEVICES = [f"tls-dev-{i:02d}" for i in range(8)]
# Provisioned on the mutual-TLS broker too, but its certificate is expired.
EXPIRED = "tls-expired"
PER_DEVICE = 60
NOT_AUTHORIZED = 0x87


def topic(device_id: str) -> str:
    """A device's own topic (the ACL lets a device write only under its username)."""
    return f"safecity/v1/tlstest/d1/noise/{device_id}/telemetry"


def _broker(base: Path, *, mutual: bool) -> Iterator[Mosquitto]:
    broker = Mosquitto(base / "broker", certs_dir=base / "certs", tls_port=0, mutual_tls=mutual)
    broker.provision(*DEVICES, EXPIRED)
    with broker:
        yield broker


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """TLS with server verification; devices authenticate with their passwords."""
    yield from _broker(tmp_path_factory.mktemp("tls"), mutual=False)


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Mutual TLS: a CA-signed, unrevoked client certificate; its CN is the username."""
    base = tmp_path_factory.mktemp("mtls")
    gen = _broker(base, mutual=True)
    broker = next(gen)
    certs.ensure_clients(broker.certs_dir, DEVICES)
    yield broker
    gen.close()


def tls(broker: Mosquitto, **kw: object) -> MqttSettings:
    """Settings for the broker's TLS listener, verifying it against its CA."""
    assert broker.tls_port is not None and broker.ca is not None
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.tls_port,
        "tls_ca": broker.ca.cert,
        "connect_timeout": 3.0,
    }
    values.update(kw)
    return MqttSettings.model_validate(values)


async def deliver(
    broker: Mosquitto, mqtt: MqttSettings, edge: EdgeSettings, passwords: bool
) -> tuple[dict[tuple[str, int], int], set[tuple[str, int]]]:
    """Every device sends PER_DEVICE readings through its edge agent; (verdicts, received)."""
    receiver = MqttClient(
        MqttSettings(
            host=broker.host, port=broker.port, username="_api", password=broker.secret("_api")
        ),
        "tls-receiver",
    )
    await receiver.connect()
    await receiver.subscribe([("safecity/v1/tlstest/#", 1)])
    verdicts: dict[tuple[str, int], int] = {}

    def on_result(message: Envelope, code: int) -> None:
        verdicts[(message.meta["d"], message.meta["s"])] = code

    agents = [
        DeviceAgent(
            d, mqtt, edge, on_result, password=broker.secret(d) if passwords else None, seed=1
        )
        for d in DEVICES
    ]
    for agent in agents:
        agent.start()
    for agent in agents:
        assert await agent.client.wait_connected(20), agent.client.last_error
    for seq in range(PER_DEVICE):
        for agent in agents:
            meta = {"d": agent.client_id, "s": seq}
            agent.submit(Envelope(topic(agent.client_id), f"{seq}".encode(), meta))
        await asyncio.sleep(0)
    for agent in agents:
        await agent.close(30)
    received: set[tuple[str, int]] = set()
    want = len(DEVICES) * PER_DEVICE

    async def everything() -> bool:
        for message in await receiver.inbox.get_batch(1000, 1.0):
            received.add((message.topic.split("/")[5], int(message.payload)))
        return len(received) >= want

    await wait_for_async(everything, 30, f"all {want} messages at the receiver", interval=0)
    await receiver.disconnect()
    return verdicts, received


def _assert_nothing_lost(verdicts: dict[tuple[str, int], int], received: set) -> None:
    sent = {(d, s) for d in DEVICES for s in range(PER_DEVICE)}
    assert set(verdicts) == sent
    assert {code for code in verdicts.values()} == {0}
    lost = sent - received
    assert lost == set(), f"lost {len(lost)}"


def test_fleet_over_tls_delivers_every_reading(tls_broker: Mosquitto, tmp_path: Path) -> None:
    edge = EdgeSettings(spool_dir=tmp_path / "spool", drain_timeout=30)
    verdicts, received = asyncio.run(deliver(tls_broker, tls(tls_broker), edge, passwords=True))
    _assert_nothing_lost(verdicts, received)


def test_fleet_over_mutual_tls_delivers_every_reading(
    mtls_broker: Mosquitto, tmp_path: Path
) -> None:
    edge = EdgeSettings(
        spool_dir=tmp_path / "spool",
        drain_timeout=30,
        tls_client_dir=mtls_broker.client_certs_dir,
    )
    # No passwords at all: the certificate is the identity.
    verdicts, received = asyncio.run(deliver(mtls_broker, tls(mtls_broker), edge, passwords=False))
    _assert_nothing_lost(verdicts, received)


async def attempt(mqtt: MqttSettings, device: str, password: str | None, wait: float = 4.0):
    """Try to connect as `device` for up to `wait` s; the stopped client (counters, error)."""
    client = FleetClient(mqtt, device, username=device, password=password, backoff_max=0.5)
    client.start()
    await client.wait_connected(wait)
    await client.stop(0.5)
    return client


def test_wrong_ca_is_refused(tls_broker: Mosquitto, tmp_path: Path) -> None:
    other = certs.init_ca(tmp_path / "other-ca")
    device = DEVICES[0]
    client = asyncio.run(
        attempt(tls(tls_broker, tls_ca=other.cert), device, tls_broker.secret(device))
    )
    assert client.connects == 0 and client.failures >= 1
    assert "CERTIFICATE_VERIFY_FAILED" in client.last_error
    # The right CA, same device: accepted (the refusal was the CA's).
    good = asyncio.run(attempt(tls(tls_broker), device, tls_broker.secret(device)))
    assert good.connects == 1


def test_host_name_is_checked(tmp_path: Path) -> None:
    """A broker whose certificate (from the right CA) names another host is refused."""
    broker = Mosquitto(tmp_path / "broker", certs_dir=tmp_path / "certs", tls_port=0)
    broker.provision(DEVICES[0])
    # Same CA, but a server certificate for another name only.
    certs.issue_server(broker.certs_dir, ["broker.elsewhere.example"])
    with broker:
        client = asyncio.run(attempt(tls(broker), DEVICES[0], broker.secret(DEVICES[0])))
    assert client.connects == 0 and client.failures >= 1
    assert "CERTIFICATE_VERIFY_FAILED" in client.last_error
    assert "IP address mismatch" in client.last_error or "hostname" in client.last_error


def _client_cert_settings(broker: Mosquitto, paths: certs.CertPaths) -> MqttSettings:
    return tls(broker, tls_cert=paths.cert, tls_key=paths.key)


def test_expired_certificate_is_refused(mtls_broker: Mosquitto) -> None:
    # Issued by the broker's own CA for a provisioned device, valid the day before yesterday.
    old = certs.issue_client(
        mtls_broker.certs_dir,
        EXPIRED,
        days=1,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
    )
    client = asyncio.run(attempt(_client_cert_settings(mtls_broker, old), EXPIRED, None))
    assert client.connects == 0 and client.failures >= 1
    assert "certificate verify failed" in mtls_broker.log_path.read_text()
    # The same device with a current certificate is accepted: the refusal was the expiry.
    current = certs.issue_client(mtls_broker.certs_dir, EXPIRED)
    good = asyncio.run(attempt(_client_cert_settings(mtls_broker, current), EXPIRED, None))
    assert good.connects == 1


def _refused_after_reload(broker: Mosquitto, kept: certs.CertPaths, device: str) -> Any:
    """The broker re-reads its CRL on SIGHUP asynchronously: try again for a few seconds
    until the revoked certificate is refused (it must be, within the bound)."""
    results: list[Any] = []

    def refused() -> bool:
        results.append(asyncio.run(attempt(_client_cert_settings(broker, kept), device, None)))
        return bool(results[-1].connects == 0)

    wait_for(refused, 15, "the revoked certificate to be refused", interval=0.5)
    return results[-1]


def test_revoked_certificate_is_refused_after_revoke_and_reload(
    mtls_broker: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[2]
    paths = certs.client_paths(mtls_broker.certs_dir, device)
    # Keep a copy: revocation deletes the files, a stolen copy is what must stop working.
    kept = certs.CertPaths(tmp_path / "stolen.crt", tmp_path / "stolen.key")
    shutil.copy(paths.cert, kept.cert)
    shutil.copy(paths.key, kept.key)
    before = asyncio.run(attempt(_client_cert_settings(mtls_broker, kept), device, None))
    assert before.connects == 1
    code = safecity_main(
        [
            "certs", "revoke", "--dir", str(mtls_broker.certs_dir),
            "--broker-pid", str(mtls_broker.pid), device,
        ]
    )  # fmt: skip
    assert code == 0
    assert not paths.cert.exists()
    after = _refused_after_reload(mtls_broker, kept, device)
    assert after.connects == 0 and after.failures >= 1
    # A revoked device is not rotated back to life: only an explicit reinstate gives it
    # a new certificate that works; the CRL still holds the old.
    rotate = ["certs", "rotate", "--dir", str(mtls_broker.certs_dir), "--broker-pid"]
    assert safecity_main([*rotate, str(mtls_broker.pid), device]) != 0
    assert not paths.cert.exists()
    code = safecity_main(["certs", "reinstate", "--dir", str(mtls_broker.certs_dir), device])
    assert code == 0
    fresh = asyncio.run(attempt(_client_cert_settings(mtls_broker, paths), device, None))
    assert fresh.connects == 1
    again = _refused_after_reload(mtls_broker, kept, device)
    assert again.connects == 0


def test_another_devices_certificate_acts_only_as_that_device(mtls_broker: Mosquitto) -> None:
    """Device A claiming its own username and password but presenting B's certificate is B:
    the broker takes the identity from the certificate, so A's topic is refused."""
    a, b = DEVICES[3], DEVICES[4]
    other = certs.client_paths(mtls_broker.certs_dir, b)
    mqtt = _client_cert_settings(mtls_broker, other)
    codes: list[int] = []

    async def main() -> None:
        done = asyncio.Event()

        def on_puback(mid: int, code: int) -> None:
            codes.append(code)
            if len(codes) == 2:
                done.set()

        client = FleetClient(
            mqtt, f"{a}-x", username=a, password=mtls_broker.secret(a), on_puback=on_puback
        )
        client.start()
        assert await client.wait_connected(10), client.last_error
        assert client.publish(topic(a), b"1") is not None  # A's topic: refused
        assert client.publish(topic(b), b"2") is not None  # B's own: the cert's identity
        await asyncio.wait_for(done.wait(), 10)
        await client.stop(1.0)

    asyncio.run(main())
    assert codes[0] == NOT_AUTHORIZED
    assert codes[1] < 0x80


def test_a_device_certificate_cannot_publish_on_another_devices_topic(
    mtls_broker: Mosquitto, tmp_path: Path
) -> None:
    a, b = DEVICES[5], DEVICES[6]
    results: list[int] = []
    edge = EdgeSettings(spool_dir=tmp_path / "spool", tls_client_dir=mtls_broker.client_certs_dir)

    async def main() -> None:
        agent = DeviceAgent(a, tls(mtls_broker), edge, lambda m, code: results.append(code))
        agent.start()
        assert await agent.client.wait_connected(10), agent.client.last_error
        agent.submit(Envelope(topic(b), b"spoof"))
        agent.submit(Envelope(topic(a), b"own"))
        await agent.close(10)

    asyncio.run(main())
    # Its own topic is accepted (0x10 "no subscribers" here is an acceptance, too).
    assert results[0] == NOT_AUTHORIZED and results[1] < 0x80


def test_a_burst_of_messages_over_tls_reaches_the_device_at_once(tls_broker: Mosquitto) -> None:
    """Over a verified TLS connection every message of a burst published from outside is
    handed over and acknowledged without waiting for another packet to arrive (decrypted
    bytes can wait inside the TLS layer, where the selector does not see them)."""
    device = DEVICES[7]
    ack = f"safecity/v1/tlstest/d1/noise/{device}/ack"
    sent = [f"m{i}" for i in range(200)]
    got: list[str] = []

    async def main() -> None:
        client = FleetClient(
            tls(tls_broker), device, username=device, password=tls_broker.secret(device),
            subscriptions=[(ack, 1)], on_message=lambda _t, p: got.append(p.decode()),
        )  # fmt: skip
        client.start()
        assert await client.wait_connected(10), client.last_error
        await asyncio.sleep(0.5)  # the SUBACK
        publish = [*mosquitto("mosquitto_pub", tls_broker, "_ingest"), "-q", "1", "-t", ack]
        await asyncio.to_thread(
            subprocess.run, [*publish, "-l"], input="\n".join(sent) + "\n", text=True,
            check=True, timeout=30,
        )  # fmt: skip
        try:
            await wait_for_async(lambda: len(got) == len(sent), 5, "the whole burst", 0.05)
        finally:
            await client.stop(1.0)

    asyncio.run(main())
    assert got == sent
