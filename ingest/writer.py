"""Writer stage: line-protocol batches to InfluxDB with the status-code policy of RELIABILITY.md.

204 -> durable; 400/413 -> split until the refused lines are isolated (a `partial
write` stored the valid points already, and rewriting them is idempotent); 429, 5xx,
timeouts, refused connections -> retry with full-jitter backoff (honouring
Retry-After). A caller that can make a batch durable otherwise (the spool) passes
`give_up_after`: past it, a retryable failure raises `WriteDeferredError` instead of
retrying on. Auth failures (401/403/404) are never deferred: spooling would only hide
an operator error, so the caller stops acking (back-pressure) and says so.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from ingest import metrics
from safecity.errors import StorageError
from safecity.influx import (
    InfluxClient,
    StorageAuthError,
    StorageUnavailableError,
    WriteRejectedError,
)

log = logging.getLogger("safecity.ingest.writer")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff parameters."""

    base: float = 0.1
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Sleep time before retry number `attempt` (0-based)."""
        return rng.uniform(0, min(self.cap, self.base * 2**attempt))


class WriteDeferredError(StorageError):
    """InfluxDB stayed unavailable past the caller's `give_up_after`; spool the batch."""


class InfluxWriter:
    """Writes batches of lines; returns the lines InfluxDB refused for their content."""

    def __init__(self, client: InfluxClient, backoff: Backoff | None = None) -> None:
        self._client = client
        self._backoff = backoff or Backoff()
        self._rng = random.Random()
        self.healthy = True
        self.auth_failing = False

    async def write(
        self, lines: list[str], give_up_after: float | None = None
    ) -> list[tuple[int, str]]:
        """Make `lines` durable; return (index, InfluxDB's message) for each refused line.

        With `give_up_after` (seconds), raise WriteDeferredError once InfluxDB has been
        unavailable for that long; without it, retry until it succeeds.
        """
        refused: list[tuple[int, str]] = []
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        if lines:
            await self._write_range(lines, 0, len(lines), refused, deadline)
        return refused

    async def _write_range(
        self,
        lines: list[str],
        lo: int,
        hi: int,
        refused: list[tuple[int, str]],
        deadline: float | None,
    ) -> None:
        body = ("\n".join(lines[lo:hi]) + "\n").encode()
        try:
            await self._write_with_retry(body, deadline)
        except WriteRejectedError as exc:
            metrics.WRITE_ERRORS.labels(error=f"http_{exc.status}").inc()
            if hi - lo == 1:
                refused.append((lo, exc.message))
                return
            mid = (lo + hi) // 2
            await self._write_range(lines, lo, mid, refused, deadline)
            await self._write_range(lines, mid, hi, refused, deadline)

    async def _write_with_retry(self, body: bytes, deadline: float | None) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                if deadline is None:
                    await self._client.write(body)
                else:
                    # A hung InfluxDB (SIGSTOP, overload) must not hold the batch past
                    # the deadline; an abandoned request that lands later is harmless.
                    budget = max(0.05, deadline - started)
                    try:
                        await asyncio.wait_for(self._client.write(body), budget)
                    except TimeoutError as exc:
                        raise StorageUnavailableError(
                            f"InfluxDB write took longer than {budget:.2f}s"
                        ) from exc
            except StorageUnavailableError as exc:
                delay = max(self._backoff.delay(attempt, self._rng), exc.retry_after or 0.0)
                self._unhealthy("unavailable", exc, attempt, delay)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise WriteDeferredError(str(exc)) from exc
            except StorageAuthError as exc:
                delay = self._backoff.delay(attempt, self._rng)
                self.auth_failing = True
                self._unhealthy("auth", exc, attempt, delay)
            else:
                metrics.WRITE_SECONDS.observe(time.monotonic() - started)
                if not self.healthy:
                    log.info("influxdb writes recovered", extra={"attempts": attempt + 1})
                self.healthy = True
                self.auth_failing = False
                return
            metrics.WRITE_RETRIES.inc()
            await asyncio.sleep(delay)
            attempt += 1

    def _unhealthy(self, error: str, exc: Exception, attempt: int, delay: float) -> None:
        metrics.WRITE_ERRORS.labels(error=error).inc()
        self.healthy = False
        level = logging.ERROR if error == "auth" else logging.WARNING
        if attempt == 0 or attempt % 10 == 0:
            log.log(
                level,
                "influxdb write failed, retrying",
                extra={"error": str(exc), "attempt": attempt + 1, "retry_in_s": round(delay, 3)},
            )
