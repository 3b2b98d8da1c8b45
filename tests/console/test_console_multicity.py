"""The console of an API serving two cities, in Debian's Chromium: the city switcher offers
only the key's cities, switching redraws the other city from its own database, and the
region page shows the cities side by side.

The API is a real `safecity api` process over two registries (Tashkent, Samarkand) and
two databases on the session's influxd, filled through the schema as ingest writes.
The region page reads `GET /v1/region/overview`. Its figures depend on the federation's
intervals, so the browser is answered with a body of that endpoint's shape assembled
from the real `GET /v1/cities/{id}/overview` of each city (the sections the regional
view reuses); where the build serves the endpoint, its own answer is checked to carry
every field the page reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Route

from api.apikeys import KeyStore
from control.stack import LocalStack
from safecity import registry
from safecity.citygen import builtin_cities
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode_many
from safecity.readings import Reading, format_ts, parse
from safecity.registry import Cities
from safecity.schema import reading_point
from safecity.settings import InfluxSettings

LAEQ = {"tashkent": 61.0, "samarkand": 74.0}


def _noise(ts: datetime, seq: int, laeq: float) -> Reading:
    payload = json.dumps(
        {"ts": format_ts(ts), "seq": seq, "values": {"laeq": laeq, "lamax": laeq + 8, "la90": 50}}
    ).encode()
    reading = parse("noise", payload, past_window=None, future_window=None)
    assert isinstance(reading, Reading)
    return reading


async def _seed(url: str, prefix: str, cities: Cities) -> None:
    base = InfluxClient(InfluxSettings(url=url, database=prefix))
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        for city in cities.values():
            client = base.for_city(city.id, cities.ids)
            await client.ensure_database()
            noise = city.select(kind="noise")[:3]
            readings = [
                (d, _noise(now - timedelta(minutes=m), m, LAEQ[city.id]))
                for d in noise
                for m in range(1, 61, 2)
            ]
            await client.write(encode_many(reading_point(city.id, d, r) for d, r in readings))
    finally:
        await base.close()


@pytest.fixture
def two_cities(
    stack: LocalStack, start_api: Callable[..., Any], tmp_path: Path
) -> Iterator[tuple[Any, Cities]]:
    """`safecity api` over Tashkent's and Samarkand's registries, each with its database."""
    cities = builtin_cities(["tashkent", "samarkand"])
    files = []
    for city in cities.values():
        path = tmp_path / f"{city.id}.jsonl"
        registry.write(city, path)
        files.append(str(path))
    prefix = f"test_mc_{secrets.token_hex(4)}"
    asyncio.run(_seed(stack.influx_url, prefix, cities))
    try:
        yield start_api(prefix, SAFECITY_REGISTRY=",".join(files)), cities
    finally:
        for city_id in cities:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    f"{stack.influx_url}/query",
                    data={"q": f'DROP DATABASE "{prefix}_{city_id}"'},
                    timeout=5,
                )


def _region_body(api: Any, key: str) -> dict[str, Any]:
    """`GET /v1/region/overview`'s shape from each visible city's own overview."""
    headers = {"X-API-Key": key}
    listed = httpx.get(f"{api.url}/v1/cities", headers=headers, timeout=10).json()["items"]
    out = []
    for city in listed:
        o = httpx.get(f"{api.url}/v1/cities/{city['id']}/overview", headers=headers, timeout=30)
        body = o.json()
        out.append(
            {
                "city": city["id"],
                "name": city["name"],
                "source": "local",
                "generated_at": body["generated_at"],
                "window": body["window"],
                **{k: body[k] for k in ("air_quality", "traffic", "noise", "devices", "incidents")},
                "response": {"incidents": 0, "acknowledged": 0, "tta_median_s": None},
                "delivery": {"stored": 6, "expected": 6, "ratio": 1.0},
            }
        )
    return {"cities": out, "corridors": []}


def _check_region_shape(api: Any) -> None:
    """The served regional view carries what `api/console/region.js` reads."""
    got = httpx.get(f"{api.url}/v1/region/overview", headers=api.headers, timeout=60)
    assert got.status_code == 200, got.text
    body = got.json()
    assert isinstance(body["corridors"], list)
    for city in body["cities"]:
        assert {"city", "name", "source", "air_quality", "traffic", "noise"} <= set(city)
        assert {"devices", "incidents", "response", "delivery"} <= set(city)
        assert {"tta_median_s", "tta_mean_s"} <= set(city["response"])
        assert {"ratio", "expected"} <= set(city["delivery"])
    for corridor in body["corridors"]:
        assert {"id", "name", "segments", "travel_time_s", "speed_kmh"} <= set(corridor)


def test_switcher_region_page_and_a_key_of_one_city(
    two_cities: tuple[Any, Cities], browser: BrowserContext
) -> None:
    """The two views of one API and its databases (started and seeded once): a key of both
    cities, then, in a new tab, a key of one."""
    page = browser.pages[0] if browser.pages else browser.new_page()
    _switcher_offers_the_keys_cities_and_the_region_page_compares_them(two_cities, page)
    _a_key_of_one_city_gets_no_switcher_and_no_other_city(two_cities, browser.new_page())


def _switcher_offers_the_keys_cities_and_the_region_page_compares_them(
    two_cities: tuple[Any, Cities], page: Page
) -> None:
    api, cities = two_cities
    served = httpx.get(f"{api.url}/openapi.json", timeout=10).json()["paths"]
    if "/v1/region/overview" in served:
        _check_region_shape(api)
    body = json.dumps(_region_body(api, api.api_key))

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=body)

    page.route("**/v1/region/overview", answer)
    page.goto(f"{api.url}/?key={api.api_key}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    switch = page.locator("#city-switch")
    assert switch.is_visible()
    options = switch.locator("option")
    assert options.evaluate_all("os => os.map(o => o.value)") == ["tashkent", "samarkand"]
    assert page.locator("#city-name").inner_text() == "Tashkent"
    assert page.locator("#map path.district").count() == len(cities["tashkent"].districts)

    # Switching: the page comes back with Samarkand, read from Samarkand's database.
    overview_calls: list[str] = []
    page.on("request", lambda r: overview_calls.append(r.url) if "/overview" in r.url else None)
    switch.select_option("samarkand")
    page.wait_for_function("() => document.getElementById('city-name').textContent === 'Samarkand'")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert page.locator("#map path.district").count() == len(cities["samarkand"].districts)
    assert page.locator("#city-switch").input_value() == "samarkand"
    page.wait_for_function(
        "() => document.querySelector('#kpi-noise .tile-value').textContent.includes('74')"
    )
    assert overview_calls and all("/v1/cities/samarkand/" in u for u in overview_calls)

    # The region page: both cities side by side, each with its own figures.
    page.click("#show-region")
    page.locator("#region").wait_for(state="visible")
    assert page.locator("#app").is_hidden()
    rows = page.locator("#region-body tr")
    rows.nth(1).wait_for()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.city)") == ["tashkent", "samarkand"]
    heads = page.locator("#region-head th").evaluate_all("hs => hs.map(h => h.textContent)")
    assert "Noise LAeq" in heads and "Open incidents" in heads and "Delivery" in heads
    noise_col = heads.index("Noise LAeq")
    for city_id, level in LAEQ.items():
        cells = page.locator(f'#region-body tr[data-city="{city_id}"] > *')
        assert cells.nth(noise_col).inner_text() == f"{level:.1f} dB"
    assert "100 %" in page.locator('#region-body tr[data-city="samarkand"]').inner_text()
    page.click("#show-region")
    page.locator("#app").wait_for(state="visible")


def _a_key_of_one_city_gets_no_switcher_and_no_other_city(
    two_cities: tuple[Any, Cities], page: Page
) -> None:
    api, _ = two_cities
    _, key = KeyStore(Path(api.env["SAFECITY_API_KEYS_FILE"])).create(
        "tashkent-only", ("read",), ("tashkent",)
    )
    # A city chosen earlier in this tab that the key may not see is not shown.
    page.goto(f"{api.url}/console/favicon.svg")
    page.evaluate("sessionStorage.setItem('safecity.city', 'samarkand')")
    page.goto(f"{api.url}/?key={key}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert page.locator("#city-name").inner_text() == "Tashkent"
    assert page.locator("#city-switch").is_hidden()
    assert page.locator("#show-region").is_hidden()
    assert page.locator("#city-switch option").count() == 1
