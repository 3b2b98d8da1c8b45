"""Acknowledgement links: signed, expiring, single-use tokens that notifications carry.

The notifier signs one token per notification (incident, person, channel, expiry, a
nonce) with HMAC-SHA256 under a key kept in the instance (`identity/ack-links.key`,
0600); the API verifies it, refuses a forged, malformed or expired one, and spends it
exactly once (`Spent`, a sqlite table beside the key), so a replayed link is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from safecity import keyfile
from safecity.errors import AckLinkError

KEY_BYTES = keyfile.KEY_BYTES


@dataclass(frozen=True, slots=True)
class AckClaim:
    """What an acknowledgement link says: who may acknowledge which incident, via what."""

    incident_id: str
    city: str
    person: str
    channel: str
    expires_at: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ensure_key(path: Path) -> bytes:
    """The signing key in `path`, created (0600, random) when there is none yet."""
    return keyfile.ensure_key(path, "ack link key")


def read_key(path: Path) -> bytes:
    """The signing key in `path`; ConfigError naming the file when it is unusable."""
    return keyfile.read_key(path, "ack link key")


def sign(key: bytes, claim: AckClaim) -> str:
    """The token for `claim`: base64url(JSON) '.' base64url(HMAC-SHA256)."""
    body = json.dumps(
        [claim.incident_id, claim.city, claim.person, claim.channel, claim.expires_at, claim.nonce],
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def new_claim(
    incident_id: str, city: str, person: str, channel: str, expires_at: float
) -> AckClaim:
    """A claim with a fresh random nonce (each notification's link is its own)."""
    return AckClaim(incident_id, city, person, channel, expires_at, secrets.token_urlsafe(12))


def verify(key: bytes, token: str, now: float) -> AckClaim:
    """The claim of a valid token; AckLinkError(reason) when forged, malformed or expired."""
    body_part, _, mac_part = token.partition(".")
    try:
        body, mac = _unb64(body_part), _unb64(mac_part)
    except ValueError:
        raise AckLinkError("malformed", "not an acknowledgement token") from None
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise AckLinkError("forged", "the signature does not match")
    try:
        ident, city, person, channel, expires, nonce = json.loads(body)
        claim = AckClaim(
            str(ident), str(city), str(person), str(channel), float(expires), str(nonce)
        )
    except (ValueError, TypeError):
        raise AckLinkError("malformed", "a signed token that does not parse") from None
    if now >= claim.expires_at:
        raise AckLinkError("expired", f"the link expired at {claim.expires_at:.0f}")
    return claim


class Spent:
    """The spent nonces (sqlite beside the key): each link acknowledges at most once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spent (nonce TEXT PRIMARY KEY, incident_id TEXT, at REAL)"
        )
        self._lock = threading.Lock()

    def spend(self, claim: AckClaim, now: float) -> None:
        """Record the link as used; AckLinkError('reused') if it was used before."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO spent (nonce, incident_id, at) VALUES (?, ?, ?)",
                    (claim.nonce, claim.incident_id, now),
                )
            except sqlite3.IntegrityError:
                raise AckLinkError("reused", "this link was used already") from None

    def close(self) -> None:
        """Close the database; idempotent."""
        self._db.close()
