"""Spool stage: an fsync'd, append-only on-disk queue of batches for when InfluxDB is away.

A batch is acked to the broker only once it is durable; while InfluxDB is
unreachable or slow, "durable" means appended here and fsync'd. The spool is a
directory of segment files `seg-<n>.spool`; each holds framed records
(`>II` length + CRC32, then a JSON body with the batch's lines, the device
timestamps and the source topic/payload of every line, so a line InfluxDB refuses
later can still be dead-lettered with its original payload). Records are drained
oldest first; a fully drained segment is deleted. After a `kill -9` the spool is
re-read on start: a torn last record (crash during append, never acked) is cut
off, and a partially drained segment is replayed from its start — rewriting a
point is idempotent, so nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from safecity.errors import SpoolError, SpoolFullError

log = logging.getLogger("safecity.ingest.spool")

_HEADER = struct.Struct(">II")
_SEGMENT_RE = re.compile(r"^seg-(\d{12})\.spool$")


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """One spooled batch: line-protocol lines, device timestamps and their sources."""

    lines: list[str]
    ts_ms: list[int]
    topics: list[str]
    payloads: list[bytes]

    def encode(self) -> bytes:
        """The record body (compact JSON; validated payloads are UTF-8 JSON)."""
        return json.dumps(
            {
                "l": self.lines,
                "t": self.ts_ms,
                "s": self.topics,
                "p": [p.decode("utf-8", "replace") for p in self.payloads],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> SpoolBatch:
        """Parse a record body."""
        raw = json.loads(body)
        return cls(raw["l"], raw["t"], raw["s"], [p.encode() for p in raw["p"]])


@dataclass(frozen=True, slots=True)
class SpoolPosition:
    """Where a peeked record ends: consume it by passing this back."""

    segment: int
    end: int


@dataclass
class _Segment:
    number: int
    path: Path
    size: int
    records: list[tuple[int, int, int]]  # (offset, end, points) of each complete record


class Spool:
    """A bounded, durable FIFO of batches in segment files under `directory`."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._read_index = 0  # index into the oldest segment's records
        self._lock = threading.Lock()
        self._fd: int | None = None

    # --- state -------------------------------------------------------------------

    @property
    def points(self) -> int:
        """Points waiting to be drained."""
        with self._lock:
            total = sum(r[2] for s in self._segments for r in s.records)
            if self._segments:
                total -= sum(r[2] for r in self._segments[0].records[: self._read_index])
            return total

    @property
    def bytes(self) -> int:
        """Bytes of all segment files (the capacity measure)."""
        with self._lock:
            return sum(s.size for s in self._segments)

    @property
    def segments(self) -> int:
        """Number of segment files."""
        with self._lock:
            return len(self._segments)

    @property
    def empty(self) -> bool:
        """True when nothing waits to be drained."""
        with self._lock:
            return not any(
                len(s.records) > (self._read_index if i == 0 else 0)
                for i, s in enumerate(self._segments)
            )

    # --- open / recover ----------------------------------------------------------

    def open(self) -> int:
        """Create the directory, recover existing segments; return the points recovered."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            names = sorted(p.name for p in self.directory.iterdir() if _SEGMENT_RE.match(p.name))
        except OSError as exc:
            raise SpoolError(f"cannot open spool {self.directory}: {exc}") from exc
        with self._lock:
            self._segments = []
            self._read_index = 0
            for name in names:
                match = _SEGMENT_RE.match(name)
                assert match is not None
                segment = self._scan(int(match.group(1)), self.directory / name)
                if segment.records:
                    self._segments.append(segment)
                else:
                    segment.path.unlink(missing_ok=True)
        recovered = self.points
        if recovered:
            log.warning(
                "spool holds batches from an earlier run; replaying them",
                extra={"points": recovered, "segments": self.segments, "dir": str(self.directory)},
            )
        return recovered

    def _scan(self, number: int, path: Path) -> _Segment:
        data = path.read_bytes()
        records: list[tuple[int, int, int]] = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            start, end = offset + _HEADER.size, offset + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[start:end]) != crc:
                break
            try:
                points = len(SpoolBatch.decode(data[start:end]).lines)
            except (ValueError, KeyError, TypeError):
                break
            records.append((offset, end, points))
            offset = end
        if offset != len(data):
            # A torn record from a crash during append: it was never acked, so the broker
            # redelivers its messages; cut it off so later appends stay readable.
            log.warning(
                "spool segment has a torn tail; truncating",
                extra={
                    "segment": str(path),
                    "kept_bytes": offset,
                    "dropped_bytes": len(data) - offset,
                },
            )
            with path.open("r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
        return _Segment(number, path, offset, records)

    # --- append ------------------------------------------------------------------

    def append(self, batch: SpoolBatch) -> None:
        """Append one batch and fsync it (blocking: call from a worker thread)."""
        body = batch.encode()
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        with self._lock:
            used = sum(s.size for s in self._segments)
            if used + len(record) > self.max_bytes and used > 0:
                raise SpoolFullError(
                    f"spool {self.directory} is full ({used} of {self.max_bytes} bytes)"
                )
            segment = self._writable_segment(len(record))
            assert self._fd is not None
            try:
                written = os.write(self._fd, record)
                if written != len(record):
                    raise OSError(f"short write ({written} of {len(record)} bytes)")
                os.fsync(self._fd)
            except OSError as exc:
                # Leave no half record behind for the next append to follow.
                self._close_fd()
                with open(segment.path, "r+b") as fh:
                    fh.truncate(segment.size)
                raise SpoolError(f"cannot append to spool {segment.path}: {exc}") from exc
            segment.records.append((segment.size, segment.size + len(record), len(batch.lines)))
            segment.size += len(record)

    def _writable_segment(self, incoming: int) -> _Segment:
        last = self._segments[-1] if self._segments else None
        if last is not None and self._fd is not None and last.size + incoming <= self.segment_bytes:
            return last
        self._close_fd()
        number = last.number + 1 if last is not None else 0
        path = self.directory / f"seg-{number:012d}.spool"
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            # The new directory entry must survive a power cut too.
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise SpoolError(f"cannot create spool segment {path}: {exc}") from exc
        segment = _Segment(number, path, 0, [])
        self._segments.append(segment)
        return segment

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- drain -------------------------------------------------------------------

    def peek(self) -> tuple[SpoolPosition, SpoolBatch] | None:
        """The oldest undrained batch and its position, or None (blocking read)."""
        with self._lock:
            if not self._segments:
                return None
            segment = self._segments[0]
            if self._read_index >= len(segment.records):
                return None
            offset, end, _ = segment.records[self._read_index]
            path = segment.path
            number = segment.number
        with path.open("rb") as fh:
            fh.seek(offset + _HEADER.size)
            body = fh.read(end - offset - _HEADER.size)
        try:
            batch = SpoolBatch.decode(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"corrupt spool record in {path} at {offset}: {exc}") from exc
        return SpoolPosition(number, end), batch

    def consume(self, position: SpoolPosition) -> None:
        """Mark the peeked batch drained; delete its segment once it is fully drained."""
        with self._lock:
            segment = self._segments[0]
            if segment.number != position.segment:
                raise SpoolError(f"spool consume out of order: {position}")
            self._read_index += 1
            if self._read_index < len(segment.records):
                return
            is_writable = len(self._segments) == 1
            if is_writable:
                # Drained the segment being written: start the next append afresh.
                self._close_fd()
            self._segments.pop(0)
            self._read_index = 0
            segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the append file; idempotent."""
        with self._lock:
            self._close_fd()
