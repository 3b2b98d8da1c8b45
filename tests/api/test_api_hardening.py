"""Security headers on every response, and the docs in production mode (off / behind a key)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from safecity.registry import City

COMMON = {"x-content-type-options": "nosniff", "x-frame-options": "DENY"}


def _common(headers: httpx.Headers, where: str) -> None:
    for name, value in COMMON.items():
        assert headers.get(name) == value, (where, name)
    assert headers.get("referrer-policy") == "no-referrer", where
    csp = headers.get("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp, where


def test_every_response_carries_the_security_headers(
    client: TestClient, keys: dict[str, str]
) -> None:
    operate = {"X-API-Key": keys["operate"]}
    data = (
        client.get("/v1/cities"),
        client.get("/v1/devices", params={"limit": 1}),
        client.get("/v1/incidents"),
        client.get("/metrics", headers=operate),
        client.get("/v1/devices", params={"limit": 0}),  # 422
        client.get("/v1/cities", headers={"X-API-Key": ""}),  # 401
        client.get("/v1/nothing-here"),  # 404
    )
    for r in data:
        where = f"{r.request.url.path} {r.status_code}"
        _common(r.headers, where)
        # JSON never loads anything; data is never cached.
        assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert r.headers["cache-control"] == "no-store", where
    assert {r.status_code for r in data} == {200, 401, 404, 422}
    for path in ("/healthz", "/openapi.json"):
        _common(client.get(path).headers, path)
    # The console keeps its own full policy (and its revalidating cache).
    page = client.get("/")
    _common(page.headers, "/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache"
    # The docs load only their bundled assets: a same-origin policy, no inline script.
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js"):
        docs = client.get(path)
        _common(docs.headers, path)
        csp = docs.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp, path
    assert client.get("/docs/assets/../app.py").status_code == 404
    big = client.post("/v1/incidents/inc-00000000000000000000/ack", content=b"x" * 20_000)
    assert big.status_code == 413
    _common(big.headers, "413")


@pytest.fixture
def production(api_settings: ApiSettings, city: City) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"env": "production"})
    with TestClient(create_app(settings, city), raise_server_exceptions=False) as c:
        yield c


def test_production_turns_the_docs_off_and_the_schema_behind_a_key(
    production: TestClient, client: TestClient, keys: dict[str, str]
) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect", "/docs/assets/swagger-ui.css"):
        assert production.get(path).status_code == 404, path
    refused = production.get("/openapi.json")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "ApiKey"
    schema = production.get("/openapi.json", headers={"X-API-Key": keys["read"]})
    assert schema.status_code == 200 and "/v1/incidents" in schema.json()["paths"]
    # The API itself works as before.
    assert production.get("/v1/cities", headers={"X-API-Key": keys["read"]}).status_code == 200
    # Development (the default) publishes them without a key.
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path, headers={"X-API-Key": ""}).status_code == 200, path


def test_env_setting_accepts_only_the_two_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_ENV", "production")
    assert ApiSettings().env == "production"
    monkeypatch.setenv("SAFECITY_ENV", "staging")
    with pytest.raises(ValueError, match="development"):
        ApiSettings()
