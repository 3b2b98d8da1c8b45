"""Writer stage: line-protocol batches to InfluxDB with the status-code policy of RELIABILITY.md.

204 -> durable; 400/413 -> split until the refused lines are isolated (a `partial
write` stored the valid points already, and rewriting them is idempotent); 429, 5xx,
timeouts, refused connections and auth failures -> retry with full-jitter backoff,
never giving up (the caller does not ack meanwhile: back-pressure, not loss).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from ingest import metrics
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


class InfluxWriter:
    """Writes batches of lines; returns the lines InfluxDB refused for their content."""

    def __init__(self, client: InfluxClient, backoff: Backoff | None = None) -> None:
        self._client = client
        self._backoff = backoff or Backoff()
        self._rng = random.Random()
        self.healthy = True

    async def write(self, lines: list[str]) -> list[tuple[int, str]]:
        """Make `lines` durable; return (index, InfluxDB's message) for each refused line."""
        refused: list[tuple[int, str]] = []
        if lines:
            await self._write_range(lines, 0, len(lines), refused)
        return refused

    async def _write_range(
        self, lines: list[str], lo: int, hi: int, refused: list[tuple[int, str]]
    ) -> None:
        body = ("\n".join(lines[lo:hi]) + "\n").encode()
        try:
            await self._write_with_retry(body)
        except WriteRejectedError as exc:
            metrics.WRITE_ERRORS.labels(error=f"http_{exc.status}").inc()
            if hi - lo == 1:
                refused.append((lo, exc.message))
                return
            mid = (lo + hi) // 2
            await self._write_range(lines, lo, mid, refused)
            await self._write_range(lines, mid, hi, refused)

    async def _write_with_retry(self, body: bytes) -> None:
        attempt = 0
        while True:
            try:
                await self._client.write(body)
            except StorageUnavailableError as exc:
                delay = max(self._backoff.delay(attempt, self._rng), exc.retry_after or 0.0)
                self._unhealthy("unavailable", exc, attempt, delay)
            except StorageAuthError as exc:
                delay = self._backoff.delay(attempt, self._rng)
                self._unhealthy("auth", exc, attempt, delay)
            else:
                if not self.healthy:
                    log.info("influxdb writes recovered", extra={"attempts": attempt + 1})
                self.healthy = True
                return
            await asyncio.sleep(delay)
            attempt += 1

    def _unhealthy(self, error: str, exc: Exception, attempt: int, delay: float) -> None:
        metrics.WRITE_ERRORS.labels(error=error).inc()
        self.healthy = False
        level = logging.ERROR if error == "auth" else logging.WARNING
        if attempt == 0 or attempt % 10 == 0:
            log.log(
                level,
                "influxdb write failed, retrying (not acking meanwhile)",
                extra={"error": str(exc), "attempt": attempt + 1, "retry_in_s": round(delay, 3)},
            )
