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


def test_a_body_that_is_not_json_is_a_documented_422(
    client: TestClient, keys: dict[str, str]
) -> None:
    r = client.post(
        "/v1/incidents/inc-0123456789abcdef0123/ack",
        content=b'{"note": ',
        headers={"X-API-Key": keys["operate"], "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json() == {"detail": "body: not valid JSON at character 9 (Expecting value)"}
    spec = client.get("/openapi.json").json()
    documented = spec["paths"]["/v1/incidents/{incident_id}/ack"]["post"]["responses"]
    assert "422" in documented and "400" not in documented


def test_durations_read_in_human_units() -> None:
    from api.errors import human_duration

    assert [human_duration(s) for s in (0.004, 59.2, 600, 7200, 9000, 2_678_400, 218_443_226)] == [
        "1 s",
        "60 s",
        "10 min",
        "2 h",
        "2 h 30 min",
        "31 days",
        "2528.3 days",
    ]


def test_rate_limit_says_when_to_retry_in_whole_seconds(
    api_settings: ApiSettings, keys: dict[str, str]
) -> None:
    from api.app import create_app
    from safecity.registry import default_city

    slow = api_settings.model_copy(update={"rate_limit_rps": 0.5, "rate_limit_burst": 1})
    with TestClient(create_app(slow, default_city()), headers={"X-API-Key": keys["read"]}) as c:
        assert c.get("/v1/cities").status_code == 200
        r = c.get("/v1/cities")
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert r.json()["detail"].endswith("retry in 2 s")
