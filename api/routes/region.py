"""The regional view: the cities a key may see side by side, and the corridors across them.

A city this deployment serves is computed from its own database for the newest closed
federation interval (the same computation its publisher runs); a federated city
comes from the indicators its instance published, as the regional ingest stored them
in the region's own database. Nothing here reads another city's raw data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.federation import indicators, latest_closed, local_cities
from api.models import AirQuality, DeviceCounts, Incidents, Noise, Traffic, Window
from api.responses import STORAGE, errors
from api.settings import ApiSettings
from api.tiers import book_of
from safecity import federation as fed
from safecity.errors import QueryError
from safecity.influx import InfluxClient
from safecity.readings import format_ts

router = APIRouter(prefix="/v1/region", tags=["region"])

SCOPES_STATEMENT = (
    'SELECT last("payload") AS "payload" FROM "federated_scopes" '
    'WHERE "scope" = \'_city\' GROUP BY "city"'
)
SEGMENTS_STATEMENT = (
    'SELECT last("payload") AS "payload" FROM "federated_segments" GROUP BY "city", "segment"'
)


class RegionCity(BaseModel):
    """One city's indicators for one closed interval, with where they come from."""

    city: str = Field(examples=["tashkent"])
    name: str = Field(examples=["Tashkent"])
    source: Literal["local", "federated"] = Field(
        description="local: computed from this deployment's own database of the city; "
        "federated: as the city's instance published them"
    )
    generated_at: str
    window: Window
    air_quality: AirQuality
    traffic: Traffic
    noise: Noise
    devices: DeviceCounts
    incidents: Incidents
    response: fed.Response
    activity: fed.Activity
    delivery: fed.Delivery


class SegmentOut(BaseModel):
    """A corridor segment: its place, length and the traffic its city measured."""

    id: str
    name: str
    city: str
    from_: str = Field(alias="from")
    to: str
    length_km: float
    travel_time_s: float | None
    speed_kmh: float | None
    sensors: int | None
    window: Window | None
    source: Literal["local", "federated"] | None

    model_config = {"populate_by_name": True}


class CorridorOut(BaseModel):
    """A corridor: its segments in order and, when every segment has a figure, the totals."""

    id: str
    name: str
    segments: list[SegmentOut]
    travel_time_s: float | None = Field(description="sum over the segments (null if one lacks)")
    speed_kmh: float | None = Field(description="total length / total travel time")


class RegionOverview(BaseModel):
    """The cities a key may see, side by side, and the corridors' traffic KPIs."""

    cities: list[RegionCity]
    corridors: list[CorridorOut]


def _window(interval: fed.Interval) -> Window:
    start, end = interval.key()
    return Window(**{"from": start, "to": end}, seconds=interval.seconds)


def city_entry(message: fed.ScopeIndicators, source: Literal["local", "federated"]) -> RegionCity:
    """The regional view of a city's indicators (sections as the overview shapes them)."""
    data = message.model_dump(mode="json")
    return RegionCity(
        city=message.city,
        name=message.name,
        source=source,
        generated_at=format_ts(message.generated_at),
        window=_window(message.interval),
        air_quality=AirQuality.model_validate(data["air_quality"]),
        traffic=Traffic.model_validate(data["traffic"]),
        noise=Noise.model_validate(data["noise"]),
        devices=DeviceCounts.model_validate(data["devices"]),
        incidents=Incidents.model_validate(data["incidents"]),
        response=message.response,
        activity=message.activity,
        delivery=message.delivery,
    )


async def federated(
    influx: InfluxClient,
) -> tuple[list[fed.ScopeIndicators], list[fed.SegmentIndicators]]:
    """The newest stored indicators of every federated city and segment."""
    try:
        scopes = await influx.query(SCOPES_STATEMENT)
        segments = await influx.query(SEGMENTS_STATEMENT)
    except QueryError as exc:
        if "database not found" in str(exc):
            return [], []  # no regional ingest has written here (yet)
        raise
    return (
        [fed.ScopeIndicators.model_validate(p) for p in _payloads(scopes)],
        [fed.SegmentIndicators.model_validate(p) for p in _payloads(segments)],
    )


def _payloads(series: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for s in series:
        for row in s.rows():
            if isinstance(row.get("payload"), str):
                out.append(json.loads(row["payload"]))
    return out


def corridor_out(
    corridor: fed.Corridor,
    measured: dict[tuple[str, str], tuple[fed.SegmentIndicators, Literal["local", "federated"]]],
) -> CorridorOut:
    """A corridor's segments with their newest figures, and the totals when complete."""
    segments = []
    for seg in corridor.segments:
        found = measured.get((seg.city, seg.id))
        figures, source = found if found is not None else (None, None)
        segments.append(
            SegmentOut(
                id=seg.id,
                name=seg.name,
                city=seg.city,
                **{"from": seg.from_},
                to=seg.to,
                length_km=seg.length_km,
                travel_time_s=figures.travel_time_s if figures else None,
                speed_kmh=figures.speed_kmh if figures else None,
                sensors=figures.sensors if figures else None,
                window=_window(figures.interval) if figures else None,
                source=source,
            )
        )
    times = [s.travel_time_s for s in segments]
    total = None if any(t is None for t in times) else round(sum(t or 0.0 for t in times), 1)
    length = sum(s.length_km for s in segments)
    speed = round(length / total * 3600, 2) if total else None
    return CorridorOut(
        id=corridor.id,
        name=corridor.name,
        segments=segments,
        travel_time_s=total,
        speed_kmh=speed,
    )


@router.get("/overview", response_model=RegionOverview, responses=errors(*STORAGE))
async def get_region_overview(request: Request) -> RegionOverview:
    """The cities this key may see, side by side (local ones computed from their own
    databases, federated ones from their published indicators), and the corridors."""
    settings: ApiSettings = request.app.state.settings
    cfg = settings.federation
    key = getattr(request.state, "api_key", None)
    allowed: tuple[str, ...] = tuple(getattr(key, "cities", ()) or ())

    def sees(city_id: str) -> bool:
        return not allowed or city_id in allowed

    corridors = fed.load_corridors(cfg.corridors)
    cities: list[RegionCity] = []
    measured: dict[
        tuple[str, str], tuple[fed.SegmentIndicators, Literal["local", "federated"]]
    ] = {}
    local_ids: set[str] = set()
    if settings.region.local:
        window = latest_closed(datetime.now(UTC), cfg)
        for city, influx in local_cities(request.app):
            local_ids.add(city.id)
            if not sees(city.id):
                continue
            cache = request.app.state.snapshots
            book = book_of(request, influx)
            for m in await indicators(influx, city, window, settings, corridors, cache, book):
                if isinstance(m, fed.SegmentIndicators):
                    measured[(m.city, m.segment)] = (m, "local")
                elif m.district is None:
                    cities.append(city_entry(m, "local"))
    base: InfluxClient = request.app.state.influx
    scopes, segments = await federated(base.for_database(settings.region.database))
    # A city served here is authoritative from its own database.
    for message in sorted(scopes, key=lambda m: m.city):
        if message.city not in local_ids and sees(message.city):
            cities.append(city_entry(message, "federated"))
    for s in segments:
        if s.city not in local_ids and sees(s.city):
            measured[(s.city, s.segment)] = (s, "federated")
    shown = [c for c in corridors if any(sees(s.city) for s in c.segments)]
    return RegionOverview(cities=cities, corridors=[corridor_out(c, measured) for c in shown])
