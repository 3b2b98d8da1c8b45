"""Delivery accounting sources besides InfluxDB: the ground-truth ledger, read incrementally."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from safecity.appendlog import AppendedLines
from safecity.ledger import LedgerEntry


@dataclass
class LedgerIndex:
    """Acknowledged sends per device, by channel, with their timestamps (epoch ms)."""

    path: Path
    _lines: AppendedLines | None = None
    _sent: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def refresh(self) -> None:
        """Take in the lines appended since the last call."""
        if self._lines is None:
            self._lines = AppendedLines(self.path)
        reset, lines = self._lines.read()
        if reset:
            self._sent = {}
        for line in lines:
            try:
                entry = LedgerEntry.from_json(line.decode("utf-8"))
            except (ValueError, KeyError, TypeError):
                continue
            # Only what the broker accepted was delivered to the platform at all.
            if entry.acknowledged and entry.ts_ms is not None:
                self._sent.setdefault(entry.device_id, []).append((entry.ts_ms, entry.channel))

    def sent(self, device_id: str, since_ms: int, until_ms: int) -> dict[str, int]:
        """Acknowledged messages of a device with a timestamp in [since, until), by channel."""
        self.refresh()
        counts: Counter[str] = Counter(
            channel for ts, channel in self._sent.get(device_id, ()) if since_ms <= ts < until_ms
        )
        return {c: counts.get(c, 0) for c in ("telemetry", "event", "status")}
