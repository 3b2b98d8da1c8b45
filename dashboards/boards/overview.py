"""The city overview: district map and the city's KPIs."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence

from dashboards.panels import (
    AQI_THRESHOLDS,
    CITY,
    EVENTS_FROM,
    SEVERE,
    UGM3,
    VEH_H,
    WHERE,
    WHO_LDEN,
    Board,
    _devices_online,
    _latest_per_device,
    _limit,
    _mean_by_district,
    _thresholds,
    target,
)
from safecity.registry import City


def _district_map(board: Board, cities: Sequence[City]) -> None:
    """Geomap of districts at their registry centroids, coloured by PM2.5 (AQI bands).

    The centroids live in the registry, not in InfluxDB, so each district is one target
    that adds its constant coordinates to the district's PM2.5 mean (InfluxQL allows
    arithmetic with literals on aggregates); a merge transformation makes one table.
    """
    targets = []
    city = cities[0]
    districts = [d for c in cities for d in c.districts]
    for i, district in enumerate(districts):
        lon, lat = district.centroid
        pm = 'mean("pm25")'
        query = (
            f'SELECT {pm} AS "pm25", {pm} * 0 + {lat} AS "latitude", {pm} * 0 + {lon} AS '
            f'"longitude" FROM "air_quality" WHERE $timeFilter AND {CITY} AND '
            f'"district" = \'{district.id}\' GROUP BY "district"'
        )
        targets.append(target(query, f"D{i:02d}", fmt="table"))
    lon, lat = city.record.centroid
    options = {
        "view": {"id": "coords", "lat": lat, "lon": lon, "zoom": 11},
        "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
        "basemap": {"type": "default", "name": "Basemap"},
        "layers": [
            {
                "type": "markers",
                "name": "Districts",
                "tooltip": True,
                "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
                "config": {
                    "showLegend": True,
                    "style": {
                        "size": {"fixed": 18},
                        "color": {"field": "pm25"},
                        "opacity": 0.7,
                        "text": {"field": "district", "mode": "field"},
                        "textConfig": {"fontSize": 12, "offsetY": -20},
                    },
                },
            }
        ],
    }
    board.add(
        "geomap",
        f"{city.name} districts: PM2.5 (EPA AQI bands)"
        if len(cities) == 1
        else "Districts: PM2.5 (EPA AQI bands)",
        targets,
        w=12,
        h=12,
        unit=UGM3,
        thresholds=AQI_THRESHOLDS,
        options=options,
        transformations=[{"id": "merge", "options": {}}],
        description="District centroids from the city registry; colour = PM2.5 mean over the "
        "time range, banded by the US EPA AQI breakpoints.",
    )


def board(city: City, *more: City) -> Board:
    """City overview: district map (of every city given) and the city's KPIs."""
    b = Board(
        "safecity-city-overview",
        "safecity / City overview",
        "The whole city at a glance: air, traffic, noise, parking, lights, devices, incidents.",
        ["overview"],
    )
    b.standard_variables()
    _district_map(b, [city, *more])
    b.stat(
        "PM2.5 mean (AQI driver)",
        f'SELECT mean("pm25") FROM "air_quality" WHERE {WHERE}',
        unit=UGM3,
        thresholds=AQI_THRESHOLDS,
    )
    b.stat(
        "Traffic congestion (mean lane occupancy)",
        f'SELECT mean("occupancy") * 100 FROM "traffic" WHERE {WHERE}',
        unit="percent",
        thresholds=_thresholds((None, "green"), (20, "yellow"), (35, "red")),
    )
    b.stat(
        "Traffic mean speed",
        f'SELECT mean("avg_speed") FROM "traffic" WHERE {WHERE}',
        unit="velocitykmh",
        thresholds=_thresholds((None, "red"), (15, "yellow"), (30, "green")),
    )
    b.stat(
        "Noise LAeq mean (WHO Lden 53)",
        f'SELECT mean("laeq") FROM "noise" WHERE {WHERE}',
        unit="dB",
        thresholds=_limit(WHO_LDEN),
    )
    b.stat(
        "Parking occupancy",
        f'SELECT mean("occupancy") * 100 FROM "parking" WHERE {WHERE}',
        unit="percent",
        thresholds=_thresholds((None, "green"), (85, "yellow"), (95, "red")),
    )
    b.stat(
        "Streetlights reporting a fault",
        f'SELECT count("status") FROM ({_latest_per_device("streetlight", "status")}) '
        "WHERE \"status\" <> 'ok'",
        thresholds=_thresholds((None, "green"), (1, "orange")),
    )
    b.stat(
        "Devices online",
        _devices_online(),
        thresholds=_thresholds((None, "blue")),
    )
    b.stat(
        "Incidents (high/critical events)",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} AND {SEVERE}',
        thresholds=_thresholds((None, "green"), (1, "red")),
    )
    b.timeseries(
        "PM2.5 by district",
        _mean_by_district("air_quality", "pm25"),
        alias="$tag_district",
        unit=UGM3,
        thresholds=_limit(15),
        custom={"thresholdsStyle": {"mode": "line"}},
    )
    b.timeseries(
        "Traffic intensity by district",
        _mean_by_district("traffic", "intensity"),
        alias="$tag_district",
        unit=VEH_H,
    )
    return b
