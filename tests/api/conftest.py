"""Fixtures of the API tests: a fresh database per test module on the session's influxd."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.apikeys import SCOPES, KeyStore
from api.app import create_app
from api.settings import ApiSettings
from control.stack import Influxd, free_port
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode_many
from safecity.readings import Reading, format_ts, parse
from safecity.registry import City, Device, default_city
from safecity.schema import reading_point
from safecity.settings import InfluxSettings


@pytest.fixture(scope="session")
def city() -> City:
    """The built-in default city (Tashkent)."""
    return default_city()


def _module_db(request: pytest.FixtureRequest) -> str:
    module = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")
    return f"api_{module}_{secrets.token_hex(4)}"[:64]


@pytest.fixture(scope="module")
def api_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of the module's own for the key store, dead letters and ledger."""
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def api_settings(
    influxd: Influxd, request: pytest.FixtureRequest, api_dir: Path
) -> Iterator[ApiSettings]:
    """API settings pointing at a database of its own on the session's influxd."""
    settings = ApiSettings(
        influx=InfluxSettings(url=influxd.url, database=_module_db(request), gzip=True),
        max_page_size=50,
        api_keys_file=api_dir / "apikeys.json",
        audit_log_file=api_dir / "audit" / "api-audit.jsonl",
        deadletter_dir=api_dir / "deadletter",
        ledger_file=api_dir / "ledger.jsonl",
        # Generous: the rate limit has tests of its own; the rest must never hit it.
        rate_limit_rps=10_000,
        rate_limit_burst=10_000,
        # Uncached, so a test sees what it just wrote; the cache has tests of its own.
        overview_cache_ttl=0,
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
def keys(api_settings: ApiSettings) -> dict[str, str]:
    """Plaintext keys by scope (read, operate, admin) in the module's key store."""
    store = KeyStore(api_settings.api_keys_file)
    return {scope: store.create(f"test-{scope}", (scope,))[1] for scope in SCOPES}


@pytest.fixture(scope="module")
def client(api_settings: ApiSettings, city: City, keys: dict[str, str]) -> Iterator[TestClient]:
    """A TestClient of the app (lifespan run) against the module's database, with a read key."""
    app = create_app(api_settings, city)
    with TestClient(
        app, raise_server_exceptions=False, headers={"X-API-Key": keys["read"]}
    ) as test_client:
        yield test_client


@pytest.fixture
def dead_settings(api_settings: ApiSettings) -> ApiSettings:
    """The module's API settings (keys included), but InfluxDB at a port where nothing listens."""
    dead = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="nowhere", timeout=2)
    return api_settings.model_copy(update={"influx": dead})


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
