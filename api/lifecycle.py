"""Announces the incident steps taken through the API (acknowledge, dispatch, resolve, an
acknowledgement link, Grafana) on the broker's lifecycle topics, as they happen.

A step is announced after it is stored (the log stays the truth) and goes out the way
every outbound MQTT message of the platform does: through the durable outbox
(`safecity.outbox`) and its publisher (`safecity.mqtt.OutboxPublisher`). `announce`
commits it (key `<incident id>/<step number>`, so a repeated step is one message; lane:
its topic; body: the step's JSON, encoded once) and returns; the publisher sends what is
due, QoS 1 on the API's own account. While the broker cannot be reached the step waits;
a step a crash left unsent goes out after the restart. A step the broker refuses is
failed and counted (`safecity_outbox_publishes_total{publisher="incident-steps"}`).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from safecity import incidents as inc
from safecity.mqtt import Connection, OutboxPublisher
from safecity.outbox import Message, Outbox
from safecity.retry import Backoff
from safecity.settings import MqttSettings

CHANNEL = "mqtt-incident-step"
"""The outbox channel of the steps (its recipients are lifecycle topics)."""


def step_message(incident: inc.Incident) -> Message:
    """The outbox message of an incident's latest step."""
    change = inc.change_of(incident)
    return Message(
        key=f"{incident.id}/{len(incident.transitions)}",
        channel=CHANNEL,
        recipient=change.topic,
        payload={"incident_id": incident.id},
        group=incident.id,
        body=change.payload(),
    )


class Announcer:
    """Publishes the outbox's lifecycle steps on `safecity/v1/{city}/_incidents/{state}`."""

    def __init__(self, mqtt: MqttSettings, outbox_file: Path, poll_s: float = 0.2) -> None:
        self.outbox = Outbox(
            outbox_file,
            owner="safecity-api-steps",
            backoff=Backoff(base=1.0, cap=30.0),
            max_attempts=10_000,
            max_age_s=86_400.0,
        )
        connection = Connection(mqtt, f"safecity-api-steps-{secrets.token_hex(4)}")
        self.publisher = OutboxPublisher(
            self.outbox, connection, name="incident-steps", poll_s=poll_s
        )

    def start(self) -> None:
        """Start publishing (what a previous run left unsent too); idempotent."""
        self.publisher.start()

    def announce(self, incident: inc.Incident) -> None:
        """Commit the incident's latest step to the outbox (never waits for the broker)."""
        self.outbox.enqueue([step_message(incident)])
        self.publisher.wake()
        self.start()

    async def stop(self, flush_s: float = 2.0) -> None:
        """Publish what can go (for at most `flush_s`), then stop, disconnect; idempotent."""
        await self.publisher.stop(flush_s)
        self.outbox.close()
