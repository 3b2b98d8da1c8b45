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

from simulators.timebase import normal

_cache: dict[tuple[int, float, float], tuple[int, int, float, float]] = {}
_CACHE_MAX = 200_000


def _knots(key: int, step_h: float, tau_h: float, k: int) -> tuple[float, float]:
    """(x_k, x_(k+1)) of the process."""
    phi = math.exp(-step_h / tau_h)
    s = math.sqrt(1.0 - phi * phi)
    slot = (key, step_h, tau_h)
    block = int(14.0 * tau_h / step_h) + 1
    anchor = (k // block - 1) * block
    cached = _cache.get(slot)
    if cached is not None and cached[0] == anchor and cached[1] <= k:
        _, k0, x0, x1 = cached
    else:
        k0 = anchor
        x0 = normal(key, k0)
        x1 = phi * x0 + s * normal(key, k0 + 1)
    while k0 < k:
        k0 += 1
        x0, x1 = x1, phi * x1 + s * normal(key, k0 + 1)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[slot] = (anchor, k0, x0, x1)
    return x0, x1


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
