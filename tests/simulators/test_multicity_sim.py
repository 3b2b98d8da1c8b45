"""One simulator, several cities: a fleet per city, each with its own registry, climate and
time zone, on one simulated clock and into one ledger. Real Mosquitto 2.0.11."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest

from control.stack import Mosquitto
from edge.settings import EdgeSettings
from safecity import ledger
from safecity.citygen import builtin
from safecity.registry import Cities, default_city
from safecity.topics import parse_device_topic
from simulators.command import simulate_cities
from simulators.settings import SimulatorSettings
from simulators.sites import World

CITIES = Cities((default_city(), builtin("almaty")))


@pytest.mark.timeout(90)
def test_a_fleet_per_city_into_one_ledger(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", city=CITIES) as broker:
        settings = SimulatorSettings(
            mqtt=broker.mqtt_settings("_simulator"),
            client_id=f"sim-test-{uuid.uuid4().hex[:8]}",
            transport="single",
            speed=600.0,
            max_devices=12,
            duration=2.0,
            ledger=tmp_path / "ledger.jsonl",
            edge=EdgeSettings(spool_dir=Path(tempfile.mkdtemp(prefix="sim-spool-")), confirm=False),
        )
        assert simulate_cities(settings, CITIES) == 0

    entries = list(ledger.read(tmp_path / "ledger.jsonl"))
    by_city: dict[str, set[str]] = {}
    for entry in entries:
        topic = parse_device_topic(entry.topic)
        by_city.setdefault(topic.city, set()).add(entry.device_id)
        # Every message names its own device's city and registry identity.
        device = CITIES.device(topic.city, entry.device_id)
        assert device is not None, entry.topic
        assert (topic.district, topic.kind) == (device.district, device.kind)
        # Readings are kept until acknowledged; a status published while the fleet stops
        # may miss its PUBACK inside the stop's drain bound on a loaded machine.
        assert entry.acknowledged or entry.channel == "status", entry
    assert any(e.channel == "telemetry" for e in entries)
    assert set(by_city) == {"tashkent", "almaty"}
    for city in CITIES.values():
        assert by_city[city.id] == {d.id for d in city.devices[:12]}
    # Each fleet lives in its own city's climate and time zone.
    climates = {c: World(CITIES[c]).climate for c in CITIES}
    assert climates["tashkent"].key == "tashkent" and climates["almaty"].key == "almaty"
    assert climates["tashkent"].timezone == "Asia/Tashkent"
    assert climates["almaty"].timezone == "Asia/Almaty"
    assert climates["tashkent"].t_mean != climates["almaty"].t_mean


def test_a_scenario_or_processes_need_one_city() -> None:
    with pytest.raises(ValueError, match="one city"):
        simulate_cities(SimulatorSettings(scenario="x"), CITIES)
    with pytest.raises(ValueError, match="one city"):
        simulate_cities(SimulatorSettings(processes=2), CITIES)
