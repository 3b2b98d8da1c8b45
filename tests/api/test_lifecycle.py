"""The API's incident-step announcements go through the durable outbox: a step taken while
the broker is away waits on disk, survives the process, and is published once when the
broker can be reached (real Mosquitto, the API's own account)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from api.lifecycle import CHANNEL, Announcer
from control.processes import free_port
from control.stack import LocalStack
from safecity import incidents as inc
from safecity.mqtt import MqttClient
from safecity.outbox import DeliveryStatus, Outbox

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def _acknowledged() -> inc.Incident:
    opened = inc.open_incident(
        city="tashkent", district="chilonzor", rule_id="gunshot", rule_type="event",
        severity="critical", place="chilonzor", devices=["gs-1"], opened_at=T0,
        value=1.0, message="Gunshot detected", event="gunshot",
    )  # fmt: skip
    return inc.advance(opened, "acknowledged", "ann", T0, "on my way")


def _entries(path: Path) -> list[tuple[str, str, DeliveryStatus]]:
    box = Outbox(path, owner="test-reader")
    try:
        return [(e.key, e.channel, e.status) for e in box.entries()]
    finally:
        box.close()


def test_a_step_taken_while_the_broker_is_away_is_announced_once_after_a_restart(
    stack: LocalStack, tmp_path: Path
) -> None:
    incident = _acknowledged()
    change = inc.change_of(incident)
    path = tmp_path / "steps.outbox.sqlite3"
    key = f"{incident.id}/2"

    async def away() -> None:
        gone = Announcer(stack.mqtt_settings("_api", port=free_port()), path, poll_s=0.05)
        gone.announce(incident)
        await asyncio.sleep(1.0)  # it tries, the broker is not there
        await gone.stop(flush_s=0.2)

    asyncio.run(away())
    assert _entries(path) == [(key, CHANNEL, DeliveryStatus.PENDING)]

    async def back() -> list[tuple[str, bytes]]:
        reader = MqttClient(stack.mqtt_settings("_api"), "test-steps-reader")
        await reader.connect()
        await reader.subscribe([("safecity/v1/tashkent/_incidents/#", 1)])
        announcer = Announcer(stack.mqtt_settings("_api"), path, poll_s=0.05)
        announcer.start()  # what the last run left: published now
        got = await reader.inbox.get_batch(10, 10)
        announcer.announce(incident)  # the same step again: one message already
        await asyncio.sleep(0.5)
        got += await reader.inbox.get_batch(10, 0.5)
        await announcer.stop()
        await announcer.stop()  # idempotent
        await reader.disconnect()
        return [(m.topic, m.payload) for m in got]

    assert asyncio.run(back()) == [(change.topic, change.payload())]
    assert _entries(path) == [(key, CHANNEL, DeliveryStatus.DELIVERED)]
