"""The fleet: deterministic payload sequences, schedule, seq, and a run against real Mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY
from support import wait_for

from control.stack import Mosquitto
from edge.settings import EdgeSettings
from safecity import catalogue
from safecity.citygen import generate
from safecity.readings import Event, Reading, Rejection, Status, epoch_ms, parse
from safecity.registry import City
from safecity.topics import Channel, parse_device_topic
from simulators.fleet import FleetStats, Sent, device_messages, run, seq_base
from simulators.settings import SimulatorSettings

CITY: City = generate("tashkent", 60, 5)
START = datetime(2026, 1, 15, 3, 0, 0, 123_000, tzinfo=UTC)


def fleet_payloads(seed: int, start: datetime, steps: int = 30) -> list[bytes]:
    out: list[bytes] = []
    for device in CITY.devices:
        out.extend(m.payload for m in device_messages(CITY.id, device, seed, start, steps))
    return out


def test_same_seed_same_start_gives_byte_identical_payloads() -> None:
    assert fleet_payloads(7, START) == fleet_payloads(7, START)


def test_other_seed_or_start_gives_other_payloads() -> None:
    base = fleet_payloads(7, START)
    assert fleet_payloads(8, START) != base
    assert fleet_payloads(7, START + timedelta(minutes=1)) != base


def test_messages_parse_and_follow_the_schedule() -> None:
    for device in CITY.devices:
        cadence_ms = round(catalogue.KINDS[device.kind].cadence_s * 1000)
        messages = device_messages(CITY.id, device, 7, START, 20)
        birth, rest = messages[0], messages[1:]
        assert birth.channel is Channel.STATUS
        status = parse(device.kind, birth.payload, channel=Channel.STATUS, now=START)
        assert isinstance(status, Status)
        assert status.state == "online"
        readings = [m for m in rest if m.channel is Channel.TELEMETRY]
        assert len(readings) == 20
        # First burst at start, then an offset in (0, cadence], then every cadence.
        times = [m.ts_ms for m in readings]
        assert times[0] == epoch_ms(START)
        assert 0 < times[1] - times[0] <= cadence_ms
        assert all(b - a == cadence_ms for a, b in itertools.pairwise(times[1:]))
        # One seq counter per device over readings and events, from seq_base(start).
        seqs = [m.seq for m in rest]
        assert seqs == list(range(seq_base(START), seq_base(START) + len(rest)))
        for m in rest:
            topic = parse_device_topic(m.topic)
            assert (topic.city, topic.district, topic.kind, topic.device_id) == (
                CITY.id,
                device.district,
                device.kind,
                device.id,
            )
            assert topic.channel is m.channel
            parsed = parse(device.kind, m.payload, channel=m.channel, past_window=None)
            assert isinstance(parsed, Event if m.channel is Channel.EVENT else Reading), parsed
            assert parsed.seq == m.seq
            assert parsed.ts_ms == m.ts_ms


def test_without_first_burst_the_first_reading_is_spread() -> None:
    offsets = set()
    for device in CITY.devices:
        cadence_ms = round(catalogue.KINDS[device.kind].cadence_s * 1000)
        first = device_messages(CITY.id, device, 7, START, 1, first_burst=False)[1]
        offset = first.ts_ms - epoch_ms(START)
        assert 0 < offset <= cadence_ms
        offsets.add(offset)
    assert len(offsets) > len(CITY.devices) // 2


def test_seq_of_a_later_run_starts_above_the_earlier_one() -> None:
    device = CITY.devices[0]
    early = device_messages(CITY.id, device, 7, START, 500)
    later = device_messages(CITY.id, device, 7, START + timedelta(seconds=1), 1)
    assert max(m.seq or 0 for m in early) < (later[1].seq or 0)
    assert (later[1].seq or 0) < 2**53


def test_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        device_messages(CITY.id, CITY.devices[0], 7, datetime(2026, 1, 1), 1)


# --- against a real broker ------------------------------------------------------------


class Collector:
    """A plain paho MQTT v5 subscriber collecting everything under safecity/v1/#."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-collector-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.username_pw_set("_api", broker.secret("_api"))  # read-only account
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK"

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe("safecity/v1/#", qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, bytes]]:
        def enough() -> bool:
            with self.lock:
                return len(self.messages) >= count

        wait_for(enough, timeout, f"{count} messages", interval=0.05)
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sim_settings(broker: Mosquitto, **overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        # transport=single logs in as the simulator account; edge: each device as itself.
        "mqtt": broker.mqtt_settings("_simulator"),
        "client_id": f"sim-test-{uuid.uuid4().hex[:8]}",
        "seed": 7,
        "speed": 600.0,
        "max_devices": 30,
        "duration": 2.0,
        "first_burst": True,
        "edge": EdgeSettings(
            spool_dir=Path(tempfile.mkdtemp(prefix="sim-spool-")),
            secrets_file=broker.secrets_file,
            confirm=False,  # a broker alone, no ingest to confirm durability
        ),
    }
    values.update(overrides)
    return SimulatorSettings(**values)


def counter(kind: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "safecity_sim_published_total", {"kind": kind, "result": result}
    )
    return value or 0.0


@pytest.mark.timeout(60)
def test_fleet_publishes_valid_messages_for_every_device(tmp_path: Path) -> None:
    city = generate("tashkent", 30, 3)  # every kind at least once
    assert {d.kind for d in city.devices} == set(catalogue.KINDS)
    # A broker of its own with an account for each device of this generated city.
    with Mosquitto(tmp_path / "broker", city=city) as mosquitto:
        settings = sim_settings(mosquitto)
        sent: list[Sent] = []
        before = counter("traffic", "accepted")
        collector = Collector(mosquitto)
        try:
            started = time.monotonic()
            stats: FleetStats = asyncio.run(run(settings, city, on_sent=sent.append))
            elapsed = time.monotonic() - started
            received = collector.wait_for(stats.accepted)
        finally:
            collector.close()

    assert 1.5 < elapsed < 15
    assert_counts(stats, sent)
    assert counter("traffic", "accepted") - before == stats.by_kind["traffic"]
    ours = [(t, p) for t, p in received if f"/{city.id}/" in t]
    assert len(ours) == stats.accepted
    assert_every_device_valid(city, ours)


def assert_counts(stats: FleetStats, sent: list[Sent]) -> None:
    """Every device published: a birth, readings, a farewell; all accepted."""
    assert stats.devices == 30
    assert stats.failed == 0 and stats.refused == 0 and stats.invalid == 0
    assert stats.accepted == stats.published == len(sent) > 30
    # Birth on connect and a farewell (offline, reason shutdown) per device.
    assert stats.statuses == 60
    assert stats.readings + stats.events + stats.statuses == stats.published
    # ~1200 simulated seconds in 2 s at speed 600: several readings per 60 s device.
    assert stats.sim_last is not None and stats.sim_start is not None
    assert stats.sim_last - stats.sim_start > timedelta(seconds=600)


def assert_every_device_valid(city: City, received: list[tuple[str, bytes]]) -> None:
    """Each message parses under its own device's kind; seqs rise; every device spoke."""
    kinds = {d.id: d.kind for d in city.devices}
    seen: dict[Channel, set[str]] = defaultdict(set)
    last_seq: dict[str, int] = {}
    for topic, payload in received:
        parsed_topic = parse_device_topic(topic)
        assert kinds[parsed_topic.device_id] == parsed_topic.kind
        # The run's simulated clock runs ahead of now: skip the ingest's time window here.
        result = parse(
            parsed_topic.kind,
            payload,
            channel=parsed_topic.channel,
            past_window=None,
            future_window=None,
        )
        assert not isinstance(result, Rejection), (topic, payload, result)
        seen[parsed_topic.channel].add(parsed_topic.device_id)
        if isinstance(result, Reading | Event):
            assert json.loads(payload)["seq"] == result.seq
            if parsed_topic.channel is Channel.TELEMETRY:
                previous = last_seq.get(parsed_topic.device_id, -1)
                assert result.seq > previous
                last_seq[parsed_topic.device_id] = result.seq
    assert seen[Channel.STATUS] == set(kinds)
    assert seen[Channel.TELEMETRY] == set(kinds)


@pytest.mark.timeout(60)
def test_fleet_stops_when_asked(tmp_path: Path) -> None:
    city = generate("tashkent", 20, 4)

    async def main(settings: SimulatorSettings) -> tuple[FleetStats, float]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, stop.set)
        started = loop.time()
        stats = await run(settings, city, stop=stop)
        return stats, loop.time() - started

    with Mosquitto(tmp_path / "broker", city=city) as mosquitto:
        settings = sim_settings(mosquitto, duration=None, speed=1.0, first_burst=False)
        stats, elapsed = asyncio.run(main(settings))
    assert elapsed < 5
    # Births and farewells only: at speed 1 no reading is due within half a second.
    assert stats.statuses == 40
    assert stats.accepted == stats.published


@pytest.mark.timeout(60)
def test_fleet_stops_even_when_the_broker_stalls(tmp_path: Path) -> None:
    city = generate("tashkent", 50, 4)
    with Mosquitto(tmp_path) as broker:
        settings = sim_settings(
            broker, duration=None, speed=600.0, max_devices=None, transport="single"
        )

        async def main() -> tuple[FleetStats, float]:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            stopping = 0.0

            def freeze_after_first_acceptance(sent: Sent) -> None:
                # Timed from the first reading's PUBACK, not from the start: on a loaded
                # machine the connects alone can outlast a fixed delay, and nothing would be
                # in flight; the births went first (in order) and are all acknowledged by then.
                nonlocal stopping
                accepted = sent.result == "accepted"
                if accepted and sent.message.channel is Channel.TELEMETRY and not stopping:
                    stopping = loop.time() + 0.7
                    loop.call_later(0.2, broker.pause)
                    loop.call_later(0.7, stop.set)

            stats = await run(
                settings,
                city,
                stop=stop,
                on_sent=freeze_after_first_acceptance,
                max_in_flight=5,
                drain_timeout=0.5,
            )
            assert stopping, "nothing was accepted before the broker froze"
            return stats, loop.time() - stopping

        try:
            stats, elapsed = asyncio.run(main())
        finally:
            broker.resume()
    # Stopping is bounded by the drain timeout, not by the frozen broker (bound generous).
    assert elapsed < 10
    assert stats.accepted > 0
    # Whatever was in flight when the broker froze has no PUBACK: it stays in the spool for
    # the next run (buffered), never lost silently; only status messages can fail.
    assert stats.buffered >= 1 and stats.failed == 0
    assert stats.published == stats.readings + stats.events + stats.statuses
