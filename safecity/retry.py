"""Retry, backoff and supervised background tasks, shared by the services.

Services never import each other, so the retry-on-storage-error loop and the task
supervisor both services use live here, next to the storage boundary they guard.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import Counter, Gauge

from safecity.errors import StorageError

log = logging.getLogger("safecity.retry")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

MAX_EXPONENT = 62
"""2**62 times any sane base exceeds every cap: larger attempts add nothing but overflow."""

TASK_RESTARTS = Counter(
    "safecity_task_restarts_total",
    "Supervised background tasks that died (raised or returned) and were restarted",
    ["task"],
)
TASK_UP = Gauge("safecity_task_up", "1 while a supervised background task is running", ["task"])


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt)).

    The exponent is capped, so the delay is finite for any attempt number; a server's
    Retry-After is honoured (never retried sooner), bounded by `retry_after_cap`.
    """

    base: float = 0.1
    cap: float = 30.0
    retry_after_cap: float = 300.0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before retry number `attempt` (0-based)."""
        exponent = min(max(attempt, 0), MAX_EXPONENT)
        return min(self.cap, math.ldexp(self.base, exponent))

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Sleep time before retry number `attempt` (0-based)."""
        jittered = rng.uniform(0.0, self.ceiling(attempt))
        if retry_after is not None and retry_after > 0:
            return max(jittered, min(retry_after, self.retry_after_cap))
        return jittered


def count_errors(counter: Counter) -> Callable[[StorageError], None]:
    """An `on_error` for `retry_storage`: each failure counted in `counter` by its type."""

    def count(exc: StorageError) -> None:
        counter.labels(error=type(exc).__name__).inc()

    return count


async def retry_storage(
    action: Callable[[], Awaitable[T]],
    what: str,
    *,
    backoff: Backoff | None = None,
    on_error: Callable[[StorageError], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    logger: logging.Logger = log,
) -> T:
    """Run `action` until it does not raise StorageError; back off between attempts."""
    policy = backoff or Backoff(base=0.2, cap=5.0)
    chance = rng or random.Random()
    attempt = 0
    while True:
        try:
            return await action()
        except StorageError as exc:
            delay = policy.delay(attempt, chance, getattr(exc, "retry_after", None))
            if on_error is not None:
                on_error(exc)
            if attempt < 3 or attempt % 10 == 0:
                logger.warning(
                    what + " failed; retrying",
                    extra={
                        "error": str(exc),
                        "attempt": attempt + 1,
                        "retry_in_s": round(delay, 3),
                    },
                )
            await sleep(delay)
            attempt += 1


@dataclass
class _Task:
    name: str
    factory: Callable[[], Awaitable[None]]
    up: bool = False
    restarts: int = 0
    handle: asyncio.Task[None] | None = None


@dataclass
class Supervisor:
    """Runs background tasks for ever: one that dies is logged, counted, restarted with backoff.

    `healthy` is False while any task is down (between its death and its restart):
    services fold it into their readiness.
    """

    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=30.0))
    settle_s: float = 60.0
    """A task that ran this long before dying starts its backoff afresh."""
    sleep: Sleep = asyncio.sleep
    _tasks: dict[str, _Task] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Start `factory()` as the supervised task `name` (names are unique)."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} is supervised already")
        task = _Task(name, factory)
        self._tasks[name] = task
        task.handle = asyncio.create_task(self._keep(task), name=name)

    @property
    def healthy(self) -> bool:
        """True when every supervised task is running."""
        return all(t.up for t in self._tasks.values())

    def down(self) -> list[str]:
        """Names of the tasks that are not running now."""
        return [t.name for t in self._tasks.values() if not t.up]

    def restarts(self, name: str) -> int:
        """How often task `name` was restarted."""
        return self._tasks[name].restarts

    async def _keep(self, task: _Task) -> None:
        attempt = 0
        gauge = TASK_UP.labels(task=task.name)
        counter = TASK_RESTARTS.labels(task=task.name)
        while True:
            task.up = True
            gauge.set(1)
            started = time.monotonic()
            try:
                await task.factory()
            except asyncio.CancelledError:
                task.up = False
                gauge.set(0)
                raise
            except Exception:
                log.exception("background task died; restarting it", extra={"task": task.name})
            else:
                log.error("background task ended; restarting it", extra={"task": task.name})
            task.up = False
            gauge.set(0)
            task.restarts += 1
            counter.inc()
            if time.monotonic() - started >= self.settle_s:
                attempt = 0
            delay = self.backoff.delay(attempt, self._rng)
            attempt += 1
            await self.sleep(delay)
            log.info("background task restarted", extra={"task": task.name})

    async def stop(self) -> None:
        """Cancel every task and wait for them; idempotent."""
        handles = [t.handle for t in self._tasks.values() if t.handle is not None]
        for handle in handles:
            handle.cancel()
        for handle in handles:
            try:
                await handle
            except asyncio.CancelledError:
                pass
            except Exception:  # _keep never raises but cancellation; defensive
                log.exception("background task failed while stopping")
