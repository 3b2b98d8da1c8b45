"""Grafana's alerts go through the rosters too: its provisioned contact point posts to the
API's intake (`POST /v1/alerts/grafana`, as Grafana's webhook sends it), the API opens the
incident and announces it on the broker, and the real notifier pages the person on call
with an acknowledgement link; Grafana's `resolved` sends the resolution notice.

The API here does not share the notifier's directory (as on Kubernetes, where the outboxes
are on the notifier's volume): it asks the notifier for the listings over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from receivers import HttpReceiver
from support import wait_for

from dashboards import alerting

ROUTING = """city: tashkent
timezone: Asia/Tashkent
channels:
  hook: {{type: webhook, url: "{url}/pages", secret_file: {secret}}}
people:
  - {{id: ann, name: Ann, contacts: {{hook: ann}}}}
rosters:
  - id: platform
    shifts: [{{people: [ann]}}]
policies:
  - id: page
    tiers: [{{roster: platform, repeat_every: 10m, repeats: 1}}]
routes:
  - match: {{rules: [grafana-devices-offline]}}
    policy: page
"""


def _grafana(status: str, starts: datetime) -> dict[str, Any]:
    """The body of Grafana's webhook contact point (Grafana's webhook docs)."""
    alert = {
        "status": status,
        "labels": {"alertname": "Devices offline", "city": "tashkent", "district": "chilonzor",
                   "severity": "warning", "grafana_folder": "safecity"},
        "annotations": {"summary": "3 devices offline in chilonzor"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://grafana/x",
        "fingerprint": "0a1b2c3d4e5f6071", "silenceURL": "", "values": {"B": 3.0},
    }  # fmt: skip
    return {"receiver": alerting.contact_point()["name"], "status": status, "alerts": [alert],
            "groupLabels": {}, "commonLabels": alert["labels"], "externalURL": "http://grafana/",
            "version": "1", "groupKey": "{}:{}", "truncatedAlerts": 0, "orgId": 1,
            "title": f"[{status.upper()}:1]", "state": "alerting", "message": ""}  # fmt: skip


def test_a_grafana_alert_pages_the_roster_and_its_resolution_tells_them(
    influx_db: str,
    start_api: Callable[..., Any],
    start_notify: Callable[..., Any],
    hook: HttpReceiver,
    tmp_path: Path,
) -> None:
    (tmp_path / "hook.secret").write_text(hook.secret)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING.format(url=hook.url, secret=tmp_path / "hook.secret"))
    key = {"SAFECITY_ACK_KEY_FILE": str(tmp_path / "ack.key")}
    notifier = start_notify(
        influx_db,
        SAFECITY_NOTIFY_ROUTING_FILE=str(routing),
        SAFECITY_NOTIFY_DIR=str(tmp_path / "notify"),
        SAFECITY_NOTIFY_ACK_BASE_URL="https://safecity.example",
        **key,
    )
    api = start_api(influx_db, SAFECITY_NOTIFY_DIR=str(tmp_path / "elsewhere"),
                    SAFECITY_NOTIFY_URL=notifier.metrics_url, **key)  # fmt: skip
    # The contact point Grafana is provisioned with: a webhook into this intake, bearer key.
    point = alerting.contact_point()
    assert (point["type"], point["settings"]["authorization_scheme"]) == ("webhook", "Bearer")
    bearer = {"Authorization": f"Bearer {api.api_key}"}
    starts = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
    url = f"{api.url}{alerting.WEBHOOK_PATH}"
    fired = httpx.post(url, json=_grafana("firing", starts), headers=bearer, timeout=10)
    assert fired.status_code == 200, fired.text
    (ident,) = fired.json()["opened"]

    body = wait_for(lambda: hook.received and hook.received[0], 10, "the page for Grafana's alert")
    (page,) = body["pages"]
    assert (body["to"], page["incident_id"], page["rule_id"], page["tier"]) == (
        "ann",
        ident,
        "grafana-devices-offline",
        1,
    )
    assert page["ack_url"].startswith("https://safecity.example/v1/ack/")

    done = httpx.post(url, json=_grafana("resolved", starts), headers=bearer, timeout=10)
    assert done.status_code == 200 and done.json()["resolved"] == [ident], done.text
    notice = wait_for(lambda: len(hook.received) > 1 and hook.received[1], 10, "the notice")
    assert [(p["kind"], p["incident_id"], p["note"]) for p in notice["pages"]] == [
        ("resolved", ident, "resolved in Grafana")
    ]
    _listed_through_the_notifier(api, notifier, ident)


def _listed_through_the_notifier(api: Any, notifier: Any, ident: str) -> None:
    """The API's listings come from the notifier (its own directory is empty)."""

    def timeline() -> list[tuple[str, str, str]]:
        answer = httpx.get(f"{api.url}/v1/incidents/{ident}/notifications", headers=api.headers,
                           timeout=10)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return [(n["kind"], n["person"], n["status"]) for n in answer.json()]

    wait_for(lambda: ("resolved", "ann", "delivered") in timeline(), 10, "the notice delivered")
    assert timeline() == [("page", "ann", "delivered"), ("page", "ann", "cancelled"),
                          ("resolved", "ann", "delivered")]  # fmt: skip
    listed = httpx.get(f"{api.url}/v1/notifications", params={"status": "delivered"},
                       headers=api.headers, timeout=10).json()  # fmt: skip
    assert {(n["incident_id"], n["kind"]) for n in listed} == {(ident, "page"), (ident, "resolved")}
    refused = httpx.get(f"{notifier.metrics_url}/notifications", params={"city": "almaty"},
                        timeout=10)  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["detail"] == "city 'almaty' is not served here (tashkent)"
