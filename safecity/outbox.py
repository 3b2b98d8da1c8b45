"""The durable outbox: at-least-once outbound delivery with idempotency keys, written once.

Every outbound delivery of the platform (a notification, a device command, a webhook)
goes through one of these: a sqlite3 database in the instance directory (WAL,
`synchronous=FULL`: a committed enqueue survives `kill -9` and power loss).

- `enqueue` stores messages under their idempotency key (a key already present is
  ignored, so a redelivered cause enqueues nothing twice) and returns only once durable.
- Messages travel in *lanes* (channel + recipient). A lane delivers in order of
  (`not_before`, enqueue order): its head must be delivered, given up or cancelled before
  the next goes, so a receiver that was down gets everything, in order, after it returns.
- `claim` leases the due heads of idle lanes (up to `per_lane` consecutive messages each,
  which a sender may merge into one digest); every claim is recorded as an attempt.
- `settle` records the outcome: delivered, retry (full-jitter exponential backoff,
  honouring Retry-After) or failed. Retries are bounded by `max_attempts` and `max_age_s`;
  past either the message is `failed` (kept, visible) and the lane moves on.
- A message may carry its own `expires_at`: never sent from then on (what arrives late
  would do harm); `claim` marks it `expired` (kept, visible) and the lane moves on.
- A process that restarts under the same `owner` first marks its unfinished attempts
  `interrupted` and releases their leases; another owner's lease expires after `lease_s`.

Duplicate bound: a message is sent twice only when its sender died (or its attempt timed
out) after the receiver took it and before `settle`; so each crash duplicates at most the
messages leased at that moment (`interrupted` attempts count them), and every copy
carries the same idempotency key for the receiver to drop.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from safecity.durable import add_columns, open_durable, write_transaction
from safecity.errors import OutboxError
from safecity.retry import Backoff

Clock = Callable[[], float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    grp TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    not_before REAL NOT NULL,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    first_attempt_at REAL,
    done_at REAL,
    detail TEXT NOT NULL DEFAULT '',
    expires_at REAL,
    body BLOB
);
CREATE INDEX IF NOT EXISTS entries_pending
    ON entries (channel, recipient, not_before, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS entries_group ON entries (grp);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    number INTEGER NOT NULL,
    owner TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key, number)
);
"""


class DeliveryStatus(StrEnum):
    """Where a message is: pending until delivered, failed (given up), cancelled or expired."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Result(StrEnum):
    """How one attempt ended (`in_flight` while it runs; `interrupted` if its sender died)."""

    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery to enqueue: its idempotency key, lane, group (to cancel by) and body."""

    key: str
    channel: str
    recipient: str
    payload: Mapping[str, Any]
    group: str = ""
    not_before: float | None = None
    """Epoch seconds before which it must not be sent (None: at once)."""
    expires_at: float | None = None
    """Epoch seconds from which it must not be sent any more (None: only the retry bounds)."""
    body: bytes | None = None
    """The exact bytes to send, stored once and sent as they are on every attempt (None: the
    sender builds its request from `payload`)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored message and its delivery state."""

    seq: int
    key: str
    channel: str
    recipient: str
    group: str
    payload: Mapping[str, Any]
    status: DeliveryStatus
    created_at: float
    not_before: float
    attempts: int
    first_attempt_at: float | None
    done_at: float | None
    detail: str
    expires_at: float | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded attempt to deliver a message."""

    key: str
    number: int
    owner: str
    started_at: float
    ended_at: float | None
    result: Result
    detail: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a sender reports for a lease: delivered, retry later, or failed for good."""

    result: Result
    detail: str = ""
    retry_after: float | None = None

    @classmethod
    def delivered(cls, detail: str = "") -> Outcome:
        """The receiver took it."""
        return cls(Result.DELIVERED, detail)

    @classmethod
    def retry(cls, detail: str, retry_after: float | None = None) -> Outcome:
        """A transient failure (refused, timeout, 429, 5xx): try again after a backoff."""
        return cls(Result.RETRY, detail, retry_after)

    @classmethod
    def failed(cls, detail: str) -> Outcome:
        """A permanent failure (the receiver refused the message itself): do not retry."""
        return cls(Result.FAILED, detail)


@dataclass(frozen=True, slots=True)
class Lease:
    """Messages of one lane claimed for one attempt (in lane order; at least one)."""

    channel: str
    recipient: str
    entries: tuple[Entry, ...]
    started_at: float


_ENTRY_COLUMNS = (
    "seq, key, channel, recipient, grp, payload, status, created_at, not_before, "
    "attempts, first_attempt_at, done_at, detail, expires_at, body"
)

# The first `per_lane` pending messages of every lane, in lane order, with their lease.
_CLAIM = (
    "SELECT " + _ENTRY_COLUMNS + ", next_at, lease_until, rn FROM ("  # noqa: S608 (constants)
    "SELECT *, ROW_NUMBER() OVER (PARTITION BY channel, recipient "
    "ORDER BY not_before, seq) AS rn FROM entries WHERE status = 'pending') "
    "WHERE rn <= ? ORDER BY channel, recipient, rn"
)


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(
        seq=row[0],
        key=row[1],
        channel=row[2],
        recipient=row[3],
        group=row[4],
        payload=json.loads(row[5]),
        status=DeliveryStatus(row[6]),
        created_at=row[7],
        not_before=row[8],
        attempts=row[9],
        first_attempt_at=row[10],
        done_at=row[11],
        detail=row[12],
        expires_at=row[13],
        body=row[14],
    )


Lane = tuple[str, str]


def _due_lanes(rows: list[tuple[Any, ...]], now: float, lanes: int) -> dict[Lane, list[Entry]]:
    """The claimable prefix of each lane whose head is due and not leased (in lane order)."""
    out: dict[Lane, list[Entry]] = {}
    blocked: set[Lane] = set()
    for row in rows:
        lane = (row[2], row[3])
        next_at, lease_until, rn = row[15], row[16], row[17]
        leased = lease_until is not None and lease_until > now
        if lane in blocked or leased or next_at > now or row[8] > now:
            blocked.add(lane)  # order: nothing behind a message that is not going now
            continue
        if rn == 1 and len(out) >= lanes:
            break
        entry = _entry(row)
        out.setdefault(lane, []).append(replace(entry, attempts=entry.attempts + 1))
    return out


@dataclass
class Outbox:
    """A durable outbox file shared by the senders of one service (see the module doc)."""

    path: Path
    owner: str = "outbox"
    clock: Clock = time.time
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0))
    max_attempts: int = 100
    max_age_s: float = 86_400.0
    lease_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random)
    _db: sqlite3.Connection = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        try:
            self._db = open_durable(self.path, _SCHEMA)
            # A file written before messages could expire or carry bytes.
            add_columns(self._db, "entries", (("expires_at", "REAL"), ("body", "BLOB")))
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        self._recover()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: other processes wait, never interleave)."""
        try:
            with write_transaction(self._db, self._lock) as db:
                yield db
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def _recover(self) -> None:
        """Attempts this owner left unfinished (it died) become `interrupted`; leases free."""
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET outcome = ?, ended_at = ?, detail = 'sender restarted' "
                "WHERE owner = ? AND outcome = ?",
                (Result.INTERRUPTED, now, self.owner, Result.IN_FLIGHT),
            )
            db.execute(
                "UPDATE entries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                (self.owner,),
            )

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            self._db.close()

    # --- writing -------------------------------------------------------------------

    def enqueue(self, messages: Iterable[Message]) -> int:
        """Store messages durably (one transaction); returns how many were new (by key)."""
        now = self.clock()
        rows = [
            (
                m.key,
                m.channel,
                m.recipient,
                m.group,
                json.dumps(m.payload, separators=(",", ":"), sort_keys=True),
                DeliveryStatus.PENDING,
                now,
                now if m.not_before is None else m.not_before,
                now if m.not_before is None else m.not_before,
                m.expires_at,
                m.body,
            )
            for m in messages
        ]
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO entries (key, channel, recipient, grp, payload, status, "
                "created_at, not_before, next_at, expires_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return db.total_changes - before

    def claim(self, *, lanes: int = 100, per_lane: int = 1) -> list[Lease]:
        """Lease the due heads of up to `lanes` idle lanes (up to `per_lane` messages each)."""
        now = self.clock()
        with self._tx() as db:
            self._expire(db, now)
            rows = db.execute(_CLAIM, (per_lane,)).fetchall()
            leases = _due_lanes(rows, now, lanes)
            for entries in leases.values():
                self._lease(db, entries, now)
        return [Lease(c, r, tuple(es), now) for (c, r), es in leases.items()]

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        """Pending messages past their own expiry, not in flight, become `expired`."""
        db.execute(
            "UPDATE entries SET status = ?, done_at = ?, detail = ? WHERE status = 'pending' "
            "AND expires_at <= ? AND (lease_until IS NULL OR lease_until <= ?)",
            (DeliveryStatus.EXPIRED, now, "expired before it could be delivered", now, now),
        )

    def _lease(self, db: sqlite3.Connection, entries: list[Entry], now: float) -> None:
        """Mark claimed messages leased and record their attempts as in flight."""
        for entry in entries:
            db.execute(
                "UPDATE attempts SET outcome = ?, ended_at = ?, detail = 'lease expired' "
                "WHERE key = ? AND outcome = ?",
                (Result.INTERRUPTED, now, entry.key, Result.IN_FLIGHT),
            )
            db.execute(
                "UPDATE entries SET attempts = ?, lease_owner = ?, lease_until = ?, "
                "first_attempt_at = COALESCE(first_attempt_at, ?) WHERE key = ?",
                (entry.attempts, self.owner, now + self.lease_s, now, entry.key),
            )
            db.execute(
                "INSERT OR REPLACE INTO attempts (key, number, owner, started_at, outcome) "
                "VALUES (?, ?, ?, ?, ?)",
                (entry.key, entry.attempts, self.owner, now, Result.IN_FLIGHT),
            )

    def settle(self, lease: Lease, outcome: Outcome) -> None:
        """Record how the attempt on `lease` ended and move its messages on."""
        now = self.clock()
        with self._tx() as db:
            for entry in lease.entries:
                self._settle_one(db, entry, outcome, now)

    def _settle_one(
        self, db: sqlite3.Connection, entry: Entry, outcome: Outcome, now: float
    ) -> None:
        number = entry.attempts
        db.execute(
            "UPDATE attempts SET ended_at = ?, outcome = ?, detail = ? "
            "WHERE key = ? AND number = ? AND outcome = ?",
            (now, outcome.result, outcome.detail[:500], entry.key, number, Result.IN_FLIGHT),
        )
        status, next_at, done = DeliveryStatus.PENDING, now, None
        if outcome.result is Result.DELIVERED:
            status, done = DeliveryStatus.DELIVERED, now
        elif outcome.result is Result.FAILED or self._exhausted(entry, number, now):
            status, done = DeliveryStatus.FAILED, now
        else:
            next_at = now + self.backoff.delay(number - 1, self.rng, outcome.retry_after)
        db.execute(
            "UPDATE entries SET status = ?, next_at = ?, done_at = ?, detail = ?, "
            "lease_owner = NULL, lease_until = NULL "
            "WHERE key = ? AND status = 'pending' AND lease_owner = ? AND attempts = ?",
            (status, next_at, done, outcome.detail[:500], entry.key, self.owner, number),
        )

    def _exhausted(self, entry: Entry, number: int, now: float) -> bool:
        return number >= self.max_attempts or now - entry.created_at >= self.max_age_s

    def cancel(self, group: str, reason: str) -> int:
        """Cancel the pending messages of `group` (e.g. an acknowledged incident's pages)."""
        now = self.clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE entries SET status = ?, done_at = ?, detail = ? "
                "WHERE grp = ? AND status = 'pending' AND lease_until IS NULL",
                (DeliveryStatus.CANCELLED, now, reason[:500], group),
            )
            return cursor.rowcount

    # --- reading -------------------------------------------------------------------

    def entries(
        self,
        *,
        group: str | None = None,
        channel: str | None = None,
        status: DeliveryStatus | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[Entry]:
        """Stored messages in enqueue order, optionally of one group, channel or status."""
        where: list[str] = ["seq > ?"]
        params: list[str | int] = [after_seq]
        for column, value in (("grp", group), ("channel", channel), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._read(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE {' AND '.join(where)} "  # noqa: S608 (fixed columns)
            "ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [_entry(r) for r in rows]

    def attempts(self, key: str) -> list[Attempt]:
        """Every attempt recorded for one message, oldest first."""
        rows = self._read(
            "SELECT key, number, owner, started_at, ended_at, outcome, detail FROM attempts "
            "WHERE key = ? ORDER BY number",
            (key,),
        )
        return [Attempt(r[0], r[1], r[2], r[3], r[4], Result(r[5]), r[6]) for r in rows]

    def counts(self) -> dict[DeliveryStatus, int]:
        """How many messages are in each status."""
        rows = self._read("SELECT status, COUNT(*) FROM entries GROUP BY status")
        out = dict.fromkeys(DeliveryStatus, 0)
        out.update({DeliveryStatus(s): n for s, n in rows})
        return out

    def attempt_counts(self) -> dict[Result, int]:
        """How many attempts ended each way (`interrupted` ones bound the duplicates)."""
        rows = self._read("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome")
        out = dict.fromkeys(Result, 0)
        out.update({Result(s): n for s, n in rows})
        return out

    def pending_groups(self) -> set[str]:
        """The groups (e.g. incident ids) that still have pending messages."""
        rows = self._read("SELECT DISTINCT grp FROM entries WHERE status = 'pending'")
        return {r[0] for r in rows}

    def next_due(self) -> float | None:
        """When the first lane head becomes claimable (None: nothing pending)."""
        rows = self._read(
            "SELECT MIN(MAX(next_at, COALESCE(lease_until, 0))) FROM ("
            "SELECT next_at, lease_until, ROW_NUMBER() OVER (PARTITION BY channel, recipient "
            "ORDER BY not_before, seq) AS rn FROM entries WHERE status = 'pending') WHERE rn = 1"
        )
        value = rows[0][0] if rows else None
        return None if value is None else float(value)
