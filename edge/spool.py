"""A bounded, append-only on-disk FIFO of one device's unsent messages (store-and-forward)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("edge.spool")

SpoolRecord = tuple[str, bytes, Any]
"""(topic, payload, meta)."""


def _identity(value: Any) -> Any:
    return value


class Spool:
    """One device's messages waiting for the broker, in order, at most `max_bytes` on disk.

    One JSON line per message (payload base64, so malformed bytes survive too),
    written unbuffered: a message handed to the spool survives a crash of this
    process (not of the machine: no fsync per message, that would cap the rate).
    Read back from the front; when everything has been read the file is truncated.
    A spool left over by an earlier run is replayed first.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        encode_meta: Callable[[Any], Any] = _identity,
        decode_meta: Callable[[Any], Any] = _identity,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._encode = encode_meta
        self._decode = decode_meta
        self._file: IO[bytes] | None = None
        self._read_pos = 0
        self._size = 0
        self.pending = 0
        """Messages written and not yet read back."""
        if path.exists() and path.stat().st_size > 0:
            self._open()
            assert self._file is not None
            self._file.seek(0)
            self.pending = sum(1 for line in self._file if line.endswith(b"\n"))
            self._size = path.stat().st_size
            log.info(
                "replaying a leftover spool", extra={"path": str(path), "messages": self.pending}
            )

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a+b", buffering=0)
        return self._file

    @property
    def bytes_used(self) -> int:
        """Bytes on disk still to be read back."""
        return self._size - self._read_pos

    def _line(self, topic: str, payload: bytes, meta: Any) -> bytes:
        return (
            json.dumps(
                {
                    "t": topic,
                    "p": base64.b64encode(payload).decode("ascii"),
                    "m": self._encode(meta),
                },
                separators=(",", ":"),
            ).encode("utf-8")
            + b"\n"
        )

    def append(self, topic: str, payload: bytes, meta: Any) -> bool:
        """Add a message at the back; False (nothing written) when the spool is full."""
        line = self._line(topic, payload, meta)
        if self.bytes_used + len(line) > self.max_bytes:
            return False
        handle = self._open()
        handle.write(line)
        self._size += len(line)
        self.pending += 1
        return True

    def push_front(self, records: list[SpoolRecord]) -> None:
        """Put messages back at the front, in the given order (the bound is not applied:
        they were accepted before)."""
        if not records:
            return
        head = b"".join(self._line(t, p, m) for t, p, m in records)
        handle = self._open()
        handle.seek(self._read_pos)
        rest = handle.read()
        handle.truncate(0)
        handle.write(head + rest)
        self._read_pos = 0
        self._size = len(head) + len(rest)
        self.pending += len(records)

    def read(self, count: int) -> list[SpoolRecord]:
        """Take up to `count` messages from the front."""
        if not self.pending or self._file is None:
            return []
        handle = self._file
        handle.seek(self._read_pos)
        out: list[SpoolRecord] = []
        while len(out) < count:
            line = handle.readline()
            if not line.endswith(b"\n"):
                break
            self._read_pos += len(line)
            record = json.loads(line)
            out.append((record["t"], base64.b64decode(record["p"]), self._decode(record["m"])))
        self.pending -= len(out)
        if self._read_pos >= self._size:
            # Drained: start over, so the file never grows beyond one outage's worth.
            handle.truncate(0)
            self._read_pos = self._size = 0
            self.pending = 0
        return out

    def close(self) -> None:
        """Close the file (unread messages stay on disk for the next run)."""
        if self._file is not None:
            if self._read_pos and self.pending:
                # Keep only the unread tail, so the next run does not resend what went out.
                self._file.seek(self._read_pos)
                rest = self._file.read()
                self._file.truncate(0)
                self._file.write(rest)
            self._file.close()
            self._file = None
        if self.pending == 0 and self.path.exists() and self.path.stat().st_size == 0:
            self.path.unlink()
