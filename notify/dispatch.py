"""Dispatch stage: outbox -> channels. Claims due lanes, sends (a digest when several pages
of one address are due), respects per-channel rates, settles every attempt.

A lane (channel + address) has at most one send in flight, so its pages go in order;
up to `max_in_flight` lanes are sent at the same time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from notify import metrics
from notify.channels.base import Channel, Delivery
from safecity.outbox import Lease, Outbox, Outcome, Result

log = logging.getLogger("safecity.notify")


@dataclass
class RateLimit:
    """A token bucket: `rate` sends per second, bursts of up to `burst`."""

    rate: float
    burst: float = 1.0
    _tokens: float = field(default=1.0, init=False)
    _at: float = field(default_factory=time.monotonic, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def acquire(self) -> None:
        """Wait for a token."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


class Dispatcher:
    """Sends what the outbox says is due; `step` for one round, `run` until cancelled."""

    def __init__(
        self,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        rates: Mapping[str, float],
        *,
        digest_max: int,
        max_in_flight: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.channels = channels
        self.limits = {name: RateLimit(rate, max(1.0, rate)) for name, rate in rates.items()}
        self.digest_max = digest_max
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._flying: set[asyncio.Task[None]] = set()

    def _claim(self) -> list[Lease]:
        free = self.max_in_flight - len(self._flying)
        if free <= 0:
            return []
        return self.outbox.claim(lanes=free, per_lane=self.digest_max)

    async def step(self) -> int:
        """Claim every due lane once and send them all; returns how many sends were made."""
        leases = self._claim()
        await asyncio.gather(*(self._deliver(lease) for lease in leases))
        return len(leases)

    async def run(self, poll_s: float = 0.1) -> None:
        """Send for ever: new sends as lanes come due, while others are in flight."""
        try:
            while True:
                for lease in self._claim():
                    task = asyncio.create_task(self._deliver(lease))
                    self._flying.add(task)
                    task.add_done_callback(self._flying.discard)
                metrics.IN_FLIGHT.set(len(self._flying))
                due = self.outbox.next_due()
                wait = poll_s if due is None else min(poll_s, max(0.0, due - self.clock()))
                if self._flying:
                    await asyncio.wait(
                        self._flying, timeout=max(wait, 0.005), return_when="FIRST_COMPLETED"
                    )
                else:
                    await asyncio.sleep(wait)
        finally:
            for task in list(self._flying):
                task.cancel()
            await asyncio.gather(*self._flying, return_exceptions=True)

    async def _deliver(self, lease: Lease) -> None:
        delivery = Delivery.of(
            lease.recipient, [e.key for e in lease.entries], [e.payload for e in lease.entries]
        )
        started = time.monotonic()
        outcome = await self._send(lease.channel, delivery)
        metrics.SEND_SECONDS.labels(channel=lease.channel).observe(time.monotonic() - started)
        self.outbox.settle(lease, outcome)
        self._count(lease, outcome)

    async def _send(self, name: str, delivery: Delivery) -> Outcome:
        channel = self.channels.get(name)
        if channel is None:
            return Outcome.failed(f"unknown channel {name!r} (not in the routing file)")
        limit = self.limits.get(name)
        if limit is not None:
            await limit.acquire()
        try:
            return await channel.send(delivery)
        except Exception as exc:  # a channel must not raise; one that does is retried
            log.exception("channel raised", extra={"channel": name, "key": delivery.key})
            return Outcome.retry(f"channel raised {type(exc).__name__}: {exc}"[:300])

    def _count(self, lease: Lease, outcome: Outcome) -> None:
        name = lease.channel
        metrics.ATTEMPTS.labels(channel=name, result=outcome.result.value).inc()
        if outcome.result is not Result.DELIVERED:
            metrics.FAILURES.labels(channel=name).inc()
            log.warning(
                "delivery failed",
                extra={
                    "channel": name,
                    "to": lease.recipient,
                    "detail": outcome.detail,
                    "pages": len(lease.entries),
                    "attempt": lease.entries[0].attempts,
                },
            )
            return
        metrics.PAGES.labels(channel=name, result="delivered").inc(len(lease.entries))
        now = self.clock()
        for entry in lease.entries:
            if entry.payload.get("tier") == 1 and entry.payload.get("repeat") == 0:
                metrics.FIRST_DELIVERY.labels(channel=name).observe(
                    max(0.0, now - float(entry.payload["noticed_at"]))
                )
        log.info(
            "delivered",
            extra={
                "channel": name,
                "to": lease.recipient,
                "pages": len(lease.entries),
                "incidents": sorted({str(e.group) for e in lease.entries}),
            },
        )
