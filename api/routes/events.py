"""Events (safe-city detections) with filters, and per-device delivery accounting."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from api.delivery import LedgerIndex
from api.deps import CityDep, InfluxDep, SettingsDep
from api.errors import bad_param
from api.models import Delivery, EventOut, EventPage
from api.params import time_range
from api.queries import event_details, events, stored_counts
from api.responses import STORAGE, errors
from api.routes.cities import _ts
from api.routes.common import EVENT_TYPES, SEVERITIES, DeviceId, From, To, device_or_404
from api.security import require
from safecity.deadletters import DeadLetterIndex

router = APIRouter(prefix="/v1/events", tags=["events"])
delivery_router = APIRouter(
    prefix="/v1/devices", tags=["devices"], dependencies=[Depends(require("operate"))]
)

Limit = Annotated[
    int | None,
    Query(ge=1, le=1000, description="Most events returned, <= max_page_size (default 100)"),
]


@router.get("", response_model=EventPage, responses=errors(404, *STORAGE))
async def list_events(
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    city_id: Annotated[
        str | None, Query(alias="city", max_length=64, description="City id (must be this one)")
    ] = None,
    district: Annotated[str | None, Query(max_length=64, description="District id")] = None,
    device_id: Annotated[str | None, Query(max_length=64, description="Device id")] = None,
    event_type: Annotated[
        str | None,
        Query(alias="type", description="Event type", json_schema_extra={"enum": EVENT_TYPES}),
    ] = None,
    severity: Annotated[
        str | None, Query(description="Severity", json_schema_extra={"enum": SEVERITIES})
    ] = None,
    start: From = None,
    end: To = None,
    limit: Limit = None,
) -> EventPage:
    """Events of the city, newest first, filtered (default window: the last 24 hours)."""
    if city_id is not None and city_id != city.id:
        raise HTTPException(status_code=404, detail=f"unknown city {city_id}")
    if limit is None:
        limit = min(100, settings.max_page_size)
    elif limit > settings.max_page_size:
        raise bad_param("query", "limit", f"must be at most {settings.max_page_size}")
    filters: dict[str, str] = {}
    if district is not None:
        if city.district(district) is None:
            raise bad_param("query", "district", f"unknown district {district!r}")
        filters["district"] = district
    if device_id is not None:
        if city.device(device_id) is None:
            raise bad_param("query", "device_id", f"unknown device {device_id!r}")
        filters["device_id"] = device_id
    if event_type is not None:
        if event_type not in EVENT_TYPES:
            raise bad_param("query", "type", f"unknown event type {event_type!r}")
        filters["type"] = event_type
    if severity is not None:
        if severity not in SEVERITIES:
            raise bad_param("query", "severity", f"must be one of {', '.join(SEVERITIES)}")
        filters["severity"] = severity
    window = time_range(settings, start, end, timedelta(hours=24))
    params = {"city": city.id, **window.params(), **filters}
    rows = await events(influx, params, tuple(filters), limit + 1)
    items = [
        EventOut(
            ts=_ts(int(r["time"])),
            device_id=str(r["device_id"]),
            district=str(r["district"]),
            kind=str(r.get("kind") or ""),
            type=str(r["type"]),
            severity=str(r["severity"]),
            seq=int(r.get("seq") or 0),
            details=event_details(r),
        )
        for r in rows[:limit]
    ]
    return EventPage(items=items, truncated=len(rows) > limit, window=window.model())


@delivery_router.get(
    "/{device_id}/delivery", response_model=Delivery, responses=errors(404, *STORAGE)
)
async def get_device_delivery(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    device_id: DeviceId,
    start: From = None,
    end: To = None,
) -> Delivery:
    """Sent (ledger), stored (InfluxDB), rejected (dead letters) and last seen (default: 24 h).

    Needs the `operate` scope. `sent` counts acknowledged messages whose device
    timestamp falls in the window; `rejected` counts dead letters received in it.
    """
    device = device_or_404(city, device_id)
    window = time_range(settings, start, end, timedelta(hours=24))
    stored, last_ms = await stored_counts(influx, device, window.params())
    letters: DeadLetterIndex = request.app.state.deadletters
    ledger: LedgerIndex | None = request.app.state.ledger
    return Delivery(
        device_id=device.id,
        window=window.model(),
        sent=ledger.sent(device.id, window.start_ms, window.end_ms) if ledger else None,
        stored=stored,
        rejected=letters.rejected(device.id, window.start_ms, window.end_ms),
        last_seen=_ts(last_ms) if last_ms is not None else None,
    )
