"""The annual air-quality report page of the console, in Debian's Chromium, against a real
`safecity api` over a backfilled, rolled-up stretch of this year (three devices in two
districts): the page shows what the report endpoint says, for the city and each district,
and its CSV link saves the endpoint's CSV."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page

from control.stack import LocalStack
from rollups.service import CityRollups
from rollups.settings import RollupSettings
from safecity.influx import InfluxClient
from safecity.readings import epoch_ms
from safecity.registry import default_city
from safecity.settings import InfluxSettings
from simulators.backfill import BackfillPlan, run_backfill

CITY = default_city()
_AQ = [d for d in CITY.devices if d.kind == "air_quality"]
DEVICES = (_AQ[0], _AQ[1], next(d for d in _AQ if d.district != _AQ[0].district))
DAY_MS = 86_400_000
NONE = "\u2013"  # what the page shows for no figure (an en dash)
TIERS = {"SAFECITY_INFLUX__RETENTION_DURATION": "INF", "SAFECITY_INFLUX__ROLLUP_TIERS": "1d:INF"}


@pytest.fixture
def backfilled(stack: LocalStack, influx_db: str) -> str:
    """The database, after this year up to today (one reading per device every 8 hours)
    was backfilled and rolled into days (before the browser's event loop starts)."""
    _backfill(stack.influx_url, influx_db)
    return influx_db


def _backfill(url: str, database: str) -> None:
    """Backfill and roll up."""
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    start = epoch_ms(datetime(datetime.now(UTC).year, 1, 1, tzinfo=UTC))
    start = min(start, today - 30 * DAY_MS)  # early January: a month of last year too
    influx = InfluxSettings(
        url=url, database=database, retention_duration="INF", rollup_tiers="1d:INF"
    )

    async def run() -> None:
        plan = BackfillPlan(CITY, DEVICES, start, today, 8 * 3600, seed=11)
        await run_backfill(influx, plan, io.StringIO())
        client = InfluxClient(influx)
        job = RollupSettings(influx=influx, rollup_settle=0)
        await CityRollups(job, CITY, client, ("air_quality",)).catch_up(int(time.time() * 1000))
        await client.close()

    asyncio.run(run())


def _num(value: float, digits: int = 1) -> str:
    """A number as the page shows it (en-US grouping)."""
    return f"{value:,.{digits}f}"


def _cells(page: Page, district: str) -> list[str]:
    row = page.locator(f'#report-body tr[data-district="{district}"] > *')
    return [t.strip() for t in row.all_inner_texts()]


def _check_row(cells: list[str], area: dict[str, Any]) -> None:
    assert cells[0] == area["name"]
    for i, (name, f) in enumerate(area["pollutants"].items()):
        mean, above, complete = cells[1 + 3 * i : 4 + 3 * i]
        assert mean == (_num(f["annual_mean"]) if f["annual_mean"] is not None else NONE), name
        assert above == str(f["days_above"]), name
        assert complete == f"{_num(f['completeness'] * 100, 0)} %", name


def test_the_report_page_shows_the_year_and_saves_its_csv(
    backfilled: str,
    start_api: Callable[..., Any],
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    api = start_api(backfilled, **TIERS)
    year = str(datetime.now(UTC).year)
    endpoint = f"{api.url}/v1/cities/{CITY.id}/reports/air-quality"
    report = httpx.get(endpoint, params={"year": year}, headers=api.headers, timeout=60).json()
    csv = httpx.get(endpoint, params={"year": year, "format": "csv"}, headers=api.headers)
    assert csv.status_code == 200
    assert "1d" in [s["tier"] for s in report["served_by"]]

    page = browser.pages[0] if browser.pages else browser.new_page()
    page.goto(f"{api.url}/?key={api.api_key}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    page.click("#show-report")
    page.locator("#report").wait_for(state="visible")
    assert page.locator("#app").is_hidden()
    page.wait_for_function(f"() => document.body.dataset.report === '{year}'")
    assert page.locator("#report-year").input_value() == year
    rows = page.locator("#report-body tr")
    assert rows.count() == len(report["areas"]) == 1 + len(CITY.districts)
    measured = {d.district for d in DEVICES}
    for area in report["areas"]:
        if area["district"] is None or area["district"] in measured:
            _check_row(_cells(page, area["district"] or ""), area)
    silent = next(a for a in report["areas"] if a["district"] not in measured | {None})
    assert _cells(page, silent["district"])[1:4] == [NONE, "0", "0 %"]
    # The worst episode of every area and pollutant that has one, with its dates.
    shown = page.locator("#report-episodes li").all_inner_texts()
    for area in report["areas"]:
        for name, f in area["pollutants"].items():
            if f["worst_episodes"]:
                worst = f["worst_episodes"][0]
                assert any(
                    t.startswith(f"{area['name']}, ")
                    and worst["start"] in t
                    and worst["peak_day"] in t
                    for t in shown
                ), (area["name"], name)
    assert page.locator("#report-note").inner_text().startswith(report["from"][:10])

    # The CSV link saves exactly what the endpoint serves, under its name.
    with page.expect_download() as info:
        page.click("#report-csv")
    download = info.value
    assert download.suggested_filename == f"{CITY.id}-air-quality-{year}.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == csv.content

    # Back to the city page.
    page.click("#show-report")
    page.locator("#app").wait_for(state="visible")
    assert page.locator("#report").is_hidden()
