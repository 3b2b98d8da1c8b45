"""A backfill: the simulated city's readings over a past span, written straight to InfluxDB.

Live devices publish over MQTT; a year of history would take a year. A backfill runs the
same generators (`generators.generate`) for every device over [start, end) at a fixed
step, validates each reading with the contract's model, and writes the points through the
v1 `/write` API in large batches, several in flight, reporting its progress and
throughput. The raw retention policy must keep the span (InfluxDB drops older points at
write): the command says so before it starts.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.queues import Queue
from queue import Empty
from typing import TextIO

from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import from_epoch_ms, reading_model
from safecity.registry import City, Device
from safecity.rollups import keep_seconds
from safecity.schema import reading_point
from safecity.settings import InfluxSettings
from simulators.generators import generate

BATCH = 20_000
IN_FLIGHT = 4
PARALLEL_FROM = 50_000
"""Readings from which a backfill is worth worker processes (each costs a fork)."""
DAY_MS = 86_400_000
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """What to write: the devices, the span [start_ms, end_ms) and the step."""

    city: City
    devices: tuple[Device, ...]
    start_ms: int
    end_ms: int
    every_s: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every_s < 1 or DAY_MS % (self.every_s * 1000):
            raise ValueError(f"a backfill step must divide a day, not {self.every_s} s")
        if self.end_ms <= self.start_ms:
            raise ValueError("a backfill span must not be empty")

    @property
    def total(self) -> int:
        """Readings the plan writes."""
        steps = -(-(self.end_ms - self.start_ms) // (self.every_s * 1000))
        return steps * len(self.devices)


@dataclass(frozen=True, slots=True)
class BackfillStats:
    """What a backfill wrote, and how fast."""

    readings: int
    seconds: float

    @property
    def rate(self) -> float:
        """Readings per second."""
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def _device_points(plan: BackfillPlan, device: Device, start_ms: int, end_ms: int) -> list[Point]:
    model = reading_model(device.kind)
    rng = random.Random(zlib.crc32(f"{plan.seed}:{device.id}:{start_ms}".encode()))
    step = plan.every_s * 1000
    seq = (start_ms - plan.start_ms) // step
    points = []
    for ts in range(start_ms, end_ms, step):
        values = generate(device, rng, from_epoch_ms(ts))
        reading = model.model_validate({"ts": ts, "seq": seq, "values": values})
        points.append(reading_point(plan.city.id, device, reading))
        seq += 1
    return points


def _chunks(plan: BackfillPlan) -> Iterator[list[Point]]:
    """Points day by day (every device), in batches of about `BATCH` (the step divides a
    day, so every day starts on a step)."""
    pending: list[Point] = []
    for lo in range(plan.start_ms, plan.end_ms, DAY_MS):
        hi = min(lo + DAY_MS, plan.end_ms)
        for device in plan.devices:
            pending.extend(_device_points(plan, device, lo, hi))
            if len(pending) >= BATCH:
                yield pending
                pending = []
    if pending:
        yield pending


def _produce(plan: BackfillPlan, queue: Queue[tuple[int, bytes] | str | None]) -> None:
    """A worker process: its devices' batches, encoded, then None (or why it failed)."""
    try:
        for batch in _chunks(plan):
            queue.put((len(batch), encode_many(batch)))
    except Exception as exc:
        queue.put(f"backfill worker failed: {exc!r}")
        return
    queue.put(None)


def groups(plan: BackfillPlan, workers: int) -> list[BackfillPlan]:
    """The plan split into at most `workers` plans of whole districts (the processes a
    district's devices share stay in one worker's cache); the same readings in all."""
    districts = sorted({d.district for d in plan.devices})
    parts = min(workers, len(districts))
    return [
        replace(plan, devices=tuple(d for d in plan.devices if d.district in districts[i::parts]))
        for i in range(parts)
    ]


async def _batches(plan: BackfillPlan, workers: int) -> AsyncIterator[tuple[int, bytes]]:
    """(readings, line protocol) batches: generated here, or by worker processes (the
    generators are pure Python and CPU-bound; the values are a pure function of device
    and time, so how the devices are split changes nothing written)."""
    parts = groups(plan, workers) if workers > 1 and plan.total >= PARALLEL_FROM else []
    if len(parts) < 2:
        for batch in _chunks(plan):
            yield len(batch), encode_many(batch)
            await asyncio.sleep(0)
        return
    context = multiprocessing.get_context("fork")
    queue: Queue[tuple[int, bytes] | str | None] = context.Queue(maxsize=2 * len(parts))
    procs = [context.Process(target=_produce, args=(p, queue), daemon=True) for p in parts]
    for proc in procs:
        proc.start()
    try:
        running = len(procs)
        while running:
            try:
                item = await asyncio.to_thread(queue.get, True, 1.0)
            except Empty:
                if not any(proc.is_alive() for proc in procs):
                    raise RuntimeError("backfill workers exited without finishing") from None
                continue
            if isinstance(item, str):
                raise RuntimeError(item)
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


async def backfill(
    influx: InfluxClient, plan: BackfillPlan, progress: Progress, workers: int = 1
) -> BackfillStats:
    """Write the plan's readings, generated by `workers` processes; call
    `progress(done, total, rate)` after each batch."""
    started = time.monotonic()
    done = 0
    slots = asyncio.Semaphore(IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    async def write(count: int, body: bytes) -> None:
        nonlocal done
        try:
            await influx.write(body)
        finally:
            slots.release()
        done += count
        progress(done, plan.total, done / max(time.monotonic() - started, 1e-9))

    async for count, body in _batches(plan, workers):
        await slots.acquire()
        task = asyncio.create_task(write(count, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return BackfillStats(done, time.monotonic() - started)


_SPAN = re.compile(r"([1-9][0-9]{0,4})([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400}


def parse_span(text: str, what: str) -> int:
    """Seconds of a span like 365d, 12h or 15m; ValueError naming `what` otherwise."""
    match = _SPAN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{what} {text!r}: want a span like 365d, 12h or 15m")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _printer(out: TextIO) -> Progress:
    last = [0.0]

    def show(done: int, total: int, rate: float) -> None:
        if time.monotonic() - last[0] >= 1.0 or done >= total:
            last[0] = time.monotonic()
            share = 100 * done / total if total else 100.0
            print(f"backfill: {done:,}/{total:,} readings ({share:.0f}%), {rate:,.0f}/s", file=out)

    return show


async def run_backfill(
    influx_settings: InfluxSettings,
    plan: BackfillPlan,
    out: TextIO = sys.stderr,
    workers: int = 1,
) -> BackfillStats:
    """Prepare the database, check raw keeps the span, write the plan, print the rate."""
    kept = keep_seconds(influx_settings.retention_duration)
    span_s = (int(time.time() * 1000) - plan.start_ms) / 1000
    if kept is not None and kept < span_s:
        raise ValueError(
            f"raw telemetry is kept {influx_settings.retention_duration}, so InfluxDB would drop "
            f"most of a {span_s / 86_400:.0f}-day backfill: run it with "
            "SAFECITY_INFLUX__RETENTION_DURATION=INF (or longer than the span); the rollup "
            "job rolls it up, and the usual retention afterwards drops the raw, keeping the tiers"
        )
    influx = InfluxClient(influx_settings)
    try:
        await influx.ensure_database()
        stats = await backfill(influx, plan, _printer(out), workers)
    finally:
        await influx.close()
    print(
        f"backfill: wrote {stats.readings:,} readings of {len(plan.devices)} devices in "
        f"{stats.seconds:.1f} s ({stats.rate:,.0f} readings/s); `safecity rollup --once` "
        "rolls them up",
        file=out,
    )
    return stats
