"""NGSI-LD temporal API (read-only): a device's observations over a time range, from
InfluxDB, as a temporal entity (normalized or temporalValues)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BeforeValidator

from api import audit
from api.deps import KeyDep, SettingsDep, TenancyDep, influx_of
from api.ngsild_data import samples
from api.ngsild_errors import documented, not_found
from api.ngsild_query import simplified, split_list
from api.params import TimeRange, parse_instant, time_range
from api.routes.ngsild import PREFIX, AttrsQuery, FormatQuery, OptionsQuery, ok, respond
from api.settings import ApiSettings
from safecity.ngsild_entities import parse_urn, project, temporal_entity, temporal_values
from safecity.ngsild_models import observation_model

router = APIRouter(prefix=f"{PREFIX}/temporal", tags=["ngsi-ld"])
DEFAULT_WINDOW = timedelta(hours=1)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)

Instant = Annotated[
    datetime | None,
    BeforeValidator(parse_instant),
    Query(description="RFC 3339 date-time", examples=["2026-01-15T06:00:00Z"]),
]


def window_of(
    settings: ApiSettings, timerel: str | None, at: datetime | None, end: datetime | None
) -> TimeRange:
    """[from, to): `before` timeAt (default now); `after`/`between` timeAt to endTimeAt
    (defaults: an hour before the end, now); none: the last hour. Held to max_range
    (its newest part) as on /v1."""
    if timerel == "before":
        return time_range(settings, EARLIEST, at, DEFAULT_WINDOW)
    return time_range(settings, at, end, DEFAULT_WINDOW)


@router.get(
    "/entities/{entity_id}",
    response_model=None,
    responses={**ok("The temporal entity", array=False), **documented(404, 502, 503)},
)
async def retrieve_temporal_entity(
    request: Request,
    settings: SettingsDep,
    key: KeyDep,
    tenancy: TenancyDep,
    entity_id: str,
    timerel: Annotated[
        Literal["before", "after", "between"] | None,
        Query(description="before/after timeAt, or between timeAt and endTimeAt"),
    ] = None,
    time_at: Annotated[Instant, Query(alias="timeAt")] = None,
    end_time_at: Annotated[Instant, Query(alias="endTimeAt")] = None,
    last_n: Annotated[
        int | None, Query(alias="lastN", ge=1, description="Only the newest N instances")
    ] = None,
    attrs: AttrsQuery = None,
    options: OptionsQuery = None,
    format: FormatQuery = None,
) -> Response:
    """A device's observations in the window, oldest first (at most max_points readings)."""
    values_form = simplified(options, format)
    window = window_of(settings, timerel, time_at, end_time_at)
    parsed = parse_urn(entity_id)
    city = tenancy.city_of_device(key, parsed[1]) if parsed is not None else None
    device = city.device(parsed[1]) if city is not None and parsed is not None else None
    model = observation_model(device.kind) if device is not None else None
    if city is None or device is None or model is None or parsed is None or model.name != parsed[0]:
        raise not_found(f"unknown entity {entity_id}")
    audit.note_city(request.scope, city.id)
    limit = min(last_n or settings.max_points, settings.max_points)
    found = await samples(influx_of(request, city), city, device, window, limit, last_n is not None)
    entity = project(temporal_entity(device, found), split_list(attrs))
    return respond(request, temporal_values(entity) if values_form else entity, {})
