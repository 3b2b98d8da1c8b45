"""The interactive docs in Debian's Chromium: they render every operation offline.

The API runs as a real process; Chromium records every request the pages make and
every console error (a CSP violation is one): all requests stay on the API's origin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import chromium_context
from playwright.sync_api import BrowserContext, Page

TIMEOUT_MS = 60_000


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile."""
    with chromium_context(
        tmp_path / "profile", width=1366, height=768, timeout_ms=TIMEOUT_MS
    ) as context:
        yield context


class Recorder:
    """Every request URL, failed request and console error of a page."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.problems: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("requestfailed", lambda r: self.problems.append(f"failed {r.url} {r.failure}"))
        page.on("pageerror", lambda exc: self.problems.append(f"page error {exc}"))
        page.on(
            "console",
            lambda m: self.problems.append(f"console {m.text}") if m.type == "error" else None,
        )

    def foreign(self, origin: str) -> list[str]:
        """Requests that left the API's origin."""
        return [
            u for u in self.urls if not u.startswith((origin + "/", "data:", "blob:", "about:"))
        ]


def _operations(api_url: str) -> list[tuple[str, str, str]]:
    spec = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    return [
        (method.upper(), path, op["operationId"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def test_swagger_ui_renders_every_operation_offline(
    influx_db: str, start_api: Callable[..., Any], browser: BrowserContext, tmp_path: Path
) -> None:
    api = start_api(influx_db)
    operations = _operations(api.url)
    page = browser.new_page()
    seen = Recorder(page)
    page.goto(f"{api.url}/docs")
    blocks = page.locator(".opblock")
    blocks.nth(len(operations) - 1).wait_for(state="visible")
    assert blocks.count() == len(operations)
    shown = set(page.locator(".opblock-summary-operation-id").all_inner_texts())
    assert shown == {op_id for _, _, op_id in operations}
    # Try one call from the page: authorise with the key, then execute list_cities.
    page.locator("button.authorize").first.click()
    page.locator(".auth-container input").first.fill(api.api_key)
    page.locator(".auth-btn-wrapper button.authorize").first.click()
    page.locator(".btn-done").first.click()
    page.locator("#operations-cities-list_cities .opblock-summary").click()
    page.locator("#operations-cities-list_cities button.try-out__btn").click()
    page.locator("#operations-cities-list_cities button.execute").click()
    status = page.locator(
        "#operations-cities-list_cities .live-responses-table tr.response td.response-col_status"
    ).first
    status.wait_for()
    assert "200" in status.inner_text()
    page.screenshot(path=str(tmp_path / "docs.png"))
    assert seen.foreign(api.url) == []
    assert seen.problems == []
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in seen.urls)


def test_redoc_renders_every_operation_offline(
    influx_db: str, start_api: Callable[..., Any], browser: BrowserContext, tmp_path: Path
) -> None:
    api = start_api(influx_db)
    operations = _operations(api.url)
    page = browser.new_page()
    seen = Recorder(page)
    page.goto(f"{api.url}/redoc")
    sections = page.locator("[data-section-id^='operation/']")
    sections.nth(len(operations) - 1).wait_for(state="attached")
    ids = {
        s.removeprefix("operation/")
        for s in sections.evaluate_all("els => els.map(e => e.getAttribute('data-section-id'))")
    }
    assert ids == {op_id for _, _, op_id in operations}
    page.screenshot(path=str(tmp_path / "redoc.png"))
    assert seen.foreign(api.url) == []
    assert seen.problems == []
    assert any(u.endswith("/docs/assets/redoc.standalone.js") for u in seen.urls)
