"""Exports: a series or the events of a window as a CSV or NDJSON file, streamed and bounded.

A series export has at most `max_points` buckets (as the JSON series); an events
export at most `max_export_rows` events, counted before the first byte is sent, so a
file is never cut short: a larger window is a 422 saying how many it holds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import CityDep, InfluxDep, SettingsDep
from api.errors import bad_param
from api.params import TimeRange, time_range
from api.queries import count_events
from api.responses import STORAGE, errors
from api.routes.cities import check_series, unit_of
from api.routes.common import (
    Agg,
    CityId,
    DeviceQuery,
    DistrictQuery,
    EventTypeQuery,
    Every,
    FieldQuery,
    From,
    KindQuery,
    SeriesDistrictQuery,
    SeverityQuery,
    To,
    check_city,
    check_district,
)
from api.routes.events import event_filters, event_out, page_events
from api.tiers import DIGITS, SeriesAsk, WindowAsk, answer
from safecity.influx import InfluxClient
from safecity.readings import format_epoch_ms
from safecity.registry import City

router = APIRouter(prefix="/v1/cities/{city_id}/export", tags=["export"])

Format = Annotated[
    Literal["csv", "ndjson"], Query(description="csv (with a header row) or ndjson (JSON lines)")
]
MEDIA = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
SERIES_COLUMNS = ("ts", "value", "unit")
SERVED_BY = "Served-By"
"""The header naming what served each part of an exported series (`1d <from>/<to>, raw ...`)."""
EVENT_COLUMNS = ("ts", "device_id", "district", "kind", "type", "severity", "seq", "details")
CHUNK = 5000


def _file_response(description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description + " (`Content-Disposition: attachment`)",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        **errors(404, *STORAGE),
    }


def _stamp(window: TimeRange) -> str:
    return "-".join(t.strftime("%Y%m%dT%H%M%SZ") for t in (window.start, window.end))


def _lines(fmt: str, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> str:
    if fmt == "ndjson":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for r in rows:
        writer.writerow(
            [json.dumps(r[c], sort_keys=True) if isinstance(r[c], dict) else r[c] for c in columns]
        )
    return buffer.getvalue()


def _header(fmt: str, columns: tuple[str, ...]) -> str:
    return ",".join(columns) + "\n" if fmt == "csv" else ""


def _file_name(city: str, district: str | None, what: str, window: TimeRange) -> str:
    """`<city>[-<district>]-<what>-<window>`: the district only when the export has one."""
    scope = city if district is None else f"{city}-{district}"
    return f"{scope}-{what}-{_stamp(window)}"


def _attachment(body: AsyncIterator[str], fmt: str, name: str) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )


@router.get("/series", response_class=StreamingResponse, responses=_file_response("The series"))
async def export_series(
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
    fmt: Annotated[Format, Query(alias="format")] = "csv",
) -> StreamingResponse:
    """A field of a kind over the city or a district per bucket, as a file (the rows of
    `GET /v1/cities/{city_id}/series` with the same parameters; default: the last hour)."""
    check_city(city, city_id)
    check_series(kind, field, agg)
    check_district(city, district)
    params = {"city": city.id}
    if district is not None:
        params["district"] = district
    ask = SeriesAsk(kind, field, agg, 0, "district" if district else "")
    window_ask = WindowAsk(start, end, every, timedelta(hours=1))
    window, _, parts, served_by = await answer(request, settings, influx, ask, window_ask, params)
    unit = unit_of(kind, field)
    rows = [
        {"ts": format_epoch_ms(t), "value": round(v, DIGITS), "unit": unit}
        for part in parts
        for t, v in part
    ]

    async def body() -> AsyncIterator[str]:
        yield _header(fmt, SERIES_COLUMNS)
        for start_at in range(0, len(rows), CHUNK):
            yield _lines(fmt, SERIES_COLUMNS, rows[start_at : start_at + CHUNK])

    name = _file_name(city.id, district, f"{kind}-{field}-{agg}", window)
    response = _attachment(body(), fmt, name)
    response.headers[SERVED_BY] = ", ".join(f"{s.tier} {s.from_}/{s.to}" for s in served_by)
    return response


@router.get("/events", response_class=StreamingResponse, responses=_file_response("The events"))
async def export_events(
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    city_id: CityId,
    district: DistrictQuery = None,
    device_id: DeviceQuery = None,
    event_type: EventTypeQuery = None,
    severity: SeverityQuery = None,
    start: From = None,
    end: To = None,
    fmt: Annotated[Format, Query(alias="format")] = "csv",
) -> StreamingResponse:
    """The events of the window, newest first, as a file (the items of `GET /v1/events`
    with the same filters; default: the last 24 hours; at most `max_export_rows`)."""
    check_city(city, city_id)
    filters = event_filters(city, district, device_id, event_type, severity)
    window = time_range(settings, start, end, timedelta(hours=24))
    total = await count_events(
        influx, {"city": city.id, **window.params(), **filters}, tuple(filters)
    )
    if total > settings.max_export_rows:
        raise bad_param(
            "query",
            "from",
            f"the window holds {total} events; at most {settings.max_export_rows} "
            "(max_export_rows) per export: use a shorter window or more filters",
        )
    name = _file_name(city.id, district, "events", window)
    return _attachment(_event_rows(influx, city, window, filters, fmt), fmt, name)


async def _event_rows(
    influx: InfluxClient, city: City, window: TimeRange, filters: dict[str, str], fmt: str
) -> AsyncIterator[str]:
    yield _header(fmt, EVENT_COLUMNS)
    before: int | None = None
    while True:
        rows, before = await page_events(influx, city, window, filters, CHUNK, before)
        yield _lines(fmt, EVENT_COLUMNS, (event_out(r).model_dump() for r in rows))
        if before is None:
            return
