"""One rule for the whole API: unknown ids, the page-size bound, windows, bodies, readiness."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.settings import ApiSettings

UNKNOWN_DISTRICT = [
    ("/v1/cities/tashkent/districts/atlantis/overview", {}),
    ("/v1/cities/tashkent/series", {"kind": "noise", "field": "laeq", "district": "atlantis"}),
    ("/v1/devices", {"district": "atlantis"}),
    ("/v1/events", {"district": "atlantis"}),
    ("/v1/incidents", {"district": "atlantis"}),
    ("/v1/incidents/figures", {"district": "atlantis"}),
    ("/v1/cities/tashkent/export/events", {"district": "atlantis"}),
    (
        "/v1/cities/tashkent/export/series",
        {"kind": "noise", "field": "laeq", "district": "atlantis"},
    ),
    ("/v1/stream", {"district": "atlantis"}),
]


@pytest.mark.parametrize(("path", "params"), UNKNOWN_DISTRICT)
def test_an_unknown_district_is_404_in_a_path_and_in_a_query(
    client: TestClient, path: str, params: dict[str, str]
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 404, r.text
    assert r.json()["detail"].startswith("unknown district atlantis (known: ")


def test_an_unknown_device_is_404_in_a_path_and_in_a_query(client: TestClient) -> None:
    assert client.get("/v1/devices/ghost-001").status_code == 404
    r = client.get("/v1/events", params={"device_id": "ghost-001"})
    assert r.status_code == 404 and r.json()["detail"] == "unknown device ghost-001"


def test_one_page_size_bound_in_schema_and_server(
    client: TestClient, api_settings: ApiSettings
) -> None:
    spec = client.get("/openapi.json").json()
    bound = api_settings.max_page_size
    for path in ("/v1/devices", "/v1/events", "/v1/incidents"):
        (limit,) = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
        (integer,) = [b for b in limit["schema"]["anyOf"] if b.get("type") == "integer"]
        assert integer["maximum"] == bound, path
        assert client.get(path, params={"limit": bound}).status_code == 200, path
        r = client.get(path, params={"limit": bound + 1})
        assert r.status_code == 422 and f"at most {bound}" in r.json()["detail"], path
