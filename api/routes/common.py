"""Parameters and lookups shared by the routers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, Request
from pydantic import BeforeValidator

from api.cursors import PATTERN as CURSOR_PATTERN
from api.deps import influx_of, runtime_of
from api.errors import bad_param
from api.overview import OVERVIEW_WINDOW, Snapshot, ready, take_snapshot
from api.params import EVERY_PATTERN, TimeRange, now, parse_instant
from api.settings import ApiSettings
from api.snapshotcache import SnapshotCache
from api.tiers import book_of
from safecity import catalogue
from safecity.registry import City, Device
from safecity.topics import IDENTIFIER

ID_PATTERN = f"^{IDENTIFIER.pattern}$"
KINDS = sorted(catalogue.KINDS)
NUMERIC_FIELDS = sorted(
    {q.name for k in KINDS for q in catalogue.telemetry_quantities(k) if q.type in ("float", "int")}
)
SEVERITIES = [s.value for s in catalogue.Severity]
EVENT_TYPES = sorted(catalogue.EVENT_TYPES)

CITY_QUERY = (
    "City id (default: the first city the key may see; a city it may not see is a 404 "
    "exactly like an unknown one)"
)
CityId = Annotated[
    str, Path(description="City id", pattern=ID_PATTERN, max_length=64, examples=["tashkent"])
]
DeviceId = Annotated[
    str,
    Path(
        description="Device identifier",
        pattern=ID_PATTERN,
        max_length=64,
        examples=["noise-chilanzar-001"],
    ),
]
From = Annotated[
    datetime | None,
    BeforeValidator(parse_instant),
    Query(
        alias="from",
        description="Window start, RFC 3339 (naive = UTC); default depends on the endpoint. "
        "A window longer than max_range keeps its newest part; a `from` not before `to` "
        "is an empty window; the response's `window` says what was covered",
        examples=["2026-01-15T06:00:00Z"],
    ),
]
To = Annotated[
    datetime | None,
    BeforeValidator(parse_instant),
    Query(
        alias="to",
        description="Window end (exclusive), RFC 3339 (naive = UTC); default now",
        examples=["2026-01-15T07:00:00Z"],
    ),
]
Every = Annotated[
    str | None,
    Query(
        pattern=EVERY_PATTERN,
        max_length=9,
        description="Bucket, e.g. 30s, 5m, 1h, 1d; default about 300 buckets. Raised to "
        "min_bucket and to what keeps max_points buckets in the window (see `every_s`)",
        examples=["5m"],
    ),
]
Agg = Annotated[
    str,
    Query(
        description="Aggregate per bucket",
        json_schema_extra={"enum": ["mean", "min", "max", "p95", "count"]},
    ),
]
FieldQuery = Annotated[
    str,
    Query(
        description="Numeric field of the kind (404 when the kind has no such field)",
        json_schema_extra={"enum": NUMERIC_FIELDS},
        examples=["laeq"],
    ),
]
KindQuery = Annotated[
    str, Query(description="Sensor kind", json_schema_extra={"enum": KINDS}, examples=["noise"])
]
CityQuery = Annotated[str | None, Query(alias="city", max_length=64, description=CITY_QUERY)]
DistrictQuery = Annotated[str | None, Query(max_length=64, description="District id")]
# A series of the whole city unless a district is named (cities' series and its export).
SeriesDistrictQuery = Annotated[
    str | None, Query(max_length=64, description="District id (default: whole city)")
]
DeviceQuery = Annotated[str | None, Query(max_length=64, description="Device id")]
EventTypeQuery = Annotated[
    str | None,
    Query(alias="type", description="Event type", json_schema_extra={"enum": EVENT_TYPES}),
]
SeverityQuery = Annotated[
    str | None, Query(description="Severity", json_schema_extra={"enum": SEVERITIES})
]
Limit = Annotated[
    int | None,
    Query(ge=1, description="Page size, 1..max_page_size (default 100)"),
]
Cursor = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page (same filters)"),
]
DEFAULT_PAGE_SIZE = 100


def page_size(settings: ApiSettings, limit: int | None) -> int:
    """The page size asked for, or the default; 422 above the settings' `max_page_size`."""
    if limit is None:
        return min(DEFAULT_PAGE_SIZE, settings.max_page_size)
    if limit > settings.max_page_size:
        raise bad_param("query", "limit", f"must be at most {settings.max_page_size}")
    return limit


def check_city(city: City, city_id: str) -> None:
    """404 unless `city_id` is the request's city (`CityDep` resolved it from the path)."""
    if city_id != city.id:
        raise HTTPException(
            status_code=404, detail=f"unknown city {city_id} (this API serves {city.id})"
        )


def check_district(city: City, district: str | None) -> None:
    """404 naming an unknown district (the same rule in a path and in a query)."""
    if district is not None and city.district(district) is None:
        known = ", ".join(sorted(d.id for d in city.districts))
        raise HTTPException(status_code=404, detail=f"unknown district {district} (known: {known})")


def device_or_404(city: City, device_id: str) -> Device:
    """The device, or 404 naming it."""
    device = city.device(device_id)
    if device is None:
        raise HTTPException(status_code=404, detail=f"unknown device {device_id}")
    return device


def window_key(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[Any, ...]:
    """Cache key of a window: its length for the moving default, else its bounds."""
    if start is None and end is None:
        return ("last", default.total_seconds())
    return ("fixed", start.isoformat() if start else None, end.isoformat() if end else None)


async def snapshot(
    request: Request,
    city: City,
    window: TimeRange,
    key: tuple[Any, ...],
) -> Snapshot:
    """The (cached) snapshot of a city's own database for a window."""
    cache: SnapshotCache = request.app.state.snapshots
    influx = influx_of(request, city)
    settings: ApiSettings = request.app.state.settings
    book = book_of(request, influx)
    # The moving window may come from the board; an explicit one is always read anew.
    board = runtime_of(request, city).board if key[0] == "last" else None

    async def compute() -> Snapshot:
        return await ready(
            await take_snapshot(influx, city, window, settings, book, board), settings, city
        )

    return await cache.get((city.id, *key), compute)


def default_window() -> TimeRange:
    """The overview's default window: the last 15 minutes."""
    end = now()
    return TimeRange(end - OVERVIEW_WINDOW, end)
