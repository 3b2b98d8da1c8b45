"""The InfluxDB schema: bounded tags from the registry, everything else a field, device time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from control.stack import Influxd
from safecity import catalogue, citygen
from safecity.catalogue import Quantity, Severity
from safecity.influx import InfluxClient
from safecity.lineprotocol import decode, encode, encode_many
from safecity.readings import Event, Reading, Status, epoch_ms, event_model, reading_model
from safecity.registry import Device, default_city
from safecity.schema import (
    DEVICE_OFFLINE,
    DEVICE_STATUS,
    EVENT_TAGS,
    EVENTS,
    OFFLINE_BACKFILL,
    READING_TAGS,
    event_point,
    measurement_of,
    reading_point,
    retention_policy_of,
    source,
    status_point,
    status_points,
)
from safecity.settings import InfluxSettings

TS = datetime(2026, 1, 15, 5, 59, 59, 123000, tzinfo=UTC)
CITY = default_city()


def _device(kind: str) -> Device:
    return CITY.select(kind=kind)[0]


def _value(q: Quantity) -> Any:
    if q.type == "float":
        assert q.low is not None and q.high is not None
        return float(q.high)
    if q.type == "int":
        assert q.low is not None and q.high is not None
        return int(q.high)
    if q.type == "bool":
        return False
    if q.choices:
        return q.choices[-1]
    return "f" * 64 if q.name == "plate_hash" else "Gate 7"


def _reading(kind: str, *, optional: bool) -> Reading:
    model = reading_model(kind)
    values = {
        q.name: _value(q) for q in catalogue.telemetry_quantities(kind) if q.required or optional
    }
    return model(ts=TS, seq=41, values=model.model_fields["values"].annotation(**values))


def _event(event_type: str) -> Event:
    model = event_model(event_type)
    details = {q.name: _value(q) for q in catalogue.EVENT_TYPES[event_type].details}
    return model(
        ts=TS,
        seq=9,
        type=event_type,
        severity=Severity.HIGH,
        details=model.model_fields["details"].annotation(**details),
    )


EMITTED = sorted({(k.name, t) for k in catalogue.KINDS.values() for t in k.emits_events})


@pytest.mark.parametrize("optional", [False, True], ids=["required", "all"])
@pytest.mark.parametrize("kind", sorted(catalogue.KINDS))
def test_reading_point(kind: str, optional: bool) -> None:
    device = _device(kind)
    reading = _reading(kind, optional=optional)
    point = reading_point(CITY.id, device, reading)
    assert point.measurement == measurement_of(kind) == kind
    assert tuple(sorted(point.tags)) == tuple(sorted(READING_TAGS))
    assert dict(point.tags) == {
        "city": "tashkent",
        "district": device.district,
        "device_id": device.id,
    }
    assert point.time_ms == epoch_ms(TS) == reading.ts_ms
    assert point.fields["seq"] == 41
    assert isinstance(point.fields["seq"], int)
    assert dict(point.fields) == {"seq": 41, **reading.fields()}
    assert not set(point.fields) & set(point.tags)
    assert decode(encode(point)) == point


@pytest.mark.parametrize(("kind", "event_type"), EMITTED)
def test_event_point(kind: str, event_type: str) -> None:
    device = _device(kind)
    event = _event(event_type)
    point = event_point(CITY.id, device, event)
    assert point.measurement == EVENTS
    assert dict(point.tags) == {
        "city": "tashkent",
        "district": device.district,
        "device_id": device.id,
        "type": event_type,
        "severity": "high",
    }
    assert tuple(sorted(point.tags)) == tuple(sorted(EVENT_TAGS))
    assert point.time_ms == event.ts_ms == epoch_ms(TS)
    assert dict(point.fields) == {"seq": 9, "kind": kind, **event.detail_fields()}
    # Free-text details stay fields, never tags (unbounded cardinality).
    assert not set(point.fields) & set(point.tags)
    encode(point)


@pytest.mark.parametrize("reason", [None, "broker lost"])
@pytest.mark.parametrize("state", ["online", "offline"])
def test_status_point(state: str, reason: str | None) -> None:
    device = _device("weather")
    status = Status(ts=TS, state=state, reason=reason)
    point = status_point(CITY.id, device, status)
    assert point.measurement == DEVICE_STATUS
    assert dict(point.tags) == {
        "city": "tashkent",
        "district": device.district,
        "device_id": device.id,
    }
    assert point.time_ms == epoch_ms(TS)
    expected: dict[str, Any] = {"state": state, "online": state == "online", "kind": "weather"}
    if reason is not None:
        expected["reason"] = reason
    assert dict(point.fields) == expected


def test_identity_comes_from_the_registry_device() -> None:
    """Whatever device is passed, its registry district and id are the tags."""
    reading = _reading("noise", optional=False)
    for device in CITY.select(kind="noise")[:5]:
        point = reading_point(CITY.id, device, reading)
        assert point.tags["device_id"] == device.id
        assert point.tags["district"] == device.district


def test_unknown_kind_has_no_measurement() -> None:
    with pytest.raises(KeyError):
        measurement_of("submarine")


def test_every_point_is_accepted_by_influxdb_together(influxd: Influxd, influx_db: str) -> None:
    """All kinds' readings and all events in one database: no field type conflict anywhere."""
    points = [
        reading_point(CITY.id, _device(kind), _reading(kind, optional=True))
        for kind in sorted(catalogue.KINDS)
    ]
    points += [
        event_point(CITY.id, _device(kind), _event(event_type)) for kind, event_type in EMITTED
    ]
    points += [
        status_point(CITY.id, _device(kind), Status(ts=TS, state="online"))
        for kind in sorted(catalogue.KINDS)
    ]
    settings = InfluxSettings(url=influxd.url, database=influx_db, retention_policy="autogen")

    async def main() -> int:
        client = InfluxClient(settings)
        try:
            # As ingest writes them: each measurement family into its retention policy.
            await client.ensure_retention_policies()
            policies = {retention_policy_of(p.measurement) for p in points}
            for rp in policies:
                family = [p for p in points if retention_policy_of(p.measurement) == rp]
                await client.write(encode_many(family), rp=rp)
            series = await client.query(f'SELECT count("seq") FROM {source(EVENTS)}')  # noqa: S608
            return int(series[0].rows()[0]["count"])
        finally:
            await client.close()

    assert asyncio.run(main()) == len(EMITTED)


def test_an_offline_status_has_a_twin_and_an_online_one_none() -> None:
    """`status_points`: the `device_status` point, and for offline its `device_offline`
    twin with the same tags and time (what `OFFLINE_BACKFILL` copies)."""
    city = citygen.generate("twins", 10, seed=7)
    device = city.devices[0]
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    online = status_points(city.id, device, Status(ts=at, state="online"))
    offline = status_points(city.id, device, Status(ts=at, state="offline", reason="bye"))
    assert [p.measurement for p in online] == [DEVICE_STATUS]
    assert [p.measurement for p in offline] == [DEVICE_STATUS, DEVICE_OFFLINE]
    main, twin = offline
    assert (twin.tags, twin.time_ms, twin.fields) == (main.tags, main.time_ms, {"state": "offline"})
    assert f'INTO "{DEVICE_OFFLINE}" FROM "{DEVICE_STATUS}"' in OFFLINE_BACKFILL
