"""The durable command store: every command, its targets and each target's true status.

SQLite in the instance (WAL, `synchronous=FULL`): a command is committed before it is
handed to the outbox (`safecity.outbox`, which publishes it) and each status change is
committed before the broker's message that caused it is acknowledged, so an API
`kill -9` loses nothing. This is the record of what was asked and where each device's
copy stands; how a copy reaches the broker is the outbox's business.

Status per device: pending -> delivered -> executed | failed | expired; a final status
never changes again, and a status never goes backwards.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from safecity.commands import FINAL, CommandStatus, clean_reason
from safecity.durable import add_columns, open_durable, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    target TEXT NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    by TEXT NOT NULL,
    by_subject TEXT NOT NULL DEFAULT '',
    by_name TEXT NOT NULL DEFAULT '',
    UNIQUE (by, idempotency_key)
);
CREATE TABLE IF NOT EXISTS deliveries (
    command_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    district TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (command_id, device_id)
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status);
"""
_RANK = {
    CommandStatus.PENDING: 0,
    CommandStatus.DELIVERED: 1,
    CommandStatus.EXECUTED: 2,
    CommandStatus.FAILED: 2,
    CommandStatus.EXPIRED: 2,
    CommandStatus.REJECTED: 2,
}


@dataclass(frozen=True, slots=True)
class Target:
    """One device a command goes to."""

    device_id: str
    district: str
    kind: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One device's copy of a command and where it stands."""

    device_id: str
    district: str
    kind: str
    status: CommandStatus
    reason: str | None
    updated_ms: int


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """A command as stored: what was asked, of whom, by which key, until when."""

    seq: int
    id: str
    city: str
    name: str
    params: dict[str, Any]
    target: dict[str, str]
    issued_ms: int
    expires_ms: int
    idempotency_key: str
    by: str
    # A person who sent it (signed in through the identity provider): subject and name.
    by_subject: str = ""
    by_name: str = ""


# Every column of `commands` in `_command`'s order, named (a migrated store has the
# added ones in another place than a fresh one would, so never `SELECT *`).
_COLUMNS = (
    "seq", "id", "city", "name", "params", "target", "issued_ms", "expires_ms",
    "idempotency_key", "by", "by_subject", "by_name",
)  # fmt: skip
_SELECT = ", ".join(_COLUMNS)
# Columns added after the first release: a store from before gets them on open.
_ADDED_COLUMNS = (
    ("by_subject", "TEXT NOT NULL DEFAULT ''"),
    ("by_name", "TEXT NOT NULL DEFAULT ''"),
)


class CommandStore:
    """The commands of one instance in one SQLite file (thread-safe, one connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_durable(path, _SCHEMA)
        add_columns(self._db, "commands", _ADDED_COLUMNS)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock)

    def create(
        self, command: StoredCommand, targets: Sequence[Target], now_ms: int
    ) -> tuple[StoredCommand, bool]:
        """Store a command and a pending delivery per target, atomically. With the same
        (by, idempotency_key) as a stored one: that one, and False (nothing new)."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_SELECT} FROM commands WHERE by = ? AND idempotency_key = ?",  # noqa: S608
                (command.by, command.idempotency_key),
            ).fetchone()
            if row is not None:
                return _command(row), False
            cur = db.execute(
                "INSERT INTO commands (id, city, name, params, target, issued_ms, expires_ms,"
                " idempotency_key, by, by_subject, by_name)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    command.id, command.city, command.name, json.dumps(command.params),
                    json.dumps(command.target), command.issued_ms, command.expires_ms,
                    command.idempotency_key, command.by, command.by_subject, command.by_name,
                ),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO deliveries (command_id, device_id, district, kind, status,"
                " updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (command.id, t.device_id, t.district, t.kind, CommandStatus.PENDING, now_ms)
                    for t in targets
                ],
            )
            seq = cur.lastrowid
        assert seq is not None
        return replace(command, seq=seq), True

    def get(self, command_id: str) -> tuple[StoredCommand, list[Delivery]] | None:
        """A command and its deliveries (by device id), or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_SELECT} FROM commands WHERE id = ?",  # noqa: S608
                (command_id,),
            ).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                "SELECT device_id, district, kind, status, reason, updated_ms"
                " FROM deliveries WHERE command_id = ? ORDER BY device_id",
                (command_id,),
            ).fetchall()
        return _command(row), [_delivery(r) for r in rows]

    def page(
        self, cities: Sequence[str], before_seq: int | None, limit: int
    ) -> list[tuple[StoredCommand, list[Delivery]]]:
        """Commands of the given cities, newest first, older than `before_seq`."""
        marks = ",".join("?" * len(cities))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SELECT} FROM commands WHERE city IN ({marks}) AND seq < ?"  # noqa: S608
                " ORDER BY seq DESC LIMIT ?",
                (*cities, before_seq if before_seq is not None else 2**62, limit),
            ).fetchall()
        out = []
        for row in rows:
            found = self.get(row[1])
            if found is not None:
                out.append(found)
        return out

    def pending(self, now_ms: int) -> list[tuple[StoredCommand, list[Target]]]:
        """Unexpired commands with deliveries still pending, and those targets (oldest first)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join('c.' + c for c in _COLUMNS)},"  # noqa: S608
                " d.device_id, d.district, d.kind FROM deliveries d"
                " JOIN commands c ON c.id = d.command_id WHERE d.status = ? AND c.expires_ms > ?"
                " ORDER BY c.seq, d.device_id",
                (CommandStatus.PENDING, now_ms),
            ).fetchall()
        n = len(_COLUMNS)
        out: dict[str, tuple[StoredCommand, list[Target]]] = {}
        for r in rows:
            out.setdefault(r[1], (_command(r[:n]), []))[1].append(Target(*r[n : n + 3]))
        return list(out.values())

    def settle(
        self,
        command_id: str,
        device_id: str,
        status: CommandStatus,
        reason: str | None,
        now_ms: int,
    ) -> bool:
        """Move a delivery forward to `status`; False if unknown, final, or a step back."""
        with self._tx() as db:
            row = db.execute(
                "SELECT status FROM deliveries WHERE command_id = ? AND device_id = ?",
                (command_id, device_id),
            ).fetchone()
            if row is None:
                return False
            current = CommandStatus(row[0])
            if current in FINAL or _RANK[status] <= _RANK[current]:
                return False
            db.execute(
                "UPDATE deliveries SET status = ?, reason = ?, updated_ms = ?"
                " WHERE command_id = ? AND device_id = ?",
                (
                    status,
                    None if reason is None else clean_reason(reason),
                    now_ms,
                    command_id,
                    device_id,
                ),
            )
        return True

    def expire(self, now_ms: int, result_grace_ms: int) -> int:
        """Pending deliveries past their expiry -> expired; delivered ones with no outcome
        `result_grace_ms` after it -> failed. Returns how many changed."""
        with self._tx() as db:
            expired = db.execute(
                "UPDATE deliveries SET status = ?, reason = ?, updated_ms = ? WHERE status = ?"
                " AND command_id IN (SELECT id FROM commands WHERE expires_ms <= ?)",
                (
                    CommandStatus.EXPIRED,
                    "not delivered before its expiry",
                    now_ms,
                    CommandStatus.PENDING,
                    now_ms,
                ),
            ).rowcount
            silent = db.execute(
                "UPDATE deliveries SET status = ?, reason = ?, updated_ms = ? WHERE status = ?"
                " AND command_id IN (SELECT id FROM commands WHERE expires_ms <= ?)",
                (
                    CommandStatus.FAILED,
                    "delivered, but the device reported no outcome",
                    now_ms,
                    CommandStatus.DELIVERED,
                    now_ms - result_grace_ms,
                ),
            ).rowcount
        return int(expired) + int(silent)

    def counts(self) -> dict[str, int]:
        """Deliveries by status (for metrics)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM deliveries GROUP BY status"
            ).fetchall()
        return {str(s): int(n) for s, n in rows}


def _command(row: Sequence[Any]) -> StoredCommand:
    return StoredCommand(
        seq=row[0],
        id=row[1],
        city=row[2],
        name=row[3],
        params=json.loads(row[4]),
        target=json.loads(row[5]),
        issued_ms=row[6],
        expires_ms=row[7],
        idempotency_key=row[8],
        by=row[9],
        by_subject=row[10],
        by_name=row[11],
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(row[0], row[1], row[2], CommandStatus(row[3]), row[4], row[5])
