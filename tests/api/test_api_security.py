"""API keys (401/403), rate limits (429), body limit (413), CORS, and InfluxQL injection."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from control import cli
from safecity.influx import InfluxClient, ParamValue, Series
from safecity.registry import City

OPEN = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# NGSI-LD's JSON-LD @context holds no data: JSON-LD processors fetch it without a key.
OPEN |= {"/ngsi-ld/v1/jsonldContexts/safecity"}
# Acknowledgement links: the signed, single-use token is the credential (no key).
TOKEN_ROUTES = {"/v1/ack/{token}"}
# The console's sign-in: no key (it opens a session); without one they tell nothing.
SIGN_IN_ROUTES = {"/auth/session", "/auth/logout"}


def _concrete(path: str, city: City) -> str:
    device = city.select(kind="noise")[0]
    return (
        path.replace("{city_id}", city.id)
        .replace("{district_id}", device.district)
        .replace("{device_id}", device.id)
        .replace("{incident_id}", "inc-0123456789abcdef0123")
        .replace("{entity_id}", f"urn:ngsi-ld:Device:{device.id}")
    )


def _routes(settings: ApiSettings, city: City) -> list[str]:
    # Every documented path, plus /metrics (kept out of the OpenAPI document).
    return [*create_app(settings, city).openapi()["paths"], "/metrics", "/openapi.json"]


def _methods(settings: ApiSettings, city: City) -> dict[str, list[str]]:
    paths = create_app(settings, city).openapi()["paths"]
    return {path: [m.upper() for m in ops] for path, ops in paths.items()}


def test_every_non_health_route_needs_a_key(
    client: TestClient, city: City, api_settings: ApiSettings
) -> None:
    routes = _routes(api_settings, city)
    methods = _methods(api_settings, city)
    paths = [p for p in routes if p not in OPEN | TOKEN_ROUTES | SIGN_IN_ROUTES]
    assert "/v1/stream" in paths and "/metrics" in paths and len(paths) >= 12
    assert methods["/v1/incidents/{incident_id}/ack"] == ["POST"]
    for path in paths:
        for method in methods.get(path, ["GET"]):
            for headers in (
                {"X-API-Key": ""},
                {"X-API-Key": "sck_00000000_" + "A" * 43},
                {"X-API-Key": "nope"},
            ):
                r = client.request(method, _concrete(path, city), headers=headers)
                assert r.status_code == 401, (method, path, r.text)
                assert r.headers["WWW-Authenticate"] == "ApiKey"
                assert "key" in r.json()["detail"]
    for path in OPEN & set(routes):
        assert client.get(path, headers={"X-API-Key": ""}).status_code == 200
    assert client.get("/auth/session", headers={"X-API-Key": ""}).json() == {
        "sign_in": False, "signed_in": False, "subject": None, "name": None,
        "scopes": [], "cities": [], "csrf_token": None,
    }  # fmt: skip
    assert client.post("/auth/logout").json() == {"logout_url": None}
    assert client.get("/auth/login").status_code == 404  # no provider configured
    for path in TOKEN_ROUTES:
        for method in ("GET", "POST"):
            # No key needed, and none helps: a token that is not a signed link is refused.
            r = client.request(method, path.replace("{token}", "not.signed"))
            assert 400 <= r.status_code < 500 and "link" in r.json()["detail"], r.text


def test_auth_comes_before_parameter_validation(client: TestClient) -> None:
    r = client.get("/v1/devices", params={"limit": 0}, headers={"X-API-Key": ""})
    assert r.status_code == 401


def test_scopes_403_vs_401(client: TestClient, city: City, keys: dict[str, str]) -> None:
    device = city.devices[0]
    path = f"/v1/devices/{device.id}/delivery"
    assert client.get(path, headers={"X-API-Key": keys["read"]}).status_code == 403
    assert "lacks scope 'operate'" in client.get(path).json()["detail"]
    assert client.get(path, headers={"X-API-Key": keys["operate"]}).status_code == 200
    assert (
        client.get(path, headers={"X-API-Key": keys["admin"]}).status_code == 200
    )  # admin > operate


def test_apikey_cli_create_list_revoke(
    client: TestClient, api_settings: ApiSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(api_settings.api_keys_file)
    assert (
        cli.main(
            [
                "apikey",
                "create",
                "--name",
                "ops team",
                "--scopes",
                "read,operate",
                "--keys-file",
                store,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    key = re.search(r"^SAFECITY_API_KEY=(sck_\S+)$", out, re.M)
    assert key is not None
    secret = key.group(1)
    # Stored hashed: the file never contains the key or its secret part.
    text = Path(store).read_text()
    assert secret not in text and secret.split("_", 2)[2] not in text
    assert oct(Path(store).stat().st_mode & 0o777) == "0o600"
    assert client.get("/v1/cities", headers={"X-API-Key": secret}).status_code == 200
    key_id = secret.split("_")[1]
    assert cli.main(["apikey", "list", "--keys-file", store]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "ops team" in listing and "read,operate" in listing
    assert secret not in listing
    assert cli.main(["apikey", "revoke", key_id, "--keys-file", store]) == 0
    # The running app picks the revocation up from the file, no restart.
    r = client.get("/v1/cities", headers={"X-API-Key": secret})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert (
        cli.main(["apikey", "create", "--name", "x", "--scopes", "root", "--keys-file", store]) == 2
    )
    assert cli.main(["apikey", "revoke", "ffffffff", "--keys-file", store]) == 2


def test_a_wrong_secret_with_a_known_id_is_401(client: TestClient, keys: dict[str, str]) -> None:
    key = keys["admin"]
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert client.get("/v1/cities", headers={"X-API-Key": tampered}).status_code == 401


@pytest.fixture
def limited(api_settings: ApiSettings, city: City, keys: dict[str, str]) -> Iterator[TestClient]:
    """An app allowing a burst of 3 requests, then one every 10 s, per key."""
    settings = api_settings.model_copy(update={"rate_limit_rps": 0.1, "rate_limit_burst": 3})
    with TestClient(create_app(settings, city), headers={"X-API-Key": keys["read"]}) as c:
        yield c


def test_burst_over_the_rate_is_429_with_retry_after(
    limited: TestClient, keys: dict[str, str]
) -> None:
    codes = [limited.get("/v1/cities").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = limited.get("/v1/cities")
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    assert "rate limit" in r.json()["detail"]
    # Buckets are per key: another key is unaffected.
    assert limited.get("/v1/cities", headers={"X-API-Key": keys["operate"]}).status_code == 200


def test_large_body_is_413(client: TestClient, api_settings: ApiSettings) -> None:
    body = b"x" * (api_settings.max_body_bytes + 1)
    r = client.request("POST", "/v1/devices", content=body)
    assert r.status_code == 413
    assert "larger than" in r.json()["detail"]

    assert client.request("POST", "/v1/devices", content=b"{}").status_code == 405


def test_cors_allow_list(api_settings: ApiSettings, city: City, keys: dict[str, str]) -> None:
    settings = api_settings.model_copy(update={"cors_origins": ["https://console.example"]})
    with TestClient(create_app(settings, city), headers={"X-API-Key": keys["read"]}) as c:
        ok = c.get("/v1/cities", headers={"Origin": "https://console.example"})
        assert ok.headers["access-control-allow-origin"] == "https://console.example"
        bad = c.get("/v1/cities", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
        pre = c.options(
            "/v1/cities",
            headers={
                "Origin": "https://console.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-API-Key",
            },
        )
        assert pre.status_code == 200
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        refused = c.options(
            "/v1/cities",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert refused.status_code == 400


class RecordingInflux(InfluxClient):
    """The real client, recording every statement and its bound parameters."""

    calls: list[tuple[str, dict[str, ParamValue]]]

    async def query(
        self, statement: str, params: Mapping[str, ParamValue] | None = None
    ) -> list[Series]:
        self.calls.append((statement, dict(params or {})))
        return await super().query(statement, params)


PAYLOADS = [
    "x' OR '1'='1",
    'x" OR "1"="1',
    'noise"; DROP DATABASE "x',
    "a\nDROP MEASUREMENT noise",
    "/.*/",
    "x) OR (1=1",
    'laeq), max("laeq',
    "$city",
]


def _endpoints(city: City) -> list[tuple[str, dict[str, str]]]:
    device = city.select(kind="noise")[0]
    base = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}
    return [
        ("/v1/cities/{p}/overview", {}),
        ("/v1/cities/tashkent/districts/{p}/overview", {}),
        ("/v1/cities/{p}/districts", {}),
        ("/v1/cities/tashkent/series", {"kind": "noise", "field": "laeq", **base}),
        (f"/v1/devices/{device.id}/history", {"field": "laeq", **base}),
        ("/v1/devices/{p}", {}),
        ("/v1/devices/{p}/latest", {}),
        ("/v1/devices/{p}/history", {"field": "laeq"}),
        ("/v1/devices/{p}/delivery", {}),
        ("/v1/devices", {}),
        ("/v1/events", base),
        ("/v1/cities/tashkent/overview", {}),
        (f"/v1/devices/{device.id}/delivery", {}),
        ("/v1/stream", {}),
    ]


QUERY_PARAMS = {
    "/v1/cities/tashkent/series": ["kind", "field", "district", "from", "to", "every", "agg"],
    "/history": ["field", "from", "to", "every", "agg"],
    "/v1/devices": ["city", "district", "kind", "status", "limit", "cursor"],
    "/v1/events": ["city", "district", "device_id", "type", "severity", "from", "to", "limit"],
    "/v1/cities/tashkent/overview": ["from", "to"],
    "/delivery": ["from", "to"],
    "/v1/stream": ["city", "district", "kind"],
}


def test_injection_through_every_parameter_is_refused_and_never_spliced(
    api_settings: ApiSettings, city: City, keys: dict[str, str], influxd: Any
) -> None:
    app = create_app(api_settings, city)
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": keys["admin"]}) as c:
        recorder = RecordingInflux(api_settings.influx)
        recorder.calls = []
        app.state.influx = recorder
        tried = 0
        for path, params in _endpoints(city):
            cases: list[tuple[str, dict[str, str]]] = []
            if "{p}" in path:
                cases += [
                    (path.replace("{p}", quote(payload, safe="")), params) for payload in PAYLOADS
                ]
            else:
                names = next((v for k, v in QUERY_PARAMS.items() if path.endswith(k)), [])
                for name in names:
                    cases += [(path, {**params, name: payload}) for payload in PAYLOADS]
            for url, query in cases:
                r = c.get(url, params=query)
                tried += 1
                assert 400 <= r.status_code < 500, (url, query, r.status_code, r.text)
        assert tried > 300
        # Nothing a request sent ever became statement text.
        for statement, _ in recorder.calls:
            for payload in PAYLOADS:
                assert payload not in statement
        asyncio_run_close(recorder)
    # The database is still there, with its measurements.
    shown = httpx.post(f"{influxd.url}/query", data={"q": "SHOW DATABASES"}, timeout=10).json()
    names = [v[0] for v in shown["results"][0]["series"][0]["values"]]
    assert api_settings.influx.database in names


def asyncio_run_close(client: InfluxClient) -> None:
    """Close a client created outside the app's lifespan."""
    import asyncio

    asyncio.run(client.close())


def test_valid_values_travel_as_bound_parameters(
    api_settings: ApiSettings, city: City, keys: dict[str, str]
) -> None:
    app = create_app(api_settings, city)
    device = city.select(kind="noise", district="uchtepa")[0]
    with TestClient(app, headers={"X-API-Key": keys["admin"]}) as c:
        recorder = RecordingInflux(api_settings.influx)
        recorder.calls = []
        app.state.influx = recorder
        assert (
            c.get(
                "/v1/cities/tashkent/series",
                params={"kind": "noise", "field": "laeq", "district": "uchtepa"},
            ).status_code
            == 200
        )
        assert (
            c.get("/v1/events", params={"device_id": device.id, "severity": "high"}).status_code
            == 200
        )
        assert c.get(f"/v1/devices/{device.id}/delivery").status_code == 200
        for statement, _params in recorder.calls:
            for value in ("uchtepa", device.id, "tashkent", "high"):
                assert value not in statement
        bound = [p for _, p in recorder.calls]
        # The series (from whichever tier serves it) names its city and district by value.
        assert any(p.get("city") == "tashkent" and p.get("district") == "uchtepa" for p in bound)
        assert any(p.get("device_id") == device.id and p.get("severity") == "high" for p in bound)
        asyncio_run_close(recorder)
