"""Backoff that cannot overflow, the writer's retry loop over a long outage (fake clock, real
failing connections, then the real InfluxDB), and supervised background tasks."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from faults import new_db
from prometheus_client import REGISTRY
from support import influx_rows, wait_for_async

from control.stack import LocalStack, free_port
from ingest.service import IngestService
from ingest.settings import IngestSettings
from ingest.writer import InfluxWriter
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.retry import Backoff, Supervisor
from safecity.settings import InfluxSettings

CITY = default_city()


def test_backoff_is_finite_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base=0.1, cap=30.0)
    rng = random.Random(7)
    for attempt in (0, 1, 10, 1023, 1024, 1025, 10**6, 10**18):
        delay = backoff.delay(attempt, rng)
        assert math.isfinite(delay) and 0.0 <= delay <= 30.0
    assert backoff.ceiling(0) == 0.1
    assert backoff.ceiling(1024) == backoff.ceiling(10**9) == 30.0
    # Retry-After is a floor (never retried sooner), bounded against a hostile header.
    assert backoff.delay(0, rng, retry_after=12.0) >= 12.0
    assert backoff.delay(0, rng, retry_after=1e12) == backoff.retry_after_cap


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda n: None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


# Past the attempt where 2.0**attempt overflows a float (1,024): a backoff that computes
# the power before capping would raise there.
RETRIES = 2_000


def test_writer_retries_past_float_overflow_then_writes(stack: LocalStack) -> None:
    db = new_db(stack)
    # Now: the default retention policy refuses points older than its duration.
    line = f"retry_probe,device_id=d1 value=1i {int(time.time() * 1000)}"

    async def main() -> list[tuple[int, str]]:
        # Nothing listens on this port: every attempt is a real, refused connection.
        down = InfluxClient(InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database=db))
        up = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
        await up.ensure_database()
        clock = FakeClock()
        writer = InfluxWriter(down, Backoff(base=0.1, cap=30.0), sleep=clock.sleep, clock=clock)

        def back_after(count: int) -> None:
            if count == RETRIES:
                writer._client = up  # InfluxDB is back after ~8 h of retries

        clock.on_sleep = back_after
        try:
            refused = await writer.write([line])
        finally:
            await down.close()
            await up.close()
        assert len(clock.sleeps) == RETRIES
        assert all(math.isfinite(s) and 0.0 <= s <= 30.0 for s in clock.sleeps)
        assert max(clock.sleeps) > 15.0  # the cap was reached, jittered below it
        assert writer.write_errors == RETRIES and writer.healthy
        return refused

    assert asyncio.run(main()) == []
    rows = influx_rows(stack, db, "SELECT * FROM retry_probe")
    assert [r["value"] for r in rows] == [1]


def test_supervisor_restarts_a_dying_task_with_backoff() -> None:
    async def main() -> None:
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            await asyncio.sleep(0)

        runs = 0
        states: list[bool] = []
        supervisor = Supervisor(backoff=Backoff(base=1.0, cap=4.0), sleep=sleep)

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            states.append(supervisor.healthy)
            if runs < 5:
                raise RuntimeError(f"boom {runs}")
            await asyncio.Event().wait()

        before = restarts_sample("flaky")
        supervisor.start("flaky", flaky)

        async def fifth_run() -> bool:
            return runs == 5 and supervisor.healthy

        # The sleeps are injected (no time passes): a few loop turns settle it.
        await wait_for_async(fifth_run, 5, "the fifth run of the dying task", interval=0)
        assert runs == 5 and supervisor.restarts("flaky") == 4 and supervisor.healthy
        assert restarts_sample("flaky") - before == 4
        assert all(0.0 <= s <= 4.0 for s in slept) and len(slept) == 4
        assert all(states)  # running while it runs
        await supervisor.stop()

    asyncio.run(main())


def restarts_sample(task: str) -> float:
    return REGISTRY.get_sample_value("safecity_task_restarts_total", {"task": task}) or 0.0


def test_dead_spool_drain_is_restarted_counted_and_unready_meanwhile(
    stack: LocalStack, tmp_path: Path
) -> None:
    db = new_db(stack)
    settings = IngestSettings(
        mqtt=stack.mqtt_settings("_ingest"),
        influx=InfluxSettings(url=stack.influx_url, database=db),
        worker_id=f"sup-{db[2:]}",
        share_group=f"g-{db}",
        session_expiry=60,
        metrics_port=0,
        deadletter_dir=tmp_path / "deadletter",
        spool_dir=tmp_path / "spool",
        broker_sys=False,
    )

    async def main() -> None:
        service = IngestService(settings, CITY)
        # A slow restart, so "down" lasts long enough to be seen from outside.
        service.tasks.backoff = Backoff(base=1.5, cap=1.5)
        broken = True
        peek = service.spool.peek

        def failing_peek() -> Any:
            if broken:
                raise RuntimeError("injected: spool drain dies")
            return peek()

        service.spool.peek = failing_peek  # type: ignore[method-assign]
        await service.start()
        consumer = asyncio.create_task(service.run())
        url = f"http://127.0.0.1:{service.health.port}"
        try:
            async with httpx.AsyncClient(timeout=5) as http:

                async def ready() -> bool:
                    return (await http.get(f"{url}/readyz")).status_code == 200

                async def restarts() -> float:
                    text = (await http.get(f"{url}/metrics")).text
                    for row in text.splitlines():
                        if row.startswith('safecity_task_restarts_total{task="spool-drain"}'):
                            return float(row.rsplit(" ", 1)[1])
                    return 0.0

                # The drain died at its first peek: down, counted, not ready.
                await wait_for_async(
                    lambda: _not(ready()), 20, "readiness false while the drain is down"
                )
                first = await wait_for_async(restarts, 20, "the restart counted in /metrics")
                assert first >= 1
                broken = False
                await wait_for_async(ready, 20, "readiness back once the drain runs again")
                assert service.tasks.healthy and service.tasks.restarts("spool-drain") >= 1
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await service.stop()

    asyncio.run(main())


async def _not(value: Awaitable[bool]) -> bool:
    return not await value
