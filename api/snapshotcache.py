"""The snapshots of the overviews, cached: one computation per key at a time, an expired
one still served while the next is computed (`SnapshotCache`)."""

from __future__ import annotations

import asyncio
from typing import Any

from api.overview import Snapshot


class SnapshotCache:
    """Snapshots by (city, window key), kept `ttl` seconds from when each was made; one
    computation per key at a time.

    The default window ("the last N minutes") is keyed by its length and recomputed
    at most every `ttl` seconds; concurrent requests for a key wait for the same
    computation (no stampede). For one more `ttl` after expiry the old snapshot is still
    served while a new one is computed in the background (no request waits for the
    recomputation of a polled overview), and for as long as that computation runs: a
    result is at most two `ttl`s plus one computation behind the data, and a city whose
    snapshot takes longer than the ttl to compute still answers polls at once. Failures
    are not cached. ttl = 0 disables caching (but keeps the sharing).
    """

    def __init__(self, ttl: float, max_entries: int = 64) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[Any, ...], tuple[float, asyncio.Future[Snapshot]]] = {}
        self._refreshing: dict[tuple[Any, ...], asyncio.Future[Snapshot]] = {}

    async def get(self, key: tuple[Any, ...], compute: Any) -> Snapshot:
        """The cached snapshot for `key`, or a fresh one from `compute()`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        entry = self._entries.get(key)
        if entry is not None and (entry[0] > now or not entry[1].done()):
            return await asyncio.shield(entry[1])
        if entry is not None and (now < entry[0] + self.ttl or key in self._refreshing):
            self._refresh(key, compute)
            return entry[1].result()
        self._make_room(now)
        future: asyncio.Future[Snapshot] = asyncio.ensure_future(compute())
        self._entries[key] = (now + self.ttl, future)
        future.add_done_callback(lambda f: self._made(key, f))
        try:
            return await asyncio.shield(future)
        except BaseException:
            if self._entries.get(key, (0, None))[1] is future:
                del self._entries[key]
            raise

    def _made(self, key: tuple[Any, ...], future: asyncio.Future[Snapshot]) -> None:
        """A computation that succeeded is kept `ttl` from now (its data are as old as it
        took), in place of the entry it computes or refreshes."""
        if future.cancelled() or future.exception() is not None or key not in self._entries:
            return
        self._entries[key] = (asyncio.get_running_loop().time() + self.ttl, future)

    def _refresh(self, key: tuple[Any, ...], compute: Any) -> None:
        """Recompute `key` in the background; its entry is replaced when that succeeds."""
        if key in self._refreshing:
            return
        future: asyncio.Future[Snapshot] = asyncio.ensure_future(compute())
        self._refreshing[key] = future

        def done(f: asyncio.Future[Snapshot]) -> None:
            self._refreshing.pop(key, None)
            self._made(key, f)

        future.add_done_callback(done)

    def _make_room(self, now: float) -> None:
        if len(self._entries) >= self.max_entries:
            for k in [k for k, (exp, f) in self._entries.items() if f.done() and exp <= now]:
                del self._entries[k]
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
