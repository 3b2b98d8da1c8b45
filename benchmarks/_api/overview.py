"""The overview at city scale: its snapshot before (one `last()` of every device over the
whole lookback, one JSON series a device) and now (`api.lastseen`, one row a device), on
the same data in the same run, and the API's overview just after its cache expired."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx

from api import lastseen
from api.offline import status_grouped
from api.overview import EVENTS_GROUPED, LIGHTS_GROUPED, MEAN_FIELDS, take_snapshot
from api.params import TimeRange
from api.settings import ApiSettings
from api.tiers import TierBook
from api.windows import window_grouped
from safecity import incidents as inc
from safecity.influx import InfluxClient, Series
from safecity.registry import City

T = TypeVar("T")
Figures = dict[str, float]
LOOKBACK = timedelta(hours=24)  # the API's default status_lookback


def _seen(answer: list[Series], city: City) -> dict[str, int]:
    registered = {d.id for d in city.devices}
    out: dict[str, int] = {}
    for s in answer:
        for row in s.rows():
            device, at = str(row["device_id"]), int(row["time"])
            if device in registered:
                out[device] = max(at, out.get(device, at))
    return out


async def old_last_seen(influx: InfluxClient, city: City, end: datetime) -> dict[str, int]:
    """The statement before: `last("seq")` of every kind over the lookback, by device."""
    params = lastseen.span_params(city.id, end - LOOKBACK, end)
    return _seen(await influx.query(lastseen.grouped_statement(), params), city)


async def old_snapshot(influx: InfluxClient, city: City, end: datetime) -> None:
    """The snapshot's queries before, concurrently, parsed as the API parsed them."""
    window = lastseen.span_params(city.id, end - timedelta(minutes=15), end)
    lights = lastseen.span_params(city.id, end - timedelta(minutes=30), end)
    lookback = lastseen.span_params(city.id, end - LOOKBACK, end)
    await asyncio.gather(
        *(influx.query(window_grouped(None, k, MEAN_FIELDS[k]), window) for k in MEAN_FIELDS),
        influx.query(LIGHTS_GROUPED, lights),
        influx.query(lastseen.grouped_statement(), lookback),
        influx.query(status_grouped(), lookback),
        influx.query(EVENTS_GROUPED, window),
        inc.IncidentStore(influx).query(city.id, end - timedelta(days=7), end),
    )


def _figures(ms: list[float]) -> Figures:
    return {"median": statistics.median(ms), "max": max(ms), "n": len(ms)}


async def compare(influx: InfluxClient, city: City, samples: int) -> list[tuple[str, Figures]]:
    """Before and now, alternated `samples` times each: last seen alone, the snapshot."""
    settings = ApiSettings(influx=influx.settings)
    book = TierBook(())  # no rollups in this database: raw answers both
    runs: dict[str, list[float]] = {}

    async def timed(name: str, call: Awaitable[T]) -> T:
        t = time.perf_counter()
        result = await call
        runs.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        return result

    registered = {d.id for d in city.devices}
    for _ in range(samples):
        end = datetime.now(UTC)
        before = await timed("last seen, before", old_last_seen(influx, city, end))
        now = await timed(
            "last seen, now",
            lastseen.newest_readings(influx, settings, city, (end - LOOKBACK, end)),
        )
        if before != {k: v for k, v in now.items() if k in registered}:
            raise SystemExit("last seen: the two answers differ: the benchmark is void")
        window = TimeRange(end - timedelta(minutes=15), end)
        await timed("snapshot, before", old_snapshot(influx, city, end))
        await timed("snapshot, now", take_snapshot(influx, city, window, settings, book))
    return [(name, _figures(ms)) for name, ms in runs.items()]


async def after_expiry(http: httpx.AsyncClient, path: str, ttl: float, samples: int) -> Figures:
    """The overview's time when its cached snapshot has fully expired (2 x TTL idle: the
    request computes it): `samples` requests, each after such a pause."""
    ms = []
    for _ in range(samples):
        await asyncio.sleep(2 * ttl + 0.5)
        t = time.perf_counter()
        r = await http.get(path)
        r.raise_for_status()
        ms.append((time.perf_counter() - t) * 1000)
    return _figures(ms)


async def while_refreshing(
    http: httpx.AsyncClient, path: str, ttl: float, call: Callable[[], Awaitable[T]]
) -> T:
    """`call()` while the overview at `path` is polled every quarter second: its snapshot is
    then recomputed in the background whenever it is a TTL old (back to back when one takes
    longer than the TTL), so `call` meets the API while it parses and aggregates."""
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            (await http.get(path)).raise_for_status()
            await asyncio.sleep(0.25)

    poller = asyncio.create_task(poll())
    try:
        await asyncio.sleep(ttl + 0.5)  # past the TTL: a refresh is under way
        return await call()
    finally:
        stop.set()
        await poller
