"""Announces the incident steps taken through the API (acknowledge, dispatch, resolve, an
acknowledgement link, Grafana) on the broker's lifecycle topics, as they happen.

A step is announced after it is stored (the log stays the truth) and goes out the way
every outbound message of the platform does, through the durable outbox
(`safecity.outbox`): `announce` commits it (key `<incident id>/<step number>`, so a
repeated step is one message; lane: its topic; body: the step's JSON, encoded once) and
returns; one task publishes what is due, QoS 1 on the API's own account. While the broker
cannot be reached the step waits and is retried with a backoff; a step a crash left
unsent goes out after the restart. A step the broker refuses is failed and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from pathlib import Path

from prometheus_client import Counter

from safecity import incidents as inc
from safecity.errors import MqttError
from safecity.mqtt import NOT_SENT, MqttClient
from safecity.outbox import Lease, Message, Outbox, Outcome
from safecity.retry import Backoff
from safecity.settings import MqttSettings

log = logging.getLogger("safecity.api")

CHANNEL = "mqtt-incident-step"
"""The outbox channel of the steps (its recipients are lifecycle topics)."""

ANNOUNCED = Counter(
    "safecity_api_incident_steps_announced",
    "Incident lifecycle steps published to the broker, by outcome (published, refused, "
    "deferred: the broker could not be reached, retried).",
    ["outcome"],
)


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
        self.settings = mqtt
        self.outbox = Outbox(
            outbox_file,
            owner="safecity-api-steps",
            backoff=Backoff(base=1.0, cap=30.0),
            max_attempts=10_000,
            max_age_s=86_400.0,
        )
        self.poll_s = poll_s
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set while nothing is due

    def start(self) -> None:
        """Start publishing (what a previous run left unsent too); idempotent."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="incident-announcer")

    def announce(self, incident: inc.Incident) -> None:
        """Commit the incident's latest step to the outbox (never waits for the broker)."""
        self.outbox.enqueue([step_message(incident)])
        self._idle.clear()
        self.start()

    async def stop(self, flush_s: float = 2.0) -> None:
        """Publish what is due (for at most `flush_s`), then stop, disconnect; idempotent."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), flush_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.disconnect()
            self._client = None
        self.outbox.close()

    async def _run(self) -> None:
        while True:
            leases = self.outbox.claim(lanes=100)
            for lease in leases:
                self.outbox.settle(lease, await self._publish(lease))
            if not leases:
                self._idle.set()
                await asyncio.sleep(self.poll_s)

    async def _publish(self, lease: Lease) -> Outcome:
        """Publish one step; the broker's verdict, or a retry while it cannot be reached."""
        (entry,) = lease.entries
        try:
            client = await self._connect()
            result = await client.publish(lease.recipient, entry.body or b"", qos=1)
        except MqttError as exc:
            return self._deferred(str(exc))
        if result.reason_code >= NOT_SENT:
            return self._deferred(result.reason)
        if result.ok:
            ANNOUNCED.labels(outcome="published").inc()
            return Outcome.delivered()
        ANNOUNCED.labels(outcome="refused").inc()
        log.error("broker refused an incident step",
                  extra={"topic": lease.recipient, "reason": result.reason})  # fmt: skip
        return Outcome.failed(f"the broker refused the step: {result.reason}")

    @staticmethod
    def _deferred(reason: str) -> Outcome:
        ANNOUNCED.labels(outcome="deferred").inc()
        log.warning("incident step announcement deferred: %s", reason)
        return Outcome.retry(reason)

    async def _connect(self) -> MqttClient:
        if self._client is None:
            client = MqttClient(self.settings, f"safecity-api-steps-{secrets.token_hex(4)}")
            await client.connect()
            self._client = client
        return self._client
