"""Dead-letter stage: durable JSON-lines store (fsync'd) plus the `_deadletter/{reason}` topic."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safecity.readings import Rejection, format_ts

MAX_STORED_PAYLOAD = 4096
STORE_NAME = "deadletters.jsonl"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message with its reason, as stored and published."""

    reason: str
    detail: str
    topic: str
    received_at: datetime
    payload: bytes
    worker: str

    def record(self) -> dict[str, Any]:
        """The JSON record: payload truncated to 4 KiB, as text when UTF-8, else base64."""
        head = self.payload[:MAX_STORED_PAYLOAD]
        out: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "received_at": format_ts(self.received_at),
            "sha256": hashlib.sha256(self.payload).hexdigest(),
            "size": len(self.payload),
            "truncated": len(self.payload) > MAX_STORED_PAYLOAD,
            "worker": self.worker,
        }
        try:
            out["payload"] = head.decode("utf-8")
        except UnicodeDecodeError:
            out["payload_b64"] = base64.b64encode(head).decode()
        return out

    def to_json(self) -> bytes:
        """The record as compact UTF-8 JSON."""
        return json.dumps(self.record(), separators=(",", ":")).encode()


def dead_letter(
    rejection: Rejection, topic: str, payload: bytes, worker: str, now: datetime | None = None
) -> DeadLetter:
    """Build a dead letter for a rejection."""
    return DeadLetter(
        reason=rejection.reason.value,
        detail=rejection.detail,
        topic=topic,
        received_at=now or datetime.now(UTC),
        payload=payload,
        worker=worker,
    )


class DeadLetterStore:
    """Append-only JSON-lines file; `append_many` returns only after fsync."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STORE_NAME

    def open(self) -> None:
        """Create the directory if needed."""
        self.directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """An append fd on the store under an exclusive flock (workers and replay share it)."""
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A replay may have replaced the file while we waited for the lock.
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def append_many(self, letters: list[DeadLetter]) -> None:
        """Append records and fsync, so an acked rejection is never lost."""
        if not letters:
            return
        data = b"".join(letter.to_json() + b"\n" for letter in letters)
        with self._locked() as fd:
            os.write(fd, data)
            os.fsync(fd)

    def take(self, keep: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        """Rewrite the store to `keep(records)` atomically, holding the lock meanwhile."""
        self.open()
        with self._locked():
            records = self.read()
            kept = keep(records)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("wb") as fh:
                for record in kept:
                    fh.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def read(self) -> list[dict[str, Any]]:
        """All stored records, oldest first (a torn last line from a crash is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def record_payload(record: dict[str, Any]) -> bytes:
    """The (possibly truncated) payload bytes of a stored record."""
    if "payload_b64" in record:
        return base64.b64decode(record["payload_b64"])
    return str(record.get("payload", "")).encode()
