"""Spool-drain stage: write spooled batches to InfluxDB, oldest first, retrying until it is back."""

from __future__ import annotations

import asyncio
import logging
import time

from ingest import metrics
from ingest.deadletter import DeadLetterOutput, refused_letters
from ingest.redact import Redactor
from ingest.sink import Sink
from ingest.stats import Totals

log = logging.getLogger("safecity.ingest")


class SpoolDrain:
    """Drains the sink's spool; a line InfluxDB refuses now is dead-lettered from its source."""

    def __init__(
        self,
        sink: Sink,
        deadletters: DeadLetterOutput,
        totals: Totals,
        worker: str,
        redactor: Redactor,
    ) -> None:
        self._sink = sink
        self._deadletters = deadletters
        self._totals = totals
        self._worker = worker
        self._redactor = redactor

    async def run(self) -> None:
        """Drain for ever; sleeps while the spool is empty."""
        spool, sink = self._sink.spool, self._sink
        while True:
            item = await asyncio.to_thread(spool.peek)
            if item is None:
                sink.spool_ready.clear()
                if spool.empty:
                    await sink.spool_ready.wait()
                continue
            position, batch = item
            refused = await sink.writer.write(batch.lines)
            sources = list(zip(batch.topics, batch.payloads, strict=True))
            await self._deadletters.send(
                refused_letters(refused, batch.lines, sources, self._worker, self._redactor)
            )
            await asyncio.to_thread(spool.consume, position)
            metrics.DRAINED.inc(len(batch.lines))
            bad = {i for i, _ in refused}
            written = [
                ts
                for index, ts in enumerate(batch.ts_ms)
                if index not in bad and batch.topics[index]
            ]
            self._totals.written += len(written)
            metrics.E2E_LAG.observe_ages(time.time() * 1000, written)
            sink.update_spool_metrics()
            if spool.empty:
                log.info("spool drained; writing directly again")
