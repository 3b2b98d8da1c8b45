"""Traffic corridors, crowds and traffic events."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import (
    EVENTS_FROM,
    VEH_H,
    WHERE,
    Board,
    _limit,
    _mean_by_district,
)


def board() -> Board:
    """Traffic corridors, crowds and traffic events."""
    b = Board(
        "safecity-traffic",
        "safecity / Traffic and transport corridors",
        "Flow, speed and occupancy per district; crowds; traffic incidents.",
        ["traffic"],
    )
    b.standard_variables()
    b.timeseries(
        "Intensity by district",
        _mean_by_district("traffic", "intensity"),
        alias="$tag_district",
        unit=VEH_H,
        w=8,
    )
    b.timeseries(
        "Mean speed by district",
        _mean_by_district("traffic", "avg_speed"),
        alias="$tag_district",
        unit="velocitykmh",
        w=8,
    )
    b.timeseries(
        "Occupancy by district",
        _mean_by_district("traffic", "occupancy", " * 100"),
        alias="$tag_district",
        unit="percent",
        thresholds=_limit(35),
        custom={"thresholdsStyle": {"mode": "line"}},
        w=8,
    )
    b.table(
        "Slowest corridors (mean speed per sensor)",
        f'SELECT mean("avg_speed") AS "speed", mean("intensity") AS "intensity", '
        f'mean("occupancy") AS "occupancy" FROM "traffic" WHERE {WHERE} '
        'GROUP BY "district", "device_id"',
        w=12,
        h=10,
    )
    b.timeseries(
        "Crowd people count by district",
        _mean_by_district("crowd", "people_count"),
        alias="$tag_district",
        w=12,
        h=10,
    )
    b.table(
        "Traffic events",
        f'SELECT "seq", "segment", "speed", "queue_m", "vehicles", "lanes_blocked" '
        f'FROM {EVENTS_FROM} WHERE {WHERE} AND "type" =~ '
        "/^(congestion|road_closed|stopped_vehicle|road_accident)$/ "
        'GROUP BY "type", "severity", "district" ORDER BY time DESC LIMIT 50',
        w=24,
    )
    return b
