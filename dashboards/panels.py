"""The building blocks of the dashboards: the datasource, tag filters, limits, the Board
(panels on a 24-column grid) and the InfluxQL snippets several boards share."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safecity import catalogue
from safecity.schema import DEVICE_STATUS, EVENTS, INGEST_STATS, SECURITY_EVENTS, source

DATASOURCE_UID = "safecity-influxdb"
DATASOURCE_NAME = "safecity InfluxDB"
DATASOURCE_NAME_PREFIX = "safecity "
"""Several cities: each city's datasource is named `safecity <city id>`."""
FOLDER_UID = "safecity"
FOLDER_TITLE = "safecity"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/safecity"
"""Where the dashboards JSON is mounted in the Grafana container (the file provider's path)."""
RULE_GROUP = "safecity"
RULE_INTERVAL = "1m"

DS: dict[str, str] = {"type": "influxdb", "uid": DATASOURCE_UID}
EXPR_UID = "__expr__"
# Grafana custom units ("suffix:"): independent of its built-in unit ids.
UGM3 = "suffix: µg/m³"
MGM3 = "suffix: mg/m³"
VEH_H = "suffix: veh/h"  # Grafana has no vehicles-per-hour unit

# Tag filters of every panel: Grafana renders a multi-value variable inside /^...$/ as
# an escaped alternation (a|b), so one regex form serves single, multi and All.
CITY = '"city" =~ /^$city$/'
WHERE = f'$timeFilter AND {CITY} AND "district" =~ /^$district$/'
KIND_MEASUREMENTS = "|".join(catalogue.KINDS)
SEVERE = "(\"severity\" = 'high' OR \"severity\" = 'critical')"

# WHO 2021 air-quality guideline and its averaging time, from the catalogue's one table.
WHO_LIMITS: tuple[tuple[str, float, str], ...] = tuple(
    (field, who.value, who.period) for field, who in catalogue.WHO_AIR.items()
)
WHO_LDEN = catalogue.WHO_NOISE_DAY_DB
# US EPA PM2.5 AQI breakpoints (2024 revision): the colour bands of the AQI panels.
EPA_PM25_BANDS = (9.1, 35.5, 55.5, 125.5, 225.5)
OFFLINE_ALERT_MINUTES = 10
INGEST_LAG_ALERT_S = 60

# Readers of a measurement with its own retention policy go through schema.source().
EVENTS_FROM = source(EVENTS)
SECURITY_FROM = source(SECURITY_EVENTS)

# --- panels ------------------------------------------------------------------------------


def target(
    query: str, ref: str = "A", *, fmt: str = "time_series", alias: str | None = None
) -> dict[str, Any]:
    """A raw InfluxQL target of the safecity datasource."""
    out: dict[str, Any] = {
        "refId": ref,
        "datasource": DS,
        "query": query,
        "rawQuery": True,
        "resultFormat": fmt,
    }
    if alias is not None:
        out["alias"] = alias
    return out


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


AQI_THRESHOLDS = _thresholds(
    (None, "green"),
    (EPA_PM25_BANDS[0], "yellow"),
    (EPA_PM25_BANDS[1], "orange"),
    (EPA_PM25_BANDS[2], "red"),
    (EPA_PM25_BANDS[3], "purple"),
    (EPA_PM25_BANDS[4], "dark-red"),
)


def _limit(value: float) -> dict[str, Any]:
    return _thresholds((None, "green"), (value, "red"))


class Board:
    """One dashboard under construction: panels laid out left to right on a 24-column grid."""

    def __init__(
        self,
        uid: str,
        title: str,
        description: str,
        tags: Sequence[str],
        *,
        time_from: str = "now-6h",
        refresh: str = "30s",
    ) -> None:
        self.uid = uid
        self.time_from = time_from
        self.refresh = refresh
        self.title = title
        self.description = description
        self.tags = ["safecity", *tags]
        self.panels: list[dict[str, Any]] = []
        self.variables: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def add(
        self,
        kind: str,
        title: str,
        targets: Sequence[dict[str, Any]],
        *,
        w: int = 12,
        h: int = 8,
        unit: str | None = None,
        thresholds: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        description: str = "",
        transformations: Sequence[dict[str, Any]] = (),
        custom: dict[str, Any] | None = None,
    ) -> None:
        """Append a panel; the grid position follows from the previous ones."""
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        defaults: dict[str, Any] = {}
        if unit is not None:
            defaults["unit"] = unit
        if thresholds is not None:
            defaults["thresholds"] = thresholds
        if kind == "timeseries":
            # Each series its own palette colour; thresholds are drawn as lines, never as
            # the series' colour (which would paint every district alike).
            defaults["color"] = {"mode": "palette-classic"}
            if thresholds is not None:
                custom = {**(custom or {}), "thresholdsStyle": {"mode": "line"}}
        elif thresholds is not None:
            defaults["color"] = {"mode": "thresholds"}
        if custom is not None:
            defaults["custom"] = custom
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"x": self._x, "y": self._y, "w": w, "h": h},
            "targets": list(targets),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = list(transformations)
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def stat(self, title: str, query: str, **kw: Any) -> None:
        """A single-value panel of the last value of one query."""
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
        }
        self.add(
            "stat",
            title,
            [target(query)],
            w=kw.pop("w", 6),
            h=kw.pop("h", 4),
            options=options,
            **kw,
        )

    def timeseries(self, title: str, *queries: str, alias: str | None = None, **kw: Any) -> None:
        """A time-series panel with one target per query (refIds A, B, ...)."""
        targets = [target(q, chr(ord("A") + i), alias=alias) for i, q in enumerate(queries)]
        self.add("timeseries", title, targets, **kw)

    def table(self, title: str, query: str, **kw: Any) -> None:
        """A table panel of one InfluxQL query in table format."""
        self.add("table", title, [target(query, fmt="table")], **kw)

    def variable(
        self, name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True
    ) -> None:
        """An InfluxQL query variable (refreshed when the dashboard loads)."""
        self.variables.append(
            {
                "name": name,
                "label": label,
                "type": "query",
                "datasource": DS,
                "query": query,
                "refresh": 1,
                "multi": multi,
                "includeAll": include_all,
                "current": {},
                "options": [],
                "sort": 1,
                "hide": 0,
            }
        )

    def standard_variables(self, *, multi_district: bool = True, kind: bool = False) -> None:
        """city (single), district (multi or single) and optionally kind."""
        self.variable(
            "city", "City", 'SHOW TAG VALUES WITH KEY = "city"', multi=False, include_all=False
        )
        self.variable(
            "district",
            "District",
            f'SHOW TAG VALUES WITH KEY = "district" WHERE {CITY}',
            multi=multi_district,
            include_all=multi_district,
        )
        if kind:
            # Kinds are measurements, not tags: the catalogue's allow-list filters them.
            self.variable(
                "kind",
                "Kind",
                f"SHOW MEASUREMENTS WITH MEASUREMENT =~ /^({KIND_MEASUREMENTS})$/ WHERE {CITY}",
            )

    def render(self) -> dict[str, Any]:
        """The dashboard JSON model (schemaVersion 39, Grafana 10.4+)."""
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "refresh": self.refresh,
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["safecity"],
                    "asDropdown": True,
                    "title": "safecity",
                    "includeVars": True,
                    "keepTime": True,
                }
            ],
            "panels": self.panels,
        }


def _seq_by_time(measurement: str, extra: str = "") -> str:
    return (
        f'SELECT count("seq") FROM "{measurement}" WHERE {WHERE}{extra} '
        "GROUP BY time($__interval) fill(0)"
    )


def _latest_per_device(measurement: str, field: str, where: str = WHERE) -> str:
    return (
        f'SELECT last("{field}") AS "{field}" FROM "{measurement}" WHERE {where} '
        'GROUP BY "device_id"'
    )


def _devices_online() -> str:
    inner = _latest_per_device(DEVICE_STATUS, "online")
    return f'SELECT count("online") FROM ({inner}) WHERE "online" = true'


def _devices_offline() -> str:
    inner = _latest_per_device(DEVICE_STATUS, "online")
    return f'SELECT count("online") FROM ({inner}) WHERE "online" = false'


def _mean_by_district(measurement: str, field: str, scale: str = "") -> str:
    return (
        f'SELECT mean("{field}"){scale} FROM "{measurement}" WHERE {WHERE} '
        'GROUP BY time($__interval), "district" fill(null)'
    )


def _stats(select: str, group: str = "time($__interval) fill(0)") -> str:
    return f'SELECT {select} FROM "{INGEST_STATS}" WHERE $timeFilter AND {CITY} GROUP BY {group}'
