"""The year board's queries against a backfilled, rolled-up stretch of the simulated city:
each runs and returns data, and its figures equal ones computed from the raw readings."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest

from control.stack import Influxd
from dashboards import build
from dashboards.boards import airyear
from rollups.service import CityRollups
from rollups.settings import RollupSettings
from safecity import catalogue
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.settings import InfluxSettings
from simulators.backfill import BackfillPlan, run_backfill

CITY = default_city()
_AQ = [d for d in CITY.devices if d.kind == "air_quality"]
DEVICES = (_AQ[0], next(d for d in _AQ if d.district != _AQ[0].district))
DAY_MS = 86_400_000
DAYS = 40


def _fill(influxd: Influxd, database: str) -> tuple[int, int]:
    """Backfill DAYS days of two devices (hourly) and roll them into the day tier."""
    end = int(time.time() * 1000) // DAY_MS * DAY_MS
    start = end - DAYS * DAY_MS
    influx = InfluxSettings(
        url=influxd.url, database=database, retention_duration="INF", rollup_tiers="1d:INF"
    )

    async def prepare() -> None:
        await run_backfill(influx, BackfillPlan(CITY, DEVICES, start, end, 3600, 3), io.StringIO())
        client = InfluxClient(influx)
        job = RollupSettings(influx=influx, rollup_settle=0)
        await CityRollups(job, CITY, client, ("air_quality",)).catch_up(int(time.time() * 1000))
        await client.close()

    asyncio.run(prepare())
    return start, end


def _query(influxd: Influxd, database: str, q: str) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{influxd.url}/query", data={"q": q, "db": database}, params={"epoch": "ms"}, timeout=30
    )
    body = r.json()
    assert r.status_code == 200 and "error" not in body["results"][0], (q, body)
    series: list[dict[str, Any]] = body["results"][0].get("series", [])
    return series


def _render(text: str, span: tuple[int, int]) -> str:
    """Grafana's substitution for a range of whole days, All districts."""
    districts = "(" + "|".join(d.id for d in CITY.districts) + ")"
    fixed = {
        "timeFilter": f"time >= {span[0]}ms AND time < {span[1]}ms",
        "__from": str(span[0]),
        "__to": str(span[1]),
        "city": CITY.id,
        "district": districts,
    }
    return re.sub(r"\$(\w+)", lambda m: fixed[m.group(1)], text)


def _rows(series: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """district (or '' untagged) -> the first row as a dict."""
    out = {}
    for s in series:
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        out[s.get("tags", {}).get("district", "")] = row
    return out


def _raw_daily(influxd: Influxd, database: str) -> dict[tuple[str, str], dict[int, list[float]]]:
    """(district, pollutant) -> UTC day -> the raw readings."""
    (series,) = _query(
        influxd, database, 'SELECT "pm25", "pm10", "no2", "district" FROM "air_quality"'
    )
    out: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for values in series["values"]:
        row = dict(zip(series["columns"], values, strict=True))
        for field in airyear.LABEL:
            out[(row["district"], field)][row["time"] // DAY_MS * DAY_MS].append(row[field])
    return out


def test_every_year_board_query_runs_and_matches_the_raw_readings(
    influxd: Influxd, influx_db: str
) -> None:
    span = _fill(influxd, influx_db)
    board = json.loads((build.OUT / "dashboards" / "air-quality-year.json").read_text())
    assert board["time"]["from"] == "now-1y"
    for var in board["templating"]["list"]:
        assert _query(influxd, influx_db, _render(var["query"], span)), var["name"]
    panels = {p["title"]: p for p in board["panels"]}
    for title, panel in panels.items():
        for t in panel["targets"]:
            assert airyear.SOURCE in t["query"], title
            series = _query(influxd, influx_db, _render(t["query"], span))
            assert series, f"{title}: no data"
    raw = _raw_daily(influxd, influx_db)
    districts = {d.district for d in DEVICES}

    def panel_rows(prefix: str) -> dict[str, dict[str, Any]]:
        (panel,) = [p for t, p in panels.items() if t.startswith(prefix)]
        return _rows(_query(influxd, influx_db, _render(panel["targets"][0]["query"], span)))

    means = panel_rows("Annual mean by district")
    assert set(means) == districts
    for field, label in airyear.LABEL.items():
        above = panel_rows(f"{label}: days above")
        limit = catalogue.WHO_AIR[field].value
        for district in districts:
            days = raw[(district, field)]
            every = [x for v in days.values() for x in v]
            assert means[district][label] == pytest.approx(sum(every) / len(every), rel=1e-9)
            want = sum(1 for v in days.values() if sum(v) / len(v) > limit)
            assert above.get(district, {}).get("days above", 0) == want, (field, district)
    complete = panel_rows("Completeness")
    for district in districts:
        assert complete[district]["days with data"] == DAYS
        assert complete[district]["completeness"] == pytest.approx(1.0)
    worst = _query(
        influxd,
        influx_db,
        _render(
            panels[next(t for t in panels if t.startswith("Worst days"))]["targets"][0]["query"],
            span,
        ),
    )
    city_daily: dict[int, list[float]] = defaultdict(list)
    for district in districts:
        for day, values in raw[(district, "pm25")].items():
            city_daily[day].extend(values)
    top = sorted((sum(v) / len(v) for v in city_daily.values()), reverse=True)[:10]
    got = sorted((row[1] for row in worst[0]["values"]), reverse=True)
    assert got == pytest.approx(top, rel=1e-9)
