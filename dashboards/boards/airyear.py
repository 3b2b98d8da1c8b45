"""A year of air quality from the day tier: the annual report's figures in Grafana."""

# Every query here is assembled from module constants and catalogue/contract identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import CITY, UGM3, WHERE, Board, _limit
from safecity import catalogue
from safecity.rollups import DEFAULT_TIERS, measurement, parse_tiers

UID = "safecity-air-quality-year"
DAY_S = 86_400
DAY_TIER = next(t for t in parse_tiers(DEFAULT_TIERS) if t.every_s == DAY_S)
SOURCE = f'"{DAY_TIER.policy}"."{measurement("air_quality", "district")}"'
# The report's pollutants: the WHO 2021 annual guideline (ug/m3) beside the catalogue's
# 24-hour one (the same numbers as the API's report, GET .../reports/air-quality).
ANNUAL = {"pm25": 5.0, "pm10": 15.0, "no2": 10.0}
LABEL = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO2"}


def _mean(field: str) -> str:
    """The exact mean of the readings in a group: sum of the day sums over their counts."""
    return f'sum("{field}_sum") / sum("{field}_count")'


def daily(field: str, alias: str | None = None) -> str:
    """The daily means of a pollutant per district (the day tier's buckets as they are)."""
    return (
        f'SELECT {_mean(field)} AS "{alias or field}" FROM {SOURCE} WHERE {WHERE} '
        'GROUP BY time(1d), "district" fill(none)'
    )


def days_above(field: str) -> str:
    """Days of the range whose daily mean exceeds the 24-hour guideline, per district."""
    limit = catalogue.WHO_AIR[field].value
    return (
        f'SELECT count("m") AS "days above" FROM ({daily(field, "m")}) '
        f'WHERE "m" > {limit:g} GROUP BY "district"'
    )


def board() -> Board:
    """PM2.5, PM10 and NO2 over a year against the WHO 2021 guidelines, from the day tier."""
    b = Board(
        UID,
        "safecity / Air quality, a year",
        "The annual air-quality report's figures from the 1-day rollup tier: daily means "
        "against the WHO 2021 24-hour guidelines, annual means against the annual ones, "
        "days above, the worst days and data completeness.",
        ["air", "report"],
        time_from="now-1y",
        refresh="1h",
    )
    b.standard_variables()
    for field, name in LABEL.items():
        who = catalogue.WHO_AIR[field]
        b.timeseries(
            f"Daily mean {name} by district (WHO 24-hour guideline {who.value:g})",
            daily(field),
            alias="$tag_district",
            unit=UGM3,
            thresholds=_limit(who.value),
            w=8,
        )
    columns = ", ".join(f'{_mean(f)} AS "{LABEL[f]}"' for f in LABEL)
    b.table(
        "Annual mean by district (WHO annual: "
        + ", ".join(f"{LABEL[f]} {v:g}" for f, v in ANNUAL.items())
        + " µg/m³)",
        f'SELECT {columns} FROM {SOURCE} WHERE {WHERE} GROUP BY "district"',
        unit=UGM3,
        w=12,
    )
    b.stat(
        f"City annual mean PM2.5 (WHO annual {ANNUAL['pm25']:g})",
        f"SELECT {_mean('pm25')} FROM {SOURCE} WHERE $timeFilter AND {CITY}",
        unit=UGM3,
        thresholds=_limit(ANNUAL["pm25"]),
        w=6,
    )
    b.table(
        "Completeness: days with PM2.5 by district",
        f'SELECT count("pm25_count") AS "days with data", '
        f'count("pm25_count") * {DAY_S * 1000} / ($__to - $__from) AS "completeness" '
        f'FROM {SOURCE} WHERE {WHERE} GROUP BY "district"',
        w=6,
    )
    for field, name in LABEL.items():
        b.table(
            f"{name}: days above the 24-hour guideline by district",
            days_above(field),
            w=8,
        )
    b.table(
        "Worst days: the highest daily mean PM2.5 of the city",
        f'SELECT top("m", 10) AS "PM2.5" FROM (SELECT {_mean("pm25")} AS "m" FROM {SOURCE} '
        f"WHERE $timeFilter AND {CITY} GROUP BY time(1d) fill(none))",
        unit=UGM3,
        w=24,
    )
    return b
