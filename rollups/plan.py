"""Pure arithmetic of the job: which span a tier rolls next, which units are stale."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from safecity.rollups import Rolled, Tier

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Span:
    """A span [start_ms, end_ms) of whole buckets of a tier."""

    start_ms: int
    end_ms: int


def oldest_start(tier: Tier, first_raw_ms: int, now_ms: int) -> int:
    """Where a tier without a watermark starts: the bucket of the oldest raw reading, but
    never a bucket its retention policy would refuse (kept minus a bucket and an hour)."""
    start = tier.floor_ms(first_raw_ms)
    if tier.keep_s is None:
        return start
    youngest_refused = now_ms - tier.keep_s * 1000 + tier.every_s * 1000 + HOUR_MS
    return max(start, tier.floor_ms(youngest_refused) + tier.every_s * 1000)


def next_span(
    tier: Tier, watermark_ms: int, now_ms: int, settle_s: float, chunk: int
) -> Span | None:
    """The next closed span after the watermark (at most `chunk` buckets), or None."""
    closed = tier.floor_ms(now_ms - int(settle_s * 1000))
    end = min(watermark_ms + chunk * tier.every_s * 1000, closed)
    return Span(watermark_ms, end) if end > watermark_ms else None


def unit_ms(tier: Tier) -> int:
    """The recheck unit of a tier: whole buckets, at least an hour (fewer rows to compare)."""
    every = tier.every_s * 1000
    return every * -(-HOUR_MS // every)


def recheck_span(tier: Tier, rolled: Rolled, now_ms: int, horizon_s: float) -> Span | None:
    """The rolled span a recheck compares: the horizon, in whole units, below the watermark."""
    unit = unit_ms(tier)
    horizon = now_ms - int(horizon_s * 1000)
    start = -(-max(horizon, rolled.since_ms) // unit) * unit
    end = rolled.until_ms // unit * unit
    return Span(start, end) if end > start else None


def stale_units(raw: Mapping[int, int], rolled: Mapping[int, int], unit: int) -> list[Span]:
    """Units whose raw reading count differs from what their rollups recorded."""
    return [
        Span(start, start + unit)
        for start in sorted(set(raw) | set(rolled))
        if raw.get(start, 0) != rolled.get(start, 0)
    ]
