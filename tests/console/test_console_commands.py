"""Acting on a district from the console, in Debian's Chromium: the operator sets the
district's streetlights and sees a final status for each, from real edge agents that
executed the command through the real broker and the API process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import chromium_context
from commanddevice import CommandDevices
from playwright.sync_api import BrowserContext

from control.stack import LocalStack
from safecity.registry import default_city

CITY = default_city()
DISTRICT = "bektemir"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with chromium_context(tmp_path / "profile", width=1400, height=950, timeout_ms=20_000) as c:
        yield c


def test_an_operator_dims_a_districts_streetlights_and_sees_each_status(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    lights = [d for d in CITY.devices if d.district == DISTRICT and d.kind == "streetlight"]
    assert lights
    api = start_api(
        influx_db,
        SAFECITY_COMMANDS__PASSWORD=stack.secret("_command"),
        SAFECITY_COMMANDS_FILE=str(tmp_path / "commands.sqlite3"),
    )
    devices = CommandDevices(stack, CITY.id, tmp_path / "edge-spool")
    try:
        for light in lights:
            devices.start(light)
        page = browser.pages[0] if browser.pages else browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(api.url + "/")
        page.fill("#key", api.api_key)
        page.press("#key", "Enter")
        page.locator("#app").wait_for(state="visible")
        page.locator(f'#map path.district[data-id="{DISTRICT}"]').click()
        page.locator("#cmd-dim").wait_for(state="visible")
        page.fill("#cmd-level", "30")
        page.click("#cmd-dim")
        done = f"({len(lights)}/{len(lights)} final)"
        page.wait_for_function(
            "t => (document.querySelector('#cmd-status')?.textContent || '').includes(t)", arg=done
        )
        status = page.locator("#cmd-status").inner_text()
        assert f"executed {len(lights)}" in status, status
        rows = page.locator("#cmd-deliveries li")
        assert rows.count() == len(lights)
        shown = {rows.nth(i).inner_text().split(":")[0] for i in range(rows.count())}
        assert shown == {light.id for light in lights}
        assert {rows.nth(i).get_attribute("data-status") for i in range(rows.count())} == {
            "executed"
        }
        assert sum(devices.executed.values()) == len(lights)
        assert errors == []
    finally:
        devices.close()
