"""Dead-letter stage: durable JSON-lines store (fsync'd) plus the `_deadletter/{reason}` topic."""

from __future__ import annotations

import base64
import hashlib
import json
import os
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

    def append_many(self, letters: list[DeadLetter]) -> None:
        """Append records and fsync, so an acked rejection is never lost."""
        if not letters:
            return
        data = b"".join(letter.to_json() + b"\n" for letter in letters)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

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
