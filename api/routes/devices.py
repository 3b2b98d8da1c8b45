"""Devices: the registry's devices (filters incl. status, cursor pagination), latest, history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from api.deps import CityDep, DirectoryDep, InfluxDep, SettingsDep
from api.directory import BadCursorError, decode_cursor, encode_cursor
from api.errors import bad_param
from api.models import DeviceOut, DevicePage, DeviceStatusOut, LatestReading, Series
from api.overview import OVERVIEW_WINDOW as STATUS_WINDOW
from api.overview import device_state, states
from api.queries import latest_reading
from api.responses import STORAGE, errors
from api.routes.cities import check_series, unit_of
from api.routes.common import (
    Agg,
    CityQuery,
    Cursor,
    DeviceId,
    DistrictQuery,
    Every,
    FieldQuery,
    From,
    Limit,
    To,
    check_district,
    default_window,
    device_or_404,
    page_size,
    snapshot,
    window_key,
)
from api.seriesbody import series_response
from api.tiers import SeriesAsk, WindowAsk, answer
from safecity import catalogue
from safecity.readings import format_epoch_ms
from safecity.registry import Device

router = APIRouter(prefix="/v1/devices", tags=["devices"])
STATES = ("online", "stale", "offline")


@router.get("", response_model=DevicePage, responses=errors(404, *STORAGE))
async def list_devices(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    directory: DirectoryDep,
    city_id: CityQuery = None,
    district: DistrictQuery = None,
    kind: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Sensor kind",
            json_schema_extra={"enum": sorted(catalogue.KINDS)},
        ),
    ] = None,
    status: Annotated[
        str | None,
        Query(
            description="online, stale or offline now (items then carry status and last_seen)",
            json_schema_extra={"enum": list(STATES)},
        ),
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> DevicePage:
    """Devices of the city in id order, filtered by district, kind and status, page by page."""
    if kind is not None and kind not in catalogue.KINDS:
        raise bad_param(
            "query", "kind", f"unknown kind {kind!r} (known: {', '.join(sorted(catalogue.KINDS))})"
        )
    check_district(city, district)
    if status is not None and status not in STATES:
        raise bad_param("query", "status", "must be one of online, stale, offline")
    limit = page_size(settings, limit)
    after: str | None = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except BadCursorError as exc:
            raise HTTPException(status_code=404, detail=f"unknown cursor: {exc}") from exc
    if status is None:
        page = directory.page(limit=limit, after=after, kind=kind, district=district)
        items: list[DeviceStatusOut | DeviceOut] = [DeviceOut.of(city.id, d) for d in page.items]
    else:
        snap = await snapshot(
            request, city, default_window(), window_key(None, None, STATUS_WINDOW)
        )
        now = await states(snap, settings, city)
        page = directory.page(
            limit=limit,
            after=after,
            kind=kind,
            district=district,
            keep=lambda d: now[d.id] == status,
        )
        items = [_with_status(city.id, d, now[d.id], snap.last_seen.get(d.id)) for d in page.items]
    next_cursor = encode_cursor(page.items[-1].id) if page.has_more and page.items else None
    return DevicePage(items=items, next_cursor=next_cursor)


def _with_status(city_id: str, device: Device, status: str, seen: int | None) -> DeviceStatusOut:
    return DeviceStatusOut(
        **DeviceOut.of(city_id, device).model_dump(),
        status=status,
        last_seen=format_epoch_ms(seen) if seen is not None else None,
    )


@router.get("/{device_id}", response_model=DeviceStatusOut, responses=errors(404, *STORAGE))
async def get_device(
    request: Request, settings: SettingsDep, city: CityDep, device_id: DeviceId
) -> DeviceStatusOut:
    """One device of the registry, with its status now and its last reading time."""
    device = device_or_404(city, device_id)
    snap = await snapshot(request, city, default_window(), window_key(None, None, STATUS_WINDOW))
    return _with_status(
        city.id, device, device_state(snap, settings, device), snap.last_seen.get(device.id)
    )


@router.get("/{device_id}/latest", response_model=LatestReading, responses=errors(404, *STORAGE))
async def get_device_latest(city: CityDep, influx: InfluxDep, device_id: DeviceId) -> LatestReading:
    """The newest reading stored for the device (by device timestamp)."""
    device = device_or_404(city, device_id)
    reading = await latest_reading(influx, device)
    if reading is None:
        raise HTTPException(status_code=404, detail=f"no reading stored yet for device {device_id}")
    return LatestReading(
        device_id=device.id,
        kind=device.kind,
        district=device.district,
        ts=reading.ts,
        seq=reading.seq,
        values=reading.values,
    )


@router.get("/{device_id}/history", response_model=Series, responses=errors(404, *STORAGE))
async def get_device_history(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    device_id: DeviceId,
    field: FieldQuery,
    start: From = None,
    end: To = None,
    every: Every = None,
    agg: Agg = "mean",
) -> Response:
    """One field of the device aggregated per bucket (default: the last hour)."""
    device = device_or_404(city, device_id)
    check_series(device.kind, field, agg)
    ask = SeriesAsk(device.kind, field, agg, 0, "device_id")
    window, every_s, parts, served_by = await answer(
        request,
        settings,
        influx,
        ask,
        WindowAsk(start, end, every, timedelta(hours=1)),
        {"city": city.id, "device_id": device.id},
    )
    series = Series(
        city=city.id,
        district=device.district,
        device_id=device.id,
        kind=device.kind,
        field=field,
        unit=unit_of(device.kind, field),
        agg=agg,
        every_s=every_s,
        window=window.model(),
        served_by=served_by,
        points=[],
    )
    return series_response(series, parts)
