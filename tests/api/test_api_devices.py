"""GET /v1/devices (filters, cursor pagination) and GET /v1/devices/{device_id}."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.directory import decode_cursor, encode_cursor
from safecity import catalogue
from safecity.registry import City


def _walk(client: TestClient, **params: Any) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/devices", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert len(body["items"]) <= params.get("limit", 100)
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 1000, "pagination does not terminate"


def test_default_page(client: TestClient, city: City) -> None:
    body = client.get("/v1/devices").json()
    # Default 100, capped by max_page_size (50 in these tests).
    assert len(body["items"]) == min(50, len(city.devices))
    first = body["items"][0]
    assert set(first) == {"id", "kind", "district", "city", "location"}
    assert set(first["location"]) == {"lon", "lat"}
    assert first["city"] == city.id
    device = city.device(first["id"])
    assert device is not None
    assert (first["location"]["lon"], first["location"]["lat"]) == device.location
    assert first["kind"] == device.kind
    assert first["district"] == device.district


def test_pagination_covers_every_device_exactly_once(client: TestClient, city: City) -> None:
    items, pages = _walk(client, limit=7)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)) == len(city.devices)
    assert set(ids) == {d.id for d in city.devices}
    assert ids == sorted(ids)
    assert pages == -(-len(city.devices) // 7)


def test_exact_multiple_page_size_ends_without_empty_page(client: TestClient) -> None:
    noise = client.get("/v1/devices", params={"kind": "noise", "limit": 50}).json()["items"]
    n = len(noise)
    assert n >= 2
    items, pages = _walk(client, kind="noise", limit=n)
    assert len(items) == n
    assert pages == 1


@pytest.mark.parametrize("kind", ["noise", "traffic", "air_quality"])
def test_filter_by_kind_with_pagination(client: TestClient, city: City, kind: str) -> None:
    items, _ = _walk(client, kind=kind, limit=3)
    assert {i["id"] for i in items} == {d.id for d in city.select(kind=kind)}
    assert all(i["kind"] == kind for i in items)


def test_filter_by_district_and_kind(client: TestClient, city: City) -> None:
    district = city.districts[0].id
    items, _ = _walk(client, district=district, limit=5)
    assert {i["id"] for i in items} == {d.id for d in city.select(district=district)}
    kind = items[0]["kind"]
    both, _ = _walk(client, district=district, kind=kind, limit=2)
    expected = {d.id for d in city.select(district=district, kind=kind)}
    assert {i["id"] for i in both} == expected
    assert len(both) == len(expected)


def test_filter_by_own_city(client: TestClient, city: City) -> None:
    items, _ = _walk(client, city=city.id, limit=50)
    assert len(items) == len(city.devices)


def test_known_kind_without_devices_is_an_empty_page(client: TestClient, city: City) -> None:
    # 13 kinds over 12 districts with few devices of some kinds: some pair is empty.
    empty = [
        (d.id, k)
        for d in city.districts
        for k in catalogue.KINDS
        if not city.select(district=d.id, kind=k)
    ]
    assert empty, "the test registry has every kind in every district"
    district, missing = empty[0]
    body = client.get("/v1/devices", params={"district": district, "kind": missing}).json()
    assert body == {"items": [], "next_cursor": None}


def test_other_city_is_404(client: TestClient) -> None:
    response = client.get("/v1/devices", params={"city": "almaty"})
    assert response.status_code == 404
    assert "almaty" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"kind": "submarine"}, "'kind'"),
        ({"kind": 'noise" OR 1=1'}, "'kind'"),
        ({"limit": 0}, "'limit'"),
        ({"limit": -5}, "'limit'"),
        ({"limit": 51}, "'limit'"),
        ({"limit": "ten"}, "'limit'"),
        ({"limit": 10**30}, "'limit'"),
        ({"cursor": "!!!"}, "'cursor'"),
        ({"cursor": "x" * 500}, "'cursor'"),
        ({"kind": "k" * 100}, "'kind'"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    client: TestClient, params: dict[str, Any], names: str
) -> None:
    response = client.get("/v1/devices", params=params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert names in detail


def test_cursor_round_trip() -> None:
    for device_id in ("a", "noise-chilanzar-001", "x.y_z-9" * 9):
        assert decode_cursor(encode_cursor(device_id)) == device_id


def test_get_device(client: TestClient, city: City) -> None:
    device = city.devices[3]
    response = client.get(f"/v1/devices/{device.id}")
    assert response.status_code == 200
    assert response.json() == {
        "id": device.id,
        "kind": device.kind,
        "district": device.district,
        "city": city.id,
        "location": {"lon": device.location[0], "lat": device.location[1]},
        # Nothing stored for it in this module's database: never seen, so offline.
        "status": "offline",
        "last_seen": None,
    }


def test_unknown_device_is_404_with_reason(client: TestClient) -> None:
    response = client.get("/v1/devices/no-such-device")
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown device no-such-device"}


@pytest.mark.parametrize(
    "device_id",
    ['x" OR 1=1 --', "x' OR '1'='1", "UPPER", "a;DROP DATABASE x", "%00", "a" * 65, "é"],
)
def test_malformed_device_id_is_4xx_never_5xx(client: TestClient, device_id: str) -> None:
    for path in (f"/v1/devices/{device_id}", f"/v1/devices/{device_id}/latest"):
        response = client.get(path)
        assert response.status_code in (404, 422), (path, response.status_code, response.text)
        assert isinstance(response.json()["detail"], str)
