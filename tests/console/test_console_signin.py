"""A person signs in to the console through the city's identity provider, acts, signs out.

Real parts throughout: Debian's Chromium (Playwright), the API as a child process, a
real InfluxDB, and a real OpenID Connect provider (oidc-provider under node) whose own
login form the browser fills in. The incident log and the audit log then name the
person; a state-changing call without the session's CSRF token is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_seed import panic_incident
from chromium import chromium_context, sign_in
from oidcprovider import CONSOLE_CLIENT, CONSOLE_SECRET, OidcProvider
from playwright.sync_api import BrowserContext

from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.settings import InfluxSettings

TIMEOUT_MS = 20_000
PERSON = {"name": "Dilnoza Karimova", "roles": ["safecity-operator"], "cities": ["tashkent"]}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile."""
    profile = tmp_path / "profile"
    with chromium_context(profile, width=1280, height=900, timeout_ms=TIMEOUT_MS) as context:
        yield context


def seed_incident(influx_url: str, database: str) -> inc.Incident:
    """An open panic incident in the API's database."""
    opened = panic_incident()

    async def seed() -> None:
        client = InfluxClient(InfluxSettings(url=influx_url, database=database))
        try:
            await client.ensure_retention_policies()
            await inc.IncidentStore(client).open(opened)
        finally:
            await client.close()

    # Playwright's sync API runs an event loop in this thread: seed from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, seed()).result()
    return opened


def test_a_person_signs_in_acknowledges_and_signs_out(
    influx_db: str,
    start_api: Callable[..., Any],
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    provider = OidcProvider(tmp_path, {"ops-tashkent": PERSON}, [])
    api = start_api(
        influx_db,
        SAFECITY_OIDC__ISSUER=provider.issuer,
        SAFECITY_OIDC__CLIENT_ID=CONSOLE_CLIENT,
        SAFECITY_OIDC__CLIENT_SECRET=CONSOLE_SECRET,
        SAFECITY_OIDC__SCOPES="openid profile safecity",
    )
    provider.redirect_uris = [f"{api.url}/auth/callback"]
    provider.start()
    try:
        incident = seed_incident(api.env["SAFECITY_INFLUX__URL"], influx_db)
        errors: list[str] = []
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

        # Not signed in: the console offers the provider's sign-in beside the key form.
        page.goto(f"{api.url}/")
        page.locator("#sign-in-offer").wait_for(state="visible")
        sign_in(page, api.url, "ops-tashkent")
        assert page.locator("#person").inner_text() == "Dilnoza Karimova (operate)"
        (cookie,) = [c for c in browser.cookies(api.url) if c["name"] == "safecity_session"]
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Lax")
        # The session id is all the browser holds: no key in storage.
        assert page.evaluate("() => window.sessionStorage.length") == 0

        # A state-changing call without the session's CSRF token is refused.
        refused = page.evaluate(
            """async (id) => {
                const r = await fetch(`/v1/incidents/${id}/resolve`, {method: "POST"});
                return [r.status, (await r.json()).detail];
            }""",
            incident.id,
        )
        assert refused == [
            403,
            "missing or wrong CSRF token: send the session's token in X-CSRF-Token",
        ]

        # Act: acknowledge the incident from its feed entry (the console sends the token).
        page.wait_for_function("() => document.body.dataset.ready === 'true'")
        item = page.locator(f'#feed li[data-incident="{incident.id}"]')
        item.locator('button[data-action="ack"]').click()
        page.locator(
            f'#feed li[data-incident="{incident.id}"][data-state="acknowledged"]'
        ).wait_for()

        # The incident log and the audit log name the person.
        body = httpx.get(
            f"{api.url}/v1/incidents/{incident.id}", headers=api.headers, timeout=10
        ).json()
        assert [(t["state"], t["by_subject"], t["by_name"]) for t in body["transitions"]] == [
            ("open", "", ""),
            ("acknowledged", "ops-tashkent", "Dilnoza Karimova"),
        ]
        audit = [
            json.loads(line)
            for line in Path(api.env["SAFECITY_AUDIT_LOG_FILE"]).read_text().splitlines()
        ]
        # The call refused for its missing CSRF token is audited too (a forgery shows).
        assert [(a["subject"], a["person"], a["route"], a["status"]) for a in audit] == [
            ("ops-tashkent", "Dilnoza Karimova", "/v1/incidents/{incident_id}/resolve", 403),
            ("ops-tashkent", "Dilnoza Karimova", "/v1/incidents/{incident_id}/ack", 200),
        ]

        # Sign out: the provider confirms, then sends the browser back to the console.
        page.locator("#sign-out").click()
        page.wait_for_url(f"{provider.issuer}/session/end**")
        page.locator('button[name="logout"]').click()
        page.wait_for_url(f"{api.url}/")
        page.locator("#sign-in-offer").wait_for(state="visible")
        assert not [c for c in browser.cookies(api.url) if c["name"] == "safecity_session"]
        # The old session id is dead on the server too.
        stale = httpx.get(
            f"{api.url}/v1/me", cookies={"safecity_session": cookie["value"]}, timeout=10
        )
        assert stale.status_code == 401
        assert errors == []
    finally:
        provider.stop()


def test_a_session_outlives_an_api_restart_and_sign_out_ends_it_everywhere(
    influx_db: str,
    start_api: Callable[..., Any],
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    provider = OidcProvider(tmp_path, {"ops-tashkent": PERSON}, [])
    shared = {
        "SAFECITY_SESSIONS_FILE": str(tmp_path / "sessions" / "sessions.sqlite3"),
        "SAFECITY_API_KEYS_FILE": str(tmp_path / "apikeys.json"),
        "SAFECITY_OIDC__ISSUER": provider.issuer,
        "SAFECITY_OIDC__CLIENT_ID": CONSOLE_CLIENT,
        "SAFECITY_OIDC__CLIENT_SECRET": CONSOLE_SECRET,
        "SAFECITY_OIDC__SCOPES": "openid profile safecity",
    }
    first = start_api(influx_db, **shared)
    provider.redirect_uris = [f"{first.url}/auth/callback"]
    provider.start()
    try:
        page = browser.pages[0] if browser.pages else browser.new_page()
        sign_in(page, first.url, "ops-tashkent")
        (cookie,) = [c for c in browser.cookies(first.url) if c["name"] == "safecity_session"]
        jar = {"Cookie": f"safecity_session={cookie['value']}"}

        def me(api: Any) -> httpx.Response:
            return httpx.get(f"{api.url}/v1/me", headers=jar, timeout=10)

        assert me(first).status_code == 200
        # The API process restarts (same instance files): the person is still signed in.
        first.stop()
        restarted = start_api(influx_db, **shared)
        assert me(restarted).status_code == 200, me(restarted).text
        assert me(restarted).json()["name"] == "Dilnoza Karimova"
        # A second replica beside it shares the session.
        replica = start_api(influx_db, **shared)
        assert me(replica).status_code == 200
        csrf = httpx.get(f"{replica.url}/auth/session", headers=jar, timeout=10).json()
        assert csrf["signed_in"] and csrf["subject"] == "ops-tashkent"

        # Sign out on one replica: the cookie is dead on both (the row is gone from the file).
        out = httpx.post(
            f"{restarted.url}/auth/logout",
            headers={**jar, "X-CSRF-Token": csrf["csrf_token"]},
            timeout=10,
        )
        assert out.status_code == 200, out.text
        assert me(restarted).status_code == 401 and me(replica).status_code == 401
    finally:
        provider.stop()
