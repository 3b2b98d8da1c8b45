"""GET /v1/devices/{device_id}/latest against a real InfluxDB."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.queries import StoredReading, latest_reading
from api.settings import ApiSettings
from safecity.influx import InfluxClient
from safecity.readings import format_ts
from safecity.registry import City, Device

NoiseWriter = Callable[[Iterable[tuple[Device, datetime, int, tuple[float, float, float]]]], None]


def _ago(now: datetime, minutes: float) -> datetime:
    """`minutes` before `now`, at a millisecond part the API must keep (123 ms)."""
    return now.replace(microsecond=123_000) - timedelta(minutes=minutes)


def _noise(city: City, index: int) -> Device:
    return city.select(kind="noise")[index]


@pytest.fixture(scope="module")
def stored(write_noise: NoiseWriter, city: City, module_now: datetime) -> Device:
    """A noise device with three readings written out of order, plus a neighbour's reading."""
    device = _noise(city, 0)
    write_noise(
        [
            (device, _ago(module_now, 10), 9, (55.0, 71.25, 42.0)),  # newest
            (device, _ago(module_now, 30), 7, (51.5, 60.0, 40.0)),
            (device, _ago(module_now, 20), 8, (53.0, 65.0, 41.0)),
            (_noise(city, 1), _ago(module_now, 5), 100, (80.0, 90.0, 70.0)),  # newer, other device
        ]
    )
    return device


def test_latest_is_the_newest_by_device_timestamp(
    client: TestClient, stored: Device, module_now: datetime
) -> None:
    response = client.get(f"/v1/devices/{stored.id}/latest")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "device_id": stored.id,
        "kind": "noise",
        "district": stored.district,
        "ts": format_ts(_ago(module_now, 10)),
        "seq": 9,
        "values": {"laeq": 55.0, "lamax": 71.25, "la90": 42.0},
    }
    assert body["ts"].endswith(".123Z")
    # InfluxDB's JSON writes 55.0 as 55; the API gives floats back as floats.
    assert isinstance(body["values"]["laeq"], float)


def test_a_newer_reading_replaces_the_latest(
    client: TestClient, write_noise: NoiseWriter, city: City, module_now: datetime
) -> None:
    device = _noise(city, 2)
    write_noise([(device, _ago(module_now, 3), 1, (33.0, 44.0, 22.0))])
    assert client.get(f"/v1/devices/{device.id}/latest").json()["seq"] == 1
    write_noise([(device, _ago(module_now, 2), 2, (34.5, 45.0, 23.0))])
    body = client.get(f"/v1/devices/{device.id}/latest").json()
    assert (body["seq"], body["ts"], body["values"]["laeq"]) == (
        2,
        format_ts(_ago(module_now, 2)),
        34.5,
    )


def test_redelivered_reading_overwrites_itself(
    client: TestClient, write_noise: NoiseWriter, city: City, module_now: datetime
) -> None:
    device = _noise(city, 3)
    write_noise([(device, _ago(module_now, 4), 5, (40.0, 50.0, 30.0))])
    write_noise([(device, _ago(module_now, 4), 5, (40.0, 50.0, 30.0))])
    body = client.get(f"/v1/devices/{device.id}/latest").json()
    assert (body["seq"], body["values"]["laeq"]) == (5, 40.0)


def test_latest_404_when_nothing_stored(client: TestClient, city: City, stored: Device) -> None:
    device = city.select(kind="traffic")[0]
    response = client.get(f"/v1/devices/{device.id}/latest")
    assert response.status_code == 404
    assert response.json() == {"detail": f"no reading stored yet for device {device.id}"}


def test_latest_404_for_a_noise_device_without_readings(
    client: TestClient, city: City, stored: Device
) -> None:
    device = _noise(city, 5)  # same measurement as stored readings, none of its own
    response = client.get(f"/v1/devices/{device.id}/latest")
    assert response.status_code == 404


def test_latest_of_unknown_device_is_404(client: TestClient) -> None:
    response = client.get("/v1/devices/ghost-001/latest")
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown device ghost-001"}


def test_injection_in_path_is_4xx(client: TestClient, stored: Device) -> None:
    for device_id in ('x" OR 1=1 --', f'{stored.id}" OR "device_id" =~ /.*/ --'):
        response = client.get(f"/v1/devices/{quote(device_id, safe='')}/latest")
        assert response.status_code in (404, 422), response.text
        assert isinstance(response.json()["detail"], str)


def test_query_layer_binds_the_device_id(api_settings: ApiSettings, stored: Device) -> None:
    """Below the route's validation: a hostile id is a bound value, so it matches nothing."""
    hostile = Device.model_construct(
        type="device",
        id=f'{stored.id}" OR "device_id" != \'',
        kind="noise",
        district=stored.district,
        location=stored.location,
    )

    async def run() -> tuple[StoredReading | None, StoredReading | None]:
        influx = InfluxClient(api_settings.influx)
        try:
            return await latest_reading(influx, hostile), await latest_reading(influx, stored)
        finally:
            await influx.close()

    evil, good = asyncio.run(run())
    assert evil is None
    assert good is not None
    assert good.seq == 9


def test_latest_503_when_influx_is_down(
    dead_settings: ApiSettings, city: City, keys: dict[str, str]
) -> None:
    device = _noise(city, 0)
    app = create_app(dead_settings, city)
    with TestClient(
        app, raise_server_exceptions=False, headers={"X-API-Key": keys["read"]}
    ) as client:
        response = client.get(f"/v1/devices/{device.id}/latest")
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]


def test_latest_503_when_database_missing(
    api_settings: ApiSettings, city: City, keys: dict[str, str]
) -> None:
    influx = api_settings.influx.model_copy(update={"database": "never_created"})
    settings = api_settings.model_copy(update={"influx": influx})
    app = create_app(settings, city)
    with TestClient(
        app, raise_server_exceptions=False, headers={"X-API-Key": keys["read"]}
    ) as client:
        response = client.get(f"/v1/devices/{_noise(city, 0).id}/latest")
    assert response.status_code == 503
    assert "database not found" in response.json()["detail"]
