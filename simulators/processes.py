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

# slot (key, step_h, tau_h) -> anchor -> the knots from that anchor on, as far as asked.
_cache: dict[tuple[int, float, float], dict[int, array[float]]] = {}
_CACHE_MAX_KNOTS = 4_000_000
_stored = 0
_ANCHORS_KEPT = 2


def _from_anchor(slot: tuple[int, float, float], anchor: int) -> array[float]:
    """The cached knots of a slot from an anchor (the newest two anchors are kept: a
    backfill asks a shared process for the same day once per device, so going back to
    the day's start, maybe over a block boundary, is common and must not re-step)."""
    global _stored
    anchors = _cache.setdefault(slot, {})
    xs = anchors.get(anchor)
    if xs is None:
        if _stored >= _CACHE_MAX_KNOTS:
            _cache.clear()
            _stored = 0
            anchors = _cache[slot] = {}
        while len(anchors) >= _ANCHORS_KEPT:
            _stored -= len(anchors.pop(min(anchors)))
        xs = anchors[anchor] = array("d")
    return xs


def _knots(key: int, step_h: float, tau_h: float, k: int) -> tuple[float, float]:
    """(x_k, x_(k+1)) of the process."""
    global _stored
    block = int(14.0 * tau_h / step_h) + 1
    anchor = (k // block - 1) * block
    xs = _from_anchor((key, step_h, tau_h), anchor)
    i = k - anchor
    if len(xs) < i + 2:
        before = len(xs)
        phi = math.exp(-step_h / tau_h)
        s = math.sqrt(1.0 - phi * phi)
        if not xs:
            xs.append(normal(key, anchor))
        x = xs[-1]
        for j in range(anchor + len(xs), k + 2):
            x = phi * x + s * normal(key, j)
            xs.append(x)
        _stored += len(xs) - before
    return xs[i], xs[i + 1]


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
