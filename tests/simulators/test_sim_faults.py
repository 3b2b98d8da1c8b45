"""Faults, incidents and scenarios: labels match what the ingest's validator decides."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control.stack import Mosquitto
from edge.settings import EdgeSettings
from ingest.validate import Accepted, Rejected, Validator
from safecity import ledger
from safecity.citygen import generate
from safecity.registry import City
from safecity.topics import Channel
from simulators import scenario as scenarios
from simulators.faults import FAULTS, REJECTS, DeviceFaults
from simulators.fleet import Outgoing, Sent, device_messages, run
from simulators.incidents import Scene, SimulatedIncident
from simulators.settings import FaultSettings, SimulatorSettings

CITY: City = generate("tashkent", 60, 5)
START = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
TEN_YEARS = 10 * 365 * 86_400.0
EVERY_FAULT = FaultSettings(**dict.fromkeys(FAULTS, 0.03), flood_size=5, episode_readings=4)


def fleet(faults: FaultSettings, steps: int = 40, seed: int = 3) -> list[Outgoing]:
    scene = Scene(CITY, [], seed)
    out: list[Outgoing] = []
    for device in CITY.devices:
        out.extend(
            device_messages(
                CITY.id,
                device,
                seed,
                START,
                steps,
                scene=scene,
                faults=DeviceFaults(faults, seed, device),
                others=list(CITY.devices),
            )
        )
    return out


def check_against_validator(messages: list[Outgoing], now: datetime) -> Counter[str]:
    """Every good message is accepted, every bad one refused with its labelled reason."""
    validator = Validator(CITY, past_window=TEN_YEARS, future_window=TEN_YEARS)
    seen: Counter[str] = Counter()
    for m in messages:
        if not m.publish:
            assert m.intended_reason == "dropout"
            seen["dropout"] += 1
            continue
        verdict = validator.validate(m.topic, m.payload, now=now)
        if m.intended_reason in (None, "duplicate"):
            assert isinstance(verdict, Accepted), (m, verdict)
            if m.channel is Channel.TELEMETRY and m.intended_reason is None:
                assert m.values is not None
        else:
            assert isinstance(verdict, Rejected), m
            assert verdict.rejection.reason.value == m.intended_reason, (m, verdict)
        seen[m.fault or "none"] += 1
    return seen


def test_faults_are_deterministic_and_leave_other_readings_alone() -> None:
    assert fleet(EVERY_FAULT) == fleet(EVERY_FAULT)
    clean = [m for m in fleet(FaultSettings()) if m.channel is Channel.TELEMETRY]
    assert all(m.fault is None and m.intended_reason is None for m in clean)


def test_every_good_reading_passes_and_every_injected_fault_gets_its_reason() -> None:
    messages = fleet(EVERY_FAULT)
    seen = check_against_validator(messages, now=START + timedelta(hours=2))
    # Every fault was exercised at least once, and most messages are still good.
    assert set(FAULTS) <= set(seen), set(FAULTS) - set(seen)
    assert seen["none"] > len(messages) // 3
    for fault, reason in REJECTS.items():
        assert seen[fault] > 0, (fault, reason)


def test_value_faults_look_as_labelled() -> None:
    messages = fleet(FaultSettings(stuck=0.2, episode_readings=5), steps=60)
    by_device: dict[str, list[Outgoing]] = {}
    for m in messages:
        if m.channel is Channel.TELEMETRY:
            by_device.setdefault(m.device_id, []).append(m)
    pairs = equal = 0
    for readings in by_device.values():
        for a, b in itertools.pairwise(readings):
            if a.fault == "stuck" and b.fault == "stuck":
                pairs += 1
                equal += a.values == b.values
    # Within an episode the values repeat; a new episode may follow at once.
    assert pairs > 0 and equal > pairs // 2


@pytest.mark.timeout(60)
def test_fleet_with_faults_writes_a_ledger_the_validator_agrees_with(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    city = generate("tashkent", 30, 3)
    settings = SimulatorSettings(
        # One connection as the simulator account, which may publish for any device id:
        # under per-device accounts the broker itself refuses identity_mismatch and
        # unknown_device (PUBACK 0x87, tests/broker); here the validator must see them.
        mqtt=mosquitto.mqtt_settings("_simulator"),
        transport="single",
        seed=11,
        speed=600.0,
        duration=2.0,
        faults=FaultSettings(**dict.fromkeys(FAULTS, 0.02), flood_size=5),
        ledger=tmp_path / "ledger.jsonl",
        edge=EdgeSettings(spool_dir=tmp_path / "spool"),
    )
    sent: list[Sent] = []
    stats = asyncio.run(run(settings, city, start=START, on_sent=sent.append))
    entries = list(ledger.read(tmp_path / "ledger.jsonl"))
    assert len(entries) == len(sent) == stats.published + stats.dropped
    assert stats.failed == 0 and stats.refused == 0 and stats.faults
    # One line per message, in verdict order, with the payload's hash and its labels.
    for entry, s in zip(entries, sent, strict=True):
        assert entry.sha256 == hashlib.sha256(s.message.payload).hexdigest()
        assert (entry.device_id, entry.seq, entry.intended_reason, entry.fault) == (
            s.message.device_id, s.message.seq, s.message.intended_reason, s.message.fault,
        )  # fmt: skip
        # 0x10 "no matching subscribers" is a success too (< 0x80).
        if entry.fault == "dropout":
            assert entry.puback == 0x100
        else:
            assert entry.acknowledged
    validator = Validator(city, past_window=TEN_YEARS, future_window=TEN_YEARS)
    reasons: Counter[str] = Counter()
    for s in sent:
        m = s.message
        if not m.publish:
            continue
        verdict = validator.validate(m.topic, m.payload, now=START + timedelta(hours=1))
        if m.intended_reason in (None, "duplicate"):
            assert isinstance(verdict, Accepted), (m, verdict)
        else:
            assert isinstance(verdict, Rejected)
            assert verdict.rejection.reason.value == m.intended_reason
            reasons[m.intended_reason] += 1
    assert reasons


# --- incidents and scenarios ---------------------------------------------------------


def test_every_scenario_loads_and_says_what_to_expect() -> None:
    names = scenarios.available()
    for wanted in (
        "rush-hour-accident-chilanzar",
        "winter-inversion",
        "stadium-event",
        "spoofed-device",
        "sensor-fleet-degradation",
    ):
        assert wanted in names
    city = generate("tashkent", 300, 1)
    for name in names:
        sc = scenarios.load(name)
        assert sc.expect["operator"].strip()
        sections = ("events", "readings", "dead_letters", "alerts", "rejected")
        assert any(k in sc.expect for k in sections)
        for key in sections:
            for item in sc.expect.get(key, []):
                assert isinstance(item, dict)
                if "within" in item:
                    assert scenarios.seconds(item["within"]) > 0
        sc.resolve(city, sc.start or START)
        for field in sc.faults:
            assert field in FAULTS or field in ("episode_readings", "flood_size")


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(scenarios.ScenarioError, match="winter-inversion"):
        scenarios.load("no-such-scenario")


def _series(
    city: City, scene: Scene, device_id: str, start: datetime, steps: int
) -> list[Outgoing]:
    device = city.device(device_id)
    assert device is not None
    return device_messages(city.id, device, 5, start, steps, scene=scene)


def test_accident_slows_traffic_raises_noise_nearby_and_is_reported_once() -> None:
    city = generate("tashkent", 400, 2)
    sc = scenarios.load("rush-hour-accident-chilanzar")
    assert sc.start is not None
    (accident,) = sc.resolve(city, sc.start)
    assert accident.location is not None
    near = [
        d for d in city.devices
        if d.kind in ("traffic", "noise") and accident.reach(d) > 0
    ]  # fmt: skip
    assert {d.kind for d in near} == {"traffic", "noise"}
    with_it = Scene(city, [accident], 5, ambient=False)
    without = Scene(city, [], 5, ambient=False)
    reports = 0
    for device in city.select(kind="traffic"):
        for m in _series(city, with_it, device.id, sc.start, 80):
            if m.channel is Channel.EVENT and b'"road_accident"' in m.payload:
                reports += 1
    assert reports == 1
    for device in near:
        # Paired by timestamp: a detector's immediate report is an extra, events-only step.
        a = {m.ts_ms: m for m in _series(city, with_it, device.id, sc.start, 60) if m.values}
        b = {m.ts_ms: m for m in _series(city, without, device.id, sc.start, 60) if m.values}
        during = [
            (a[t].values or {}, b[t].values or {}) for t in sorted(a.keys() & b.keys())
            if accident.active(t)
        ]  # fmt: skip
        assert during
        assert x_values_assert(device.kind, during)


def x_values_assert(kind: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> bool:
    key, sign = ("avg_speed", -1.0) if kind == "traffic" else ("laeq", 1.0)
    deltas = [sign * (float(x[key]) - float(y[key])) for x, y in pairs]
    return all(d >= 0 for d in deltas) and any(d > 0 for d in deltas)


def test_gunshot_is_located_by_every_acoustic_node_in_range() -> None:
    city = generate("tashkent", 600, 2)
    sc = scenarios.load("gunshot-yunusabad")
    assert sc.start is not None
    (shot,) = sc.resolve(city, sc.start)
    assert shot.location is not None
    in_range = [d for d in city.select(kind="gunshot") if shot.reach(d) > 0]
    assert in_range
    scene = Scene(city, [shot], 5, ambient=False)
    reports = []
    for device in city.select(kind="gunshot"):
        reports += [
            m for m in _series(city, scene, device.id, sc.start, 5)
            if m.channel is Channel.EVENT and b'"gunshot"' in m.payload
            and m.ts_ms >= shot.start_ms
        ]  # fmt: skip
    assert {m.device_id for m in reports} == {d.id for d in in_range}
    assert all(f'"sensors":{len(in_range)}'.encode() in m.payload for m in reports)


def test_inversion_builds_up_pm_and_reports_an_episode() -> None:
    city = generate("tashkent", 100, 2)
    start = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    begin = int(start.timestamp() * 1000)
    inversion = SimulatedIncident("inversion", begin, begin + 6 * 3_600_000, params={"factor": 3.0})
    device = city.select(kind="air_quality")[0]
    on = _series(city, Scene(city, [inversion], 5, ambient=False), device.id, start, 150)
    off = _series(city, Scene(city, [], 5, ambient=False), device.id, start, 150)
    on_r = [m for m in on if m.values]
    off_r = [m for m in off if m.values]
    # The episode replaces the day's own weather: it starts from an ordinary day's air and
    # builds up over hours to well above both that and the weather's own stagnation.
    first = [float(m.values["pm25"]) for m in on_r if m.ts_ms < begin + 600_000]  # type: ignore[index]
    late = [(x, y) for x, y in zip(on_r, off_r, strict=True) if x.ts_ms > begin + 7_200_000]
    assert first and late
    assert all(float(x.values["pm25"]) > 2 * max(first) for x, _ in late)  # type: ignore[index]
    assert all(float(x.values["pm25"]) > float(y.values["pm25"]) for x, y in late)  # type: ignore[index]
    assert sum(b'"pollution_episode"' in m.payload for m in on) == 1


def test_mass_event_raises_crowds_and_local_traffic() -> None:
    city = generate("tashkent", 400, 2)
    sc = scenarios.load("stadium-event")
    assert sc.start is not None
    (event,) = sc.resolve(city, sc.start)
    scene = Scene(city, [event], 5, ambient=False)
    quiet = Scene(city, [], 5, ambient=False)
    for kind, key, higher in (("crowd", "people_count", True), ("traffic", "avg_speed", False)):
        devices = [d for d in city.select(kind=kind) if event.reach(d) > 0]
        assert devices, kind
        for device in devices:
            a = [m for m in _series(city, scene, device.id, sc.start, 200) if m.values]
            b = [m for m in _series(city, quiet, device.id, sc.start, 200) if m.values]
            pairs = [
                (float(x.values[key]), float(y.values[key]))  # type: ignore[index]
                for x, y in zip(a, b, strict=True)
                if x.values and event.active(x.ts_ms)
            ]
            assert pairs
            assert all((p > q) if higher else (p < q) for p, q in pairs if q > 0)
