"""One way to keep a store in SQLite: open it durable, add columns, write in a transaction.

Every store of the platform that others rely on (outboxes, commands, console sessions)
opens its file the same way: write-ahead log, a full sync at each commit (what a caller
was told is stored survives a crash), a busy timeout (other processes wait, never fail),
one connection shared by the process's threads under one lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """The SQLite file at PATH (made with its directory if new) with SCHEMA applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


def add_columns(db: sqlite3.Connection, table: str, columns: Iterable[tuple[str, str]]) -> None:
    """Give a file written by an older version the (empty) columns it lacks."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for column, kind in columns:
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


@contextmanager
def write_transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE: other processes wait, never interleave)."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
