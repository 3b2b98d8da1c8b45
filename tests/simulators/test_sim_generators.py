"""Generators: one per kind, always valid, deterministic, with the catalogue's daily patterns."""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safecity import catalogue
from safecity.citygen import generate
from safecity.readings import event_model, format_ts, reading_model
from safecity.registry import City, Device
from simulators import events as ev
from simulators import generators as g
from simulators import processes
from simulators.climate import climate_at
from simulators.device import DeviceSim
from simulators.sites import World
from simulators.timebase import normal
from simulators.weather import weather

CITY: City = generate("tashkent", 300, 11)
WORLD = World(CITY)
LOCAL_OFFSET = timedelta(hours=5)
WINTER = datetime(2026, 1, 12, tzinfo=UTC)  # a Monday
SUMMER = datetime(2026, 7, 13, tzinfo=UTC)  # a Monday


def devices(kind: str, n: int = 4) -> list[Device]:
    return CITY.select(kind=kind)[:n]


def hours(start: datetime, count: int) -> Iterator[datetime]:
    for h in range(count):
        yield start + timedelta(hours=h)


def at_local(day: datetime, hour: float) -> datetime:
    """The UTC instant of `hour` local (UTC+5) on the local date of `day`."""
    return day + timedelta(hours=hour) - LOCAL_OFFSET


def test_every_catalogue_kind_has_a_generator() -> None:
    assert set(g.GENERATORS) == set(catalogue.KINDS)
    assert CITY.select(kind="cctv"), "the test city must hold every kind"
    for kind in catalogue.KINDS:
        assert devices(kind), kind


def test_event_sources_have_event_generators() -> None:
    sources = {k for k, spec in catalogue.KINDS.items() if not spec.quantities}
    assert sources == {"cctv", "panic_button", "gunshot", "anpr"}
    assert sources <= set(ev.EVENT_GENERATORS)
    for kind in ev.EVENT_GENERATORS:
        assert catalogue.KINDS[kind].emits_events, kind


@pytest.mark.parametrize("kind", sorted(catalogue.KINDS))
@pytest.mark.parametrize("start", [WINTER, SUMMER, datetime(2026, 3, 16, tzinfo=UTC)])
def test_a_week_of_values_validates(kind: str, start: datetime) -> None:
    model = reading_model(kind)
    names = {q.name for q in catalogue.telemetry_quantities(kind)}
    for device in devices(kind):
        rng = g.device_rng(1, device.id)
        for seq, t in enumerate(hours(start, 24 * 7)):
            values = g.generate(device, rng, t)
            assert set(values) <= names
            # The models are strict: wrong types (an int for a float, ...) and
            # out-of-limit values fail, exactly as in safecity.readings.parse.
            model.model_validate({"ts": format_ts(t), "seq": seq, "values": values})
            check_consistency(kind, values)


def check_consistency(kind: str, v: Mapping[str, Any]) -> None:
    """Physical consistency and the realistic ranges of the simulator's calibration table."""
    if kind == "air_quality":
        assert v["pm10"] >= v["pm25"] > 0
        assert 0.05 <= v["co"] <= 30
    elif kind == "noise":
        assert v["la90"] <= v["laeq"] <= v["lamax"] <= 110
        assert v["laeq"] >= 35
    elif kind == "traffic":
        assert v["congested"] == (v["avg_speed"] < 15)
        assert 0 <= v["intensity"] <= 2000
        assert v["avg_speed"] <= 80
    elif kind == "crowd":
        assert v["congested"] == (v["occupancy"] >= 0.7)
    elif kind == "parking":
        assert 0 <= v["occupied_spots"] <= v["total_spots"]
    elif kind == "streetlight":
        if v["power_state"] == "off":
            assert v["power"] < 1
        else:
            assert v["power"] <= 160
    elif kind == "weather":
        assert -30 <= v["temperature"] <= 45
        assert 900 <= v["pressure"] <= 1000
        assert 0 <= v["solar"] <= 1200
    if "rssi" in v:
        assert -130 <= v["rssi"] <= -45


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(CITY.devices) - 1),
    when=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    seed=st.integers(min_value=-(2**63), max_value=2**63),
)
def test_any_instant_any_device_validates(index: int, when: datetime, seed: int) -> None:
    device = CITY.devices[index]
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    values = g.generate(device, g.device_rng(seed, device.id), when)
    reading_model(device.kind).model_validate({"ts": format_ts(when), "seq": 0, "values": values})
    check_consistency(device.kind, values)


@pytest.mark.parametrize("kind", sorted(ev.EVENT_GENERATORS))
def test_events_are_valid_and_occasional(kind: str) -> None:
    seen: set[str] = set()
    fired = 0
    steps = 0
    cadence = catalogue.KINDS[kind].cadence_s
    for device in devices(kind, 3):
        rng = g.device_rng(5, device.id)
        for t in hours(SUMMER, 24 * 60):
            steps += 1
            # A large interval makes the rare ones show up in a test-sized sample.
            draft = ev.maybe_event(device, rng, t, 3600.0 * 200)
            assert ev.maybe_event(device, rng, t, 0.0) is None
            if draft is None:
                continue
            fired += 1
            seen.add(draft.type)
            assert draft.type in catalogue.KINDS[kind].emits_events
            event_model(draft.type).model_validate(
                {
                    "ts": format_ts(t),
                    "seq": steps,
                    "type": draft.type,
                    "severity": draft.severity,
                    "details": draft.details,
                }
            )
            if "plate_hash" in draft.details:
                assert re.fullmatch(r"[0-9a-f]{64}", str(draft.details["plate_hash"]))
    assert fired > 0
    # At the real cadence, events are rare: well under one per reading.
    rng = g.device_rng(5, "x")
    device = devices(kind, 1)[0]
    real = sum(ev.maybe_event(device, rng, t, cadence) is not None for t in hours(SUMMER, 24 * 60))
    # ANPR cameras log ~52 violations a day (one every ~5 readings); the others far fewer.
    assert real < (0.25 if kind == "anpr" else 0.05) * 24 * 60
    if kind == "cctv":
        assert {"intrusion", "loitering", "line_crossing"} <= seen


def test_plate_hash_is_salted_sha256() -> None:
    assert ev.plate_hash("01A123BC") != ev.plate_hash("01A123BC", b"other salt")
    assert ev.plate_hash("01A123BC") == ev.plate_hash("01A123BC")
    assert "01A123BC" not in ev.plate_hash("01A123BC")


def test_same_seed_same_values_other_seed_other_values() -> None:
    def series(seed: int) -> list[dict[str, g.Value]]:
        out: list[dict[str, g.Value]] = []
        for device in CITY.devices[::7]:
            rng = g.device_rng(seed, device.id)
            out.extend(g.generate(device, rng, t) for t in hours(WINTER, 48))
        return out

    assert series(1) == series(1)
    assert series(1) != series(2)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=0, max_value=400),
    st.lists(st.integers(min_value=-2000, max_value=2000), max_size=6),
)
def test_a_value_does_not_depend_on_what_was_asked_before(key: int, earlier: list[int]) -> None:
    # A replay, or a second process, must reproduce a reading exactly: rounding to 0.1
    # turns the smallest history-dependent drift into a different stored value.
    hours_at = 500_000.0 + 0.37 * key
    processes._cache.clear()
    fresh = [processes.ou(key, hours_at, tau) for tau in (2.0, 8.0, 36.0)]
    processes._cache.clear()
    for h in earlier:
        for tau in (2.0, 8.0, 36.0):
            processes.ou(key, hours_at + h * 0.5, tau)
    assert [processes.ou(key, hours_at, tau) for tau in (2.0, 8.0, 36.0)] == fresh


def test_a_process_keeps_about_a_day_of_knots_and_gives_the_same_numbers_asked_backwards() -> None:
    # A live fleet asks every device's processes in time order: what it keeps is bounded
    # (not every knot since the anchor); asked backwards, dropped knots are stepped again.
    key, step, tau = 99, 0.25, 2.0
    processes._cache.clear()
    hours = [500_000.0 + 0.25 * i for i in range(6 * 96)]  # six days, quarter-hourly
    forwards = [processes.ou(key, h, tau, step) for h in hours]
    bound = int(processes.KEEP_HOURS / step) + 2 + processes._TRIM_EVERY
    assert all(len(run.xs) <= bound for run in processes._cache[(key, step, tau)].values())
    processes._cache.clear()
    assert [processes.ou(key, h, tau, step) for h in reversed(hours)] == forwards[::-1]


def test_warming_a_device_leaves_its_first_reading_cheap_and_changes_nothing_it_sends() -> None:
    # The fleet warms every device while it connects; what each then sends is the same.
    start = datetime(2026, 1, 15, 6, tzinfo=UTC)

    def sent(warm: bool) -> tuple[list[bytes], int]:
        processes._cache.clear()
        processes._stored = 0
        sims = [DeviceSim(CITY.id, d, 42, start, profile=WORLD.profile(d)) for d in CITY.devices]
        if warm:
            for sim in sims:
                sim.warm()
        knots = processes._stored
        payloads = [m.payload for sim in sims for m in sim.step()]
        # Warmed, the first readings step no process: every knot they need is there.
        assert not warm or processes._stored == knots > 0
        return payloads + [m.payload for sim in sims for m in sim.step()], knots

    cold, knots_cold = sent(False)
    warmed, _ = sent(True)
    assert warmed == cold and knots_cold == 0


def test_the_processes_noise_is_pinned_whatever_was_asked_before() -> None:
    # Pinned (computed by the code before `normal` kept `mix64(k)` between calls): a
    # change here changes every simulated value; asked twice, in either order, the same.
    asked = ((0, 0), (2**64 - 1, -5), (123456789, 5000), (42, 2**70))
    pinned = [0.5948276824468886, -0.49284134722858414, 0.08586521320726663, -0.43276575156544633]
    assert [normal(key, k) for key, k in asked] == pinned
    assert [normal(key, k) for key, k in reversed(asked)] == pinned[::-1]


def test_stable_hash_does_not_depend_on_python_hash() -> None:
    # Pinned: sha256-based, so the same in every process (PYTHONHASHSEED) and version.
    # A change here changes every simulated city.
    assert g.stable_int("rng", 42, "d") == 0x3DA3E1008B5E5D32
    assert g.device_rng(42, "aq-x-001").random() == 0.1902399184258582
    assert 0 <= g.device_trait("aq-x-001", "road") < 1


def mean_of(kind: str, key: str, instants: list[datetime], n: int = 20) -> float:
    values = []
    for device in devices(kind, n):
        rng = g.device_rng(3, device.id)
        for t in instants:
            values.append(float(g.generate(WORLD.profile(device), rng, t)[key]))
    return statistics.fmean(values)


def weekdays(start: datetime, hour: float, weeks: int = 2) -> list[datetime]:
    days = [start + timedelta(days=d) for d in range(7 * weeks)]
    return [at_local(d, hour) for d in days if d.weekday() < 5]


def test_traffic_rush_hour_beats_night() -> None:
    for start in (WINTER, SUMMER):
        at8 = mean_of("traffic", "intensity", weekdays(start, 8.0))
        at3 = mean_of("traffic", "intensity", weekdays(start, 3.0))
        at18 = mean_of("traffic", "intensity", weekdays(start, 18.0))
        assert at8 > 5 * at3
        assert at18 > 5 * at3
        assert mean_of("traffic", "avg_speed", weekdays(start, 8.0)) < mean_of(
            "traffic", "avg_speed", weekdays(start, 3.0)
        )


def test_weekends_are_lighter() -> None:
    saturday = [at_local(WINTER + timedelta(days=5 + 7 * w), 8.5) for w in range(3)]
    monday = [at_local(WINTER + timedelta(days=7 * w), 8.5) for w in range(3)]
    assert mean_of("traffic", "intensity", saturday) < mean_of("traffic", "intensity", monday)


def test_noise_and_no2_follow_traffic() -> None:
    assert (
        mean_of("noise", "laeq", weekdays(WINTER, 8.5))
        > mean_of("noise", "laeq", weekdays(WINTER, 3.5)) + 8
    )
    assert mean_of("air_quality", "no2", weekdays(SUMMER, 8.5)) > mean_of(
        "air_quality", "no2", weekdays(SUMMER, 3.5)
    )
    assert mean_of("air_quality", "co", weekdays(SUMMER, 8.5)) > mean_of(
        "air_quality", "co", weekdays(SUMMER, 3.5)
    )


def test_winter_pm25_is_several_times_summer() -> None:
    def daily(start: datetime) -> list[datetime]:
        return list(hours(start, 24 * 14))

    winter = mean_of("air_quality", "pm25", daily(WINTER))
    summer = mean_of("air_quality", "pm25", daily(SUMMER))
    assert winter > 3 * summer
    assert 8 < summer < 40
    assert 50 < winter < 300
    # Morning and evening peaks over the afternoon.
    assert mean_of("air_quality", "pm25", weekdays(WINTER, 22.0)) > mean_of(
        "air_quality", "pm25", weekdays(WINTER, 15.0)
    )
    assert mean_of("air_quality", "pm25", weekdays(WINTER, 9.0)) > mean_of(
        "air_quality", "pm25", weekdays(WINTER, 15.0)
    )


def test_ozone_peaks_on_summer_afternoons() -> None:
    afternoon = mean_of("air_quality", "o3", weekdays(SUMMER, 15.0))
    assert afternoon > 2 * mean_of("air_quality", "o3", weekdays(SUMMER, 3.0))
    assert afternoon > 2 * mean_of("air_quality", "o3", weekdays(WINTER, 15.0))


def test_temperature_min_at_dawn_max_mid_afternoon_and_seasons() -> None:
    for start in (WINTER, SUMMER):
        dawn = mean_of("weather", "temperature", weekdays(start, 6.0))
        afternoon = mean_of("weather", "temperature", weekdays(start, 15.0))
        assert 5 < afternoon - dawn < 16
    assert (
        mean_of("weather", "temperature", weekdays(SUMMER, 15.0))
        > mean_of("weather", "temperature", weekdays(WINTER, 15.0)) + 15
    )
    assert mean_of("weather", "solar", weekdays(SUMMER, 2.0)) == 0
    assert mean_of("weather", "solar", weekdays(SUMMER, 13.0)) > 300


@pytest.mark.parametrize("start", [WINTER, SUMMER, datetime(2026, 10, 5, tzinfo=UTC)])
def test_streetlights_on_at_night_off_by_day_dimmed_after_midnight(start: datetime) -> None:
    for device in devices("streetlight", 20):
        rng = g.device_rng(3, device.id)
        for d in range(7):
            day = start + timedelta(days=d)
            assert g.generate(device, rng, at_local(day, 22.0))["power_state"] == "on"
            assert g.generate(device, rng, at_local(day, 13.0))["power_state"] == "off"
            assert g.generate(device, rng, at_local(day, 2.0))["power_state"] == "dimmed"
    # Dusk comes later in June than in December.
    lamp = devices("streetlight", 1)[0]
    rng = g.device_rng(3, lamp.id)
    assert (
        g.generate(lamp, rng, at_local(datetime(2026, 12, 15, tzinfo=UTC), 18.0))["power_state"]
        == "on"
    )
    assert (
        g.generate(lamp, rng, at_local(datetime(2026, 6, 15, tzinfo=UTC), 19.5))["power_state"]
        == "off"
    )


def test_parking_business_hours_plateau() -> None:
    cbd = [d for d in CITY.select(kind="parking") if WORLD.profile(d).land_use == "centre"]
    assert cbd
    noon = [at_local(d, 13.0) for d in (WINTER + timedelta(days=i) for i in range(5))]
    night = [at_local(d, 3.0) for d in (WINTER + timedelta(days=i) for i in range(5))]
    for device in cbd:
        rng = g.device_rng(3, device.id)
        site = WORLD.profile(device)
        busy = statistics.fmean(float(g.generate(site, rng, t)["occupancy"]) for t in noon)
        quiet = statistics.fmean(float(g.generate(site, rng, t)["occupancy"]) for t in night)
        assert busy > 0.75 > 0.35 > quiet


def test_waste_fills_then_is_emptied() -> None:
    for device in devices("waste"):
        rng = g.device_rng(3, device.id)
        levels = [
            float(g.generate(device, rng, t)["filling_level"]) for t in hours(WINTER, 24 * 14)
        ]
        drops = sum(1 for a, b in itertools.pairwise(levels) if b < a - 0.1)
        assert drops >= 2  # at least two collections in two weeks
        assert max(levels) > 0.2


def test_battery_drains_slowly() -> None:
    for device in devices("device_health"):
        rng = g.device_rng(3, device.id)
        start = float(g.generate(device, rng, SUMMER)["battery"])
        week = float(g.generate(device, rng, SUMMER + timedelta(days=7))["battery"])
        # Down by 1.4-4.2 % a week, unless the battery was swapped in between.
        assert start - week < 0.05 or week > 0.9


def test_naive_time_is_refused() -> None:
    device = CITY.devices[0]
    with pytest.raises(ValueError, match="timezone-aware"):
        g.generate(device, g.device_rng(1, device.id), datetime(2026, 1, 1))


def test_traffic_at_0830_far_above_0300_and_winter_evening_pm25_far_above_summer_noon() -> None:
    at0830 = mean_of("traffic", "intensity", weekdays(WINTER, 8.5))
    at0300 = mean_of("traffic", "intensity", weekdays(WINTER, 3.0))
    assert at0830 > 8 * at0300
    evening = mean_of("air_quality", "pm25", weekdays(WINTER, 21.0))
    noon = mean_of("air_quality", "pm25", weekdays(SUMMER, 12.0))
    assert evening > 4 * noon


def test_rain_lowers_pm_and_speed() -> None:
    device = devices("air_quality", 1)[0]
    road = devices("traffic", 1)[0]
    # The same local hour on wet and dry spring days: rain washes PM out and slows traffic.
    wet: list[datetime] = []
    dry: list[datetime] = []
    for d in range(150):
        t = at_local(datetime(2026, 2, 1, tzinfo=UTC) + timedelta(days=d), 11.0)
        rain = weather(t, climate_at(*device.location)).precipitation
        if rain > 0.5:
            wet.append(t)
        elif rain == 0:
            dry.append(t)
    assert len(wet) >= 3 and len(dry) >= 10
    assert mean_of("air_quality", "pm25", wet) < mean_of("air_quality", "pm25", dry)
    rng = g.device_rng(1, road.id)
    speed_wet = statistics.fmean(float(g.generate(road, rng, t)["avg_speed"]) for t in wet)
    speed_dry = statistics.fmean(float(g.generate(road, rng, t)["avg_speed"]) for t in dry)
    assert speed_wet < speed_dry
