"""Wires the rollup job: per pass, every tier rolls each kind's closed buckets after its
watermark (`roll`, then `state.advance`), and every `rollup_recheck_interval` a recheck
compares raw counts with the rollups' over the late horizon and rolls stale units again.

The watermark moves only after a span's points are written, so a job killed at any
moment resumes from its last watermark and rolls the unfinished span again; the
points overwrite themselves (same time, same tags), so nothing is counted twice and
nothing is skipped. One job serves every city of the registry, each in its own database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from rollups import metrics, plan, state
from rollups.roll import roll
from rollups.settings import RollupSettings
from safecity.influx import InfluxClient
from safecity.readings import now_ms
from safecity.registry import Cities, City
from safecity.retry import count_errors, retry_storage
from safecity.rollups import Rolled, Tier, parse_tiers
from safecity.service import serve

log = logging.getLogger("safecity.rollups")
T = TypeVar("T")


class CityRollups:
    """The rollups of one city's database: catch up every tier, recheck for late data."""

    def __init__(
        self,
        settings: RollupSettings,
        city: City,
        influx: InfluxClient,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.city = city
        self.influx = influx
        self.tiers = parse_tiers(settings.influx.rollup_tiers)
        self.kinds = sorted(kinds if kinds is not None else {d.kind for d in city.devices})
        self._first: dict[str, tuple[int, int]] = {}
        """kind -> (when asked, its oldest raw reading), both ms."""

    async def catch_up(self, now_ms: int) -> int:
        """Roll every closed bucket after each watermark; return the chunks rolled."""
        chunks = 0
        for tier in self.tiers:
            marks = await state.watermarks(self.influx, tier)
            for kind in self.kinds:
                chunks += await self._advance_kind(tier, kind, marks.get(kind), now_ms)
            oldest = min((m.until_ms for m in marks.values()), default=now_ms)
            lag = (now_ms - oldest) / 1000
            metrics.LAG.labels(tier=tier.name).set(lag)
        return chunks

    async def _advance_kind(self, tier: Tier, kind: str, mark: Rolled | None, now_ms: int) -> int:
        if mark is None:
            first = await self._first_raw_ms(kind, now_ms)
            if first is None:
                return 0
            start = plan.oldest_start(tier, first, now_ms)
            mark = Rolled(start, start)
        chunks = 0
        s = self.settings
        while span := plan.next_span(
            tier, mark.until_ms, now_ms, s.rollup_settle, s.rollup_chunk_buckets
        ):
            written = await roll(self.influx, self.city.id, tier, kind, span)
            mark = Rolled(mark.since_ms, span.end_ms)
            await state.advance(self.influx, tier, kind, mark)
            chunks += 1
            metrics.CHUNKS.labels(tier=tier.name).inc()
            metrics.BUCKETS.labels(tier=tier.name, level="all").inc(written)
            metrics.WATERMARK.labels(tier=tier.name, kind=kind).set(mark.until_ms / 1000)
        return chunks

    async def _first_raw_ms(self, kind: str, now_ms: int) -> int | None:
        """A kind's oldest raw reading, asked again at most every recheck interval: until a
        tier has rolled its first bucket (an hour, a day) each pass would otherwise read
        every series of the kind for it."""
        asked = self._first.get(kind)
        if asked is not None and now_ms - asked[0] < self.settings.rollup_recheck_interval * 1000:
            return asked[1]
        first = await state.first_raw_ms(self.influx, self.city.id, kind)
        if first is not None:
            self._first[kind] = (now_ms, first)
        return first

    async def recheck(self, now_ms: int) -> int:
        """Roll again every unit of the late horizon whose raw count changed; return them."""
        rerolled = 0
        for tier in self.tiers:
            marks = await state.watermarks(self.influx, tier)
            unit = plan.unit_ms(tier)
            for kind, mark in sorted(marks.items()):
                span = plan.recheck_span(tier, mark, now_ms, self.settings.rollup_late_horizon)
                if span is None or kind not in self.kinds:
                    continue
                raw = await state.raw_counts(self.influx, self.city.id, kind, span, unit)
                rolled = await state.rolled_counts(
                    self.influx, self.city.id, tier, kind, span, unit
                )
                stale_units = plan.stale_units(raw, rolled, unit)
                for stale in stale_units:
                    await roll(self.influx, self.city.id, tier, kind, stale)
                    metrics.REROLLED.labels(tier=tier.name).inc()
                    rerolled += 1
                if stale_units:
                    await state.rerolled(self.influx, tier, kind, now_ms)
        return rerolled


class RollupService:
    """The rollup job: passes over every city until cancelled (or, `once`, one pass with
    a recheck)."""

    def __init__(self, settings: RollupSettings, cities: Cities, *, once: bool = False) -> None:
        self.settings = settings
        self.once = once
        self.influx = InfluxClient(settings.influx)
        self.cities = [
            CityRollups(settings, c, self.influx.for_city(c.id, cities.ids))
            for c in cities.values()
        ]
        self._started = False
        self._stopped = False
        self._last_recheck = 0.0

    def ready(self) -> bool:
        """Ready once every city's database and rollup policies exist."""
        return self._started

    async def start(self) -> None:
        """Create every city's database and policies (idempotent)."""
        for c in self.cities:
            await self._retry(c.influx.ensure_database, f"prepare influxdb of {c.city.id}")
        self._started = True
        log.info(
            "rollups started",
            extra={
                "tiers": self.settings.influx.rollup_tiers,
                "cities": [c.city.id for c in self.cities],
            },
        )

    async def _retry(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_storage(action, what, on_error=count_errors(metrics.ERRORS), logger=log)

    async def pass_once(self, *, recheck: bool) -> tuple[int, int]:
        """One pass: catch every city up (and recheck); (chunks rolled, units rerolled)."""
        started = time.monotonic()
        now = now_ms()
        chunks = rerolled = 0
        for c in self.cities:
            chunks += await self._retry(partial(c.catch_up, now), "rolling up")
            if recheck:
                rerolled += await self._retry(partial(c.recheck, now), "rechecking")
        metrics.PASS.observe(time.monotonic() - started)
        if chunks or rerolled:
            log.info("rollup pass", extra={"chunks": chunks, "rerolled": rerolled})
        return chunks, rerolled

    async def run(self) -> None:
        """Pass after pass until cancelled; a recheck every `rollup_recheck_interval`."""
        if self.once:
            await self.pass_once(recheck=True)
            return
        while True:
            due = time.monotonic() - self._last_recheck >= self.settings.rollup_recheck_interval
            await self.pass_once(recheck=due)
            if due:
                self._last_recheck = time.monotonic()
            await asyncio.sleep(self.settings.rollup_interval)

    async def stop(self) -> None:
        """Close InfluxDB; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self.influx.close()
        log.info("rollups stopped")


async def run(settings: RollupSettings, cities: Cities, *, once: bool = False) -> None:
    """Run the job until cancelled (or, with `once`, one pass with a recheck); stops cleanly."""
    service = RollupService(settings, cities, once=once)
    await serve("rollups", [service], settings.rollup_metrics_host, settings.rollup_metrics_port)
