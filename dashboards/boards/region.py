"""The region: every served city side by side (air, traffic, noise vs WHO, devices, incidents).

Each city's figures come from its own database: one target per city and panel, each
with that city's datasource (one datasource for a single city; `safecity <city>` per
city when several are served: the panels are then Grafana "Mixed" panels). The `city`
variable picks which cities are compared.
"""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dashboards.boards.incidents import TRANSITIONS_FROM
from dashboards.panels import (
    CITY,
    DS,
    UGM3,
    WHO_LDEN,
    Board,
    _limit,
    _thresholds,
    target,
)
from safecity.registry import City
from safecity.schema import DEVICE_STATUS

MIXED: dict[str, str] = {"type": "datasource", "uid": "-- Mixed --"}


def _where(city: City) -> str:
    # The variable selects the compared cities; the literal keeps each target to its own.
    return (
        f'$timeFilter AND "city" = \'{city.id}\' AND "city" =~ /^$city$/ '
        'AND "district" =~ /^$district$/'
    )


def _panel(
    b: Board,
    title: str,
    cities: Sequence[City],
    datasources: Callable[[City], dict[str, str]],
    query: Callable[[City], str],
    **kw: Any,
) -> None:
    targets = []
    for i, city in enumerate(cities):
        t = target(query(city), chr(ord("A") + i), alias=city.name)
        t["datasource"] = datasources(city)
        targets.append(t)
    b.add("timeseries", title, targets, w=kw.pop("w", 12), h=kw.pop("h", 8), **kw)
    if len({str(t["datasource"]) for t in targets}) > 1:
        b.panels[-1]["datasource"] = MIXED


def board(cities: Sequence[City], datasources: Callable[[City], dict[str, str]]) -> Board:
    """The cities side by side; `datasources` names each city's datasource."""
    b = Board(
        "safecity-region",
        "safecity / Region",
        "The served cities side by side, each from its own database: PM2.5, congestion, "
        "noise against the WHO guideline, devices reporting, incidents and time to "
        "acknowledge.",
        ["region"],
    )
    if len({str(datasources(c)) for c in cities}) == 1:
        # One database: the cities and districts are its tag values.
        b.variable("city", "Cities", 'SHOW TAG VALUES WITH KEY = "city"')
        b.variable("district", "District", 'SHOW TAG VALUES WITH KEY = "district" WHERE ' + CITY)
    else:
        # A database per city: no one datasource knows them all; the registries do.
        b.variables.append(_custom("city", "Cities", [c.id for c in cities]))
        districts = sorted({d.id for c in cities for d in c.districts})
        b.variables.append(_custom("district", "District", districts))

    def mean(measurement: str, field: str, scale: str = "") -> Callable[[City], str]:
        return lambda c: (
            f'SELECT mean("{field}"){scale} FROM "{measurement}" WHERE {_where(c)} '
            "GROUP BY time($__interval) fill(null)"
        )

    _panel(b, "PM2.5 mean by city", cities, datasources, mean("air_quality", "pm25"), unit=UGM3)
    _panel(
        b,
        "Congestion (mean lane occupancy) by city",
        cities,
        datasources,
        mean("traffic", "occupancy", " * 100"),
        unit="percent",
        thresholds=_limit(35),
    )
    _panel(
        b,
        "Noise LAeq mean by city (WHO Lden 53)",
        cities,
        datasources,
        mean("noise", "laeq"),
        unit="dB",
        thresholds=_limit(WHO_LDEN),
    )
    _panel(
        b,
        "Devices online by city",
        cities,
        datasources,
        lambda c: (
            f'SELECT count("online") FROM (SELECT last("online") AS "online" FROM '
            f'"{DEVICE_STATUS}" WHERE {_where(c)} GROUP BY time($__interval), "device_id") '
            'WHERE $timeFilter AND "online" = true GROUP BY time($__interval) fill(0)'
        ),
        thresholds=_thresholds((None, "blue")),
    )
    _panel(
        b,
        "Incidents opened by city",
        cities,
        datasources,
        lambda c: (
            f'SELECT count("seq") FROM {TRANSITIONS_FROM} WHERE {_where(c)} '
            "AND \"state\" = 'open' GROUP BY time($__interval) fill(0)"
        ),
        custom={"drawStyle": "bars"},
    )
    _panel(
        b,
        "Time to acknowledge (mean) by city",
        cities,
        datasources,
        lambda c: (
            f'SELECT mean("elapsed_s") FROM {TRANSITIONS_FROM} WHERE {_where(c)} '
            "AND \"state\" = 'acknowledged' GROUP BY time($__interval) fill(none)"
        ),
        unit="s",
    )
    return b


def _custom(name: str, label: str, values: Sequence[str]) -> dict[str, Any]:
    """A multi-value custom variable with All (`.*`): the values are the registries'."""
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "options": [{"text": v, "value": v, "selected": False} for v in values],
        "current": {"text": ["All"], "value": ["$__all"]},
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "hide": 0,
    }


def single(cities: Sequence[City]) -> Board:
    """The region board of a single-database deployment: every target on the one datasource."""
    return board(cities, lambda _city: DS)
