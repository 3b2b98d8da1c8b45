"""Announces the incident steps taken through the API (acknowledge, dispatch, resolve, an
acknowledgement link, Grafana) on the broker's lifecycle topics, as they happen.

A step is announced after it is stored (the log stays the truth); the request never
waits for the broker: steps queue here (bounded) and one task publishes them, QoS 1, on
the API's own account, retrying while the broker is away. A step whose announcement is
lost with this process (or refused by the broker) is still in the log, which the
notifier also reads now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from prometheus_client import Counter

from safecity import incidents as inc
from safecity.errors import MqttError
from safecity.mqtt import MqttClient
from safecity.settings import MqttSettings

log = logging.getLogger("safecity.api")

ANNOUNCED = Counter(
    "safecity_api_incident_steps_announced",
    "Incident lifecycle steps published to the broker, by outcome (published, refused, "
    "dropped: the queue was full).",
    ["outcome"],
)


class Announcer:
    """Publishes queued lifecycle steps on `safecity/v1/{city}/_incidents/{state}`."""

    def __init__(self, mqtt: MqttSettings, capacity: int = 10_000, retry_s: float = 1.0) -> None:
        self.settings = mqtt
        self.queue: asyncio.Queue[inc.IncidentChange] = asyncio.Queue(capacity)
        self.retry_s = retry_s
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None

    def announce(self, incident: inc.Incident) -> None:
        """Queue the incident's latest step (never blocks; a full queue drops and counts)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="incident-announcer")
        try:
            self.queue.put_nowait(inc.change_of(incident))
        except asyncio.QueueFull:
            ANNOUNCED.labels(outcome="dropped").inc()
            log.warning("incident step not announced: queue full", extra={"incident": incident.id})

    async def stop(self, flush_s: float = 2.0) -> None:
        """Publish what is queued (for at most `flush_s`), then stop and disconnect."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), flush_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.disconnect()
            self._client = None

    async def _run(self) -> None:
        while True:
            change = await self.queue.get()
            try:
                await self._publish(change)
            finally:
                self.queue.task_done()

    async def _publish(self, change: inc.IncidentChange) -> None:
        """Publish one step, retrying while the broker cannot be reached."""
        while True:
            try:
                client = await self._connect()
                result = await client.publish(change.topic, change.payload(), qos=1)
            except MqttError as exc:
                log.warning("incident step announcement deferred: %s", exc)
                await asyncio.sleep(self.retry_s)
                continue
            outcome = "published" if result.ok else "refused"
            ANNOUNCED.labels(outcome=outcome).inc()
            if not result.ok:
                log.error(
                    "broker refused an incident step",
                    extra={"topic": change.topic, "reason": result.reason},
                )
            return

    async def _connect(self) -> MqttClient:
        if self._client is None:
            client = MqttClient(self.settings, f"safecity-api-steps-{secrets.token_hex(4)}")
            await client.connect()
            self._client = client
        return self._client
