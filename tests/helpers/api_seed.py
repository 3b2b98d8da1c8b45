"""Writing points straight into the module's database (as ingest would store them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from api.settings import ApiSettings
from safecity import incidents as inc
from safecity import schema
from safecity.influx import InfluxClient
from safecity.lineprotocol import FieldValue, Point, encode_many
from safecity.readings import Status
from safecity.registry import City, Device


def ms(ts: datetime) -> int:
    """Epoch milliseconds."""
    return int(ts.timestamp() * 1000)


def ago(minutes: float, now: datetime | None = None) -> datetime:
    """`minutes` before now (UTC, ms precision)."""
    base = now or datetime.now(UTC)
    return (base - timedelta(minutes=minutes)).replace(microsecond=0)


def reading(city: City, device: Device, ts: datetime, seq: int, **values: FieldValue) -> Point:
    """A reading point of a device."""
    tags = {"city": city.id, "district": device.district, "device_id": device.id}
    return Point(device.kind, tags, {"seq": seq, **values}, ms(ts))


def event(
    city: City,
    device: Device,
    ts: datetime,
    seq: int,
    etype: str,
    severity: str,
    **details: FieldValue,
) -> Point:
    """An event point of a device."""
    tags = {
        "city": city.id,
        "district": device.district,
        "device_id": device.id,
        "type": etype,
        "severity": severity,
    }
    return Point("events", tags, {"seq": seq, "kind": device.kind, **details}, ms(ts))


def status(
    city: City, device: Device, ts: datetime, state: Literal["online", "offline"]
) -> list[Point]:
    """A status message's points, as the ingest stores them (`schema.status_points`)."""
    return schema.status_points(city.id, device, Status(ts=ts, state=state))


def write(settings: ApiSettings, points: Iterable[Point]) -> None:
    """Write points to the settings' database."""
    body = encode_many(points)

    async def go() -> None:
        client = InfluxClient(settings.influx)
        try:
            await client.write(body)
        finally:
            await client.close()

    asyncio.run(go())


def panic_incident(minutes_ago: float = 1) -> inc.Incident:
    """An open panic incident in Tashkent's Chilonzor (not stored yet)."""
    return inc.open_incident(
        city="tashkent",
        district="chilonzor",
        rule_id="panic",
        rule_type="event",
        severity="critical",
        place="panic-chilonzor-001",
        devices=["panic-chilonzor-001"],
        opened_at=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago),
        value=None,
        message="Panic button pressed",
    )
