"""The regional view of a deployment with a city of its own and a federated one."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.apikeys import KeyStore
from api.app import create_app
from api.federation import closed_intervals, indicators, latest_closed, with_databases
from api.overview import MEAN_FIELDS
from api.params import TimeRange
from api.settings import ApiSettings, FederationSettings
from control.stack import Influxd
from ingest.federation import point
from safecity import federation as fed
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.registry import City, default_city
from safecity.schema import reading_tags
from safecity.settings import InfluxSettings

INTERVAL = 60.0


def test_closed_intervals_are_aligned_and_bounded() -> None:
    cfg = FederationSettings(interval=300, delay=60, max_backlog=3)
    now = datetime(2026, 1, 15, 6, 7, 30, tzinfo=UTC)
    # 06:07:30 - 60 s = 06:06:30: the newest closed interval is 06:00-06:05.
    assert latest_closed(now, cfg) == TimeRange(
        datetime(2026, 1, 15, 6, 0, tzinfo=UTC), datetime(2026, 1, 15, 6, 5, tzinfo=UTC)
    )
    after = int(datetime(2026, 1, 15, 5, 50, tzinfo=UTC).timestamp() * 1000)
    starts = [w.start.minute for w in closed_intervals(after, now, cfg)]
    assert starts == [50, 55, 0]
    # Only the newest max_backlog of a long backlog; nothing before `after`.
    long_ago = after - 3_600_000
    assert len(closed_intervals(long_ago, now, cfg)) == 3
    assert closed_intervals(int(now.timestamp() * 1000), now, cfg) == []


@pytest.fixture
def region_setup(influxd: Influxd, tmp_path: Path) -> Iterator[tuple[ApiSettings, City, str]]:
    """A city database with readings of the last minutes and a region database beside it."""
    token = secrets.token_hex(4)
    settings = ApiSettings(
        influx=InfluxSettings(url=influxd.url, database=f"fed_city_{token}"),
        api_keys_file=tmp_path / "keys.json",
        audit_log_file=tmp_path / "audit.jsonl",
        deadletter_dir=tmp_path / "dl",
        federation=FederationSettings(interval=INTERVAL, delay=0),
        region={"database": f"fed_region_{token}"},
        overview_cache_ttl=0,
    )
    city = default_city()
    now = int(datetime.now(UTC).timestamp()) * 1000
    points = []
    for device in city.devices:
        if device.kind in MEAN_FIELDS:
            h = zlib.crc32(device.id.encode()) % 40
            for n, at in enumerate(range(now - 240_000, now, 5000)):
                fields: dict[str, float | int] = {"seq": n}
                fields.update({f: float(10 + h + n % 3) for f in MEAN_FIELDS[device.kind]})
                points.append(Point(device.kind, reading_tags(city.id, device), fields, at))

    async def seed() -> None:
        client = InfluxClient(settings.influx)
        try:
            await client.ensure_database()
            await client.write(encode_many(points))
        finally:
            await client.close()

    asyncio.run(seed())
    yield settings, city, KeyStore(settings.api_keys_file).create("t", ("read",))[1]
    for db in (settings.influx.database, settings.region.database):
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{db}"'}, timeout=5)


async def _federate(settings: ApiSettings, city: City) -> list[fed.Message]:
    """Store, as the regional ingest would, Samarkand's (and a Tashkent) indicators."""
    base = InfluxClient(settings.influx)
    try:
        ((_, own),) = with_databases(settings, [city], base)
        window = latest_closed(datetime.now(UTC), settings.federation)
        mine = await indicators(own, city, window, settings, fed.load_corridors())
        scope = next(m for m in mine if isinstance(m, fed.ScopeIndicators) and m.district is None)
        others: list[fed.Message] = [
            scope.model_copy(update={"city": "samarkand", "name": "Samarkand"}),
            scope,  # a federated copy of a city served here: the local one wins
            fed.SegmentIndicators(
                city="samarkand",
                segment="sam-bogishamol-registan",
                interval=scope.interval,
                generated_at=scope.generated_at,
                length_km=9.0,
                speed_kmh=36.0,
                travel_time_s=900.0,
                sensors=4,
                expected=5,
            ),
        ]
        region = base.for_database(settings.region.database)
        await region.ensure_database()
        await region.write(encode_many(point(m) for m in others))
        return mine
    finally:
        await base.close()


def test_without_a_region_database_only_the_local_cities_show(
    region_setup: tuple[ApiSettings, City, str],
) -> None:
    settings, city, key = region_setup
    with TestClient(create_app(settings, city), headers={"X-API-Key": key}) as client:
        body = client.get("/v1/region/overview").json()
    assert [(c["city"], c["source"]) for c in body["cities"]] == [("tashkent", "local")]
    samarkand = body["corridors"][0]["segments"][1]
    assert (samarkand["source"], samarkand["speed_kmh"]) == (None, None)
    assert body["corridors"][0]["travel_time_s"] is None


def test_region_overview_sets_local_and_federated_cities_side_by_side(
    region_setup: tuple[ApiSettings, City, str],
) -> None:
    settings, city, key = region_setup
    mine = asyncio.run(_federate(settings, city))
    with TestClient(create_app(settings, city), headers={"X-API-Key": key}) as client:
        response = client.get("/v1/region/overview")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert [(c["city"], c["source"]) for c in body["cities"]] == [
            ("tashkent", "local"),
            ("samarkand", "federated"),
        ]
        for entry in body["cities"]:
            # The federated one is a copy of Tashkent's: both equal its own overview.
            window = entry["window"]
            own = client.get(
                "/v1/cities/tashkent/overview", params={"from": window["from"], "to": window["to"]}
            ).json()
            for section in ("air_quality", "traffic", "noise", "devices", "incidents"):
                assert entry[section] == own[section]
        local = body["cities"][0]
        assert local["traffic"]["avg_speed"]["value"] is not None
        assert local["delivery"]["expected"] > 0

        corridor = body["corridors"][0]
        tas, sam = corridor["segments"]
        seg = next(m for m in mine if isinstance(m, fed.SegmentIndicators))
        assert (tas["source"], tas["speed_kmh"], tas["travel_time_s"]) == (
            "local",
            seg.speed_kmh,
            seg.travel_time_s,
        )
        assert (sam["source"], sam["travel_time_s"]) == ("federated", 900.0)
        assert corridor["travel_time_s"] == pytest.approx(900.0 + (seg.travel_time_s or 0), abs=0.2)
        length = tas["length_km"] + sam["length_km"]
        assert corridor["speed_kmh"] == pytest.approx(
            length / corridor["travel_time_s"] * 3600, 0.01
        )
