"""GET /metrics: Prometheus text with the request counter labelled by route template."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import wait_for

from api import metrics as api_metrics
from api.app import create_app
from api.settings import ApiSettings
from safecity.registry import City


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_need_the_operate_scope(client: TestClient, keys: dict[str, str]) -> None:
    assert client.get("/metrics", headers={"X-API-Key": ""}).status_code == 401
    assert client.get("/metrics").status_code == 403  # the client's default key reads only
    assert client.get("/metrics", headers={"X-API-Key": keys["admin"]}).status_code == 200


def test_metrics_count_requests_by_route_template(
    client: TestClient, city: City, keys: dict[str, str]
) -> None:
    device = city.devices[0]
    client.get("/healthz")
    client.get(f"/v1/devices/{device.id}")
    client.get("/v1/devices/ghost-123")
    client.get("/v1/devices", params={"limit": 0})
    client.get("/definitely/not/a/route/12345")
    response = client.get("/metrics", headers={"X-API-Key": keys["operate"]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    samples = _samples(text)

    def count(method: str, route: str, status: str) -> float:
        key = (
            "safecity_api_requests_total",
            (("method", method), ("route", route), ("status", status)),
        )
        return samples.get(key, 0.0)

    assert count("GET", "/healthz", "200") >= 1
    assert count("GET", "/v1/devices/{device_id}", "200") >= 1
    assert count("GET", "/v1/devices/{device_id}", "404") >= 1
    assert count("GET", "/v1/devices", "422") >= 1
    assert count("GET", "<unmatched>", "404") >= 1
    # Raw paths never become labels: every route label is a template or <unmatched>.
    api_routes = {
        dict(labels)["route"]
        for name, labels in samples
        if name.startswith("safecity_api_request") and "route" in dict(labels)
    }
    # Templates only: no label carries a concrete device id.
    assert {"/healthz", "/v1/devices/{device_id}", "<unmatched>"} <= api_routes
    assert all(r == "<unmatched>" or r.startswith("/") for r in api_routes)
    assert not any(device.id in r or "ghost-123" in r for r in api_routes), api_routes
    assert any(
        name == "safecity_api_request_seconds_count" and ("route", "/healthz") in labels
        for name, labels in samples
    )


def _influx_queries(url: str) -> int:
    """Queries InfluxDB has served so far (its own `/debug/vars` counter)."""
    stats = httpx.get(f"{url}/debug/vars", timeout=5).json()
    return sum(
        int(v["values"]["queryReq"])
        for k, v in stats.items()
        if k.startswith("httpd") and isinstance(v, dict)
    )


def test_a_scrape_issues_no_influxdb_query(
    api_settings: ApiSettings,
    city: City,
    keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No periodic refresh during the test: only the one at start-up may query.
    monkeypatch.setattr(api_metrics, "FIGURES_REFRESH_S", 3600.0)
    operate = {"X-API-Key": keys["operate"]}
    url = api_settings.influx.url
    with TestClient(create_app(api_settings, city), headers=operate) as client:
        wait_for(
            lambda: _samples(client.get("/metrics").text).get(
                ("safecity_api_incident_figures_refreshed_timestamp_seconds", ()), 0.0
            ),
            30,
            "the start-up refresh of the incident figures",
            interval=0.05,
        )
        before = _influx_queries(url)
        for _ in range(20):
            response = client.get("/metrics")
            assert response.status_code == 200
            assert "safecity_api_incidents" in response.text
        assert _influx_queries(url) == before


def test_scrapes_succeed_while_influxdb_is_unreachable(
    dead_settings: ApiSettings, city: City, keys: dict[str, str]
) -> None:
    operate = {"X-API-Key": keys["operate"]}
    failures = "safecity_api_incident_figures_refresh_failures_total"
    with TestClient(create_app(dead_settings, city), headers=operate) as client:

        def failed_refreshes() -> float:
            response = client.get("/metrics")
            assert response.status_code == 200
            return _samples(response.text).get((failures, ()), 0.0)

        failed = wait_for(failed_refreshes, 30, "a failed refresh counted", interval=0.05)
        # The refresh failed (storage away), was counted, and scraping went on regardless.
        assert failed >= 1
