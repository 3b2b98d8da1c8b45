"""Persistent random deviations: mean-reverting (AR(1) / Ornstein-Uhlenbeck) processes.

A process is named by an integer key (a device, a district, a road) and sampled at
knots ``step_h`` hours apart: ``x_k = phi * x_(k-1) + sqrt(1 - phi^2) * e_k`` with
``phi = exp(-step_h / tau_h)`` and ``e_k`` a hash of (key, k), so it is stationary
N(0, 1), correlated over ``tau_h`` hours, and linear between knots.

Each knot is a pure function of (key, k): it is stepped from a fixed anchor, the start
of the block of ``14 tau`` knots before k's own (so ``exp(-14)`` of the anchor's state
is left). The same time gives the same value in every process whatever it asked
before, so a replay or a second process reproduces a reading exactly. Asked in time
order (as a device is), a knot costs about two steps from the cached previous one.
"""

from __future__ import annotations

import math
from array import array

from simulators.timebase import normal

KEEP_HOURS = 26.0
"""Knots kept behind the newest one asked, in hours: a backfill asks a district's shared
process for the same day once per device (so it goes back a day, maybe over a block
boundary); a live device only ever asks for the next one. Older knots are dropped (a
fleet kept every knot since each anchor: up to 2 x 2 blocks of them per process, a few
KiB per device) and, if asked for again, stepped again from their anchor (the same
numbers: the same operations in the same order)."""
_TRIM_EVERY = 32  # knots appended past `keep` before the oldest are dropped (one memmove)
_ANCHORS_KEPT = 2
_CACHE_MAX_KNOTS = 4_000_000
_stored = 0


class _Run:
    """The knots of one slot from one anchor, from knot `base` (after the anchor) on."""

    __slots__ = ("base", "xs")

    def __init__(self) -> None:
        self.base = 0
        self.xs: array[float] = array("d")


# slot (key, step_h, tau_h) -> anchor -> its run of knots, as far as asked.
_cache: dict[tuple[int, float, float], dict[int, _Run]] = {}


def _run(slot: tuple[int, float, float], anchor: int, i: int) -> _Run:
    """The cached run of a slot from an anchor that still holds knot `i` (the newest two
    anchors are kept; a run whose head was dropped past `i` starts again)."""
    global _stored
    anchors = _cache.setdefault(slot, {})
    run = anchors.get(anchor)
    if run is not None and run.base > i:
        _stored -= len(anchors.pop(anchor).xs)
        run = None
    if run is None:
        if _stored >= _CACHE_MAX_KNOTS:
            _cache.clear()
            _stored = 0
            anchors = _cache[slot] = {}
        while len(anchors) >= _ANCHORS_KEPT:
            _stored -= len(anchors.pop(min(anchors)).xs)
        run = anchors[anchor] = _Run()
    return run


def _knots(key: int, step_h: float, tau_h: float, k: int) -> tuple[float, float]:
    """(x_k, x_(k+1)) of the process."""
    global _stored
    block = int(14.0 * tau_h / step_h) + 1
    anchor = (k // block - 1) * block
    i = k - anchor
    run = _run((key, step_h, tau_h), anchor, i)
    xs = run.xs
    if run.base + len(xs) < i + 2:
        before = len(xs)
        phi = math.exp(-step_h / tau_h)
        s = math.sqrt(1.0 - phi * phi)
        if not xs:
            xs.append(normal(key, anchor))
        x = xs[-1]
        for j in range(anchor + run.base + len(xs), k + 2):
            x = phi * x + s * normal(key, j)
            xs.append(x)
        _stored += len(xs) - before
        keep = int(KEEP_HOURS / step_h) + 2
        if len(xs) > keep + _TRIM_EVERY:
            drop = len(xs) - keep
            del xs[:drop]
            run.base += drop
            _stored -= drop
    return xs[i - run.base], xs[i - run.base + 1]


def ou(key: int, hours: float, tau_h: float, step_h: float = 1.0) -> float:
    """The process `key` (correlation time `tau_h`) at `hours` since the epoch: ~N(0, 1)."""
    pos = hours / step_h
    k = math.floor(pos)
    x0, x1 = _knots(key, step_h, tau_h, k)
    f = pos - k
    # Linear interpolation lowers the variance between knots; rescale it back to 1.
    return (x0 * (1.0 - f) + x1 * f) / math.sqrt(
        (1.0 - f) ** 2 + f * f + 2.0 * f * (1.0 - f) * math.exp(-step_h / tau_h)
    )
