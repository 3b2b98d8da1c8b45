"""One device's crash-safe store-and-forward spool: an append-only log with done records.

Every message to deliver is appended to the log before it is sent, and stays there
until it is settled (confirmed durable by the platform, refused by the broker, or,
for messages without a seq, PUBACKed). Settling appends a *done* record naming the
settled entries; nothing is ever rewritten in place, so a crash (kill -9) at any
moment leaves a log whose replay gives exactly the unsettled messages, in order. What
was in flight when the process died is simply sent again (at-least-once; the
platform's writes are idempotent).

Two operations replace the file, both crash-safe: when nothing is left unsettled the
file is truncated to zero once it is over 64 KiB, and deleted on close (the done
records were written first, so a crash before either replays to the same empty
state); when settled entries make up most of the file it is compacted by writing the
unsettled entries to a temporary file, fsync and `rename` over the log (atomic).
Records are written with one unbuffered `write` each: they survive a crash of this
process, not a power cut (no fsync per message; that would cap the rate at the disk's
sync rate). The log is opened for each write and read, never held open: a process of
thousands of devices needs one open file per device (its connection), not two, even
while a broker outage has every device spooling.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edge.spool")

COMPACT_MIN_BYTES = 1 << 20
"""Never compact a log smaller than this (truncation to zero handles the common case)."""

TRUNCATE_MIN_BYTES = 64 << 10
"""Truncate a fully settled log only past this size (a syscall saved on most settles)."""


def _identity(value: Any) -> Any:
    return value


@dataclass(slots=True)
class SpoolItem:
    """An unsettled message: its log id, what to send, and whether `meta` came from disk."""

    id: int
    topic: str
    payload: bytes
    meta: Any
    seq: int | None
    channel: str
    from_disk: bool


@dataclass(slots=True)
class _Entry:
    offset: int
    length: int
    seq: int | None
    channel: str
    cached: SpoolItem | None


class DeviceSpool:
    """One device's unsettled messages, in order, at most `max_bytes` of them on disk.

    `take` hands out the next unsent messages (a cursor kept in memory: after a
    restart everything unsettled is unsent again); `rewind` puts handed-out ones back
    in front (a lost connection, no confirmation in time); `settle` removes them for
    good. `lookup` finds entries by (channel, seq) for the platform's acknowledgements.
    Up to `cache` messages are also kept in memory, so the usual path (append, send,
    settle) never reads the file back.
    """

    __slots__ = (
        "_by_seq", "_cache_limit", "_cached", "_decode", "_encode", "_entries", "_file",
        "_live_bytes", "_next_id", "_out", "_size", "_unsent", "max_bytes",
    )  # fmt: skip

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        encode_meta: Callable[[Any], Any] = _identity,
        decode_meta: Callable[[Any], Any] = _identity,
        cache: int = 1000,
    ) -> None:
        # A str: a Path per device of a fleet costs more (`path` makes one when asked).
        self._file = os.fspath(path)
        self.max_bytes = max_bytes
        self._encode = encode_meta
        self._decode = decode_meta
        self._cache_limit = cache
        self._cached = 0
        self._entries: dict[int, _Entry] = {}
        self._by_seq: dict[tuple[str, int], list[int]] = {}
        # Made when first needed and dropped when all is settled: a fleet's devices are
        # caught up most of the time, and an empty deque weighs 760 bytes, a set 216.
        self._unsent: deque[int] | None = None
        self._out: set[int] | None = None
        self._live_bytes = 0
        self._next_id = 0
        self._size = 0
        # Created now, not at the first write: creating a file costs far more than opening
        # one, and a whole fleet's first readings are due at once.
        flags = os.O_RDONLY | os.O_CREAT
        try:
            fd = os.open(self._file, flags, 0o600)
        except FileNotFoundError:
            # The directory is made once, not tried again for each of a fleet's devices.
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._file, flags, 0o600)
        try:
            data = b""
            if os.fstat(fd).st_size:
                with open(fd, "rb", closefd=False) as handle:
                    data = handle.read()
        finally:
            os.close(fd)
        self._replay(data)

    @property
    def path(self) -> Path:
        """The log file."""
        return Path(self._file)

    # --- state -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Unsettled messages (handed out or not)."""
        return len(self._entries)

    @property
    def unsent(self) -> int:
        """Unsettled messages not handed out since the last rewind."""
        return len(self._entries) - len(self._out or ())

    @property
    def bytes_used(self) -> int:
        """Bytes of the unsettled messages' records."""
        return self._live_bytes

    @property
    def file_bytes(self) -> int:
        """Size of the log on disk (settled records included until compaction)."""
        return self._size

    # --- operations ------------------------------------------------------------

    def append(
        self, topic: str, payload: bytes, meta: Any, seq: int | None = None, channel: str = ""
    ) -> int | None:
        """Add a message at the back; its id, or None (nothing written) when the spool is full."""
        ident = self._next_id
        line = (
            json.dumps(
                {
                    "i": ident,
                    "t": topic,
                    "p": base64.b64encode(payload).decode("ascii"),
                    "m": self._encode(meta),
                    "s": seq,
                    "c": channel,
                },
                separators=(",", ":"),
            ).encode("utf-8")
            + b"\n"
        )
        if self._live_bytes + len(line) > self.max_bytes:
            return None
        self._write(line)
        self._next_id += 1
        cached = None
        if self._cached < self._cache_limit:
            cached = SpoolItem(ident, topic, payload, meta, seq, channel, False)
            self._cached += 1
        self._add(ident, _Entry(self._size - len(line), len(line), seq, channel, cached))
        self._queue().append(ident)
        return ident

    def take(self, count: int) -> list[SpoolItem]:
        """Hand out up to `count` unsent messages, oldest first."""
        out: list[SpoolItem] = []
        unsent = self._unsent
        handed = self._out if self._out is not None else set()
        while unsent and len(out) < count:
            ident = unsent.popleft()
            entry = self._entries.get(ident)
            if entry is None or ident in handed:
                continue  # settled (or handed out again) meanwhile
            handed.add(ident)
            out.append(entry.cached if entry.cached is not None else self._load(ident, entry))
        if handed:
            self._out = handed
        return out

    def rewind(self, ids: Iterable[int]) -> int:
        """Put handed-out messages back in front of the unsent ones, in log order; how many."""
        handed = self._out or set()
        back = sorted(i for i in ids if i in handed)
        for ident in back:
            handed.discard(ident)
        self._queue().extendleft(reversed(back))
        return len(back)

    def lookup(self, channel: str, first: int, last: int) -> list[int]:
        """Ids of unsettled messages of `channel` whose seq lies in [first, last]."""
        out: list[int] = []
        if last - first < len(self._by_seq):
            for seq in range(first, last + 1):
                out.extend(self._by_seq.get((channel, seq), ()))
        else:
            for (chan, seq), ids in self._by_seq.items():
                if chan == channel and first <= seq <= last:
                    out.extend(ids)
        return out

    def item(self, ident: int) -> SpoolItem | None:
        """An unsettled message by id (read back from disk if not cached)."""
        entry = self._entries.get(ident)
        if entry is None:
            return None
        return entry.cached if entry.cached is not None else self._load(ident, entry)

    def settle(self, ids: Iterable[int]) -> int:
        """Remove messages for good (one done record); how many were unsettled."""
        gone = [i for i in ids if i in self._entries]
        if not gone:
            return 0
        self._write(json.dumps({"d": _id_ranges(gone)}, separators=(",", ":")).encode() + b"\n")
        for ident in gone:
            self._drop(ident)
        if not self._entries:
            # Everything settled (and recorded as such): start over with an empty file.
            self._unsent, self._out, self._by_seq = None, None, {}
            if self._size > TRUNCATE_MIN_BYTES:
                os.truncate(self._file, 0)
                self._size = 0
        elif self._size > max(COMPACT_MIN_BYTES, 4 * self._live_bytes):
            self._compact()
        return len(gone)

    def close(self) -> None:
        """Close the log (unsettled messages stay in it for the next run)."""
        if not self._entries:
            # Nothing unsettled: the settled records are of no use to the next run.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file)

    # --- internals -------------------------------------------------------------

    def _queue(self) -> deque[int]:
        if self._unsent is None:
            self._unsent = deque()
        return self._unsent

    def _write(self, data: bytes) -> None:
        fd = os.open(self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a short write on a regular file: the disk is full
                os.ftruncate(fd, self._size)
                raise OSError(f"short write to edge spool {self._file}")
        finally:
            os.close(fd)
        self._size += written

    def _add(self, ident: int, entry: _Entry) -> None:
        self._entries[ident] = entry
        self._live_bytes += entry.length
        if entry.seq is not None:
            self._by_seq.setdefault((entry.channel, entry.seq), []).append(ident)

    def _drop(self, ident: int) -> None:
        entry = self._entries.pop(ident)
        self._live_bytes -= entry.length
        if self._out:
            self._out.discard(ident)
        if entry.cached is not None:
            self._cached -= 1
        if entry.seq is not None:
            key = (entry.channel, entry.seq)
            ids = self._by_seq.get(key)
            if ids is not None:
                if ident in ids:
                    ids.remove(ident)
                if not ids:
                    del self._by_seq[key]

    def _load(self, ident: int, entry: _Entry) -> SpoolItem:
        fd = os.open(self._file, os.O_RDONLY)
        try:
            line = os.pread(fd, entry.length, entry.offset)
        finally:
            os.close(fd)
        record = json.loads(line)
        return SpoolItem(
            ident,
            record["t"],
            base64.b64decode(record["p"]),
            self._decode(record["m"]),
            record["s"],
            record["c"],
            True,
        )

    def _replay(self, data: bytes) -> None:
        """Rebuild the unsettled set from the log's `data`; cut a torn last line."""
        offset = 0
        # Records end at "\n" only (bytes.splitlines would also split a damaged one at "\r").
        parts = data.split(b"\n")
        lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        for number, line in enumerate(lines):
            if not line.endswith(b"\n"):
                break
            if not self._replay_record(line, offset):
                if number == len(lines) - 1:
                    break  # a torn last record: cut below
                # A damaged record between good ones: skipped (kept in the file, never sent),
                # not a reason to drop every record after it.
                log.warning(
                    "edge spool: skipping a damaged record",
                    extra={"path": str(self.path), "offset": offset},
                )
            offset += len(line)
        if offset < len(data):
            log.warning(
                "edge spool: cutting a torn record",
                extra={"path": str(self.path), "bytes": len(data) - offset},
            )
            os.truncate(self._file, offset)
        self._size = offset
        if self._entries:
            self._queue().extend(self._entries)
            log.info(
                "replaying a leftover spool",
                extra={"path": str(self.path), "messages": len(self._entries)},
            )
        elif self._size:
            os.truncate(self._file, 0)
            self._size = 0

    def _replay_record(self, line: bytes, offset: int) -> bool:
        """Apply one log record; False (nothing applied) when it is not a well-formed one."""
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                return False
            if "d" in record:
                ranges = [(int(first), int(last)) for first, last in record["d"]]
                for first, last in ranges:
                    self._settle_range(first, last)
                return True
            ident, seq, channel = record["i"], record["s"], record["c"]
            if type(ident) is not int or ident < 0 or ident in self._entries:
                return False
            if not isinstance(channel, str):
                return False
            if seq is not None and type(seq) is not int:
                return False
            if not isinstance(record["t"], str):
                return False
            base64.b64decode(record["p"], validate=True)
            self._decode(record["m"])
        except (ValueError, TypeError, KeyError, RecursionError):
            return False
        self._add(ident, _Entry(offset, len(line), seq, channel, None))
        self._next_id = max(self._next_id, ident + 1)
        return True

    def _settle_range(self, first: int, last: int) -> None:
        """Drop the entries first..last of a done record (walking the entries, not the
        range, when the range is the larger: a damaged record may name a huge one)."""
        if last - first < len(self._entries):
            idents: Iterable[int] = range(first, last + 1)
        else:
            idents = [i for i in self._entries if first <= i <= last]
        for ident in idents:
            if ident in self._entries:
                self._drop(ident)

    def _compact(self) -> None:
        """Rewrite only the unsettled records (temporary file, fsync, atomic rename)."""
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        moved: list[tuple[int, int]] = []
        offset = 0
        src = os.open(self._file, os.O_RDONLY)
        try:
            chunks = []
            for ident, entry in self._entries.items():
                chunks.append(os.pread(src, entry.length, entry.offset))
                moved.append((ident, offset))
                offset += entry.length
            os.write(fd, b"".join(chunks))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.close(src)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for ident, new_offset in moved:
            self._entries[ident].offset = new_offset
        self._size = offset


def _id_ranges(ids: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for ident in sorted(ids):
        if out and ident == out[-1][1] + 1:
            out[-1][1] = ident
        else:
            out.append([ident, ident])
    return out
