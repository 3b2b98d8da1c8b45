"""Events (safe-city detections) with filters, and per-device delivery accounting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request

from api.cursors import event_cursor, event_position
from api.delivery import LedgerIndex
from api.deps import CityDep, InfluxDep, SettingsDep
from api.errors import bad_param
from api.models import DeviceDelivery, EventOut, EventPage
from api.params import TimeRange, time_range
from api.queries import event_details, events, stored_counts
from api.responses import STORAGE, errors
from api.routes.common import (
    EVENT_TYPES,
    SEVERITIES,
    CityQuery,
    Cursor,
    DeviceId,
    DeviceQuery,
    DistrictQuery,
    EventTypeQuery,
    From,
    Limit,
    SeverityQuery,
    To,
    check_district,
    device_or_404,
    page_size,
)
from api.security import require
from safecity.deadletters import DeadLetterIndex
from safecity.influx import InfluxClient
from safecity.readings import format_epoch_ms, format_ts, from_epoch_ms
from safecity.registry import City

router = APIRouter(prefix="/v1/events", tags=["events"])
delivery_router = APIRouter(
    prefix="/v1/devices", tags=["devices"], dependencies=[Depends(require("operate"))]
)

# Events sharing one millisecond are never split across pages; a page holds at most
# this many of them (a burst larger than that is cut, and `next_cursor` moves past it).
MAX_TIE = 10_000


def event_filters(
    city: City,
    district: str | None,
    device_id: str | None,
    event_type: str | None,
    severity: str | None,
) -> dict[str, str]:
    """The checked tag filters of an events query (422 naming a bad one)."""
    filters: dict[str, str] = {}
    if district is not None:
        check_district(city, district)
        filters["district"] = district
    if device_id is not None:
        device_or_404(city, device_id)
        filters["device_id"] = device_id
    if event_type is not None:
        if event_type not in EVENT_TYPES:
            raise bad_param("query", "type", f"unknown event type {event_type!r}")
        filters["type"] = event_type
    if severity is not None:
        if severity not in SEVERITIES:
            raise bad_param("query", "severity", f"must be one of {', '.join(SEVERITIES)}")
        filters["severity"] = severity
    return filters


async def page_events(
    influx: InfluxClient,
    city: City,
    window: TimeRange,
    filters: dict[str, str],
    limit: int,
    before_ms: int | None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to `limit` event rows of the window before `before_ms`, newest first, and the
    exclusive end of the next page (None: this was the last)."""
    end = window.end if before_ms is None else min(window.end, from_epoch_ms(before_ms))
    if end <= window.start:
        return [], None
    params = {"city": city.id, "from": format_ts(window.start), "to": format_ts(end), **filters}
    rows = await events(influx, params, tuple(filters), limit + 1)
    next_end: int | None = None
    if len(rows) > limit:
        boundary = int(rows[limit]["time"])
        rows = [r for r in rows[:limit] if int(r["time"]) > boundary]
        next_end = boundary + 1
        if not rows:  # the whole page is one millisecond: take all of it
            tie = {**params, "from": format_epoch_ms(boundary), "to": format_epoch_ms(boundary + 1)}
            rows = await events(influx, tie, tuple(filters), MAX_TIE)
            next_end = boundary
    rows.sort(key=lambda r: (-int(r["time"]), str(r["device_id"]), int(r.get("seq") or 0)))
    return rows, next_end


def event_out(row: dict[str, Any]) -> EventOut:
    """The response view of a stored event row."""
    return EventOut(
        ts=format_epoch_ms(int(row["time"])),
        device_id=str(row["device_id"]),
        district=str(row["district"]),
        kind=str(row.get("kind") or ""),
        type=str(row["type"]),
        severity=str(row["severity"]),
        seq=int(row.get("seq") or 0),
        details=event_details(row),
    )


@router.get("", response_model=EventPage, responses=errors(404, *STORAGE))
async def list_events(
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    city_id: CityQuery = None,
    district: DistrictQuery = None,
    device_id: DeviceQuery = None,
    event_type: EventTypeQuery = None,
    severity: SeverityQuery = None,
    start: From = None,
    end: To = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> EventPage:
    """Events of the city, newest first, filtered (default window: the last 24 hours),
    page by page: pass `next_cursor` back as `cursor` with the same filters and window."""
    limit = page_size(settings, limit)
    filters = event_filters(city, district, device_id, event_type, severity)
    before = event_position(cursor) if cursor is not None else None
    window = time_range(settings, start, end, timedelta(hours=24))
    rows, next_end = await page_events(influx, city, window, filters, limit, before)
    return EventPage(
        items=[event_out(r) for r in rows],
        truncated=next_end is not None,
        next_cursor=event_cursor(next_end) if next_end is not None else None,
        window=window.model(),
    )


@delivery_router.get(
    "/{device_id}/delivery", response_model=DeviceDelivery, responses=errors(404, *STORAGE)
)
async def get_device_delivery(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    device_id: DeviceId,
    start: From = None,
    end: To = None,
) -> DeviceDelivery:
    """Sent (ledger), stored (InfluxDB), rejected (dead letters) and last seen (default: 24 h).

    Needs the `operate` scope. `sent` counts acknowledged messages whose device
    timestamp falls in the window; `rejected` counts dead letters received in it.
    """
    device = device_or_404(city, device_id)
    window = time_range(settings, start, end, timedelta(hours=24))
    stored, last_ms = await stored_counts(influx, device, window.params())
    letters: DeadLetterIndex = request.app.state.deadletters
    ledger: LedgerIndex | None = request.app.state.ledger
    return DeviceDelivery(
        device_id=device.id,
        window=window.model(),
        sent=ledger.sent(device.id, window.start_ms, window.end_ms) if ledger else None,
        stored=stored,
        rejected=letters.rejected(device.id, window.start_ms, window.end_ms),
        last_seen=format_epoch_ms(last_ms) if last_ms is not None else None,
    )
