"""Output stage: make lines durable in InfluxDB, or in the disk spool while it is away.

While the spool holds anything, new lines go to the spool too, so it drains in order.
When the spool is full nothing more is made durable (the caller does not ack:
back-pressure); the broker keeps the messages.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ingest import metrics
from ingest.spool import Spool, SpoolBatch
from ingest.writer import InfluxWriter, WriteDeferredError
from safecity.errors import LineProtocolError, SpoolError, SpoolFullError
from safecity.lineprotocol import Point, encode

log = logging.getLogger("safecity.ingest")


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of a batch of lines: refused (index, InfluxDB's message), or spooled."""

    refused: list[tuple[int, str]]
    spooled: bool


class Sink:
    """InfluxDB-or-spool output with back-pressure; readiness reads its flags."""

    def __init__(self, writer: InfluxWriter, spool: Spool, spool_after: float) -> None:
        self.writer = writer
        self.spool = spool
        self._spool_after = spool_after
        self.backpressure = False
        self.spool_failed = False
        self.spool_ready = asyncio.Event()
        """Set whenever the spool holds something for the drain."""

    async def store(self, batch: SpoolBatch) -> Stored:
        """Write the lines (or spool them when InfluxDB stays away past `spool_after`)."""
        if self.spool.empty:
            try:
                refused = await self.writer.write(batch.lines, self._spool_after)
            except WriteDeferredError as exc:
                log.warning(
                    "influxdb unavailable; spooling batches to disk",
                    extra={"error": str(exc), "points": len(batch.lines)},
                )
            else:
                return Stored(refused, spooled=False)
        await self.spool_append(batch)
        return Stored([], spooled=True)

    async def store_own(self, points: list[Point]) -> None:
        """Make the worker's own points durable; a refused one is logged (no source message)."""
        encoded = [(line, p.time_ms) for p in points if (line := encode_own(p)) is not None]
        if not encoded:
            return
        lines = [line for line, _ in encoded]
        stored = await self.store(
            SpoolBatch(lines, [t for _, t in encoded], [""] * len(lines), [b""] * len(lines))
        )
        for index, message in stored.refused:
            log.error(
                "influxdb refused ingest's own point",
                extra={"line": lines[index][:300], "error": message},
            )

    async def spool_append(self, batch: SpoolBatch) -> None:
        """Append to the spool; while it is full or failing, wait (not acking) and retry."""
        waited = 0.0
        while True:
            try:
                await asyncio.to_thread(self.spool.append, batch)
            except SpoolFullError as exc:
                if not self.backpressure:
                    log.error(
                        "spool full: back-pressure, not acking until it drains",
                        extra={"error": str(exc), "spool_bytes": self.spool.bytes},
                    )
                self.backpressure = True
                metrics.BACKPRESSURE.set(1)
                await asyncio.sleep(0.5)
                waited += 0.5
                continue
            except SpoolError as exc:
                # A broken disk: keep the batch unacked and retry; readiness says so.
                if not self.spool_failed:
                    log.error("spool append failed; not acking", extra={"error": str(exc)})
                self.spool_failed = True
                await asyncio.sleep(1.0)
                continue
            break
        if self.backpressure:
            log.info("spool has room again: acking resumes", extra={"waited_s": waited})
        self.backpressure = False
        self.spool_failed = False
        metrics.BACKPRESSURE.set(0)
        metrics.SPOOLED.inc(len(batch.lines))
        self.update_spool_metrics()
        self.spool_ready.set()

    def update_spool_metrics(self) -> None:
        """Export the spool's size."""
        metrics.SPOOL_POINTS.set(self.spool.points)
        metrics.SPOOL_BYTES.set(self.spool.bytes)
        metrics.SPOOL_SEGMENTS.set(self.spool.segments)


def encode_own(point: Point) -> str | None:
    """The line of one of the worker's own points, or None (logged) if it cannot be encoded."""
    try:
        return encode(point)
    except LineProtocolError as exc:  # sanitised fields: should be unreachable
        log.error("cannot encode ingest's own point", extra={"error": str(exc)})
        return None
