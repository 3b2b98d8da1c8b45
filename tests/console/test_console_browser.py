"""The console in Debian's Chromium (Playwright) against the live pipeline.

Simulator -> Mosquitto -> ingest -> InfluxDB -> API, all real processes; the
simulator keeps publishing while the page is open, so the live figures must move.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from operating import panic_incident
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Request
from support import account_env, influx_rows, wait_for

from api.apikeys import KeyStore
from control.stack import LocalStack
from safecity.registry import default_city

# Tests never write into the checkout: the screenshot stays in the test's temp dir, and is
# copied to $SAFECITY_TEST_ARTIFACTS (e.g. a CI artefact folder) only when that is set.
ARTIFACTS = os.environ.get("SAFECITY_TEST_ARTIFACTS")
FOCUS_RGB = "rgb(255, 213, 79)"  # --focus in console.css


@pytest.fixture
def live_city(
    stack: LocalStack,
    influx_db: str,
    start_ingest: Callable[..., Any],
    start_api: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[Any]:
    """The API over a database the real pipeline is filling while the test runs."""
    ingest = start_ingest(influx_db)
    api = start_api(influx_db, SAFECITY_DEADLETTER_DIR=ingest.env["SAFECITY_DEADLETTER_DIR"])
    env = {**ingest.env, **account_env(stack, "simulator"), "SAFECITY_CLIENT_ID": "sim-console"}
    with (tmp_path / "simulator.log").open("w") as log:
        sim = subprocess.Popen(
            [sys.executable, "-m", "control", "simulate", "--devices", "60", "--duration", "90"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: influx_rows(stack, influx_db, 'SELECT count("seq") FROM "noise"'),
                what="readings stored by the pipeline",
            )
            yield api
        finally:
            sim.terminate()
            sim.wait(30)


def text(page: Page, selector: str) -> str:
    """The trimmed text of the first match."""
    return page.locator(selector).first.inner_text().strip()


def _log_problems(page: Page, problems: list[str]) -> None:
    """Collect the page's console errors and warnings and its uncaught errors in `problems`."""
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if is_problem(m) else None,
    )
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))


def _sign_in_with_the_form(page: Page, api: Any, city: Any) -> None:
    """No key yet: the key form, then the city."""
    page.goto(api.url + "/")
    page.locator("#auth").wait_for(state="visible")
    page.fill("#key", api.api_key)
    page.press("#key", "Enter")
    page.locator("#app").wait_for(state="visible")
    assert text(page, "#city-name") == city.name
    assert page.evaluate("sessionStorage.getItem('safecity.apiKey')") == api.api_key


def _check_map(page: Page, city: Any) -> set[str | None]:
    """The map: every district, focusable and named; every device, coloured by status; the
    ids of the districts."""
    districts = page.locator("#map path.district")
    assert districts.count() == len(city.districts) == 12
    ids = {districts.nth(i).get_attribute("data-id") for i in range(districts.count())}
    assert ids == {d.id for d in city.districts}
    for i in range(districts.count()):
        path = districts.nth(i)
        assert path.get_attribute("tabindex") == "0"
        assert re.match(r"^[\w' -]+: (AQI \d+|no AQI), ", path.get_attribute("aria-label") or "")
    page.wait_for_function(
        "n => document.querySelectorAll('#map circle.device').length === n", arg=len(city.devices)
    )
    statuses = page.eval_on_selector_all(
        "#map circle.device", "els => els.map(e => e.getAttribute('class'))"
    )
    assert {s.split()[1] for s in statuses} <= {"online", "stale", "offline"}
    assert any("online" in s for s in statuses)
    # Districts with reporting air-quality sensors are coloured by their AQI band.
    page.wait_for_function(
        "() => [...document.querySelectorAll('path.district')].some(p =>"
        " /aqi-(good|moderate|usg|unhealthy|very|hazardous)/.test(p.getAttribute('class')))"
    )
    return ids


def _check_kpis(page: Page, city: Any) -> None:
    """KPI tiles are text, fed by the overview and by the live stream."""
    page.wait_for_function(
        "n => document.querySelector('#kpi-devices .tile-value').textContent.endsWith(` / ${n}`)",
        arg=len(city.devices),
    )
    online = int(text(page, "#kpi-devices .tile-value").split("/")[0])
    assert 0 < online <= 60
    page.wait_for_function(
        "() => Number(document.querySelector('#kpi-readings .tile-value')"
        ".textContent.replace(/\\D/g, '')) > 0"
    )
    first = text(page, "#kpi-readings .tile-value")
    page.wait_for_function(
        "v => document.querySelector('#kpi-readings .tile-value').textContent.trim() !== v",
        arg=first,
    )
    assert int(re.sub(r"\D", "", text(page, "#kpi-readings .tile-value"))) > int(
        re.sub(r"\D", "", first)
    )
    page.wait_for_function(
        "() => document.querySelector('#kpi-laeq .tile-value').textContent.includes('dB')"
    )


def _drill_down_by_click(page: Page, city: Any) -> None:
    """Click a district (at its label, which lies inside it): its drill-down opens."""
    chilanzar = city.district("chilanzar")
    assert chilanzar is not None
    box = page.locator("#map text.label", has_text=chilanzar.name).bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.locator('#drill[data-district="chilanzar"]').wait_for()
    assert text(page, "#drill-title") == chilanzar.name
    drill = page.locator("#drill dl.facts")
    assert "AQI" in drill.inner_text()
    assert re.search(r"\d+ / \d+ / \d+", drill.inner_text())
    assert page.get_attribute('path[data-id="chilanzar"]', "aria-pressed") == "true"


def _drill_down_by_keyboard(page: Page, city: Any, ids: set[str | None]) -> None:
    """Keyboard: Escape closes it; Tab reaches a district (visibly focused), Enter opens it."""
    page.keyboard.press("Escape")
    page.locator("#drill .hint").wait_for()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    focused: str | None = None
    for _ in range(30):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => document.activeElement.classList.contains('district')"
            " ? document.activeElement.dataset.id : null"
        )
        if focused:
            break
    assert focused is not None and focused in ids
    stroke = page.evaluate("getComputedStyle(document.activeElement).stroke")
    assert stroke == FOCUS_RGB
    page.keyboard.press("Enter")
    page.locator(f'#drill[data-district="{focused}"]').wait_for()
    district = city.district(focused)
    assert district is not None
    assert text(page, "#drill-title") == district.name
    page.locator("#drill dl.facts").wait_for()


def test_console_shows_the_live_city_and_its_districts(
    live_city: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    api = live_city
    city = default_city()
    problems: list[str] = []
    stream_requests: list[Request] = []
    page = browser.pages[0] if browser.pages else browser.new_page()
    _log_problems(page, problems)
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.on("request", lambda r: stream_requests.append(r) if "/v1/stream" in r.url else None)

    _sign_in_with_the_form(page, api, city)
    ids = _check_map(page, city)
    _check_kpis(page, city)
    # The stream carried the key in its header, never in the URL.
    assert stream_requests
    for request in stream_requests:
        assert request.all_headers().get("x-api-key") == api.api_key
        assert api.api_key not in request.url
    _drill_down_by_click(page, city)
    _drill_down_by_keyboard(page, city, ids)

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(ARTIFACTS) / "console.png")
    assert shot.stat().st_size > 10_000
    assert problems == []


def test_key_in_the_url_is_taken_once_and_a_bad_key_is_refused(
    influx_db: str, start_api: Callable[..., Any], browser: BrowserContext
) -> None:
    api = start_api(influx_db)
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.goto(f"{api.url}/?key={api.api_key}")
    page.locator("#app").wait_for(state="visible")
    assert "key=" not in page.url
    assert page.evaluate("sessionStorage.getItem('safecity.apiKey')") == api.api_key
    page.locator("#map path.district").first.wait_for()

    other = browser.new_page()
    other.goto(f"{api.url}/?key=sck_00000000_wrong")
    other.locator("#auth").wait_for(state="visible")
    assert "refused the key" in text(other, "#auth-error")
    assert other.evaluate("sessionStorage.getItem('safecity.apiKey')") is None


def is_problem(message: ConsoleMessage) -> bool:
    """Errors and warnings count; the page logs nothing else on purpose."""
    return message.type in ("error", "warning")


def _panic_incident(stack: LocalStack, api: Any) -> dict[str, Any]:
    """Press a real panic button (mosquitto_pub): the incident the API lists for it."""
    panic = default_city().select(kind="panic_button")[0]
    incident = panic_incident(stack, api, "tashkent", panic)
    assert incident["state"] == "open" and incident["devices"] == [panic.id]
    return dict(incident)


def _acknowledge_from_the_feed(page: Page, ident: str) -> None:
    """It appears in the feed (live alert or poll) with the buttons of an open incident."""
    item = page.locator(f'#feed li[data-incident="{ident}"]')
    item.wait_for()
    ack = item.locator('button[data-action="ack"]')
    ack.wait_for()
    actions = item.locator("button").evaluate_all("bs => bs.map(b => b.dataset.action)")
    assert actions == ["ack", "resolve", "act"]
    assert "Acknowledge: Panic button pressed" in (ack.get_attribute("aria-label") or "")
    # Keyboard: a real <button>, focused and pressed with Enter.
    assert ack.evaluate("b => b.tagName") == "BUTTON"
    ack.focus()
    page.keyboard.press("Enter")
    page.locator(f'#feed li[data-incident="{ident}"][data-state="acknowledged"]').wait_for()
    assert "acknowledged" in text(page, "#feed-status")
    after = page.locator(f'#feed li[data-incident="{ident}"] button')
    assert after.evaluate_all("bs => bs.map(b => b.dataset.action)") == [
        "dispatch",
        "resolve",
        "act",
    ]
    # Focus stayed in the incident's actions (keyboard users keep their place).
    assert page.evaluate("() => document.activeElement.dataset.incident") == ident


def _acknowledged_in_the_api_and_audited(api: Any, ident: str) -> None:
    """The API shows the appended step, by this key's id; the audit log has the call."""
    body = httpx.get(f"{api.url}/v1/incidents/{ident}", headers=api.headers, timeout=10).json()
    key_id = api.api_key.split("_")[1]
    assert [(t["state"], t["by"]) for t in body["transitions"]] == [
        ("open", "alerts"),
        ("acknowledged", key_id),
    ]
    audit = [
        json.loads(x) for x in Path(api.env["SAFECITY_AUDIT_LOG_FILE"]).read_text().splitlines()
    ]
    assert [(a["key_id"], a["route"], a["target"], a["status"]) for a in audit] == [
        (key_id, "/v1/incidents/{incident_id}/ack", ident, 200)
    ]


def test_an_operator_acknowledges_a_live_incident_from_the_console(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    start_alerts: Callable[..., Any],
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    # The real alerts service (shipped rules) opens the incident from a real panic event.
    start_alerts(influx_db)
    api = start_api(influx_db)  # its key has read + operate
    _, viewer_key = KeyStore(Path(api.env["SAFECITY_API_KEYS_FILE"])).create("viewer", ("read",))
    problems: list[str] = []
    page = browser.pages[0] if browser.pages else browser.new_page()
    _log_problems(page, problems)
    page.goto(f"{api.url}/?key={api.api_key}")
    page.locator("#app").wait_for(state="visible")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")

    ident = _panic_incident(stack, api)["id"]
    _acknowledge_from_the_feed(page, ident)
    _acknowledged_in_the_api_and_audited(api, ident)

    # A read-only key sees the incident and its state, but no buttons.
    viewer = browser.new_page()
    viewer.goto(f"{api.url}/?key={viewer_key}")
    viewer.locator(f'#feed li[data-incident="{ident}"][data-state="acknowledged"]').wait_for()
    viewer.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert "read only" in text(viewer, "#feed-note")
    assert viewer.locator("#feed button").count() == 0
    assert problems == []
