"""Safe-city events and the incident lifecycle."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import (
    EVENTS_FROM,
    SEVERE,
    WHERE,
    Board,
    _thresholds,
    target,
)
from safecity.schema import ALERTS, INCIDENT_TRANSITIONS, source


def board() -> Board:
    """Safe-city events: CCTV, panic buttons, gunshots, ANPR, accidents, hazards."""
    b = Board(
        "safecity-incidents",
        "safecity / Safe-city incidents",
        "Events by type and severity, the latest incidents, gunshot locations; the incident "
        "lifecycle: open incidents by severity, alerts, time to acknowledge and to resolve.",
        ["incidents"],
    )
    b.standard_variables()
    b.timeseries(
        "Events by type",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} '
        'GROUP BY time($__interval), "type" fill(0)',
        alias="$tag_type",
        custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
    )
    b.timeseries(
        "Events by severity",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} '
        'GROUP BY time($__interval), "severity" fill(0)',
        alias="$tag_severity",
        custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
    )
    b.stat(
        "Critical events",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} AND "severity" = \'critical\'',
        thresholds=_thresholds((None, "green"), (1, "red")),
    )
    b.stat(
        "Panic buttons",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} AND "type" = \'panic\'',
        thresholds=_thresholds((None, "green"), (1, "red")),
    )
    b.stat(
        "Gunshots",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} AND "type" = \'gunshot\'',
        thresholds=_thresholds((None, "green"), (1, "red")),
    )
    b.stat(
        "High/critical by CCTV",
        f'SELECT count("seq") FROM {EVENTS_FROM} WHERE {WHERE} AND "kind" = \'cctv\' AND {SEVERE}',
        thresholds=_thresholds((None, "green"), (1, "orange")),
    )
    b.table(
        "Latest high/critical incidents",
        f'SELECT "kind", "seq", "zone", "button", "rounds", "confidence", "vehicles" '
        f"FROM {EVENTS_FROM} WHERE {WHERE} AND {SEVERE} "
        'GROUP BY "type", "severity", "district", "device_id" ORDER BY time DESC LIMIT 100',
        w=14,
        h=10,
    )
    b.add(
        "geomap",
        "Gunshot locations",
        [
            target(
                f'SELECT "lat", "lon", "rounds", "accuracy_m" FROM {EVENTS_FROM} WHERE {WHERE} '
                "AND \"type\" = 'gunshot'",
                fmt="table",
            )
        ],
        w=10,
        h=10,
        options={
            "view": {"id": "fit"},
            "basemap": {"type": "default", "name": "Basemap"},
            "layers": [
                {
                    "type": "markers",
                    "name": "Gunshots",
                    "tooltip": True,
                    "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                    "config": {"style": {"size": {"fixed": 10}, "color": {"fixed": "red"}}},
                }
            ],
        },
        description="Acoustic-array fixes (lat/lon reported with each gunshot event).",
    )
    _incident_lifecycle(b)
    return b


# Incidents (safecity.incidents) live in their own retention policy; `source` reads it
# (and the default policy, for points written before it existed).
TRANSITIONS_FROM = source(INCIDENT_TRANSITIONS)
ALERTS_FROM = source(ALERTS)
# Incidents opened in the dashboard's range ($__from: Grafana's range start, epoch ms).
OPENED_IN_RANGE = f'{WHERE} AND "opened_at_ms" >= $__from'


def _response_times(state: str) -> str:
    """Per type and district: mean, median, max of `elapsed_s` on the first `state` step."""
    return (
        'SELECT mean("elapsed_s") AS "mean_s", median("elapsed_s") AS "median_s", '
        'max("elapsed_s") AS "max_s", count("elapsed_s") AS "incidents" '
        f"FROM {TRANSITIONS_FROM} WHERE {OPENED_IN_RANGE} AND \"state\" = '{state}' "
        'GROUP BY "rule_id", "district"'
    )


def _incident_lifecycle(b: Board) -> None:
    """Incidents the alerts service opened: open by severity, response times, alerts."""

    def count(state: str, sign: str = "") -> str:
        return (
            f'SELECT count("seq"){sign} AS "n" FROM {TRANSITIONS_FROM} '
            f'WHERE {OPENED_IN_RANGE} AND "state" = \'{state}\' GROUP BY "severity"'
        )

    # Open = opened - resolved (each incident has one `open` and at most one `resolved`).
    b.add(
        "bargauge",
        "Open incidents by severity",
        [
            target(
                f'SELECT sum("n") FROM ({count("open")}), ({count("resolved", " * -1")}) '
                'GROUP BY "severity"',
                alias="$tag_severity",
            )
        ],
        w=8,
        h=8,
        thresholds=_thresholds((None, "green"), (1, "red")),
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        description="Incidents opened in the range and not yet resolved (incident_transitions).",
    )
    b.timeseries(
        "Alerts by severity",
        f'SELECT count("alert_id") FROM {ALERTS_FROM} WHERE {WHERE} '
        'GROUP BY time($__interval), "severity" fill(0)',
        alias="$tag_severity",
        w=16,
        h=8,
        custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
    )
    b.table(
        "Time to acknowledge by type and district",
        _response_times("acknowledged"),
        w=12,
        h=9,
        unit="s",
        description="Seconds from opening to the acknowledgement, incidents opened in the range.",
    )
    b.table(
        "Time to resolve by type and district",
        _response_times("resolved"),
        w=12,
        h=9,
        unit="s",
        description="Seconds from opening to resolution (operators or a cleared condition).",
    )
    b.timeseries(
        "Time to acknowledge (mean) by type",
        f'SELECT mean("elapsed_s") FROM {TRANSITIONS_FROM} WHERE {WHERE} '
        'AND "state" = \'acknowledged\' GROUP BY time($__interval), "rule_id" fill(none)',
        alias="$tag_rule_id",
        unit="s",
        w=24,
        h=8,
    )
