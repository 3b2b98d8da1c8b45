"""Test kit: Mosquitto instances of the platform's secure config (broker/mosquitto.conf).

They are started exactly as the platform starts its broker (control.stack.Mosquitto:
identities, local CA, TLS listener), each with a state of its own that the tests may
revoke, rotate and reload.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rawmqtt import RawClient
from support import wait_for

from broker.identity import CredentialStore, Role, service_username
from control.stack import DEFAULT_MOSQUITTO_CONF, Mosquitto
from safecity.mqtt import MqttClient
from safecity.registry import City, default_city
from safecity.settings import MqttSettings

ROOT = Path(__file__).resolve().parents[2]
SECURE_TEMPLATE = DEFAULT_MOSQUITTO_CONF


@dataclass
class SecureBroker:
    """A running hardened broker, its credential store, CA and the secrets issued."""

    mosquitto: Mosquitto
    store: CredentialStore
    certs_dir: Path
    tls_port: int
    secrets: dict[str, str]
    city: City
    devices: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Pid of the broker (for SIGHUP)."""
        pid = self.mosquitto.pid
        assert pid is not None
        return pid

    def settings(
        self, username: str | None, password: str | None = None, **kw: Any
    ) -> MqttSettings:
        """Settings for the plain listener as `username` (its issued secret by default)."""
        if username is not None and password is None:
            password = self.secrets.get(username)
        return MqttSettings(
            host=self.mosquitto.host,
            port=self.mosquitto.port,
            username=username,
            password=password,
            connect_timeout=10,
            **kw,
        )

    def tls_settings(self, username: str | None, ca: Path, **kw: Any) -> MqttSettings:
        """Settings for the TLS listener, verifying the broker against `ca`."""
        base = self.settings(username).model_dump()
        base.update(port=self.tls_port, tls_ca=ca, **kw)
        return MqttSettings(**base)

    def topic(self, device_id: str, channel: str = "telemetry") -> str:
        """The device's own topic from the registry."""
        device = self.city.device(device_id)
        assert device is not None
        return f"safecity/v1/{self.city.id}/{device.district}/{device.kind}/{device_id}/{channel}"


def start_secure_broker(base: Path, *, mutual_tls: bool) -> SecureBroker:
    """Provision the default city (+ ingest, API), make a CA and start the secure broker."""
    city = default_city()
    broker = Mosquitto(
        base / "mosquitto",
        city=city,
        services=(Role.INGEST, Role.API, Role.COMMAND),
        identity_dir=base / "identity",
        certs_dir=base / "certs",
        tls_port=0,
        mutual_tls=mutual_tls,
    ).start()
    assert broker.tls_port is not None
    return SecureBroker(
        broker,
        broker.identities.store,
        broker.certs_dir,
        broker.tls_port,
        broker.identities.secrets,
        city,
        [d.id for d in city.devices],
    )


INGEST = service_username(Role.INGEST)


async def connected(settings: MqttSettings, client_id: str) -> MqttClient:
    """A connected MqttClient (raises MqttError if the broker refuses)."""
    client = MqttClient(settings, client_id)
    await client.connect()
    return client


def barrier_topic(city: str) -> str:
    """The topic the observer publishes its barrier marker to (ingest may write there)."""
    return f"safecity/v1/{city}/_services/_barrier"


def wait_connack(broker: SecureBroker, username: str, secret: str, expected: int) -> None:
    """Connect until the CONNACK reason is `expected` (devices with their own client id)."""

    def reason() -> int:
        client = RawClient(broker.mosquitto.host, broker.mosquitto.port)
        client_id = username if not username.startswith("_") else f"probe-{secrets.token_hex(3)}"
        try:
            return client.connect(client_id, username, secret).reason
        finally:
            client.close()

    wait_for(lambda: reason() == expected, 10, f"CONNACK {expected:#x}", interval=0.05)


async def barrier(observer: MqttClient, city: str) -> list[str]:
    """Topics the observer received before its own marker message came back.

    The broker hands a message to all subscribers before it answers the publisher, and
    one connection is delivered in order; so once the marker arrives, anything an earlier
    accepted publish would have delivered is already here.
    """
    marker = barrier_topic(city)
    result = await observer.publish(marker, b"barrier", qos=1)
    assert result.ok, result
    seen: list[str] = []
    while True:
        batch = await observer.inbox.get_batch(100, 10.0)
        assert batch, "the barrier message never came back"
        for message in batch:
            if message.topic == marker:
                return seen
            seen.append(message.topic)


def run(coro: Any) -> Any:
    """Run a coroutine to completion in a fresh event loop."""
    return asyncio.run(coro)
