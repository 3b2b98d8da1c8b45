"""API keys: a small file-backed store of hashed keys with scopes (read, operate, admin).

A key is `sck_<id>_<secret>`: the public `id` (8 hex digits) finds the record, the
secret (256 random bits, URL-safe base64) is never stored — only its SHA-256. A
slow KDF buys nothing for a 256-bit random secret, and SHA-256 keeps every request
cheap. Secrets are compared with `hmac.compare_digest` (constant time). The file is
JSON, written atomically with mode 0600; the API re-reads it when it changes, so a
key revoked with `safecity apikey revoke` stops working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from safecity.errors import ApiKeyError
from safecity.topics import IDENTIFIER

SCOPES = ("read", "operate", "admin")
# Each scope includes the ones below it: an operator may also read, an admin do anything.
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
_KEY = re.compile(r"^sck_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@ -]{0,63}$")
# Compared against when the id is unknown, so unknown and wrong keys take the same path.
_DUMMY_HASH = hashlib.sha256(b"safecity-no-such-key").hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: id, name, scopes, SHA-256 of the secret, creation and revocation times,
    and the cities it may read or operate (empty: every city the deployment serves)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    sha256: str
    created_at: str
    revoked_at: str | None = None
    cities: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """True when one of the key's scopes is `scope` or a higher one."""
        need = _RANK[scope]
        return any(_RANK.get(s, -1) >= need for s in self.scopes)

    def sees(self, city_id: str) -> bool:
        """True when the key may read or operate `city_id` (a key without cities sees all)."""
        return not self.cities or city_id in self.cities


def parse_cities(values: Iterable[str]) -> tuple[str, ...]:
    """`["tashkent", "samarkand,almaty"]` -> a tuple of ids; ApiKeyError on a malformed id."""
    cities = tuple(dict.fromkeys(c.strip() for v in values for c in v.split(",") if c.strip()))
    bad = [c for c in cities if IDENTIFIER.fullmatch(c) is None]
    if bad:
        raise ApiKeyError(f"city {bad[0]!r}: not a city id (lower-case letters, digits, _ -)")
    return cities


def parse_scopes(text: str) -> tuple[str, ...]:
    """`read,operate` -> ('read', 'operate'); ApiKeyError on an unknown scope."""
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in _RANK]
    if not scopes or unknown:
        raise ApiKeyError(
            f"scopes {text!r}: give one or more of {', '.join(SCOPES)} (comma-separated)"
        )
    return scopes


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class KeyStore:
    """The key file: load, create, list, revoke, verify."""

    path: Path
    _keys: dict[str, ApiKey] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None

    def load(self) -> None:
        """(Re)read the file; a missing file is an empty store."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        try:
            records = json.loads(self.path.read_text(encoding="utf-8"))["keys"]
            keys = [
                ApiKey(**{**r, "scopes": tuple(r["scopes"]), "cities": tuple(r.get("cities", ()))})
                for r in records
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ApiKeyError(f"{self.path}: not a safecity key store: {exc}") from exc
        self._keys = {k.id: k for k in keys}
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> None:
        """Re-read the file if it changed since the last load (cheap: one stat)."""
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self.load()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"keys": [asdict(k) for k in self._keys.values()]}, indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self.load()

    def records(self) -> list[ApiKey]:
        """Every key, revoked ones included, in creation order."""
        return list(self._keys.values())

    def create(
        self, name: str, scopes: tuple[str, ...], cities: tuple[str, ...] = ()
    ) -> tuple[ApiKey, str]:
        """Create a key (for `cities`, or every city when empty); return its record and the
        plaintext key (shown once, never stored)."""
        if _NAME.fullmatch(name) is None:
            raise ApiKeyError(f"name {name!r}: 1-64 letters, digits, space, _ . @ -")
        for scope in scopes:
            if scope not in _RANK:
                raise ApiKeyError(f"unknown scope {scope!r} (known: {', '.join(SCOPES)})")
        cities = parse_cities(cities)
        self.load()
        key_id = secrets.token_hex(4)
        while key_id in self._keys:
            key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        record = ApiKey(key_id, name, tuple(scopes), _hash(secret), _now(), cities=cities)
        self._keys[key_id] = record
        self._save()
        return record, f"sck_{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked; ApiKeyError if the id is unknown."""
        self.load()
        record = self._keys.get(key_id)
        if record is None:
            raise ApiKeyError(f"no key with id {key_id!r}")
        if record.active:
            record = ApiKey(**{**asdict(record), "revoked_at": _now()})
            self._keys[key_id] = record
            self._save()
        return record

    def verify(self, presented: str) -> ApiKey | None:
        """The active key matching `presented`, else None (constant-time secret check)."""
        match = _KEY.fullmatch(presented)
        secret = match.group(2) if match else presented
        record = self._keys.get(match.group(1)) if match else None
        expected = record.sha256 if record is not None else _DUMMY_HASH
        ok = hmac.compare_digest(_hash(secret), expected)
        if ok and record is not None and record.active:
            return record
        return None
