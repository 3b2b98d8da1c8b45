"""What the NGSI-LD routes read: latest readings per device, a device's readings over a
window, the city's incidents, each turned into entities of `safecity.ngsild_entities`."""

from __future__ import annotations

from collections.abc import Iterable

from api.params import TimeRange
from api.queries import reading_from_row
from safecity import incidents as inc
from safecity.errors import IncidentError
from safecity.influx import InfluxClient, quote_ident
from safecity.ngsild_entities import (
    Entity,
    Sample,
    alert_entity,
    device_entity,
    observation_entity,
)
from safecity.ngsild_models import ALERT, DEVICE, MODELS, observation_model
from safecity.registry import City, Device, Point
from safecity.schema import measurement_of

LATEST_PER_DEVICE = (
    'SELECT * FROM {measurement} WHERE "city" = $city GROUP BY "device_id" '
    "ORDER BY time DESC LIMIT 1"
)
LATEST_OF_DEVICE = (
    'SELECT * FROM {measurement} WHERE "city" = $city AND "device_id" = $device_id '
    "ORDER BY time DESC LIMIT 1"
)
READINGS = (
    'SELECT * FROM {measurement} WHERE "city" = $city AND "device_id" = $device_id '
    "AND time >= $from AND time < $to ORDER BY time {order} LIMIT {limit}"
)


def _sample(device: Device, row: dict[str, object]) -> Sample:
    stored = reading_from_row(device, dict(row))
    return Sample(stored.ts, stored.values)


async def latest_samples(
    influx: InfluxClient, city: City, kinds: Iterable[str]
) -> dict[str, Sample]:
    """The newest stored reading of every device of these kinds in the city, by device id
    (one request: a statement per kind's measurement)."""
    statement = "; ".join(
        LATEST_PER_DEVICE.format(measurement=quote_ident(measurement_of(k))) for k in kinds
    )
    out: dict[str, Sample] = {}
    if not statement:
        return out
    for series in await influx.query(statement, {"city": city.id}):
        for row in series.rows():
            device = city.device(str(row.get("device_id")))
            if device is not None and row.get("time") is not None and row.get("seq") is not None:
                out[device.id] = _sample(device, row)
    return out


async def samples(
    influx: InfluxClient, city: City, device: Device, window: TimeRange, limit: int, newest: bool
) -> list[Sample]:
    """The device's readings in the window, oldest first (the newest `limit` if `newest`)."""
    statement = READINGS.format(
        measurement=quote_ident(measurement_of(device.kind)),
        order="DESC" if newest else "ASC",
        limit=int(limit),
    )
    params = {"city": city.id, "device_id": device.id, **window.params()}
    rows = [r for s in await influx.query(statement, params) for r in s.rows()]
    found = [
        _sample(device, r) for r in rows if r.get("time") is not None and r.get("seq") is not None
    ]
    return found[::-1] if newest else found


def alert_location(city: City, incident: inc.Incident) -> Point:
    """Where an incident is: its first device, else its district's centroid, else the city's."""
    for device_id in incident.devices:
        device = city.device(device_id)
        if device is not None:
            return device.location
    district = city.district(incident.district)
    return district.centroid if district is not None else city.record.centroid


async def alerts(influx: InfluxClient, city: City) -> list[Entity]:
    """Every incident of the city (within retention) as an Alert entity."""
    found = await inc.IncidentStore(influx).load(city.id)
    return [alert_entity(i, alert_location(city, i)) for i in found.values()]


async def entities_of(influx: InfluxClient, city: City, types: Iterable[str]) -> list[Entity]:
    """Every entity of these types in the city (unknown types have none)."""
    wanted = [t for t in dict.fromkeys(types) if t in MODELS]
    kinds = {k for t in wanted for k in MODELS[t].kinds if t != ALERT.name}
    latest = await latest_samples(influx, city, sorted(kinds & {d.kind for d in city.devices}))
    out: list[Entity] = []
    for name in wanted:
        if name == DEVICE.name:
            out += [device_entity(d, latest.get(d.id)) for d in city.devices]
        elif name == ALERT.name:
            out += await alerts(influx, city)
        else:
            out += [
                observation_entity(d, latest[d.id])
                for kind in MODELS[name].kinds
                for d in city.select(kind=kind)
                if d.id in latest
            ]
    return out


async def device_entity_of(
    influx: InfluxClient, city: City, device: Device, type_name: str
) -> Entity | None:
    """The Device entity or latest observation entity of one device (None: none stored)."""
    query = LATEST_OF_DEVICE.format(measurement=quote_ident(measurement_of(device.kind)))
    rows = [
        r
        for s in await influx.query(query, {"city": city.id, "device_id": device.id})
        for r in s.rows()
    ]
    latest = next((_sample(device, r) for r in rows if r.get("seq") is not None), None)
    if type_name == DEVICE.name:
        return device_entity(device, latest)
    model = observation_model(device.kind)
    if model is None or model.name != type_name or latest is None:
        return None
    return observation_entity(device, latest)


async def alert_of(influx: InfluxClient, city: City, incident_id: str) -> Entity | None:
    """The Alert entity of an incident of the city, or None."""
    try:
        incident = await inc.IncidentStore(influx).get(incident_id)
    except IncidentError:
        return None
    if incident.city != city.id:
        return None
    return alert_entity(incident, alert_location(city, incident))
