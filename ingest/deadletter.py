"""Dead-letter stage: durable JSON-lines store (fsync'd) plus the `_deadletter/{reason}` topic.

A record is bounded whatever the message was: topic, detail and payload are cut to
fixed sizes (and say so), personal fields are redacted before anything is kept
(`ingest.redact`), and the copy republished on the topic is checked against the
broker's packet limit first: a record that does not fit goes without its payload,
and one that still does not fit is only stored. A packet over the limit would make
the broker close the ingest's connection, the message would be redelivered and
dead-lettered again: a reconnect loop from one publish.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest import metrics
from ingest.redact import Redactor
from ingest.stats import Totals
from safecity import topics
from safecity.readings import Rejection, RejectReason, format_ts

log = logging.getLogger("safecity.ingest.deadletter")

MAX_STORED_PAYLOAD = 4096
MAX_TOPIC = 256
"""Characters of the source topic kept (a valid device topic is far shorter)."""
MAX_DETAIL = 512
STORE_NAME = "deadletters.jsonl"
PUBLISH_OVERHEAD = 16
"""PUBLISH fixed header, remaining-length varint, packet id and empty properties, rounded up."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message with its reason, as stored and published (already redacted)."""

    reason: str
    detail: str
    topic: str
    received_at: datetime
    payload: bytes
    worker: str
    sha256: str
    size: int
    redacted: tuple[str, ...] = ()

    def record(self, with_payload: bool = True) -> dict[str, Any]:
        """The JSON record: topic, detail and payload cut to their bounds; payload as text
        when UTF-8, else base64."""
        head = self.payload[:MAX_STORED_PAYLOAD]
        out: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail[:MAX_DETAIL],
            "topic": self.topic[:MAX_TOPIC],
            "received_at": format_ts(self.received_at),
            "sha256": self.sha256,
            "size": self.size,
            "truncated": len(self.payload) > MAX_STORED_PAYLOAD or len(self.topic) > MAX_TOPIC,
            "worker": self.worker,
        }
        if len(self.topic) > MAX_TOPIC:
            out["topic_size"] = len(self.topic)
        if self.redacted:
            out["redacted"] = list(self.redacted)
        if not with_payload:
            out["payload_omitted"] = True
            return out
        try:
            out["payload"] = head.decode("utf-8")
        except UnicodeDecodeError:
            out["payload_b64"] = base64.b64encode(head).decode()
        return out

    def to_json(self, with_payload: bool = True) -> bytes:
        """The record as compact UTF-8 JSON."""
        return json.dumps(self.record(with_payload), separators=(",", ":")).encode()


def dead_letter(
    rejection: Rejection,
    topic: str,
    payload: bytes,
    worker: str,
    now: datetime | None = None,
    *,
    redactor: Redactor | None = None,
) -> DeadLetter:
    """Build a dead letter for a rejection, personal fields redacted when a redactor is given.

    `sha256` is the hash of the payload as received, so a sender's ledger can find its
    message; once something was redacted it is the hash of the redacted payload instead
    (the original's hash would let anyone test guesses of the plate against it).
    """
    detail = rejection.detail
    redacted: tuple[str, ...] = ()
    kept = payload
    if redactor is not None:
        result = redactor.redact(payload, detail)
        kept, detail, redacted = result.payload, result.detail, result.keys
    return DeadLetter(
        reason=rejection.reason.value,
        detail=detail[:MAX_DETAIL],
        topic=topic,
        received_at=now or datetime.now(UTC),
        payload=kept,
        worker=worker,
        sha256=hashlib.sha256(kept if redacted else payload).hexdigest(),
        size=len(payload),
        redacted=redacted,
    )


def refused_letters(
    refused: Sequence[tuple[int, str]],
    lines: Sequence[str],
    sources: Sequence[tuple[str, bytes]],
    worker: str,
    redactor: Redactor | None = None,
) -> list[DeadLetter]:
    """Dead letters of the lines InfluxDB refused, from (index, InfluxDB's message) pairs.

    `sources[i]` is line i's message (topic, payload); the worker's own points have an
    empty topic: they have no message to dead-letter, so a refusal is logged instead.
    """
    letters = []
    for index, message in refused:
        topic, payload = sources[index]
        if not topic:
            log.error(
                "influxdb refused ingest's own point",
                extra={"line": lines[index][:300], "error": message},
            )
            continue
        rejection = Rejection(RejectReason.SCHEMA, f"InfluxDB refused the point: {message}")
        letters.append(dead_letter(rejection, topic, payload, worker, redactor=redactor))
    return letters


def publishable(letter: DeadLetter, topic: str, max_packet: int) -> bytes | None:
    """The body to republish on `topic` within the broker's packet limit, or None."""
    room = max_packet - PUBLISH_OVERHEAD - 2 - len(topic.encode())
    body = letter.to_json()
    if len(body) <= room:
        return body
    body = letter.to_json(with_payload=False)
    return body if len(body) <= room else None


class DeadLetterOutput:
    """Makes dead letters durable (the store, fsync'd), then republishes them on the topic."""

    def __init__(
        self,
        store: DeadLetterStore,
        publish: Callable[[str, bytes], None],
        city_id: str,
        max_packet: int,
        totals: Totals,
        cities: Collection[str] = (),
    ) -> None:
        self.store = store
        self._publish = publish
        self._city_id = city_id
        # A letter is republished on the dead-letter topic of the city its topic names
        # when this deployment serves it, else on the home city's.
        self._cities = frozenset(cities)
        self._max_packet = max_packet
        self._totals = totals

    async def send(self, letters: list[DeadLetter]) -> None:
        """Store `letters` durably, count them and republish each that fits a packet."""
        if not letters:
            return
        await asyncio.to_thread(self.store.append_many, letters)
        for letter in letters:
            metrics.rejected(letter.reason).inc()
            self._totals.rejected[letter.reason] += 1
            topic = topics.deadletter_topic(self._letter_city(letter.topic), letter.reason)
            body = publishable(letter, topic, self._max_packet)
            if body is None:
                metrics.DEADLETTER_UNPUBLISHED.inc()
                log.warning(
                    "dead letter too large to republish; stored only",
                    extra={"reason": letter.reason, "size": letter.size},
                )
                continue
            self._publish(topic, body)

    def _letter_city(self, topic: str) -> str:
        named = topic.split("/", 3)[2] if topic.count("/") >= 2 else ""
        return named if named in self._cities else self._city_id


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
