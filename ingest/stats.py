"""`ingest_stats`: the worker's counters as one point every 10 s (the dashboards' contract).

The service bumps plain integer totals where it already counts in bulk (per received
chunk, per flushed batch, per dead-letter write), so the hot path gains no per-message
work. Every `INGEST_STATS_INTERVAL_S` the totals become a point of deltas since this
worker's previous point, plus gauges; a restarted worker starts from zero again, so
`sum()` over any window never counts a message twice.

The broker's `$SYS/broker/publish/messages/dropped` is a broker-wide total that
Mosquitto publishes only when it changes. `BrokerDropped` turns it into increases and
keeps the last value it saw in a small file of the worker's spool directory, so a
restarted worker neither counts the broker's history again nor misses a change; a
value below the last one means the broker restarted (its counter began at 0 again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from safecity.lineprotocol import FieldValue, Point
from safecity.schema import REJECT_REASONS, ingest_stats_point

log = logging.getLogger("safecity.ingest.stats")


@dataclass
class Totals:
    """Cumulative counts since the worker started (bumped in bulk by the service)."""

    received: int = 0
    written: int = 0
    redelivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Gauges:
    """Values at the point's time."""

    pending: int
    lag_seconds: float
    spool_messages: int
    spool_bytes: int
    mqtt_connected: bool


class StatsTracker:
    """Turns cumulative totals into per-point deltas."""

    def __init__(self, city: str, worker_id: str) -> None:
        self.city = city
        self.worker_id = worker_id
        self._previous: dict[str, int] = {}

    def point(
        self, totals: Totals, write_errors: int, broker_dropped: int, gauges: Gauges, time_ms: int
    ) -> Point:
        """The next `ingest_stats` point; remembers the totals it reported."""
        current = {
            "received": totals.received,
            "written": totals.written,
            "write_errors": write_errors,
            "redelivered": totals.redelivered,
            **{f"rejected_{r}": totals.rejected[r] for r in REJECT_REASONS},
        }
        deltas = {name: value - self._previous.get(name, 0) for name, value in current.items()}
        self._previous = current
        values: dict[str, FieldValue] = dict(deltas)
        values["rejected"] = sum(deltas[f"rejected_{r}"] for r in REJECT_REASONS)
        values["broker_dropped"] = broker_dropped
        values["pending"] = gauges.pending
        values["lag_seconds"] = float(gauges.lag_seconds)
        values["spool_messages"] = gauges.spool_messages
        values["spool_bytes"] = gauges.spool_bytes
        values["mqtt_connected"] = gauges.mqtt_connected
        return ingest_stats_point(self.city, self.worker_id, values, time_ms)


class BrokerDropped:
    """Increases of the broker's dropped-messages total, remembered across restarts."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.last = self._load()
        self.pending = 0
        """Increase seen since the last `take()`."""

    def _load(self) -> int:
        try:
            value = json.loads(self.state_file.read_text(encoding="utf-8"))["dropped"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return value if isinstance(value, int) and value >= 0 else 0

    def observe(self, value: int) -> None:
        """A new value of the broker's total."""
        if value < 0 or value == self.last:
            return
        # Below the last value: the broker restarted and counts from 0 again.
        self.pending += value - self.last if value > self.last else value
        self.last = value
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"dropped": value}), encoding="utf-8")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("cannot remember the broker's dropped count", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                self.state_file.with_suffix(".tmp").unlink()

    def take(self) -> int:
        """The increase since the previous call."""
        out, self.pending = self.pending, 0
        return out
