"""How a fleet paces its connection attempts: jittered backoff, and a tally of who is up."""

from __future__ import annotations

import asyncio
import hashlib
import random

# 2**62 times any sane minimum is past any maximum: a larger exponent changes nothing,
# and 2.0**1024 raises OverflowError (hours into a broker outage).
_MAX_EXPONENT = 62


def backoff_cap(attempt: int, minimum: float, maximum: float) -> float:
    """The upper bound of the jittered delay before retry `attempt` (0-based), at any attempt."""
    return max(minimum, min(maximum, minimum * 2.0 ** min(attempt, _MAX_EXPONENT)))


class Jitter:
    """Uniform draws of one client's own stream: (seed, client id, draw number) hashed.

    Each device draws its own delays (one seed shared by a fleet must not put its
    devices in lockstep: a broker restart would see them all retry at once), and holds
    a counter instead of a 2.5 KB `random.Random`. Without a seed: the process's random.
    """

    __slots__ = ("_draws", "_key")

    def __init__(self, seed: int | None, client_id: str) -> None:
        self._key = None if seed is None else f"{seed}:{client_id}:".encode()
        self._draws = 0

    def uniform(self, low: float, high: float) -> float:
        """A draw in [low, high]."""
        if self._key is None:
            return random.uniform(low, high)
        self._draws += 1
        digest = hashlib.blake2b(self._key + str(self._draws).encode(), digest_size=8).digest()
        return low + (high - low) * (int.from_bytes(digest, "big") / 2.0**64)


class ConnectTally:
    """How many of a set of fleet clients are connected, awaited without polling them."""

    __slots__ = ("_changed", "connected")

    def __init__(self) -> None:
        self.connected = 0
        self._changed: asyncio.Future[None] | None = None

    def add(self, delta: int) -> None:
        """A client of the set connected (+1) or lost its connection (-1)."""
        self.connected += delta
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next change of `connected`."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed
