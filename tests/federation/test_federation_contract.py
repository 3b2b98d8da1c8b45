"""The federation contract: round trips, topics, and what it refuses to carry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safecity import federation as fed
from safecity import topics
from safecity.errors import ConfigError, FederationError, TopicError
from safecity.readings import from_epoch_ms

IDS = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
MS = st.integers(min_value=1_600_000_000_000, max_value=2_000_000_000_000)
VALUE = st.none() | st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
COUNT = st.integers(min_value=0, max_value=10_000)


# Printable text: the contract refuses control characters, DEL (0x7f) included.
NAME_CHARS = st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f")


@st.composite
def figures(draw: st.DrawFn) -> dict[str, Any]:
    newest = draw(st.none() | MS)
    return {
        "value": draw(VALUE),
        "unit": draw(st.sampled_from(["AQI", "km/h", "dB(A)", "1", "count"])),
        "devices": draw(COUNT),
        "expected": draw(COUNT),
        "newest": None if newest is None else from_epoch_ms(newest),
        "age_s": None if newest is None else draw(st.floats(0, 1e5)),
    }


@st.composite
def scope_messages(draw: st.DrawFn) -> fed.ScopeIndicators:
    start = draw(MS)
    length = draw(st.integers(min_value=1, max_value=86_400_000))
    fig = figures()
    sev = st.dictionaries(st.sampled_from(["info", "warning", "critical"]), COUNT)
    pollutants = draw(st.lists(st.sampled_from(["pm25", "pm10", "no2", "o3"]), unique=True))
    return fed.ScopeIndicators(
        city=draw(IDS),
        district=draw(st.none() | IDS),
        name=draw(st.text(NAME_CHARS, max_size=40)),
        interval=fed.Interval(start=from_epoch_ms(start), end=from_epoch_ms(start + length)),
        generated_at=from_epoch_ms(draw(MS)),
        air_quality={
            "aqi": draw(fig),
            "category": draw(st.none() | st.just("Good")),
            "driving_pollutant": pollutants[0] if pollutants else None,
            "worst_device_aqi": draw(st.none() | st.integers(0, 500)),
            "sub_indices": {p: draw(st.integers(0, 500)) for p in pollutants},
            "pollutants": {p: draw(fig) for p in pollutants},
            "who_exceedances": {
                p: {
                    "guideline": 15.0,
                    "unit": "ug/m3",
                    "averaging": "24h",
                    "devices_above": draw(COUNT),
                    "devices": draw(COUNT),
                }
                for p in pollutants
            },
        },
        traffic={
            "avg_speed": draw(fig),
            "congestion_index": draw(fig),
            "free_flow_kmh": 50.0,
            "free_flow_basis": "fixed",
            "volume": draw(fig),
            "occupancy": draw(fig),
        },
        noise={
            "laeq": draw(fig),
            "share_above_who": draw(fig),
            "who_guideline_db": 53.0,
            "who_period": "day (Lden 53 dB)",
        },
        devices={
            "total": draw(COUNT),
            "online": draw(COUNT),
            "stale": draw(COUNT),
            "offline": draw(COUNT),
            "rule": "r",
        },
        incidents={"total": draw(COUNT), "by_severity": draw(sev), "devices": 0, "source": "s"},
        response={
            "incidents": draw(COUNT),
            "acknowledged": draw(COUNT),
            "tta_mean_s": draw(st.none() | st.floats(0, 1e6)),
            "tta_median_s": None,
            "tta_max_s": None,
        },
        activity={"alerts": draw(sev), "detections": draw(sev)},
        delivery={"stored": draw(COUNT), "expected": draw(COUNT), "ratio": None},
    )


@st.composite
def segment_messages(draw: st.DrawFn) -> fed.SegmentIndicators:
    start = draw(MS)
    return fed.SegmentIndicators(
        city=draw(IDS),
        segment=draw(IDS),
        interval=fed.Interval(start=from_epoch_ms(start), end=from_epoch_ms(start + 5000)),
        generated_at=from_epoch_ms(draw(MS)),
        length_km=draw(st.floats(0.1, 1000)),
        speed_kmh=draw(st.none() | st.floats(0, 200)),
        travel_time_s=draw(st.none() | st.floats(0, 1e6)),
        sensors=draw(COUNT),
        expected=draw(COUNT),
    )


@settings(max_examples=60, deadline=None)
@given(scope_messages() | segment_messages())
def test_messages_round_trip_through_their_topic(message: fed.Message) -> None:
    topic = message.topic()
    assert topics.parse_federation_topic(topic).city == message.city
    assert fed.parse_message(topic, fed.encode(message)) == message


@settings(max_examples=60, deadline=None)
@given(IDS, IDS)
def test_topics_round_trip(city: str, name: str) -> None:
    for built, kind in (
        (topics.city_topic(city), "city"),
        (topics.district_topic(city, name), "district"),
        (topics.segment_topic(city, name), "segment"),
    ):
        parsed = topics.parse_federation_topic(built)
        assert (parsed.city, parsed.kind) == (city, kind)
        assert str(parsed) == built
        assert built.startswith(f"safecity/v1/{city}/_federation/")


def test_the_federation_segment_is_reserved() -> None:
    # No district or device id can be `_federation`, so no device topic lands there.
    with pytest.raises(TopicError):
        topics.device_topic("tashkent", "_federation", "noise", "n1", "telemetry")
    with pytest.raises(TopicError):
        topics.parse_device_topic("safecity/v1/tashkent/_federation/noise/n1/telemetry")
    assert topics.federation_filter("tashkent") == "safecity/v1/tashkent/_federation/#"
    assert topics.federation_filter() == "safecity/v1/+/_federation/#"
    for bad in (
        "safecity/v1/tashkent/_federation/city/x",
        "safecity/v1/tashkent/_federation/district",
        "safecity/v1/tashkent/_federation/device/n1",
        "safecity/v1/Tashkent/_federation/city",
        "safecity/v1/tashkent/chilanzar/noise/n1/telemetry",
    ):
        with pytest.raises(TopicError):
            topics.parse_federation_topic(bad)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m.update(plate_hash="ab" * 32), "federation_schema"),
        (lambda m: m.update(device_id="anpr-chilanzar-001"), "federation_schema"),
        (lambda m: m.update(readings=[{"pm25": 12.0}]), "federation_schema"),
        (lambda m: m.update(speed_kmh=float("nan")), "federation_schema"),
        (lambda m: m.update(speed_kmh="fast"), "federation_schema"),
        (lambda m: m.update(schema="safecity.federation/v0"), "federation_schema"),
        (lambda m: m["interval"].update(end=m["interval"]["start"]), "federation_schema"),
        (lambda m: m.update(city="elsewhere"), "federation_mismatch"),
    ],
)
def test_refusals_name_their_reason(mutate: Any, reason: str) -> None:
    payload = {
        "schema": fed.SCHEMA,
        "city": "tashkent",
        "segment": "s1",
        "interval": {"start": "2026-01-15T06:00:00.000Z", "end": "2026-01-15T06:05:00.000Z"},
        "generated_at": "2026-01-15T06:06:00.000Z",
        "length_km": 14.0,
        "speed_kmh": 42.0,
        "travel_time_s": 1200.0,
        "sensors": 3,
        "expected": 4,
    }
    topic = topics.segment_topic("tashkent", "s1")
    assert fed.parse_message(topic, json.dumps(payload).encode()).city == "tashkent"
    mutate(payload)
    with pytest.raises(FederationError) as caught:
        fed.parse_message(topic, json.dumps(payload).encode())
    assert caught.value.reason == reason


def test_a_message_on_a_foreign_topic_or_not_json_is_refused() -> None:
    with pytest.raises(FederationError) as caught:
        fed.parse_message("safecity/v1/tashkent/chilanzar/noise/n1/telemetry", b"{}")
    assert caught.value.reason == "federation_topic"
    with pytest.raises(FederationError) as caught:
        fed.parse_message(topics.city_topic("tashkent"), b"\xff{")
    assert caught.value.reason == "bad_json"


def test_interval_is_bounded() -> None:
    start = datetime(2026, 1, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="interval"):
        fed.Interval(start=start, end=start + timedelta(days=2))
    assert fed.Interval(start=start, end=start + timedelta(seconds=3)).seconds == 3


def test_shipped_corridors_load(tmp_path: Any) -> None:
    corridors = fed.load_corridors()
    tas_sam = next(c for c in corridors if c.id == "tashkent-samarkand")
    assert [s.city for s in tas_sam.segments] == ["tashkent", "samarkand"]
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"corridors": [{"id": "x", "name": "x", "segments": []}]}))
    with pytest.raises(ConfigError, match="corridors"):
        fed.load_corridors(bad)
