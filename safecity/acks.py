"""The end-to-end acknowledgement: which of a device's seqs the platform holds durably.

The ingest publishes one `Ack` per device and interval on the device's own ack topic
(`topics.ack_topic`) listing, per channel, the seq ranges it made durable since its
previous ack: written to InfluxDB, fsync'd into its spool, or fsync'd into the
dead-letter store. An ack is a set, not a high-water mark, so it needs no order: with
several workers on a shared subscription each acks the seqs it wrote, and the device
takes the union; a lost or repeated ack costs at most a re-send (writes are idempotent).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from safecity.errors import AckError

SeqRange = tuple[int, int]
"""Inclusive (first, last) seq range."""

MAX_RANGES = 512
"""Ranges per ack message; more go out as further messages (a packet stays small)."""


class Ack(BaseModel):
    """Seq ranges of one device made durable, per channel (inclusive, ascending)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    telemetry: tuple[SeqRange, ...] = ()
    event: tuple[SeqRange, ...] = ()

    @field_validator("telemetry", "event")
    @classmethod
    def _ordered(cls, value: tuple[SeqRange, ...]) -> tuple[SeqRange, ...]:
        for first, last in value:
            if first > last or first < 0:
                raise ValueError(f"bad seq range [{first}, {last}]")
        return value

    def ranges(self, channel: str) -> tuple[SeqRange, ...]:
        """The ranges of one channel (`telemetry` or `event`; nothing for others)."""
        if channel == "telemetry":
            return self.telemetry
        if channel == "event":
            return self.event
        return ()

    @property
    def count(self) -> int:
        """How many seqs the ack covers."""
        return sum(last - first + 1 for first, last in (*self.telemetry, *self.event))

    def to_payload(self) -> bytes:
        """Compact JSON (empty channels left out)."""
        return self.model_dump_json(exclude_defaults=True).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Ack:
        """Parse an ack payload; AckError with the reason if it is not one."""
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            raise AckError(f"not an ack payload: {exc.errors()[0]['msg']}") from exc


def to_ranges(seqs: Iterable[int]) -> list[SeqRange]:
    """Collapse seqs (any order, repeats allowed) into ascending inclusive ranges."""
    out: list[SeqRange] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def split(telemetry: list[SeqRange], event: list[SeqRange]) -> list[Ack]:
    """Ack messages of at most MAX_RANGES ranges each covering both lists."""
    out: list[Ack] = []
    tele, ev = list(telemetry), list(event)
    while tele or ev:
        t_part, tele = tele[:MAX_RANGES], tele[MAX_RANGES:]
        room = MAX_RANGES - len(t_part)
        e_part, ev = ev[:room], ev[room:]
        out.append(Ack(telemetry=tuple(t_part), event=tuple(e_part)))
    return out
