"""What was sent to whom: the notifier's delivery listing, one shape for whoever reads it.

The notifier serves it over HTTP (`GET /notifications` on its metrics port), read from its
outboxes; the API shows it (`GET /v1/notifications`, `/v1/incidents/{id}/notifications`),
reading the outbox files itself when it shares the notifier's directory (`make run`,
compose) or asking the notifier when it does not (Kubernetes: another pod's volume).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from safecity.incidents.lifecycle import notice_group
from safecity.outbox import DeliveryStatus, Entry, Outbox
from safecity.readings import format_ts

READER = "listing-reader"  # the outbox owner of readers (they never claim or settle)


class AttemptOut(BaseModel):
    """One attempt to deliver a notification."""

    number: int
    started_at: str
    ended_at: str | None
    result: str
    detail: str


class NotificationOut(BaseModel):
    """One notification: to whom, on which channel, how it went."""

    key: str
    incident_id: str
    kind: str  # `page` (asks for an acknowledgement) or `resolved` (a resolution notice)
    city: str
    channel: str
    recipient: str
    person: str
    tier: int
    repeat: int
    status: str
    attempts: int
    not_before: str
    delivered_at: str | None
    latency_s: float | None
    detail: str
    history: list[AttemptOut] | None = None


def outbox_path(directory: Path, city: str) -> Path:
    """Where a city's outbox lives in the notifier's directory."""
    return directory / f"{city}.outbox.db"


def _ts(epoch: float | None) -> str | None:
    return None if epoch is None else format_ts(datetime.fromtimestamp(epoch, UTC))


def _out(box: Outbox, entry: Entry, history: bool) -> NotificationOut:
    page: Any = entry.payload
    done = entry.done_at if entry.status is DeliveryStatus.DELIVERED else None
    return NotificationOut(
        key=entry.key,
        incident_id=str(page.get("incident_id", entry.group)),
        kind=str(page.get("kind", "page")),
        city=str(page.get("city", "")),
        channel=entry.channel,
        recipient=entry.recipient,
        person=str(page.get("person", "")),
        tier=int(page.get("tier", 0)),
        repeat=int(page.get("repeat", 0)),
        status=entry.status.value,
        attempts=entry.attempts,
        not_before=_ts(entry.not_before) or "",
        delivered_at=_ts(done),
        latency_s=None if done is None else round(done - entry.not_before, 3),
        detail=entry.detail,
        history=[
            AttemptOut(number=a.number, started_at=_ts(a.started_at) or "",
                       ended_at=_ts(a.ended_at), result=a.result.value, detail=a.detail)
            for a in box.attempts(entry.key)
        ] if history else None,
    )  # fmt: skip


def read(
    directory: Path,
    cities: Sequence[str],
    *,
    incident: str | None = None,
    channel: str | None = None,
    status: DeliveryStatus | None = None,
    limit: int = 1000,
) -> list[NotificationOut]:
    """The notifications in the outboxes of these cities (blocking: sqlite), in enqueue
    order per city; one incident's: its pages and its resolution notices, with history."""
    groups: list[str | None] = [incident, notice_group(incident)] if incident else [None]
    out: list[NotificationOut] = []
    for city in cities:
        path = outbox_path(directory, city)
        if not path.is_file():
            continue
        box = Outbox(path, owner=READER)
        try:
            for group in groups:
                found = box.entries(group=group, channel=channel, status=status, limit=limit)
                out += [_out(box, e, incident is not None) for e in found]
        finally:
            box.close()
    return out[:limit]
