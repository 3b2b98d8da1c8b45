"""The annual air-quality report: a backfilled year, rolled up, against an independent
computation from the raw readings (daily means per UTC day, WHO 2021 guidelines)."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from control.stack import Influxd
from rollups.service import CityRollups
from rollups.settings import RollupSettings
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode_many
from safecity.readings import epoch_ms, format_epoch_ms, from_epoch_ms, reading_model
from safecity.registry import default_city
from safecity.schema import reading_point
from safecity.settings import InfluxSettings
from simulators.backfill import BackfillPlan, run_backfill
from simulators.generators import generate

CITY = default_city()
_AQ = [d for d in CITY.devices if d.kind == "air_quality"]
DEVICES = (_AQ[0], next(d for d in _AQ if d.district != _AQ[0].district))
DAY_MS = 86_400_000
WHO = {"pm25": (5.0, 15.0), "pm10": (15.0, 45.0), "no2": (10.0, 25.0)}


def _today_ms() -> int:
    return int(time.time() * 1000) // DAY_MS * DAY_MS


@pytest.fixture(scope="module")
def api_settings(influxd: Influxd, api_dir: Path) -> Iterator[ApiSettings]:
    """A database that keeps raw readings (a backfilled year) and rolls days and hours."""
    influx = InfluxSettings(
        url=influxd.url,
        database=f"api_report_{int(time.time())}",
        retention_duration="INF",
        rollup_tiers="1d:INF",
    )
    settings = ApiSettings(
        influx=influx,
        api_keys_file=api_dir / "apikeys.json",
        audit_log_file=api_dir / "audit" / "api-audit.jsonl",
        deadletter_dir=api_dir / "deadletter",
        ledger_file=api_dir / "ledger.jsonl",
        rate_limit_rps=10_000,
        rate_limit_burst=10_000,
    )
    plan = BackfillPlan(CITY, DEVICES, _today_ms() - 365 * DAY_MS, _today_ms(), 8 * 3600, seed=7)

    async def prepare() -> None:
        stats = await run_backfill(influx, plan, io.StringIO())
        assert stats.readings == plan.total == 2 * 365 * 3
        client = InfluxClient(influx)
        job = RollupSettings(influx=influx, rollup_settle=0)
        await CityRollups(job, CITY, client, ("air_quality",)).catch_up(int(time.time() * 1000))
        await client.close()

    asyncio.run(prepare())
    yield settings
    httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{influx.database}"'}, timeout=5)


def _raw_days(settings: ApiSettings, start_ms: int, end_ms: int) -> dict[Any, list[float]]:
    """(district or None, pollutant, day ms) -> the raw readings, straight from InfluxDB."""
    q = (
        'SELECT "pm25", "pm10", "no2", "district" FROM "air_quality" '  # noqa: S608
        f"WHERE time >= {start_ms}ms AND time < {end_ms}ms"
    )
    body = httpx.post(
        f"{settings.influx.url}/query",
        params={"epoch": "ms"},
        data={"q": q, "db": settings.influx.database},
        timeout=30,
    ).json()
    series = body["results"][0]["series"][0]
    days: dict[Any, list[float]] = defaultdict(list)
    for row in series["values"]:
        item = dict(zip(series["columns"], row, strict=True))
        day = item["time"] // DAY_MS * DAY_MS
        for pollutant in WHO:
            if item[pollutant] is not None:
                for area in (None, item["district"]):
                    days[(area, pollutant, day)].append(float(item[pollutant]))
    return days


def _expected(days: dict[Any, list[float]], area: str | None, pollutant: str) -> dict[str, Any]:
    values = {d: v for (a, p, d), v in days.items() if a == area and p == pollutant}
    every = [x for v in values.values() for x in v]
    daily = {d: sum(v) / len(v) for d, v in values.items()}
    above = sorted(d for d, m in daily.items() if m > WHO[pollutant][1])
    runs: list[list[int]] = []
    for d in above:
        if runs and runs[-1][-1] == d - DAY_MS:
            runs[-1].append(d)
        else:
            runs.append([d])
    longest = max(runs, key=lambda r: (len(r), max(daily[d] for d in r)), default=None)
    return {
        "annual_mean": sum(every) / len(every),
        "days_above": len(above),
        "days_with_data": len(daily),
        "readings": len(every),
        "worst": longest,
        "worst_peak": max(daily[d] for d in longest) if longest else None,
    }


def _date(ms: int) -> str:
    return from_epoch_ms(ms).date().isoformat()


def test_the_annual_report_matches_the_raw_readings(
    client: TestClient, api_settings: ApiSettings
) -> None:
    year = datetime.now(UTC).year
    r = client.get("/v1/cities/tashkent/reports/air-quality", params={"year": year})
    assert r.status_code == 200, r.text
    report = r.json()
    start = epoch_ms(datetime(year, 1, 1, tzinfo=UTC))
    assert report["from"].startswith(f"{year}-01-01T00:00:00")
    assert "1d" in [s["tier"] for s in report["served_by"]]
    period = (_today_ms() - start) // DAY_MS
    days = _raw_days(api_settings, start, _today_ms())
    areas = {a["district"]: a for a in report["areas"]}
    assert set(areas) == {None, *(d.id for d in CITY.districts)}
    for area in (None, DEVICES[0].district, DEVICES[1].district):
        for pollutant in WHO:
            got = areas[area]["pollutants"][pollutant]
            want = _expected(days, area, pollutant)
            assert got["annual_mean"] == pytest.approx(want["annual_mean"], abs=6e-4)
            assert got["exceeds_annual"] == (want["annual_mean"] > WHO[pollutant][0])
            assert got["days_above"] == want["days_above"], (area, pollutant)
            assert got["days_with_data"] == want["days_with_data"] == period
            assert got["days_in_period"] == period and got["completeness"] == 1.0
            assert got["readings"] == want["readings"]
            if want["worst"]:
                worst = got["worst_episodes"][0]
                assert (worst["start"], worst["end"]) == tuple(
                    _date(d) for d in (want["worst"][0], want["worst"][-1])
                )
                assert worst["peak"] == pytest.approx(want["worst_peak"], abs=6e-3)
    silent = next(d.id for d in CITY.districts if d.id not in {x.district for x in DEVICES})
    assert areas[silent]["pollutants"]["pm25"]["completeness"] == 0.0
    assert areas[silent]["pollutants"]["pm25"]["valid"] is False


def test_the_annual_report_as_csv(client: TestClient) -> None:
    year = datetime.now(UTC).year
    params: dict[str, Any] = {"year": year, "format": "csv"}
    r = client.get("/v1/cities/tashkent/reports/air-quality", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 3 * (1 + len(CITY.districts))
    as_json = client.get("/v1/cities/tashkent/reports/air-quality", params={"year": year}).json()
    city_pm25 = as_json["areas"][0]["pollutants"]["pm25"]
    first = rows[0]
    assert (first["district"], first["pollutant"]) == ("", "pm25")
    assert float(first["annual_mean"]) == city_pm25["annual_mean"]
    assert int(first["days_above"]) == city_pm25["days_above"]


def test_a_year_outside_the_range_is_422(client: TestClient) -> None:
    r = client.get("/v1/cities/tashkent/reports/air-quality", params={"year": 1900})
    assert r.status_code == 422
    assert "year" in r.text


def _overviews(client: TestClient, window: dict[str, str]) -> list[dict[str, Any]]:
    """The city's and the two measured districts' overviews of a window."""
    paths = ["/v1/cities/tashkent/overview"] + [
        f"/v1/cities/tashkent/districts/{d.district}/overview" for d in DEVICES
    ]
    out = []
    for path in paths:
        r = client.get(path, params=window)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


@pytest.mark.parametrize("edge_h", [0, 5], ids=["whole-days", "ragged-edges"])
def test_the_overview_from_the_day_tier_equals_the_raw_one(
    client: TestClient, api_settings: ApiSettings, keys: dict[str, str], edge_h: int
) -> None:
    start, end = _today_ms() - 40 * DAY_MS, _today_ms() - 12 * DAY_MS
    window = {
        "from": format_epoch_ms(start - edge_h * 3_600_000),
        "to": format_epoch_ms(end + edge_h * 3_600_000),
    }
    tiered = _overviews(client, window)
    raw_influx = api_settings.influx.model_copy(update={"rollup_tiers": ""})
    raw_settings = api_settings.model_copy(update={"influx": raw_influx})
    headers = {"X-API-Key": keys["read"]}
    with TestClient(create_app(raw_settings, CITY), headers=headers) as raw_client:
        raw = _overviews(raw_client, window)
    day_piece = {"tier": "1d", "from": format_epoch_ms(start), "to": format_epoch_ms(end)}
    for got, want in zip(tiered, raw, strict=True):
        assert got["window"] == want["window"]
        assert day_piece in got["served_by"]["air_quality"]
        assert {p["tier"] for p in got["served_by"]["air_quality"]} == (
            {"1d"} if edge_h == 0 else {"1d", "raw"}
        )
        assert [p["tier"] for p in want["served_by"]["air_quality"]] == ["raw"]
        quality, expected = got["air_quality"], want["air_quality"]
        assert quality["pollutants"].keys() == expected["pollutants"].keys()
        for name, figure in quality["pollutants"].items():
            other = expected["pollutants"][name]
            assert figure["devices"] == other["devices"] > 0, name
            # Both are sum / count; only the order of the additions differs, and the
            # figures are rounded to 4 decimals.
            assert figure["value"] == pytest.approx(other["value"], rel=1e-9, abs=1.01e-4)
        assert quality["aqi"]["value"] == pytest.approx(expected["aqi"]["value"], abs=1.01e-4)
        assert quality["who_exceedances"] == expected["who_exceedances"]


def test_a_kept_report_is_computed_again_when_late_data_is_rolled_again(
    client: TestClient, api_settings: ApiSettings
) -> None:
    """Last in this module: it adds a reading the raw comparison above does not expect."""
    params = {"year": datetime.now(UTC).year}
    path = "/v1/cities/tashkent/reports/air-quality"
    first = client.get(path, params=params).json()
    assert client.get(path, params=params).json() == first
    # A late reading of the first sensor, three days ago, between two of its readings.
    device = DEVICES[0]
    ts = _today_ms() - 3 * DAY_MS + 5 * 3_600_000
    values = {**generate(device, random.Random(1), from_epoch_ms(ts)), "pm25": 900.0}
    reading = reading_model(device.kind).model_validate({"ts": ts, "seq": 10**6, "values": values})
    influx = api_settings.influx

    async def write_late() -> None:
        raw = InfluxClient(influx)
        await raw.write(encode_many([reading_point(CITY.id, device, reading)]))
        await raw.close()

    asyncio.run(write_late())
    # Raw has it, the day tier not yet: the kept report stands (nothing announced a change).
    assert client.get(path, params=params).json() == first

    async def recheck() -> int:
        raw = InfluxClient(influx)
        job = RollupSettings(influx=influx, rollup_settle=0)
        rerolled = await CityRollups(job, CITY, raw, ("air_quality",)).recheck(
            int(time.time() * 1000)
        )
        await raw.close()
        return rerolled

    assert asyncio.run(recheck()) >= 1
    # The job rolled that day again and said so: the report is computed again (the API
    # re-reads the tiers' watermarks every few seconds).
    before = first["areas"][0]["pollutants"]["pm25"]
    deadline = time.monotonic() + 15
    now = first
    while time.monotonic() < deadline and now == first:
        time.sleep(0.5)
        now = client.get(path, params=params).json()
    after = now["areas"][0]["pollutants"]["pm25"]
    assert after["readings"] == before["readings"] + 1
    assert after["annual_mean"] > before["annual_mean"]
