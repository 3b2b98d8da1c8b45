"""Delivery accounting sources besides InfluxDB: the ground-truth ledger, read incrementally."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from safecity.ledger import LedgerEntry


@dataclass
class LedgerIndex:
    """Acknowledged sends per device, by channel, with their timestamps (epoch ms)."""

    path: Path
    _offset: int = 0
    _inode: int | None = None
    _sent: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def refresh(self) -> None:
        """Read the lines appended since the last call (a torn last line waits)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._offset, self._inode, self._sent = 0, None, {}
            return
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._offset, self._inode, self._sent = 0, stat.st_ino, {}
        if stat.st_size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(stat.st_size - self._offset)
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                entry = LedgerEntry.from_json(line.decode("utf-8"))
            except (ValueError, KeyError, TypeError):
                continue
            # Only what the broker accepted was delivered to the platform at all.
            if entry.acknowledged and entry.ts_ms is not None:
                self._sent.setdefault(entry.device_id, []).append((entry.ts_ms, entry.channel))
        self._offset += end

    def sent(self, device_id: str, since_ms: int, until_ms: int) -> dict[str, int]:
        """Acknowledged messages of a device with a timestamp in [since, until), by channel."""
        self.refresh()
        counts: Counter[str] = Counter(
            channel for ts, channel in self._sent.get(device_id, ()) if since_ms <= ts < until_ms
        )
        return {c: counts.get(c, 0) for c in ("telemetry", "event", "status")}
