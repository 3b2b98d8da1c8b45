"""Acting on an incident from the console, in Debian's Chromium: from a panic incident the
real alerts service opened, the operator turns the nearest camera to a preset, sounds the
kiosk's siren and raises the district's streetlights, and sees each command's status per
device move until final, from real edge agents through the real broker and API process."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import chromium_context
from commanddevice import CommandDevices
from operating import panic_incident
from playwright.sync_api import BrowserContext, Page

from control.stack import LocalStack
from safecity.registry import Device, default_city

CITY = default_city()
SUMMARIES = (
    "() => [...document.querySelectorAll('#inc-commands .cmd-summary')].map(s => s.textContent)"
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with chromium_context(tmp_path / "profile", width=1400, height=950, timeout_ms=20_000) as c:
        yield c


def metres(a: Device, b: Device) -> float:
    """The console's distance (equirectangular), from registry (lon, lat) pairs."""
    (lon1, lat1), (lon2, lat2) = a.location, b.location
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(x, math.radians(lat2 - lat1)) * 6_371_000


def wait_summary(page: Page, index: int, text: str) -> None:
    """Until the log's row `index` (newest first) says `text`."""
    page.wait_for_function(
        "([i, t]) => ((document.querySelectorAll('#inc-commands .cmd-summary')[i] || {})"
        ".textContent || '').includes(t)",
        arg=[index, text],
    )


def test_an_operator_acts_on_the_devices_near_an_incident_and_follows_each_command(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    start_alerts: Callable[..., Any],
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    panic = CITY.select(kind="panic_button")[0]
    camera = min(CITY.select(kind="cctv"), key=lambda d: metres(panic, d))
    lights = [d for d in CITY.devices if d.district == panic.district and d.kind == "streetlight"]
    assert lights
    start_alerts(influx_db)
    api = start_api(
        influx_db,
        SAFECITY_COMMANDS__PASSWORD=stack.secret("_command"),
        SAFECITY_COMMANDS_FILE=str(tmp_path / "commands.sqlite3"),
        SAFECITY_COMMANDS__RETRY="0.5",
    )
    devices = CommandDevices(stack, CITY.id, tmp_path / "edge-spool")
    try:
        for device in (camera, panic, *lights):
            devices.start(device)
        devices.stop(camera)  # away for now: its session keeps what is sent to it
        _act(stack, api, browser, devices, panic, camera, lights)
    finally:
        devices.close()


def _act(
    stack: LocalStack,
    api: Any,
    browser: BrowserContext,
    devices: CommandDevices,
    panic: Device,
    camera: Device,
    lights: list[Device],
) -> None:
    page = browser.pages[0] if browser.pages else browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{api.url}/?key={api.api_key}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    ident = panic_incident(stack, api, CITY.id, panic)["id"]
    act = page.locator(f'#feed li[data-incident="{ident}"] button[data-action="act"]')
    act.click()
    panel = page.locator(f'#incident-panel[data-incident="{ident}"]')
    panel.wait_for(state="visible")
    # The actions that fit, on the devices around the incident, named with their distance.
    camera_line = page.locator("#inc-camera-target").inner_text()
    assert camera_line.startswith(f"Nearest camera: {camera.id} (")
    assert f"Nearest siren / PA: {panic.id} (0 m)" in page.locator("#inc-siren-target").inner_text()

    # The camera is away: its command waits "pending", then executes once it is back.
    page.fill("#inc-preset", "7")
    page.click("#inc-camera")
    wait_summary(page, 0, "goto_preset: pending 1 (0/1 final)")
    devices.start(camera)
    wait_summary(page, 0, "goto_preset: executed 1 (1/1 final)")

    page.select_option("#inc-signal", "announcement")
    page.fill("#inc-duration", "20")
    page.click("#inc-sound")
    wait_summary(page, 0, "sound: executed 1 (1/1 final)")

    page.fill("#inc-level", "100")
    page.click("#inc-lights")
    n = len(lights)
    wait_summary(page, 0, f"set_level: executed {n} ({n}/{n} final)")

    # Each command has its row, newest first, with a final status per device.
    assert page.evaluate(SUMMARIES) == [
        f"set_level: executed {n} ({n}/{n} final)",
        "sound: executed 1 (1/1 final)",
        "goto_preset: executed 1 (1/1 final)",
    ]
    rows = page.locator("#inc-commands > li")
    per_device = [
        rows.nth(i)
        .locator("ol li")
        .evaluate_all("lis => lis.map(li => [li.textContent.split(':')[0], li.dataset.status])")
        for i in range(3)
    ]
    assert per_device == [
        sorted([[d.id, "executed"] for d in lights]),
        [[panic.id, "executed"]],
        [[camera.id, "executed"]],
    ]
    _check_what_was_sent(api, rows, panic, camera)
    assert sum(devices.executed.values()) == n + 2
    assert errors == []


def _check_what_was_sent(api: Any, rows: Any, panic: Device, camera: Device) -> None:
    """The API holds exactly what the operator asked, for the devices the panel named."""
    ids = [rows.nth(i).locator(".cmd-summary").get_attribute("data-command") for i in range(3)]
    sent = [
        httpx.get(f"{api.url}/v1/commands/{i}", headers=api.headers, timeout=10).json() for i in ids
    ]
    assert [(c["name"], c["params"], c["target"]) for c in sent] == [
        ("set_level", {"level": 100}, {"district": panic.district, "kind": "streetlight"}),
        ("sound", {"signal": "announcement", "duration_s": 20}, {"device_id": panic.id}),
        ("goto_preset", {"preset": 7}, {"device_id": camera.id}),
    ]
