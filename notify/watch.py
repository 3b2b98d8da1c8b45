"""Lifecycle stage: incidents acknowledged or resolved -> their pending pages cancelled.

The incident log in InfluxDB is the truth (the API's acknowledge endpoint, the ack links
and auto-resolution all append to it); only incidents with pending pages are looked at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from notify import metrics
from safecity import incidents as inc
from safecity.outbox import Outbox

log = logging.getLogger("safecity.notify")


class Watcher:
    """Cancels the escalation of incidents that are no longer open."""

    def __init__(
        self,
        store: inc.IncidentStore,
        outbox: Outbox,
        city: str,
        horizon_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.outbox, self.city = store, outbox, city
        self.horizon_s, self.clock = horizon_s, clock

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
            incident = found[ident]
            if incident.state is inc.State.OPEN:
                continue
            step = incident.transitions[-1]
            reason = f"{incident.state.value} by {step.by}" + (
                f" ({step.note})" if step.note else ""
            )
            count = await asyncio.to_thread(self.outbox.cancel, ident, reason)
            cancelled += count
            metrics.CANCELLED.inc(count)
            ack = incident.time_to_acknowledge
            if ack is not None and incident.state is not inc.State.RESOLVED:
                metrics.TIME_TO_ACK.observe(max(0.0, ack))
            log.info(
                "escalation stopped",
                extra={"incident_id": ident, "reason": reason, "cancelled": count},
            )
        return cancelled

    async def run(self, interval_s: float) -> None:
        """Look every `interval_s` until cancelled (storage errors: try again next time)."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)
