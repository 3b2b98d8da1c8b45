"""Cursor paging of events and incidents: every item exactly once, in order, ties kept whole."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_seed import event, write
from fastapi.testclient import TestClient

from api.settings import ApiSettings
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.readings import format_ts
from safecity.registry import City


@pytest.fixture(scope="module")
def seeded(api_settings: ApiSettings, city: City) -> dict[str, Any]:
    """Nine events (three sharing one millisecond) and five incidents, from the minute an
    hour before the module's first test (`base`)."""
    base = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    cams = city.select(kind="cctv")[:3]
    points = [
        event(city, cams[0], base + timedelta(seconds=s), s + 1, "loitering", "low", zone="z")
        for s in range(6)
    ]
    tie = base + timedelta(seconds=3, milliseconds=500)
    points += [event(city, cam, tie, 100, "intrusion", "high", zone="t") for cam in cams]
    write(api_settings, points)
    made = [
        inc.open_incident(
            city=city.id,
            district=cams[0].district,
            rule_id="loitering",
            rule_type="event",
            severity="low",
            place=f"p{n}",
            devices=[cams[0].id],
            opened_at=base + timedelta(minutes=n // 2),  # pairs share an opening time
            value=None,
            message="m",
            event="loitering",
        )
        for n in range(5)
    ]

    async def store() -> None:
        client = InfluxClient(api_settings.influx)
        try:
            for incident in made:
                await inc.IncidentStore(client).open(incident)
        finally:
            await client.close()

    asyncio.run(store())
    return {"incidents": made, "base": base}


def _pages(client: TestClient, path: str, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        r = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["truncated"] is (body["next_cursor"] is not None)
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50


def _key(e: dict[str, Any]) -> tuple[str, str, int]:
    return (e["ts"], e["device_id"], e["seq"])


def test_events_page_through_every_event_once(client: TestClient, seeded: dict[str, Any]) -> None:
    base = seeded["base"]
    window = {"from": format_ts(base), "to": format_ts(base + timedelta(minutes=5))}
    whole = client.get("/v1/events", params={**window, "limit": 50}).json()["items"]
    assert len(whole) == 9
    for limit in (1, 2, 4):
        pages = _pages(client, "/v1/events", {**window, "limit": limit})
        flat = [_key(e) for page in pages for e in page]
        assert flat == [_key(e) for e in whole], limit
        # The three events of one millisecond are on one page, never split.
        tie_pages = {i for i, page in enumerate(pages) for e in page if e["seq"] == 100}
        assert len(tie_pages) == 1, limit
        assert all(len(p) <= limit for p in pages if not any(e["seq"] == 100 for e in p))


def test_incidents_page_through_every_incident_once(
    client: TestClient, seeded: dict[str, Any]
) -> None:
    base = seeded["base"]
    window = {
        "from": format_ts(base - timedelta(minutes=1)),
        "to": format_ts(base + timedelta(hours=1)),
    }
    pages = _pages(client, "/v1/incidents", {**window, "limit": 2})
    ids = [i["id"] for page in pages for i in page]
    assert sorted(ids) == sorted(i.id for i in seeded["incidents"]) and len(ids) == 5
    assert [len(p) for p in pages] == [2, 2, 1]
    opened = [i["opened_at"] for page in pages for i in page]
    assert opened == sorted(opened, reverse=True)


def test_a_malformed_cursor_is_422_and_a_foreign_one_404(client: TestClient) -> None:
    for path in ("/v1/events", "/v1/incidents", "/v1/devices"):
        r = client.get(path, params={"cursor": "%%"})
        assert r.status_code == 422 and "cursor" in r.json()["detail"], (path, r.text)
        for foreign in ("aTox", "wg"):
            r = client.get(path, params={"cursor": foreign})
            assert r.status_code == 404, (path, foreign, r.text)
            assert r.json()["detail"].startswith("unknown cursor"), r.text
