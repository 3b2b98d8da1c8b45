"""The overview's snapshot cache: shared computations, a TTL, and the expired snapshot
served while its successor is computed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.snapshotcache import SnapshotCache

KEY = ("tashkent", "last", 900.0)


class Source:
    """A slow computation that counts its calls and can be told to fail."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.fail = False

    async def compute(self) -> Any:
        self.calls += 1
        n = self.calls
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("database away")
        return f"snapshot {n}"


async def timed(cache: SnapshotCache, source: Source) -> tuple[Any, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await cache.get(KEY, source.compute)
    return got, loop.time() - t0


def test_concurrent_requests_share_one_computation_and_the_ttl_reuses_it() -> None:
    async def main() -> None:
        cache, source = SnapshotCache(ttl=5.0), Source(0.1)
        got = await asyncio.gather(*(cache.get(KEY, source.compute) for _ in range(10)))
        assert set(got) == {"snapshot 1"} and source.calls == 1
        assert await cache.get(KEY, source.compute) == "snapshot 1"
        assert source.calls == 1

    asyncio.run(main())


def test_an_expired_snapshot_is_served_at_once_while_the_next_is_computed() -> None:
    async def main() -> None:
        cache, source = SnapshotCache(ttl=1.0), Source(0.5)
        assert (await timed(cache, source))[0] == "snapshot 1"
        await asyncio.sleep(1.2)  # expired (a ttl after it was made), within one more ttl
        got, took = await timed(cache, source)
        assert got == "snapshot 1" and took < 0.3  # no wait for the recomputation
        got, took = await timed(cache, source)
        assert got == "snapshot 1" and took < 0.3
        await asyncio.sleep(0.8)  # the refresh is done
        assert source.calls == 2  # one refresh for both requests
        assert (await timed(cache, source))[0] == "snapshot 2"

    asyncio.run(main())


def test_a_snapshot_too_old_is_not_served_and_a_failed_refresh_keeps_nothing() -> None:
    async def main() -> None:
        cache, source = SnapshotCache(ttl=1.0), Source(0.05)
        await cache.get(KEY, source.compute)
        await asyncio.sleep(2.1)  # past two ttls: the caller waits for a fresh one
        got, took = await timed(cache, source)
        assert got == "snapshot 2" and took >= 0.05
        source.fail = True
        await asyncio.sleep(1.3)
        assert await cache.get(KEY, source.compute) == "snapshot 2"  # refresh fails behind
        await asyncio.sleep(0.8)
        with pytest.raises(RuntimeError, match="database away"):
            await cache.get(KEY, source.compute)

    asyncio.run(main())


def test_a_refresh_slower_than_two_ttls_keeps_the_old_snapshot_served() -> None:
    """A snapshot that takes longer than the ttl to compute (a large city): polls get the
    old one at once while its successor is computed, then the new one; never a wait."""

    async def main() -> None:
        cache, source = SnapshotCache(ttl=0.3), Source(0.9)
        assert (await timed(cache, source))[0] == "snapshot 1"
        for _ in range(3):  # past one ttl (a refresh starts), then past two while it runs
            await asyncio.sleep(0.4)
            got, took = await timed(cache, source)
            assert got == "snapshot 1" and took < 0.1
        await asyncio.sleep(0.25)  # the refresh is done: kept a ttl from then
        got, took = await timed(cache, source)
        assert got == "snapshot 2" and took < 0.1 and source.calls == 2

    asyncio.run(main())


def test_ttl_zero_always_recomputes() -> None:
    async def main() -> None:
        cache, source = SnapshotCache(ttl=0.0), Source(0.01)
        assert await cache.get(KEY, source.compute) == "snapshot 1"
        assert await cache.get(KEY, source.compute) == "snapshot 2"

    asyncio.run(main())
