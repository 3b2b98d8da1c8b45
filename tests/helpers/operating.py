"""Test kit for what an operator does: a real panic incident to act on, a command followed
through the API until the device executed it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from support import mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import Device


def panic_incident(stack: LocalStack, api: Any, city_id: str, panic: Device) -> dict[str, Any]:
    """A real panic event from the kiosk (the alerts service must run); the incident the
    API then lists."""
    event = {"ts": format_ts(datetime.now(UTC)), "seq": 1, "type": "panic",
             "severity": "critical", "details": {"button": "b1"}}  # fmt: skip
    topic = topics.event_topic(city_id, panic.district, panic.kind, panic.id)
    mosquitto_pub(stack, topic, json.dumps(event))

    def stored() -> list[dict[str, Any]]:
        r = httpx.get(
            f"{api.url}/v1/incidents", params={"type": "panic"}, headers=api.headers, timeout=10
        )
        return list(r.json()["items"])

    (incident,) = wait_for(stored, 30, "the panic incident in the API")
    assert incident["devices"] == [panic.id]
    return dict(incident)


def command_executed(api_url: str, key: str, device: Device, **body: Any) -> dict[str, Any]:
    """Send `body` to the device; the command once the device executed it."""
    headers = {"X-API-Key": key}
    sent = httpx.post(
        f"{api_url}/v1/devices/{device.id}/commands", json=body, headers=headers, timeout=10
    )
    assert sent.status_code == 202, sent.text
    url = f"{api_url}/v1/commands/{sent.json()['id']}"
    done: dict[str, Any] = wait_for(
        lambda: (
            (c := httpx.get(url, headers=headers, timeout=5).json())["statuses"] == {"executed": 1}
            and c
        ),
        60,
        f"{device.id} executing {body.get('name')}",
        interval=0.5,
    )
    return done
