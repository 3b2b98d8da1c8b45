"""GET /metrics: Prometheus text with the request counter labelled by route template."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from safecity.registry import City


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_requests_by_route_template(client: TestClient, city: City) -> None:
    device = city.devices[0]
    client.get("/healthz")
    client.get(f"/v1/devices/{device.id}")
    client.get("/v1/devices/ghost-123")
    client.get("/v1/devices", params={"limit": 0})
    client.get("/definitely/not/a/route/12345")
    response = client.get("/metrics")
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
    assert api_routes <= {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/devices",
        "/v1/devices/{device_id}",
        "/v1/devices/{device_id}/latest",
        "<unmatched>",
    }, api_routes
    assert any(
        name == "safecity_api_request_seconds_count" and ("route", "/healthz") in labels
        for name, labels in samples
    )
