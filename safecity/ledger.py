"""The ground-truth ledger: one JSON line per message a simulator or test sent.

The simulator writes it; `safecity verify` (and the fault tests) compare it with
InfluxDB and the dead-letter store. Writes are buffered: the ledger must never be
the bottleneck of a load test; the buffer still reaches the file every second or so,
so a ledger can be checked while its simulator runs (`safecity verify` beside
`safecity run`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FieldValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What was sent: identity, timestamp, payload hash, intent and the broker's verdict.

    `intended_reason` is None for a message meant to be accepted, else the reject
    reason (RejectReason value) it is meant to get, or a fault label such as
    `duplicate` for a deliberate resend. `puback` is the PUBACK reason code
    (>= 0x80 refused; 0x100 not sent). `values` holds the telemetry values of a good
    reading, so the checker can compare them with what InfluxDB stored.
    """

    device_id: str
    channel: str
    topic: str
    seq: int | None
    ts_ms: int | None
    sha256: str
    intended_reason: str | None
    puback: int
    values: dict[str, FieldValue] | None = None
    fault: str | None = None

    @property
    def good(self) -> bool:
        """Meant to be accepted and stored."""
        return self.intended_reason is None

    @property
    def acknowledged(self) -> bool:
        """The broker accepted it (PUBACK reason < 0x80)."""
        return self.puback < 0x80

    def to_json(self) -> str:
        """One compact JSON line (without the newline)."""
        record: dict[str, Any] = {
            "d": self.device_id,
            "c": self.channel,
            "topic": self.topic,
            "s": self.seq,
            "t": self.ts_ms,
            "h": self.sha256,
            "r": self.intended_reason,
            "p": self.puback,
        }
        if self.values is not None:
            record["v"] = self.values
        if self.fault is not None:
            record["f"] = self.fault
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> LedgerEntry:
        """Parse one ledger line."""
        r = json.loads(line)
        return cls(
            device_id=r["d"],
            channel=r["c"],
            topic=r["topic"],
            seq=r["s"],
            ts_ms=r["t"],
            sha256=r["h"],
            intended_reason=r["r"],
            puback=r["p"],
            values=r.get("v"),
            fault=r.get("f"),
        )


class LedgerWriter:
    """Appends entries through a large buffer, flushed every `flush_every` seconds at the
    latest (on the next write); `close()` flushes and fsyncs.

    Several processes may append to one ledger (a fleet spread over processes): the
    buffer holds whole lines only and goes out in one `write` on an ``O_APPEND``
    descriptor, which Linux applies whole at the end of the file, so the processes'
    lines interleave but never tear.
    """

    def __init__(self, path: Path, buffer_bytes: int = 1 << 20, flush_every: float = 1.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lines: list[bytes] = []
        self._buffered = 0
        self._limit = buffer_bytes
        self.count = 0
        self.flush_every = flush_every
        self._flushed = time.monotonic()

    def write(self, entry: LedgerEntry) -> None:
        """Record one sent message."""
        if self._fd < 0:
            raise ValueError(f"ledger {self.path} is closed")
        line = (entry.to_json() + "\n").encode("utf-8")
        self._lines.append(line)
        self._buffered += len(line)
        self.count += 1
        now = time.monotonic()
        if self._buffered >= self._limit or now - self._flushed >= self.flush_every:
            self.flush()
            self._flushed = now

    def flush(self) -> None:
        """Push buffered entries to the OS (whole lines, one write)."""
        if self._fd < 0 or not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines, self._buffered = [], 0
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        """Flush, fsync and close; idempotent."""
        if self._fd >= 0:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def read(path: Path) -> Iterator[LedgerEntry]:
    """All entries of a ledger, in write order (a torn last line is skipped)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield LedgerEntry.from_json(line)
