"""One district in depth."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import (
    EVENTS_FROM,
    UGM3,
    WHERE,
    Board,
)


def board() -> Board:
    """One district in depth: every kind's readings, its devices and its events."""
    b = Board(
        "safecity-district",
        "safecity / District drill-down",
        "One district: air, traffic, noise, parking, crowds, its devices and events.",
        ["district"],
    )
    b.standard_variables(multi_district=False, kind=True)
    for field, title in (("pm25", "PM2.5"), ("pm10", "PM10"), ("no2", "NO2")):
        b.timeseries(
            f"{title} by device",
            f'SELECT mean("{field}") FROM "air_quality" WHERE {WHERE} '
            'GROUP BY time($__interval), "device_id" fill(null)',
            alias="$tag_device_id",
            unit=UGM3,
            w=8,
        )
    b.timeseries(
        "Traffic: intensity and speed",
        f'SELECT mean("intensity") FROM "traffic" WHERE {WHERE} GROUP BY time($__interval)',
        f'SELECT mean("avg_speed") FROM "traffic" WHERE {WHERE} GROUP BY time($__interval)',
        w=8,
    )
    b.timeseries(
        "Noise LAeq / LAmax",
        f'SELECT mean("laeq") AS "laeq", max("lamax") AS "lamax" FROM "noise" WHERE {WHERE} '
        "GROUP BY time($__interval)",
        unit="dB",
        w=8,
    )
    b.timeseries(
        "Parking occupancy and crowd",
        f'SELECT mean("occupancy") * 100 AS "parking %" FROM "parking" WHERE {WHERE} '
        "GROUP BY time($__interval)",
        f'SELECT mean("people_count") AS "people" FROM "crowd" WHERE {WHERE} '
        "GROUP BY time($__interval)",
        w=8,
    )
    b.table(
        "Devices of the selected kinds: last reading",
        f'SELECT last("seq") AS "seq" FROM /^$kind$/ WHERE {WHERE} GROUP BY "device_id"',
        w=12,
        h=10,
    )
    b.table(
        "Events in the district",
        f'SELECT "kind", "seq" FROM {EVENTS_FROM} WHERE {WHERE} '
        'GROUP BY "type", "severity", "device_id" ORDER BY time DESC LIMIT 50',
        w=12,
        h=10,
    )
    return b
