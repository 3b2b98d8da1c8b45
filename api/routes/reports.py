"""Reports: the annual air-quality report of a city (JSON or CSV)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.deps import CityDep, InfluxDep
from api.params import now
from api.report import CSV_COLUMNS, DAY_MS, POLLUTANTS, AirQualityReport, areas, csv_rows
from api.responses import STORAGE, errors
from api.routes.common import CityId, check_city
from api.tiers import Kept, book_of, daily_sums, day_pieces, served
from safecity.influx import InfluxClient
from safecity.readings import epoch_ms, format_epoch_ms
from safecity.registry import City

router = APIRouter(prefix="/v1/cities", tags=["reports"])


def _period(year: int) -> tuple[int, int]:
    """[1 Jan, 1 Jan next) of a year, ending at today's midnight for the current year."""
    start = epoch_ms(datetime(year, 1, 1, tzinfo=UTC))
    end = epoch_ms(datetime(year + 1, 1, 1, tzinfo=UTC))
    today = epoch_ms(now()) // DAY_MS * DAY_MS
    return start, max(start, min(end, today))


async def _report(
    request: Request, influx: InfluxClient, city: City, year: int
) -> AirQualityReport:
    """The report of a year, computed or kept. A report wholly served by rollup tiers is
    kept until its stamp changes: the days it covers grow (the job rolled another day)
    or the job rolled some of them again for late data. One with raw days is not kept:
    raw can change under it unannounced."""
    span = _period(year)
    pieces, stamp = await day_pieces(influx, book_of(request, influx), "air_quality", span)

    async def compute() -> AirQualityReport:
        sums = await daily_sums(influx, "air_quality", POLLUTANTS, city.id, pieces)
        days = (span[1] - span[0]) // DAY_MS
        return AirQualityReport(
            city=city.id,
            year=year,
            **{"from": format_epoch_ms(span[0]), "to": format_epoch_ms(span[1])},
            served_by=served(pieces),
            areas=areas(sums, [(d.id, d.name) for d in city.districts], city.name, days),
        )

    kept: Kept[tuple[str, str, int], AirQualityReport] = request.app.state.reports
    return await kept.get((influx.settings.database, city.id, year), stamp, compute)


@router.get(
    "/{city_id}/reports/air-quality",
    response_model=AirQualityReport,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **errors(404, *STORAGE),
    },
)
async def air_quality_report(
    request: Request,
    city: CityDep,
    influx: InfluxDep,
    city_id: CityId,
    year: Annotated[
        int | None,
        Query(ge=1970, le=2199, description="Calendar year (UTC); default: the current one"),
    ] = None,
    fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> AirQualityReport | Response:
    """PM2.5, PM10 and NO2 of the city and each district over a year against the WHO 2021
    guidelines: annual means, days above the 24-hour guidelines, the worst episodes and
    data completeness (whole UTC days; the current year up to today)."""
    check_city(city, city_id)
    chosen = year if year is not None else now().year
    report = await _report(request, influx, city, chosen)
    if fmt == "json":
        return report
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(report))
    name = f"{city.id}-air-quality-{chosen}.csv"
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
