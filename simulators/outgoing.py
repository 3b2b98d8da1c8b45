"""What the fleet sends and what became of it: messages, verdicts, stats, the ledger line.

Sequence numbers: each device has one counter shared by its readings and events,
starting at ``epoch_ms(start) * 1000``. A restart (with the default start, now)
therefore never goes backwards as long as a run publishes fewer than 1000 messages
per device per millisecond of wall time. Values stay below 2**53 until the year 2255.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from edge.agent import AgentStats, Envelope
from safecity.ledger import LedgerEntry, LedgerWriter
from safecity.mqtt import NOT_SENT
from safecity.readings import epoch_ms, format_ts
from safecity.topics import Channel

PUBLISHED = Counter(
    "safecity_sim_published",
    "Messages published by the simulator, by sensor kind and broker verdict "
    "(accepted: PUBACK < 0x80, refused: PUBACK >= 0x80, failed: not sent or no PUBACK).",
    ["kind", "result"],
)

DEVICES_REFUSED = Gauge(
    "safecity_sim_devices_refused",
    "Simulated devices whose last connection attempt the broker refused (Not authorized, "
    "bad credentials, a refused client certificate): failed, their messages wait in the spool.",
)

SEQ_PER_MS = 1000
"""A device's seq starts at epoch_ms(start) * SEQ_PER_MS."""


def seq_base(start: datetime) -> int:
    """The first seq of every device in a run that starts (simulated) at `start`."""
    return epoch_ms(start) * SEQ_PER_MS


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message the simulator sends; `seq` is None for status messages.

    `intended_reason` is None for a message the platform must accept, else the reject
    reason it must get (or ``duplicate`` / ``dropout``); `fault` labels any injected
    fault (also value faults that stay valid, like ``stuck``). `values` are the
    telemetry values of a well-formed reading (for the ledger's value check).
    """

    device_id: str
    kind: str
    channel: Channel
    topic: str
    ts_ms: int
    seq: int | None
    payload: bytes
    values: dict[str, Any] | None = None
    intended_reason: str | None = None
    fault: str | None = None

    @property
    def publish(self) -> bool:
        """False for a dropout: the reading is recorded in the ledger, never sent."""
        return self.fault != "dropout"

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (for the edge spool)."""
        return {
            "d": self.device_id,
            "k": self.kind,
            "c": self.channel.value,
            "t": self.ts_ms,
            "s": self.seq,
            "v": self.values,
            "r": self.intended_reason,
            "f": self.fault,
        }

    @classmethod
    def from_json(cls, topic: str, payload: bytes, meta: dict[str, Any]) -> Outgoing:
        """Rebuild from the spool's record."""
        return cls(
            meta["d"], meta["k"], Channel(meta["c"]), topic, meta["t"], meta["s"], payload,
            meta["v"], meta["r"], meta["f"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sent:
    """A published message and the broker's verdict (for ledgers and tests)."""

    message: Outgoing
    result: str
    """accepted, refused, failed (no PUBACK) or dropped (a dropout fault, never sent)."""
    reason_code: int


@dataclass
class FleetStats:
    """What a fleet run did: messages by channel, broker verdicts, timing."""

    devices: int = 0
    readings: int = 0
    events: int = 0
    statuses: int = 0
    accepted: int = 0
    refused: int = 0
    failed: int = 0
    dropped: int = 0
    """Readings withheld by the dropout fault (in the ledger, never sent)."""
    buffered: int = 0
    """Messages still in the edge spool at exit (sent by the next run)."""
    invalid: int = 0
    """Generated messages the models refused (a generator bug); never published."""
    faults: dict[str, int] = field(default_factory=dict)
    sim_start: datetime | None = None
    sim_last: datetime | None = None
    """Simulated timestamp of the last reading scheduled."""
    wall_seconds: float = 0.0
    max_lag_s: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    """Messages published (any verdict) per kind."""
    edge: AgentStats = field(default_factory=AgentStats)
    devices_refused: int = 0
    """Devices the broker refused at their last connection attempt (failed devices)."""

    @property
    def published(self) -> int:
        """Messages with a verdict: accepted + refused + failed."""
        return self.accepted + self.refused + self.failed

    def merge(self, other: FleetStats) -> None:
        """Add another process's stats to these."""
        for name in ("devices", "readings", "events", "statuses", "accepted", "refused",
                     "failed", "dropped", "buffered", "invalid", "devices_refused"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.faults.items():
            self.faults[key] = self.faults.get(key, 0) + value
        for key, value in other.by_kind.items():
            self.by_kind[key] = self.by_kind.get(key, 0) + value
        self.max_lag_s = max(self.max_lag_s, other.max_lag_s)
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        if other.sim_last is not None and (self.sim_last is None or other.sim_last > self.sim_last):
            self.sim_last = other.sim_last
        self.edge.add(other.edge)


def outcome(code: int) -> str:
    """The verdict of a PUBACK reason code (or NOT_SENT)."""
    if code < 0x80:
        return "accepted"
    return "refused" if code < NOT_SENT else "failed"


def ledger_entry(sent: Sent) -> LedgerEntry:
    """The ledger line of a sent (or dropped) message."""
    m = sent.message
    return LedgerEntry(
        device_id=m.device_id,
        channel=m.channel.value,
        topic=m.topic,
        seq=m.seq,
        ts_ms=m.ts_ms,
        sha256=hashlib.sha256(m.payload).hexdigest(),
        intended_reason=m.intended_reason,
        puback=sent.reason_code,
        values=m.values if m.intended_reason is None else None,
        fault=m.fault,
    )


class Recorder:
    """Verdicts into stats, metrics, the ledger and `on_sent`."""

    def __init__(
        self, stats: FleetStats, ledger: LedgerWriter | None, on_sent: Callable[[Sent], None] | None
    ) -> None:
        self.stats = stats
        self.ledger = ledger
        self.on_sent = on_sent
        self._counters: dict[tuple[str, str], Any] = {}

    def result(self, envelope: Envelope, code: int) -> None:
        message: Outgoing = envelope.meta
        self.record(Sent(message, outcome(code), code))

    def record(self, sent: Sent) -> None:
        stats, message = self.stats, sent.message
        outcome = sent.result
        if outcome == "dropped":
            stats.dropped += 1
        else:
            if outcome == "accepted":
                stats.accepted += 1
            elif outcome == "refused":
                stats.refused += 1
            else:
                stats.failed += 1
            if message.channel is Channel.TELEMETRY:
                stats.readings += 1
            elif message.channel is Channel.EVENT:
                stats.events += 1
            else:
                stats.statuses += 1
            stats.by_kind[message.kind] = stats.by_kind.get(message.kind, 0) + 1
            key = (message.kind, outcome)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = PUBLISHED.labels(message.kind, outcome)
            counter.inc()
        if message.fault is not None:
            stats.faults[message.fault] = stats.faults.get(message.fault, 0) + 1
        if self.ledger is not None:
            self.ledger.write(ledger_entry(sent))
        if self.on_sent is not None:
            self.on_sent(sent)


def summary(stats: FleetStats) -> dict[str, object]:
    """The stats as log fields."""
    return {
        "published": stats.published,
        "accepted": stats.accepted,
        "refused": stats.refused,
        "failed": stats.failed,
        "devices_refused": stats.devices_refused,
        "dropped": stats.dropped,
        "invalid": stats.invalid,
        "readings": stats.readings,
        "events": stats.events,
        "statuses": stats.statuses,
        "spooled": stats.edge.spooled,
        "resent": stats.edge.resent,
        "buffered": stats.buffered,
        "faults": dict(stats.faults),
        "sim_time": format_ts(stats.sim_last) if stats.sim_last else None,
        "lag_s": round(stats.max_lag_s, 3),
        "wall_s": round(stats.wall_seconds, 3),
    }
