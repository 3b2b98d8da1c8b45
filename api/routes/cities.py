"""Cities: the city list, overviews (city and district), districts as GeoJSON, time series."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import BaseModel

from api.deps import CityDep, InfluxDep, KeyDep, SettingsDep, TenancyDep, influx_of
from api.errors import bad_param
from api.models import CityList, CityOut, Location, Overview, Series
from api.overview import OVERVIEW_WINDOW, kpis, view
from api.params import TimeRange, time_range
from api.queries import numeric_fields
from api.responses import STORAGE, errors
from api.routes.common import (
    ID_PATTERN,
    NUMERIC_FIELDS,
    Agg,
    CityId,
    Every,
    FieldQuery,
    From,
    KindQuery,
    SeriesDistrictQuery,
    To,
    check_city,
    check_district,
    snapshot,
    window_key,
)
from api.seriesbody import series_response
from api.settings import ApiSettings
from api.tiers import SeriesAsk, WindowAsk, answer, book_of, window_longest
from safecity import catalogue
from safecity.registry import City, geojson

router = APIRouter(prefix="/v1/cities", tags=["cities"])

DistrictId = Annotated[
    str, Path(description="District id", pattern=ID_PATTERN, max_length=64, examples=["chilanzar"])
]


class Geometry(BaseModel):
    """A GeoJSON polygon ([lon, lat] rings)."""

    type: Literal["Polygon"]
    coordinates: list[list[list[float]]]


class Feature(BaseModel):
    """A district as a GeoJSON feature; its latest KPIs are the properties."""

    type: Literal["Feature"]
    id: str
    geometry: Geometry
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    """The city's districts as a GeoJSON FeatureCollection."""

    type: Literal["FeatureCollection"]
    features: list[Feature]


def _city_out(city: City) -> CityOut:
    lon, lat = city.record.centroid
    return CityOut(
        id=city.id,
        name=city.name,
        country=city.record.country,
        timezone=city.record.timezone,
        centroid=Location(lon=lon, lat=lat),
        districts=len(city.districts),
        devices=len(city.devices),
    )


@router.get("", response_model=CityList, responses=errors())
async def list_cities(tenancy: TenancyDep, key: KeyDep) -> CityList:
    """The cities this API serves that the key may see, in load order (the first is the
    home city)."""
    return CityList(items=[_city_out(c) for c in tenancy.visible(key)])


@router.get("/{city_id}", response_model=CityOut, responses=errors(404))
async def get_city(city: CityDep, city_id: CityId) -> CityOut:
    """One city: name, time zone, centroid, district and device counts."""
    check_city(city, city_id)
    return _city_out(city)


@router.get("/{city_id}/overview", response_model=Overview, responses=errors(404, *STORAGE))
async def get_city_overview(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    city_id: CityId,
    start: From = None,
    end: To = None,
) -> Overview:
    """City metrics for the window (default: the last 15 minutes), each with its basis."""
    check_city(city, city_id)
    window = overview_window(request, settings, city, start, end)
    snap = await snapshot(request, city, window, window_key(start, end, OVERVIEW_WINDOW))
    return await view(snap, settings, city, None)


@router.get(
    "/{city_id}/districts/{district_id}/overview",
    response_model=Overview,
    responses=errors(404, *STORAGE),
)
async def get_district_overview(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    city_id: CityId,
    district_id: DistrictId,
    start: From = None,
    end: To = None,
) -> Overview:
    """One district's metrics for the window (default: the last 15 minutes)."""
    check_city(city, city_id)
    check_district(city, district_id)
    window = overview_window(request, settings, city, start, end)
    snap = await snapshot(request, city, window, window_key(start, end, OVERVIEW_WINDOW))
    return await view(snap, settings, city, district_id)


@router.get(
    "/{city_id}/districts",
    response_model=FeatureCollection,
    responses=errors(404, *STORAGE),
)
async def list_districts(
    request: Request, settings: SettingsDep, city: CityDep, city_id: CityId
) -> dict[str, Any]:
    """The districts as GeoJSON, each with its KPIs of the last 15 minutes as properties."""
    check_city(city, city_id)
    window = time_range(settings, None, None, OVERVIEW_WINDOW)
    snap = await snapshot(request, city, window, window_key(None, None, OVERVIEW_WINDOW))
    props = {d.id: kpis(await view(snap, settings, city, d.id)) for d in city.districts}
    return geojson(city, props)


def overview_window(
    request: Request,
    settings: ApiSettings,
    city: City,
    start: datetime | None,
    end: datetime | None,
) -> TimeRange:
    """The window of an overview: held to what its tiers keep (see `window_longest`)."""
    book = book_of(request, influx_of(request, city))
    return time_range(settings, start, end, OVERVIEW_WINDOW, window_longest(settings, book))


def check_series(kind: str, field: str, agg: str) -> None:
    """422 unless kind, field and agg are on the allow-lists."""
    if kind not in catalogue.KINDS:
        raise bad_param(
            "query", "kind", f"unknown kind (known: {', '.join(sorted(catalogue.KINDS))})"
        )
    allowed = numeric_fields(kind)
    if field not in allowed:
        reason = f"not a numeric field of {kind} (allowed: {', '.join(allowed)})"
        if field in NUMERIC_FIELDS:  # a real field of another kind: no such series
            raise HTTPException(status_code=404, detail=f"unknown series {kind}.{field}: {reason}")
        raise bad_param("query", "field", reason)
    if agg not in ("mean", "min", "max", "p95", "count"):
        raise bad_param("query", "agg", "must be one of mean, min, max, p95, count")


def unit_of(kind: str, field: str) -> str:
    """The catalogue unit of a field."""
    quantity = next(q for q in catalogue.telemetry_quantities(kind) if q.name == field)
    return quantity.unit


@router.get("/{city_id}/series", response_model=Series, responses=errors(404, *STORAGE))
async def get_city_series(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    city_id: CityId,
    kind: KindQuery,
    field: FieldQuery,
    district: SeriesDistrictQuery = None,
    start: From = None,
    end: To = None,
    every: Every = None,
    agg: Agg = "mean",
) -> Response:
    """A field of a kind over the city or a district, aggregated per bucket (default: last hour)."""
    check_city(city, city_id)
    check_series(kind, field, agg)
    check_district(city, district)
    params = {"city": city.id}
    by = ""
    if district is not None:
        params["district"] = district
        by = "district"
    ask = SeriesAsk(kind, field, agg, 0, by)
    window_ask = WindowAsk(start, end, every, timedelta(hours=1))
    window, every_s, parts, served_by = await answer(
        request, settings, influx, ask, window_ask, params
    )
    series = Series(
        city=city.id,
        district=district,
        device_id=None,
        kind=kind,
        field=field,
        unit=unit_of(kind, field),
        agg=agg,
        every_s=every_s,
        window=window.model(),
        served_by=served_by,
        points=[],
    )
    return series_response(series, parts)
