"""Fixtures of the API tests: a fresh database per test module on the session's influxd."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode_many
from safecity.readings import Reading, format_ts, parse
from safecity.registry import City, Device, default_city
from safecity.schema import reading_point
from safecity.settings import ApiSettings, InfluxSettings
from safecity.stack import Influxd, free_port


@pytest.fixture(scope="session")
def city() -> City:
    """The built-in default city (Tashkent)."""
    return default_city()


def _module_db(request: pytest.FixtureRequest) -> str:
    module = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")
    return f"api_{module}_{secrets.token_hex(4)}"[:64]


@pytest.fixture(scope="module")
def api_settings(influxd: Influxd, request: pytest.FixtureRequest) -> Iterator[ApiSettings]:
    """API settings pointing at a database of its own on the session's influxd."""
    settings = ApiSettings(
        influx=InfluxSettings(url=influxd.url, database=_module_db(request), gzip=True),
        max_page_size=50,
    )
    asyncio.run(_ensure(settings.influx))
    yield settings
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            f"{influxd.url}/query",
            data={"q": f'DROP DATABASE "{settings.influx.database}"'},
            timeout=5,
        )


async def _ensure(settings: InfluxSettings) -> None:
    client = InfluxClient(settings)
    try:
        await client.ensure_database()
    finally:
        await client.close()


@pytest.fixture(scope="module")
def client(api_settings: ApiSettings, city: City) -> Iterator[TestClient]:
    """A TestClient of the app (lifespan run) against the module's database."""
    with TestClient(create_app(api_settings, city), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def dead_settings() -> ApiSettings:
    """API settings pointing at a port where nothing listens."""
    return ApiSettings(
        influx=InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="nowhere", timeout=2)
    )


def noise_reading(ts: datetime, seq: int, laeq: float, lamax: float, la90: float) -> Reading:
    """A valid noise reading."""
    payload = (
        f'{{"ts": "{format_ts(ts)}", "seq": {seq}, '
        f'"values": {{"laeq": {laeq}, "lamax": {lamax}, "la90": {la90}}}}}'
    ).encode()
    reading = parse("noise", payload, past_window=None, future_window=None)
    assert isinstance(reading, Reading), reading
    return reading


def write_readings(
    settings: ApiSettings, city: City, items: Iterable[tuple[Device, Reading]]
) -> None:
    """Write readings through the schema's points, as ingest does."""
    body = encode_many(reading_point(city.id, device, reading) for device, reading in items)

    async def _write() -> None:
        client = InfluxClient(settings.influx)
        try:
            await client.write(body)
        finally:
            await client.close()

    asyncio.run(_write())


NoiseWriter = Callable[[Iterable[tuple[Device, datetime, int, tuple[float, float, float]]]], None]


@pytest.fixture(scope="module")
def write_noise(api_settings: ApiSettings, city: City) -> NoiseWriter:
    """Write noise readings `(device, ts, seq, (laeq, lamax, la90))` to the module's database."""

    def write(items: Iterable[tuple[Device, datetime, int, tuple[float, float, float]]]) -> None:
        write_readings(
            api_settings,
            city,
            [(device, noise_reading(ts, seq, *values)) for device, ts, seq, values in items],
        )

    return write
