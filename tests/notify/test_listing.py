"""The notifier's delivery listing (`GET /notifications` on its metrics port), served by
the real health server: the outbox's entries in the shared shape; a bad parameter is a
400 naming it, and no query string whatever makes it fail otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from notify.listing import Listing
from safecity.notifications import outbox_path
from safecity.observability import HealthServer
from safecity.outbox import Message, Outbox, Outcome


def _outbox(directory: Path) -> None:
    box = Outbox(outbox_path(directory, "tashkent"), owner="t")
    page = {"incident_id": "inc-1", "city": "tashkent", "person": "ann", "tier": 1, "repeat": 0}
    notice = {**page, "kind": "resolved", "tier": 0}
    box.enqueue([Message("inc-1/t1/r0/ann/hook", "hook", "ann", page, "inc-1"),
                 Message("inc-1/resolved/ann/hook", "hook", "ann", notice, "inc-1/resolved"),
                 Message("inc-2/t1/r0/ann/hook", "hook", "ann", {**page, "incident_id": "inc-2"},
                         "inc-2")])  # fmt: skip
    (lease,) = box.claim(per_lane=1)
    box.settle(lease, Outcome.delivered("HTTP 200"))
    box.close()


def _ask(listing: Listing, query: dict[str, Any]) -> httpx.Response:
    async def run() -> httpx.Response:
        server = HealthServer("127.0.0.1", 0, lambda: True, routes={"/notifications": listing})
        await server.start()
        try:
            async with httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{server.port}/notifications"
                return await client.get(url, params=query, timeout=10)
        finally:
            await server.stop()

    return asyncio.run(run())


def test_the_listing_and_an_incidents_timeline(tmp_path: Path) -> None:
    _outbox(tmp_path)
    listing = Listing(tmp_path, ["tashkent"])
    every = _ask(listing, {})
    assert every.status_code == 200
    assert [(n["key"], n["kind"], n["status"]) for n in every.json()] == [
        ("inc-1/t1/r0/ann/hook", "page", "delivered"),
        ("inc-1/resolved/ann/hook", "resolved", "pending"),
        ("inc-2/t1/r0/ann/hook", "page", "pending"),
    ]
    timeline = _ask(listing, {"incident": "inc-1", "city": "tashkent"}).json()
    assert [(n["incident_id"], n["kind"]) for n in timeline] == [
        ("inc-1", "page"),
        ("inc-1", "resolved"),
    ]
    assert timeline[0]["history"][0]["result"] == "delivered" and timeline[0]["latency_s"] >= 0
    pending = _ask(listing, {"status": "pending", "limit": "1"}).json()
    assert [n["key"] for n in pending] == ["inc-1/resolved/ann/hook"]


def test_bad_parameters_are_refused_by_name(tmp_path: Path) -> None:
    listing = Listing(tmp_path, ["tashkent"])
    for query, detail in (
        ({"city": "almaty"}, "city 'almaty' is not served here (tashkent)"),
        (
            {"status": "sent"},
            "status 'sent' is not one of pending, delivered, failed, cancelled, expired",
        ),
        ({"limit": "0"}, "limit '0' is not 1..1000"),
        ({"group": "x"}, "unknown parameter 'group'"),
    ):
        answer = _ask(listing, query)
        assert (answer.status_code, answer.json()["detail"]) == (400, detail)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["city", "incident", "channel", "status", "limit", "x"]),
                       st.lists(st.text(max_size=12), min_size=1, max_size=2)))  # fmt: skip
def test_any_query_is_answered_200_or_400(params: dict[str, list[str]]) -> None:
    status, _ = asyncio.run(Listing(Path("/nonexistent"), ["tashkent"])(params))
    assert status in (200, 400)
