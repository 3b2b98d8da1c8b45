"""Intake stage: incident openings from MQTT -> planned pages, durable in the outbox -> ack.

The batch is acked (in receive order) only after its pages are committed to the outbox;
a crash before that redelivers it, and the pages' keys (incident/tier/repeat/person/
channel) make the second enqueue a no-op. A message that is not an opening is counted,
logged and acked: it can never block the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from notify import metrics
from notify.plan import OpenedIncident, Planner
from safecity.mqtt import Incoming, MqttClient
from safecity.outbox import Message, Outbox

log = logging.getLogger("safecity.notify")


class Intake:
    """Consumes the alert subscription in batches, plans, enqueues, acks."""

    def __init__(
        self,
        mqtt: MqttClient,
        planner: Planner,
        outbox: Outbox,
        city: str,
        clock: Callable[[], float] = time.time,
        batch_size: int = 500,
        flush_s: float = 0.02,
    ) -> None:
        self.mqtt, self.planner, self.outbox, self.city = mqtt, planner, outbox, city
        self.clock, self.batch_size, self.flush_s = clock, batch_size, flush_s

    async def run(self) -> None:
        """Consume until cancelled."""
        while True:
            batch = await self.mqtt.inbox.get_batch(self.batch_size, None)
            if len(batch) < self.batch_size:
                batch += await self.mqtt.inbox.get_batch(self.batch_size - len(batch), self.flush_s)
            await self.process(batch)

    def parse(self, message: Incoming) -> OpenedIncident | None:
        """The opening a message announces, or None (counted and logged)."""
        try:
            opened = OpenedIncident.model_validate(json.loads(message.payload))
        except (ValueError, ValidationError) as exc:
            metrics.SKIPPED.labels(reason="schema").inc()
            log.warning(
                "not an incident opening", extra={"topic": message.topic, "error": str(exc)[:300]}
            )
            return None
        if opened.city != self.city:
            metrics.SKIPPED.labels(reason="other_city").inc()
            return None
        return opened

    async def process(self, batch: list[Incoming]) -> None:
        """Plan every opening of the batch, commit them in one transaction, then ack."""
        now = self.clock()
        pages: list[Message] = []
        for message in batch:
            opened = self.parse(message)
            if opened is None:
                continue
            metrics.RECEIVED.labels(city=self.city).inc()
            planned = self.planner.plan(opened, now)
            if not planned:
                metrics.UNROUTED.labels(city=self.city).inc()
            pages += planned
        if pages:
            new = await asyncio.to_thread(self.outbox.enqueue, pages)
            metrics.PLANNED.labels(city=self.city).inc(new)
        self.mqtt.ack_many(batch)
