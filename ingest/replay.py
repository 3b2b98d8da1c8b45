"""Dead-letter replay: re-validate stored rejections (e.g. after a registry fix) and write them.

A record that now passes validation is written to InfluxDB exactly as the live
ingest would write it (same point, same timestamp, so a replay twice is harmless),
and only then removed from the store; a record still refused stays. Truncated
payloads (over 4 KiB) and redacted ones (personal fields hashed) cannot be replayed
and stay too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ingest.deadletter import DeadLetterStore, record_payload
from ingest.settings import IngestSettings
from ingest.validate import Accepted, Validator
from ingest.writer import InfluxWriter
from safecity.influx import InfluxClient
from safecity.registry import Cities, City, as_cities


@dataclass
class ReplayResult:
    """What a replay did: records examined, written, still refused (by reason), skipped."""

    examined: int = 0
    written: int = 0
    refused_by_influx: int = 0
    still_rejected: Counter[str] = field(default_factory=Counter)
    skipped_truncated: int = 0


def _key(record: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(record.get("sha256")),
        str(record.get("received_at")),
        str(record.get("worker")),
        str(record.get("topic")),
    )


async def replay(
    settings: IngestSettings, city: City | Cities, reason: str | None = None, dry_run: bool = False
) -> ReplayResult:
    """Re-validate the store's records (of one reason, or all); write and remove the good ones."""
    store = DeadLetterStore(settings.deadletter_dir)
    cities = as_cities(city)
    validator = Validator(cities, settings.ts_past_window, settings.ts_future_window)
    result = ReplayResult()
    lines: list[str] = []
    keys: list[tuple[str, str, str, str]] = []
    for record in store.read():
        if reason is not None and record.get("reason") != reason:
            continue
        result.examined += 1
        if record.get("truncated") or record.get("redacted"):
            result.skipped_truncated += 1
            continue
        outcome = validator.validate(str(record.get("topic", "")), record_payload(record))
        if isinstance(outcome, Accepted):
            lines.append(outcome.line)
            keys.append(_key(record))
        else:
            result.still_rejected[outcome.rejection.reason.value] += 1
    if dry_run or not lines:
        result.written = 0 if dry_run else len(lines)
        return result
    client = InfluxClient(settings.influx)
    try:
        for city_id in cities:
            await client.for_city(city_id, cities.ids).ensure_database()
        writer = InfluxWriter(client, cities=cities.ids)
        refused = await writer.write(lines, give_up_after=60.0)
    finally:
        await client.close()
    refused_keys = {keys[i] for i, _ in refused}
    done = set(keys) - refused_keys
    result.written = len(lines) - len(refused)
    result.refused_by_influx = len(refused)
    store.take(lambda records: [r for r in records if _key(r) not in done])
    return result
