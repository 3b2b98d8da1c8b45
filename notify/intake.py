"""Intake stage: incident lifecycle steps from MQTT -> the outbox -> ack.

An opening is planned (its whole escalation) and enqueued; a later step (acknowledged,
dispatched, resolved) goes to the `Closer`, which cancels the pending pages and, on a
resolution, enqueues the notices. The batch is acked (in receive order) only after all
of that is committed to the outbox; a crash before that redelivers it, and the keys
(incident/tier/repeat/person/channel) make the second enqueue a no-op. A message that is
not a step is counted, logged and acked: it can never block the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from notify import metrics
from notify.plan import Planner
from notify.watch import Closer
from safecity import incidents as inc
from safecity.mqtt import Incoming, MqttClient
from safecity.outbox import Message, Outbox

log = logging.getLogger("safecity.notify")


class Intake:
    """Consumes the lifecycle subscription in batches: plans, closes, enqueues, acks."""

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
        self.closer = Closer(outbox, planner, clock)

    async def run(self) -> None:
        """Consume until cancelled."""
        while True:
            batch = await self.mqtt.inbox.get_batch(self.batch_size, None)
            if len(batch) < self.batch_size:
                batch += await self.mqtt.inbox.get_batch(self.batch_size - len(batch), self.flush_s)
            await self.process(batch)

    def parse(self, message: Incoming) -> inc.Incident | None:
        """The incident (as of the step the message announces), or None (counted, logged)."""
        try:
            change = inc.IncidentChange.parse(message.payload)
        except (ValueError, ValidationError) as exc:
            metrics.SKIPPED.labels(reason="schema").inc()
            log.warning(
                "not an incident step", extra={"topic": message.topic, "error": str(exc)[:300]}
            )
            return None
        if change.incident.city != self.city:
            metrics.SKIPPED.labels(reason="other_city").inc()
            return None
        return change.incident

    async def process(self, batch: list[Incoming]) -> None:
        """Plan the openings, close the rest, in receive order; commit; then ack."""
        now = self.clock()
        pages: list[Message] = []
        closed: list[inc.Incident] = []
        for message in batch:
            incident = self.parse(message)
            if incident is None:
                continue
            metrics.RECEIVED.labels(city=self.city, state=incident.state.value).inc()
            if incident.state is not inc.State.OPEN:
                closed.append(incident)
                continue
            planned = self.planner.plan(incident, now)
            if not planned:
                metrics.UNROUTED.labels(city=self.city).inc()
            pages += planned
        if pages:
            new = await asyncio.to_thread(self.outbox.enqueue, pages)
            metrics.PLANNED.labels(city=self.city).inc(new)
        # After the openings: a step received after its opening acts on its pages.
        for incident in closed:
            await asyncio.to_thread(self.closer.close, incident)
        self.mqtt.ack_many(batch)
