"""Simulated devices act on commands and the effect shows in what they publish: a dimmed
streetlight reports its level at once, a rebooted device goes offline and comes back with
a birth message; injected command failures are answered as failures. Real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control.stack import Mosquitto
from edge.settings import EdgeSettings
from safecity import topics
from safecity.citygen import generate
from safecity.commands import Command, new_command_id, parse_result
from safecity.mqtt import MqttClient
from safecity.registry import City, Device
from safecity.topics import Channel
from simulators.actuators import INJECTED
from simulators.fleet import run
from simulators.settings import FaultSettings, SimulatorSettings

CITY: City = generate("tashkent", 30, 3)


def settings(broker: Mosquitto, **overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "mqtt": broker.mqtt_settings("_simulator"),
        "client_id": f"sim-cmd-{uuid.uuid4().hex[:8]}",
        "seed": 7,
        "duration": 12.0,
        "edge": EdgeSettings(
            spool_dir=Path(tempfile.mkdtemp(prefix="sim-spool-")),
            secrets_file=broker.secrets_file,
            confirm=False,
        ),
    }
    values.update(overrides)
    return SimulatorSettings(**values)


def command(name: str, **params: Any) -> bytes:
    now = datetime.now(UTC)
    return Command(
        id=new_command_id(), name=name, params=params, issued_at=now,
        expires_at=now + timedelta(seconds=30), idempotency_key="t",
    ).to_payload()  # fmt: skip


def address(device: Device) -> tuple[str, str, str, str]:
    return CITY.id, device.district, device.kind, device.id


async def operate(broker: Mosquitto, steps: list[tuple[Device, bytes]]) -> list[tuple[str, bytes]]:
    """As the command role: send each command once the fleet is up; collect what follows."""
    service = MqttClient(broker.mqtt_settings("_command"), f"cmd-{uuid.uuid4().hex[:6]}")
    watcher = MqttClient(broker.mqtt_settings("_api"), f"watch-{uuid.uuid4().hex[:6]}")
    await service.connect()
    await watcher.connect()
    await service.subscribe([(topics.result_filter(CITY.id), 1)])
    await watcher.subscribe(
        [(topics.device_filter(c, CITY.id), 1) for c in (Channel.TELEMETRY, Channel.STATUS)]
    )
    seen: list[tuple[str, bytes]] = []
    try:
        await asyncio.sleep(3.0)  # the fleet connects and subscribes
        for device, payload in steps:
            sent = await service.publish(
                topics.command_topic(*address(device)), payload, 1, expiry_s=30
            )
            assert sent.reason_code == 0, sent
        loop = asyncio.get_running_loop()
        end = loop.time() + 6.0
        while loop.time() < end:
            for client in (service, watcher):
                seen += [(m.topic, m.payload) for m in await client.inbox.get_batch(1000, 0.1)]
    finally:
        await service.disconnect()
        await watcher.disconnect()
    return seen


def run_with_fleet(broker: Mosquitto, sim: SimulatorSettings, steps: list[tuple[Device, bytes]]
                   ) -> list[tuple[str, bytes]]:  # fmt: skip
    fleet = threading.Thread(target=lambda: asyncio.run(run(sim, CITY)), daemon=True)
    fleet.start()
    try:
        return asyncio.run(operate(broker, steps))
    finally:
        fleet.join(30)


def results(seen: list[tuple[str, bytes]], device: Device) -> list[tuple[str, str | None]]:
    topic = topics.result_topic(*address(device))
    return [(r.status.value, r.reason) for r in (parse_result(p) for t, p in seen if t == topic)]


@pytest.mark.timeout(90)
def test_devices_act_and_the_effect_shows(tmp_path: Path) -> None:
    light = next(d for d in CITY.devices if d.kind == "streetlight")
    weather = next(d for d in CITY.devices if d.kind == "weather")
    with Mosquitto(tmp_path / "broker", city=CITY) as broker:
        seen = run_with_fleet(
            broker,
            settings(broker),
            [(light, command("set_level", level=40)), (weather, command("reboot"))],
        )
    assert results(seen, light) == [("delivered", None), ("executed", None)]
    levels = [
        json.loads(p)["values"].get("level")
        for t, p in seen
        if t == topics.telemetry_topic(*address(light))
    ]
    assert levels and levels[-1] == 40
    # Rebooted: a goodbye (reason reboot), then a birth, and the command executed.
    states = [
        (json.loads(p)["state"], json.loads(p).get("reason"))
        for t, p in seen
        if t == topics.status_topic(*address(weather))
    ]
    assert states[-2:] == [("offline", "reboot"), ("online", None)]
    assert results(seen, weather)[-1] == ("executed", None)


@pytest.mark.timeout(90)
def test_injected_command_failures_are_answered_as_failures(tmp_path: Path) -> None:
    light = next(d for d in CITY.devices if d.kind == "streetlight")
    with Mosquitto(tmp_path / "broker", city=CITY) as broker:
        sim = settings(broker, faults=FaultSettings(command_failure=1.0))
        seen = run_with_fleet(broker, sim, [(light, command("set_level", level=10))])
    assert results(seen, light) == [("delivered", None), ("failed", INJECTED)]
