"""Grafana's contact point into the API: a firing alert opens one incident (however often
it is notified), a resolved one resolves it; the key travels as a bearer token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from api_seed import ago
from fastapi.testclient import TestClient


@pytest.fixture
def starts() -> datetime:
    """When the alert began firing: 20 minutes before the test."""
    return ago(20)


def _notification(status: str, starts: datetime, **labels: str) -> dict[str, Any]:
    alert = {
        "status": status,
        "labels": {
            "alertname": "WHO PM2.5 24h mean above 15 ug/m3",
            "grafana_folder": "safecity",
            "service": "safecity",
            "severity": "warning",
            "city": "tashkent",
            "district": "chilanzar",
            **labels,
        },
        "annotations": {"summary": "PM2.5 24h mean in tashkent/chilanzar is 31 ug/m3"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://grafana/alerting/grafana/x/view",
        "fingerprint": "a1b2c3d4e5f60718",
        "silenceURL": "",
        "values": {"B": 31.0},
    }
    return {
        "receiver": "safecity-incidents",
        "status": status,
        "alerts": [alert],
        "groupLabels": {},
        "commonLabels": alert["labels"],
        "externalURL": "http://grafana/",
        "version": "1",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "orgId": 1,
        "title": "[FIRING:1]",
        "state": "alerting",
        "message": "",
    }


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-API-Key": ""}


def _grafana_incidents(client: TestClient) -> list[dict[str, Any]]:
    items = client.get("/v1/incidents", params={"limit": 50}).json()["items"]
    return [i for i in items if i["rule_type"] == "grafana"]


def test_a_grafana_alert_becomes_one_incident_and_resolves(
    client: TestClient, keys: dict[str, str], starts: datetime
) -> None:
    url = "/v1/alerts/grafana"
    assert (
        client.post(
            url, json=_notification("firing", starts), headers={"X-API-Key": keys["operate"]}
        ).status_code
        == 401
    )
    assert (
        client.post(
            url, json=_notification("firing", starts), headers=_bearer(keys["read"])
        ).status_code
        == 403
    )
    first = client.post(url, json=_notification("firing", starts), headers=_bearer(keys["operate"]))
    assert first.status_code == 200, first.text
    (ident,) = first.json()["opened"]
    again = client.post(url, json=_notification("firing", starts), headers=_bearer(keys["operate"]))
    assert again.json()["opened"] == [ident]  # a repeated notification: the same incident
    listed = _grafana_incidents(client)
    assert [i["id"] for i in listed] == [ident]
    incident = listed[0]
    assert incident["state"] == "open" and incident["severity"] == "medium"
    assert incident["district"] == "chilanzar" and incident["rule_id"].startswith("grafana-who-pm2")
    assert incident["message"].startswith("PM2.5 24h mean")
    other = client.post(
        url, json=_notification("firing", starts, city="almaty"), headers=_bearer(keys["operate"])
    )
    assert other.json() == {"opened": [], "resolved": [], "ignored": 1}
    done = client.post(
        url, json=_notification("resolved", starts), headers=_bearer(keys["operate"])
    )
    assert done.json()["resolved"] == [ident]
    body = client.get(f"/v1/incidents/{ident}").json()
    assert body["state"] == "resolved"
    assert body["transitions"][-1]["note"] == "resolved in Grafana"
    # The overview counts it no more (one incident list for both sources).
    assert all(i["state"] == "resolved" for i in _grafana_incidents(client))


def test_bodies_that_are_not_json_or_mistyped_are_422_with_a_reason(
    client: TestClient, keys: dict[str, str], starts: datetime
) -> None:
    url, headers = "/v1/alerts/grafana", _bearer(keys["operate"])
    json_type = {**headers, "Content-Type": "application/json"}
    for body, reason in (
        (b'{"status": "firing", "alerts": [', "body: not valid JSON"),  # a syntax error
        (b'{"status": "\xff\xfe", "alerts": []}', "body: not valid JSON"),  # not UTF-8
        (b"[" * 5000 + b"]" * 5000, "body: not valid JSON"),  # past the recursion limit
    ):
        r = client.post(url, content=body, headers=json_type)
        assert r.status_code == 422, (body[:20], r.status_code, r.text)
        assert r.json()["detail"].startswith(reason), r.text
    # Strict: a status that is not a string, a label value that is not one.
    bad_status = {**_notification("firing", starts), "status": 1}
    r = client.post(url, json=bad_status, headers=headers)
    assert r.status_code == 422 and "body field 'status'" in r.json()["detail"], r.text
    bad_label = _notification("firing", starts)
    bad_label["alerts"][0]["labels"]["severity"] = 3
    assert client.post(url, json=bad_label, headers=headers).status_code == 422
