"""The console's layout in Debian's Chromium at two common screens: the map fills its
panel, every district label lies inside its district, the legend is on screen, the
incident tile agrees with the feed, times carry the city's time zone. Screenshots are
kept in the test's tmp dir."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chromium import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import Browser, Page, sync_playwright

from control.stack import LocalStack
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.settings import InfluxSettings

CITY = default_city()
SCREENS = [(1366, 768), (1920, 1080)]

LABELS_INSIDE = """() => [...document.querySelectorAll('#map .labels text')].map((t, i) => {
  const path = document.querySelectorAll('#map .districts path')[i];
  const b = t.getBBox();
  const corners = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height],
                   [b.x + b.width, b.y + b.height]];
  return {name: t.textContent, size: Number(t.getAttribute('font-size')),
          inside: corners.every(([x, y]) => path.isPointInFill(new DOMPoint(x, y)))};
})"""


async def _seed(settings: InfluxSettings) -> None:
    client = InfluxClient(settings)
    store = inc.IncidentStore(client)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        await client.ensure_database()
        for n, district in enumerate(("chilanzar", "yunusabad", "mirobod")):
            cam = CITY.select(district=district)[0]
            made = inc.open_incident(
                city=CITY.id,
                district=district,
                rule_id="intrusion",
                rule_type="event",
                severity="high",
                place=district,
                devices=[cam.id],
                opened_at=now - timedelta(minutes=10 + n),
                value=None,
                message=f"intrusion in {district}",
                event="intrusion",
            )
            await store.open(made)
            if n == 2:
                await store.transition(made.id, inc.State.RESOLVED, "tester", "false alarm")
    finally:
        await client.close()


def _check_screen(page: Page, width: int, height: int, shots: Path) -> None:
    """One screen: the map fills its panel, the labels lie inside their districts, the
    legend is on screen, the incident tile agrees with the feed, times carry the zone."""
    page.wait_for_selector("body[data-ready='true']")
    page.wait_for_function(
        "/^[0-9]+$/.test(document.querySelector('#kpi-incidents .tile-value').textContent)"
    )
    page.screenshot(path=str(shots / f"console-{width}x{height}.png"))

    svg = page.locator("#map").bounding_box()
    drawn = page.locator("#map .districts").bounding_box()
    panel = page.locator(".map-panel").bounding_box()
    legend = page.locator(".legend").bounding_box()
    assert svg and drawn and panel and legend
    # The map takes its panel's width, and the drawing fills the map's box one way.
    assert svg["width"] >= 0.9 * (panel["width"] - 24)
    assert drawn["width"] >= 0.9 * svg["width"] or drawn["height"] >= 0.9 * svg["height"]
    assert svg["height"] >= 0.5 * height - 100  # not a clipped strip
    # Panel and legend on screen without scrolling.
    assert legend["y"] + legend["height"] <= height
    assert panel["y"] + panel["height"] <= height

    labels = page.evaluate(LABELS_INSIDE)
    assert len(labels) == len(CITY.districts)
    assert [x["name"] for x in labels if not x["inside"]] == []

    tile = page.locator("#kpi-incidents .tile-value").inner_text()
    page.wait_for_selector("#feed-open[data-open]")
    assert tile == page.locator("#feed-open").get_attribute("data-open") == "2"
    meta = page.locator("#feed .feed-meta").first.inner_text()
    assert "GMT+5" in meta, meta  # Asia/Tashkent, shown with its zone


def _visit(browser: Browser, api: Any, width: int, height: int, shots: Path) -> list[str]:
    """A fresh visitor at one screen signs in and checks it; the page's errors."""
    problems: list[str] = []
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(api.url + "/")
        page.fill("#key", api.api_key)
        page.press("#key", "Enter")
        _check_screen(page, width, height, shots)
    finally:
        context.close()
    return problems


def test_console_fills_the_screen_and_agrees_with_itself_at_each_screen(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Both screens against one seeded API, each a fresh visitor in one browser (what the
    page reads and draws does not depend on the screen checked before)."""
    asyncio.run(_seed(InfluxSettings(url=stack.influx_url, database=influx_db)))
    api = start_api(influx_db)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            problems = {(w, h): _visit(browser, api, w, h, tmp_path) for w, h in SCREENS}
        finally:
            browser.close()
    assert problems == {screen: [] for screen in SCREENS}
