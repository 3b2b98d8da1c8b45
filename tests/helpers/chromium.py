"""Debian's Chromium for browser tests: one executable, one set of options, one context."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
"""Debian's package, not a Playwright-downloaded browser (no registry for those here)."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_context(
    profile: Path, *, width: int, height: int, timeout_ms: int
) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile in `profile`, closed on exit."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        context.set_default_timeout(timeout_ms)
        try:
            yield context
        finally:
            context.close()


def sign_in(page: Page, api_url: str, login: str) -> None:
    """From the console's offer, through the provider's own login form (tests/helpers/
    oidcprovider.py: any password), back on the console signed in."""
    page.goto(f"{api_url}/")
    page.locator("#sign-in").click()
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any password")
    page.locator('button[type="submit"]').click()
    page.wait_for_url(f"{api_url}/")
    page.locator("#app").wait_for(state="visible")
