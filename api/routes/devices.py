"""Devices: the registry's devices (filter + cursor pagination) and their latest reading."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import CityDep, DirectoryDep, InfluxDep, SettingsDep
from api.directory import BadCursorError, decode_cursor, encode_cursor
from api.errors import bad_param
from api.models import DeviceOut, DevicePage, ErrorBody, LatestReading
from api.queries import latest_reading
from safecity import catalogue
from safecity.registry import City, Device
from safecity.topics import IDENTIFIER

router = APIRouter(prefix="/v1/devices", tags=["devices"])

DEFAULT_PAGE_SIZE = 100
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    422: {"model": ErrorBody},
}
_STORAGE_ERRORS: dict[int | str, dict[str, object]] = {
    **_ERRORS,
    502: {"model": ErrorBody},
    503: {"model": ErrorBody},
}

DeviceId = Annotated[
    str,
    Path(
        description="Device identifier",
        pattern=f"^{IDENTIFIER.pattern}$",
        examples=["noise-chilanzar-001"],
    ),
]


def _device(city: City, device_id: str) -> Device:
    device = city.device(device_id)
    if device is None:
        raise HTTPException(status_code=404, detail=f"unknown device {device_id}")
    return device


@router.get("", response_model=DevicePage, responses=_ERRORS)
async def list_devices(
    settings: SettingsDep,
    city: CityDep,
    directory: DirectoryDep,
    city_id: Annotated[
        str | None, Query(alias="city", max_length=64, description="City id (must be this one)")
    ] = None,
    district: Annotated[str | None, Query(max_length=64, description="District id")] = None,
    kind: Annotated[str | None, Query(max_length=64, description="Sensor kind")] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, description="Page size, 1..max_page_size (default 100)"),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=128, description="`next_cursor` of the previous page")
    ] = None,
) -> DevicePage:
    """Devices of the city in id order, filtered by district and kind, one page at a time."""
    if city_id is not None and city_id != city.id:
        raise HTTPException(
            status_code=404, detail=f"unknown city {city_id} (this API serves {city.id})"
        )
    if kind is not None and kind not in catalogue.KINDS:
        raise bad_param(
            "query", "kind", f"unknown kind {kind!r} (known: {', '.join(sorted(catalogue.KINDS))})"
        )
    if district is not None and city.district(district) is None:
        known = ", ".join(sorted(d.id for d in city.districts))
        raise bad_param("query", "district", f"unknown district {district!r} (known: {known})")
    if limit is None:
        limit = min(DEFAULT_PAGE_SIZE, settings.max_page_size)
    elif limit > settings.max_page_size:
        raise bad_param("query", "limit", f"must be at most {settings.max_page_size}")
    after: str | None = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except BadCursorError as exc:
            raise bad_param("query", "cursor", str(exc)) from exc
    page = directory.page(limit=limit, after=after, kind=kind, district=district)
    items = [DeviceOut.of(city.id, d) for d in page.items]
    next_cursor = encode_cursor(page.items[-1].id) if page.has_more and page.items else None
    return DevicePage(items=items, next_cursor=next_cursor)


@router.get("/{device_id}", response_model=DeviceOut, responses=_ERRORS)
async def get_device(city: CityDep, device_id: DeviceId) -> DeviceOut:
    """One device of the registry."""
    return DeviceOut.of(city.id, _device(city, device_id))


@router.get("/{device_id}/latest", response_model=LatestReading, responses=_STORAGE_ERRORS)
async def get_latest(city: CityDep, influx: InfluxDep, device_id: DeviceId) -> LatestReading:
    """The newest reading stored for the device (by device timestamp)."""
    device = _device(city, device_id)
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
