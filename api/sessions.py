"""Console sessions and pending sign-ins, durable in one SQLite file of the instance.

An API restart keeps every operator signed in, and replicas that share the file share the
sessions (WAL, a busy timeout: several processes may hold it open). At rest a session is
the SHA-256 of its id (the browser's cookie holds the id; the file alone opens nothing),
its person and its end; its CSRF token is derived from the id (HMAC), so it is not stored
either. A pending sign-in is kept under the hash of its `state`, with the PKCE verifier
and nonce the provider's answer must match, for `PENDING_TTL` seconds. Ending a session
deletes its row (committed before the answer: a signed-out cookie is dead on every
replica at once); ended and stale rows are swept as new ones come.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from api.people import Person
from safecity.durable import open_durable, write_transaction

MAX_SESSIONS = 10_000
MAX_PENDING = 1_000
PENDING_TTL = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_sha256 TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    expires REAL NOT NULL,
    opened REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires);
CREATE TABLE IF NOT EXISTS pending (
    state_sha256 TEXT PRIMARY KEY,
    verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Session:
    """One signed-in console: the person, its CSRF token, when it ends (epoch seconds)."""

    person: Person
    csrf: str
    expires: float


@dataclass(frozen=True)
class PendingSignIn:
    """A sign-in sent to the provider: the PKCE verifier and nonce it must come back with."""

    verifier: str
    nonce: str
    redirect_uri: str
    created: float


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _csrf(sid: str) -> str:
    """The session's CSRF token: derived from its id, so never stored."""
    return hmac.new(sid.encode(), b"safecity-csrf", hashlib.sha256).hexdigest()


def _person(text: str) -> Person:
    data = json.loads(text)
    data["scopes"] = tuple(data["scopes"])
    data["cities"] = tuple(data["cities"])
    return Person(**data)


class Sessions:
    """Sessions and pending sign-ins in `path` (thread-safe; bounded, oldest dropped)."""

    def __init__(self, path: Path, ttl: float) -> None:
        self.path, self.ttl = path, ttl
        # Durable: a sign-out must survive a crash (else the session would come back).
        self._db = open_durable(path, _SCHEMA)
        path.chmod(0o600)
        self._lock = threading.Lock()

    def close_store(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock)

    def begin(self, redirect_uri: str) -> tuple[str, PendingSignIn]:
        """A new pending sign-in and its `state` value."""
        state = secrets.token_urlsafe(24)
        now = time.time()
        pending = PendingSignIn(
            secrets.token_urlsafe(48), secrets.token_urlsafe(24), redirect_uri, now
        )
        with self._tx() as db:
            db.execute("DELETE FROM pending WHERE created <= ?", (now - PENDING_TTL,))
            db.execute(
                "INSERT INTO pending VALUES (?, ?, ?, ?, ?)",
                (_digest(state), pending.verifier, pending.nonce, redirect_uri, now),
            )
            db.execute(
                "DELETE FROM pending WHERE state_sha256 IN (SELECT state_sha256 FROM pending"
                " ORDER BY created DESC LIMIT -1 OFFSET ?)",
                (MAX_PENDING,),
            )
        return state, pending

    def finish(self, state: str) -> PendingSignIn | None:
        """The pending sign-in of `state`, once (None if unknown or stale)."""
        with self._tx() as db:
            row = db.execute(
                "DELETE FROM pending WHERE state_sha256 = ?"
                " RETURNING verifier, nonce, redirect_uri, created",
                (_digest(state),),
            ).fetchone()
        if row is None or time.time() - row[3] > PENDING_TTL:
            return None
        return PendingSignIn(*row)

    def open(self, person: Person, expires_at: float) -> tuple[str, Session]:
        """A new session (ending at the ID token's expiry or after `ttl`) and its id."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(person, _csrf(sid), min(now + self.ttl, expires_at))
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?)",
                (_digest(sid), json.dumps(asdict(person)), session.expires, now),
            )
            db.execute(
                "DELETE FROM sessions WHERE id_sha256 IN (SELECT id_sha256 FROM sessions"
                " ORDER BY opened DESC LIMIT -1 OFFSET ?)",
                (MAX_SESSIONS,),
            )
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session of `sid`, else None (an expired one is deleted)."""
        if not sid:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT person, expires FROM sessions WHERE id_sha256 = ?", (_digest(sid),)
            ).fetchone()
        if row is None:
            return None
        if row[1] <= time.time():
            self.close(sid)
            return None
        return Session(_person(row[0]), _csrf(sid), row[1])

    def close(self, sid: str | None) -> Session | None:
        """End a session (its row deleted); return it (None if there was none)."""
        if not sid:
            return None
        with self._tx() as db:
            row = db.execute(
                "DELETE FROM sessions WHERE id_sha256 = ? RETURNING person, expires",
                (_digest(sid),),
            ).fetchone()
        return None if row is None else Session(_person(row[0]), _csrf(sid), row[1])


def csrf_ok(session: Session, presented: str | None) -> bool:
    """True when `presented` is the session's CSRF token (constant-time)."""
    return presented is not None and hmac.compare_digest(presented, session.csrf)
