"""A generic NGSI-LD client from PyPI (ngsildclient) reads the running API as an
integrator's program would: it connects, counts and queries entities by type, retrieves
one entity and a temporal representation, all over real HTTP from `safecity api` on the
session's InfluxDB."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import requests
from api_seed import reading, write
from ngsildclient import Client, Entity

from api.settings import ApiSettings
from control.stack import LocalStack
from safecity.influx import InfluxClient
from safecity.readings import format_ts
from safecity.registry import default_city
from safecity.settings import InfluxSettings

CITY = default_city()
NOISE = CITY.select(kind="noise")[:3]


class ApiKeyAuth(requests.auth.AuthBase):
    """Our key in the X-API-Key header of every request the client sends."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["X-API-Key"] = self.key
        return r


async def ensure(settings: InfluxSettings) -> None:
    """The database and its retention policies, as ingest creates them."""
    client = InfluxClient(settings)
    try:
        await client.ensure_database()
    finally:
        await client.close()


def level(i: int, minutes: int) -> float:
    return 55.0 + i + minutes / 4


def test_ngsildclient_reads_entities_and_temporal_data(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    module_now: datetime,
) -> None:
    settings = ApiSettings(influx=InfluxSettings(url=stack.influx_url, database=influx_db))
    asyncio.run(ensure(settings.influx))
    write(
        settings,
        [
            reading(
                CITY,
                d,
                module_now - timedelta(minutes=m),
                50 - m,
                laeq=level(i, m),
                lamax=80.0,
                la90=40.0,
            )
            for i, d in enumerate(NOISE)
            for m in range(6)
        ],
    )
    api = start_api(influx_db)
    host, port = api.url.removeprefix("http://").split(":")
    client = Client(
        hostname=host, port=int(port), custom_auth=ApiKeyAuth(api.api_key), verbose=False
    )
    try:
        assert client.is_connected()
        assert client.entities.count(type="NoiseLevelObserved") == len(NOISE)
        found = client.query(type="NoiseLevelObserved", limit=2)
        assert sorted(e.id for e in found) == sorted(
            f"urn:ngsi-ld:NoiseLevelObserved:{d.id}" for d in NOISE
        )
        first = next(e for e in found if e.id.endswith(NOISE[0].id))
        assert first["LAeq"].value == level(0, 0)
        assert first["LAeq"]["unitCode"] == "2N"
        assert first["refDevice"]["object"] == f"urn:ngsi-ld:Device:{NOISE[0].id}"
        assert client.entities.count(type="NoiseLevelObserved", q="LAeq>56.5") == 1

        device = client.entities.get(f"urn:ngsi-ld:Device:{NOISE[1].id}")
        assert isinstance(device, Entity)
        assert device.type == "Device"
        assert device["location"]["value"]["coordinates"] == list(NOISE[1].location)

        troe = client.temporal.get(f"urn:ngsi-ld:NoiseLevelObserved:{NOISE[2].id}", attrs=["LAeq"])
        assert troe["LAeq"]["values"] == [
            [level(2, m), format_ts(module_now - timedelta(minutes=m))] for m in range(5, -1, -1)
        ]
    finally:
        client.close()
