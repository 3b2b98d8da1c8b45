"""Lifecycle stage: an incident no longer open -> its pending pages cancelled, and once it
is resolved, a notice to everyone its pages reached.

`Closer` acts on one step, as the intake receives it from the broker (the lifecycle
topics: an acknowledgement stops the escalation within a batch's time). `Watcher`
reconciles now and then against the incident log in InfluxDB, the truth, for a step
whose announcement was lost with its publisher; only incidents with pending pages are
looked at. Both are idempotent: a step seen twice cancels nothing twice and enqueues
no notice twice (the notices' keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from notify import metrics
from notify.plan import Planner
from safecity import incidents as inc
from safecity.outbox import DeliveryStatus, Outbox

log = logging.getLogger("safecity.notify")


class Closer:
    """Stops the escalation of an incident that is no longer open (blocking: sqlite)."""

    def __init__(
        self, outbox: Outbox, planner: Planner, clock: Callable[[], float] = time.time
    ) -> None:
        self.outbox, self.planner, self.clock = outbox, planner, clock

    def close(self, incident: inc.Incident) -> int:
        """Cancel its pending pages, send the resolution notices; returns pages cancelled."""
        if incident.state is inc.State.OPEN:
            return 0
        step = incident.transitions[-1]
        reason = f"{incident.state.value} by {step.by}" + (f" ({step.note})" if step.note else "")
        count = self.outbox.cancel(incident.id, reason)
        notices = 0
        if incident.state is inc.State.RESOLVED:
            told = self.outbox.entries(group=incident.id, status=DeliveryStatus.DELIVERED)
            notices = self.outbox.enqueue(self.planner.notices(incident, told, self.clock()))
        if count:
            metrics.CANCELLED.inc(count)
            ack = incident.time_to_acknowledge
            if ack is not None and incident.state is not inc.State.RESOLVED:
                metrics.TIME_TO_ACK.observe(max(0.0, ack))
        if count or notices:
            log.info(
                "escalation stopped",
                extra={
                    "incident_id": incident.id,
                    "reason": reason,
                    "cancelled": count,
                    "notices": notices,
                },
            )
        return count


class Watcher:
    """Reconciles with the incident log: closes what the broker's steps did not."""

    def __init__(
        self,
        store: inc.IncidentStore,
        outbox: Outbox,
        closer: Closer,
        city: str,
        horizon_s: float,
    ) -> None:
        self.store, self.outbox, self.closer = store, outbox, closer
        self.city, self.horizon_s = city, horizon_s

    async def refresh(self) -> int:
        """Look once; returns how many pending pages were cancelled."""
        for status, count in (await asyncio.to_thread(self.outbox.counts)).items():
            metrics.OUTBOX.labels(status=status.value).set(count)
        pending = await asyncio.to_thread(self.outbox.pending_groups)
        if not pending:
            return 0
        now = datetime.now(UTC)
        # Openings within the outbox's horizon: nothing older still has pending pages.
        found = await self.store.query(self.city, now - timedelta(seconds=self.horizon_s * 2), now)
        cancelled = 0
        for ident in pending & found.keys():
            cancelled += await asyncio.to_thread(self.closer.close, found[ident])
        return cancelled

    async def run(self, interval_s: float) -> None:
        """Look every `interval_s` until cancelled (storage errors: try again next time)."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)
