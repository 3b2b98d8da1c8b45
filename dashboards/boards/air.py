"""Air quality against the WHO 2021 guideline, and the weather."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import (
    MGM3,
    UGM3,
    WHERE,
    WHO_LIMITS,
    Board,
    _limit,
    _mean_by_district,
)


def board() -> Board:
    """Air quality against the WHO 2021 guideline, and the weather that drives it."""
    b = Board(
        "safecity-air-quality",
        "safecity / Air quality",
        "Pollutants by district against the WHO 2021 guideline; weather.",
        ["air"],
    )
    b.standard_variables()
    for field, limit, window in WHO_LIMITS:
        unit = MGM3 if field == "co" else UGM3
        b.timeseries(
            f"{field.upper()} by district (WHO {window} guideline {limit:g})",
            _mean_by_district("air_quality", field),
            alias="$tag_district",
            unit=unit,
            thresholds=_limit(limit),
            custom={"thresholdsStyle": {"mode": "line"}},
            w=8,
        )
    b.table(
        "Mean over the range by district",
        'SELECT mean("pm25") AS "pm25", mean("pm10") AS "pm10", mean("no2") AS "no2", '
        'mean("o3") AS "o3", mean("so2") AS "so2", mean("co") AS "co" '
        f'FROM "air_quality" WHERE {WHERE} GROUP BY "district"',
        w=24,
    )
    b.timeseries(
        "Weather: temperature and humidity",
        f'SELECT mean("temperature") AS "temperature" FROM "weather" WHERE {WHERE} '
        "GROUP BY time($__interval)",
        f'SELECT mean("humidity") * 100 AS "humidity %" FROM "weather" WHERE {WHERE} '
        "GROUP BY time($__interval)",
    )
    b.timeseries(
        "Weather: wind and precipitation",
        f'SELECT mean("wind_speed") AS "wind m/s", max("precipitation") AS "rain mm/h" '
        f'FROM "weather" WHERE {WHERE} GROUP BY time($__interval)',
    )
    return b
