"""Client-id takeover and share-group theft by a device, against the session's real stack.

A device with its own valid secret tries to connect as another device, as the ingest,
as the alerts service, and to join their share groups; meanwhile a real ingest worker
stores a ledgered stream into InfluxDB, and the checker proves nothing was lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest
from faults import Ingest, check, new_db
from ledgerpub import LedgerPublisher, good_readings
from rawmqtt import PUBACK, RawClient
from support import wait_for

from control.stack import LocalStack, mqtt_connack_reason
from safecity.errors import MqttError
from safecity.mqtt import MqttClient
from safecity.registry import Device, default_city

CITY = default_city()
NOT_AUTHORIZED = 0x87
ALERTS_CLIENT_ID = "safecity-alerts-0"  # `safecity-{alerts_id}`, alerts_id default `alerts-0`


def topic(device: Device, channel: str = "telemetry") -> str:
    return f"safecity/v1/{CITY.id}/{device.district}/{device.kind}/{device.id}/{channel}"


def test_a_device_cannot_take_another_clients_id(stack: LocalStack) -> None:
    attacker, victim = CITY.devices[10], CITY.devices[11]
    host, port = stack.mqtt_host, stack.mqtt_port
    live = RawClient(host, port)
    assert live.connect(victim.id, victim.id, stack.secret(victim.id)).reason == 0
    try:
        for client_id in (
            victim.id,
            "safecity-ingest-0",
            "safecity-ingest-0-sys",
            ALERTS_CLIENT_ID,
            "safecity-api-live-0000",
        ):
            reason = mqtt_connack_reason(
                host,
                port,
                5,
                username=attacker.id,
                password=stack.secret(attacker.id),
                client_id=client_id,
            )
            assert reason == NOT_AUTHORIZED, (client_id, reason)
        # The victim was not kicked: its one connection still gets PUBACKs.
        answer = live.publish(topic(victim), b"{}")
        assert answer is not None and answer.kind == PUBACK and answer.reason < 0x80
    finally:
        live.close()


async def _subscribe_codes(stack: LocalStack, device: str, filters: list[str]) -> list[int]:
    """The SUBACK codes a device gets for filters (all refused: read from the error)."""
    client = MqttClient(stack.mqtt_settings(device), device)
    await client.connect()
    try:
        await client.subscribe([(f, 1) for f in filters])
    except MqttError as exc:
        text = str(exc)
        return [int(c) for c in text.split("codes [")[1].rstrip("]").split(",")]
    finally:
        await client.disconnect()
    return [0] * len(filters)


def test_a_device_cannot_join_the_ingest_or_alerts_share_group(stack: LocalStack) -> None:
    device = CITY.devices[12].id
    filters = [
        f"$share/ingest/safecity/v1/{CITY.id}/+/+/+/telemetry",
        "$share/ingest/safecity/v1/#",
        "$share/alerts/safecity/v1/#",
        "#",
    ]
    assert asyncio.run(_subscribe_codes(stack, device, filters)) == [NOT_AUTHORIZED] * 4


class Attacker:
    """A device that, until stopped, keeps trying to connect under others' client ids and
    holds a connection that tried to join the ingest's and the alerts' share groups."""

    def __init__(self, stack: LocalStack, device: str, client_ids: list[str], group: str) -> None:
        self.stack = stack
        self.device = device
        self.client_ids = client_ids
        self.group = group
        self.outcomes: Counter[int | None] = Counter()
        self.suback: list[int] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.threads = [
            threading.Thread(target=self._takeovers, daemon=True),
            threading.Thread(target=self._thief, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        assert self.ready.wait(30), "the share-group thief never connected"

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _takeovers(self) -> None:
        secret = self.stack.secret(self.device)
        while not self.stop.is_set():
            for client_id in self.client_ids:
                reason = mqtt_connack_reason(
                    self.stack.mqtt_host,
                    self.stack.mqtt_port,
                    5,
                    username=self.device,
                    password=secret,
                    client_id=client_id,
                )
                self.outcomes[reason] += 1

    def _thief(self) -> None:
        async def main() -> None:
            client = MqttClient(self.stack.mqtt_settings(self.device), self.device)
            await client.connect()
            filters = [
                f"$share/{self.group}/safecity/v1/{CITY.id}/+/+/+/telemetry",
                f"$share/{self.group}/safecity/v1/#",
                "$share/alerts/safecity/v1/#",
            ]
            for f in filters:
                try:
                    self.suback.extend(await client.subscribe([(f, 1)]))
                except MqttError:
                    self.suback.append(NOT_AUTHORIZED)
            self.ready.set()
            # Stay connected while the stream flows: a granted share would take its turns.
            await asyncio.to_thread(self.stop.wait)
            await client.disconnect()

        asyncio.run(main())


@pytest.mark.timeout(300)
def test_the_ingest_under_takeover_and_share_group_attacks_loses_nothing(
    stack: LocalStack, tmp_path: Path
) -> None:
    db = new_db(stack)
    worker = f"{db}-w0"
    group = f"g-{db}"
    ingest = Ingest(stack, db, tmp_path / "w0", worker, SAFECITY_SHARE_GROUP=group)
    ingest.start()
    victim = CITY.devices[14].id
    attacker = Attacker(
        stack,
        CITY.devices[13].id,
        [f"safecity-{worker}", f"safecity-{worker}-sys", ALERTS_CLIENT_ID, victim],
        group,
    )
    try:
        attacker.start()
        publisher = LedgerPublisher(stack.mqtt_settings("_simulator"), tmp_path / "ledger.jsonl")
        publisher.run(good_readings(CITY, 2000, devices=50))
        attacker.join()

        report = {}

        def all_stored() -> bool:
            report["r"] = check(stack, db, publisher.ledger_path, ingest.deadletter_dir)
            return not report["r"].lost

        wait_for(all_stored, 60, "every acknowledged reading in InfluxDB")
        r = report["r"]
        assert r.acknowledged == r.sent == 2000
        assert r.lost == [] and r.duplicated == [] and r.unexpected == []
        assert r.stored == r.good == 2000
        # Every takeover attempt was refused, and there were many of them.
        assert set(attacker.outcomes) == {NOT_AUTHORIZED}, attacker.outcomes
        assert attacker.outcomes[NOT_AUTHORIZED] >= len(attacker.client_ids)
        assert attacker.suback == [NOT_AUTHORIZED] * 3
        # The ingest kept its one connection: connected once, never closed by the broker.
        log = ingest.log_path.read_text()
        connects = [
            ln
            for ln in log.splitlines()
            if '"mqtt connected"' in ln and f'"safecity-{worker}"' in ln
        ]
        assert len(connects) == 1, connects
        assert "mqtt disconnected" not in log
        assert ingest.metric("safecity_ingest_received_total") == 2000
    finally:
        attacker.stop.set()
        ingest.stop()
