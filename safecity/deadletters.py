"""Reader of the ingest's dead-letter store (`deadletters.jsonl`) for delivery accounting.

The store is append-only JSON lines with at least `reason`, `topic` and
`received_at` (written by `ingest/deadletter.py`; services never import each other,
so this reads the file format only). The index reads only the bytes appended since
the last call, so counting stays cheap however large the store grows.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from safecity import topics
from safecity.appendlog import AppendedLines
from safecity.errors import TopicError
from safecity.readings import epoch_ms

STORE_NAME = "deadletters.jsonl"


@dataclass
class DeadLetterIndex:
    """Rejections per device id, by reason, with their received times (epoch ms)."""

    path: Path
    _lines: AppendedLines | None = None
    _letters: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def refresh(self) -> None:
        """Take in whatever was appended since the last call."""
        if self._lines is None:
            self._lines = AppendedLines(self.path)
        reset, lines = self._lines.read()
        if reset:
            self._letters = {}
        for line in lines:
            self._add(line)

    def _add(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            reason = str(record["reason"])
            parsed = topics.parse(str(record["topic"]))
            at = epoch_ms(datetime.fromisoformat(str(record["received_at"])))
        except (ValueError, KeyError, TypeError, TopicError):
            return  # not about a device (or not a record): nothing to attribute
        if isinstance(parsed, topics.DeviceTopic):
            self._letters.setdefault(parsed.device_id, []).append((at, reason))

    def rejected(self, device_id: str, since_ms: int, until_ms: int) -> dict[str, int]:
        """Rejections of a device received in [since, until), by reason."""
        self.refresh()
        counts: Counter[str] = Counter(
            reason for at, reason in self._letters.get(device_id, ()) if since_ms <= at < until_ms
        )
        return dict(sorted(counts.items()))


def store_path(directory: Path) -> Path:
    """The store file inside a dead-letter directory."""
    return Path(os.fspath(directory)) / STORE_NAME
