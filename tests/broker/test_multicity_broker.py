"""One broker for several cities: every city's devices have accounts, and service accounts
scoped to one city (`_api.samarkand`) read and write only that city's topics. Real Mosquitto
2.0.11 with the dynamic-security plugin, scoped accounts both rendered at start and added
to the running broker through $CONTROL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerkit import connected, run

from broker.dynsec import render_dynsec, service_acls
from broker.identity import (
    CredentialStore,
    Role,
    service_scope,
    service_username,
    validate_username,
)
from control.cli import main as safecity_main
from control.stack import Mosquitto
from safecity.citygen import builtin
from safecity.errors import ConfigError, MqttError
from safecity.registry import Cities, Device, default_city, write
from safecity.settings import MqttSettings

TASHKENT = default_city()
SAMARKAND = builtin("samarkand")


def topic(city: str, device: Device, channel: str = "telemetry") -> str:
    return f"safecity/v1/{city}/{device.district}/{device.kind}/{device.id}/{channel}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker for Tashkent and Samarkand, with `_api.samarkand` provisioned before start."""
    base = tmp_path_factory.mktemp("multicity")
    mosquitto = Mosquitto(
        base / "mosquitto",
        city=Cities((TASHKENT, SAMARKAND)),
        services=(Role.INGEST, Role.API),
        identity_dir=base / "identity",
        tls_port=None,
    )
    # Rendered into the plugin's file: the broker starts with it.
    assert mosquitto.provision_service(service_username(Role.API, "samarkand"), Role.API)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def settings(broker: Mosquitto, username: str) -> MqttSettings:
    return broker.mqtt_settings(username)


def test_scoped_names_and_acls() -> None:
    assert service_username(Role.INGEST, "tashkent") == "_ingest.tashkent"
    assert service_scope("_ingest.tashkent") == "tashkent"
    assert service_scope("_ingest") is None
    assert validate_username("_api.samarkand", Role.API) == "_api.samarkand"
    for bad in ("_api.Samarkand", "_api.", "_api.a/b", "_ingest.x+y"):
        with pytest.raises(ConfigError):
            validate_username(bad, Role.API)
    with pytest.raises(ConfigError, match="no city scope"):
        service_username(Role.ADMIN, "tashkent")
    for role in ("ingest", "alerts", "api", "console", "simulator"):
        for acl in service_acls(role, "tashkent"):
            where = str(acl["topic"]).removeprefix("$share/+/")
            assert where.startswith(("safecity/v1/tashkent/", "$SYS/")), (role, acl)
    config = json.loads(
        render_dynsec([])  # no accounts: the shared service roles only, none scoped
    )
    assert not [r for r in config["roles"] if ":" in r["rolename"]]


def test_every_city_has_its_device_accounts(broker: Mosquitto) -> None:
    accounts = broker.identities.store.accounts
    for city in (TASHKENT, SAMARKAND):
        for device in city.devices:
            assert accounts[device.id].city == city.id
    assert accounts["_api.samarkand"].city == "samarkand"


def test_a_scoped_account_reads_and_writes_only_its_city(broker: Mosquitto) -> None:
    # Added to the running broker through $CONTROL (the other was rendered at start).
    ingest_name = service_username(Role.INGEST, "samarkand")
    issued = broker.provision_service(ingest_name, Role.INGEST)
    assert set(issued) == {ingest_name}
    ours, theirs = SAMARKAND.devices[0], TASHKENT.devices[0]

    async def scenario() -> tuple[list[str], list[list[int]], list[int]]:
        api = await connected(settings(broker, "_api.samarkand"), "api-samarkand")
        refused: list[list[int]] = []
        for other in ("safecity/v1/tashkent/#", "safecity/v1/#", "#"):
            with pytest.raises(MqttError, match="subscription refused") as info:
                await api.subscribe([(other, 1)])
            refused.append([int(c) for c in str(info.value).split("codes [")[1][:-1].split(",")])
        await api.subscribe([("safecity/v1/samarkand/#", 1)])
        # A Tashkent device on its own topic, then a Samarkand device on its own: the
        # scoped reader gets the second only (one connection delivers in order).
        for device, city in ((theirs, "tashkent"), (ours, "samarkand")):
            publisher = await connected(settings(broker, device.id), device.id)
            assert (await publisher.publish(topic(city, device), b"{}")).ok
            await publisher.disconnect()
        received = [m.topic for m in await api.inbox.get_batch(10, 10.0)]
        await api.disconnect()

        ingest = await connected(settings(broker, ingest_name), "ingest-samarkand")
        await ingest.subscribe([("$share/g/safecity/v1/samarkand/+/+/+/telemetry", 1)])
        codes = []
        for city in ("samarkand", "tashkent"):
            result = await ingest.publish(f"safecity/v1/{city}/_deadletter/schema", b"{}")
            codes.append(result.reason_code)
        await ingest.disconnect()
        return received, refused, codes

    received, refused, codes = run(scenario())
    assert received == [topic("samarkand", ours)]
    assert refused == [[0x87], [0x87], [0x87]]
    # Its own city's dead letters: accepted (0x10: nobody listens); another city's: 0x87.
    assert codes[0] < 0x80 and codes[1] == 0x87


def test_a_device_is_pinned_to_its_own_city_acks(broker: Mosquitto) -> None:
    device = SAMARKAND.devices[1]

    async def scenario() -> None:
        client = await connected(settings(broker, device.id), device.id)
        try:
            await client.subscribe([(topic("samarkand", device, "ack"), 1)])
            with pytest.raises(MqttError, match="subscription refused"):
                await client.subscribe([(topic("tashkent", device, "ack"), 1)])
        finally:
            await client.disconnect()

    run(scenario())


def test_render_keeps_scoped_roles(tmp_path: Path, broker: Mosquitto) -> None:
    config = json.loads(broker.identities.store.dynsec_file.read_text())
    roles = {r["rolename"]: r["acls"] for r in config["roles"]}
    assert {a["topic"] for a in roles["api:samarkand"]} >= {"safecity/v1/samarkand/#"}
    clients = {c["username"]: c for c in config["clients"]}
    assert clients["_api.samarkand"]["roles"] == [{"rolename": "api:samarkand"}]


def test_provisioning_from_the_command_line(tmp_path: Path) -> None:
    files = [tmp_path / "tashkent.jsonl", tmp_path / "samarkand.jsonl"]
    write(TASHKENT, files[0])
    write(SAMARKAND, files[1])
    common = ["--identity-dir", str(tmp_path / "identity"), "--registry", f"{files[0]},{files[1]}"]
    secrets_file = tmp_path / "secrets.json"
    args = ["devices", "provision", *common, "--secrets-file", str(secrets_file)]
    assert safecity_main(args) == 0
    scoped = [*args, "--service", "ingest", "--service", "api", "--city", "samarkand"]
    assert safecity_main(scoped) == 0
    store = CredentialStore(tmp_path / "identity")
    for city in (TASHKENT, SAMARKAND):
        assert all(store.accounts[d.id].city == city.id for d in city.devices)
    assert store.accounts["_ingest.samarkand"].city == "samarkand"
    assert store.accounts["_api.samarkand"].role is Role.API
    assert {"_ingest.samarkand", "_api.samarkand"} <= set(json.loads(secrets_file.read_text()))
    # --city scopes service accounts only.
    assert safecity_main(["devices", "provision", *common, "--city", "samarkand"]) == 2
