"""The local channel: the instance's console log (JSON lines, fsynced) and a log line."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from notify.channels.base import Delivery
from safecity.outbox import Outcome

log = logging.getLogger("safecity.notify.console")


class LocalChannel:
    """Appends each delivery to `console.jsonl` (which `safecity run` shows) and logs it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    async def send(self, delivery: Delivery) -> Outcome:
        """Append and fsync one line; an unwritable log is a retry (the disk may recover)."""
        record = {
            "at": time.time(),
            "key": delivery.key,
            "to": delivery.address,
            "subject": delivery.subject,
            "text": delivery.text,
            "incidents": [p["incident_id"] for p in delivery.pages],
        }
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return Outcome.retry(f"cannot write {self.path}: {exc.strerror}")
        log.warning("notification for %s: %s", delivery.address, delivery.subject)
        return Outcome.delivered("console")

    async def close(self) -> None:
        """Nothing to release."""
