"""People signed in through the city's identity provider, and their console sessions.

A person is admitted like a key (`Person` is an `ApiKey`: scopes, cities, an id for
rate limits and the audit log), with scopes and cities read from token claims under
the configured names and role mapping. The record names them: `subject` (the
provider's `sub`) and `display_name`. A console session lives on the server (the
browser holds only a random id in a Secure, HttpOnly, SameSite cookie) with its own
CSRF token, which every state-changing call must echo in `X-CSRF-Token`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from api.apikeys import SCOPES, ApiKey, parse_cities
from api.oidc import TokenError
from api.settings import OidcSettings
from safecity.errors import ApiKeyError

SESSION_COOKIE = "safecity_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_SESSIONS = 10_000
MAX_PENDING = 1_000
PENDING_TTL = 600.0
_NAME_MAX = 120
# A name from the provider goes into one-line records (line protocol, logs): no controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Person(ApiKey):
    """A person the provider vouched for: an `ApiKey` whose id is derived from the
    issuer and subject, with the subject and display name for the record."""

    subject: str = ""
    display_name: str = ""


def person_id(issuer: str, subject: str) -> str:
    """A stable 12-hex id of (issuer, subject): safe in every identifier field."""
    return "p" + hashlib.sha256(f"{issuer}\x00{subject}".encode()).hexdigest()[:12]


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted claim path (`realm_access.roles`), else None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in re.split(r"[\s,]+", value) if v]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def person_from_claims(claims: dict[str, Any], settings: OidcSettings) -> Person:
    """The person the claims describe; TokenError(403) when no claim gives a role."""
    subject = str(claims.get("sub", ""))
    roles = _strings(claim(claims, settings.roles_claim))
    granted = {settings.role_scopes[r] for r in roles if r in settings.role_scopes}
    if not granted:
        raise TokenError(
            403,
            f"the token of {subject!r} gives no safecity role: claim "
            f"{settings.roles_claim!r} holds {roles or 'nothing'}; mapped roles: "
            f"{', '.join(sorted(settings.role_scopes)) or 'none'}",
        )
    try:
        cities = parse_cities(_strings(claim(claims, settings.cities_claim)))
    except ApiKeyError as exc:
        raise TokenError(403, f"claim {settings.cities_claim!r}: {exc}") from None
    name = _CONTROL.sub(" ", str(claim(claims, settings.name_claim) or subject))[:_NAME_MAX]
    issuer = str(claims.get("iss", settings.issuer or ""))
    return Person(
        id=person_id(issuer, subject),
        name=name,
        scopes=tuple(s for s in SCOPES if s in granted),
        sha256="",
        created_at="",
        cities=cities,
        subject=subject,
        display_name=name,
    )


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


@dataclass
class Sessions:
    """Sessions and pending sign-ins, in memory, bounded (oldest dropped first)."""

    ttl: float
    _sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)
    _pending: OrderedDict[str, PendingSignIn] = field(default_factory=OrderedDict)

    def begin(self, redirect_uri: str) -> tuple[str, PendingSignIn]:
        """A new pending sign-in and its `state` value."""
        state = secrets.token_urlsafe(24)
        pending = PendingSignIn(
            secrets.token_urlsafe(48), secrets.token_urlsafe(24), redirect_uri, time.monotonic()
        )
        self._pending[state] = pending
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return state, pending

    def finish(self, state: str) -> PendingSignIn | None:
        """The pending sign-in of `state`, once (None if unknown or stale)."""
        pending = self._pending.pop(state, None)
        if pending is None or time.monotonic() - pending.created > PENDING_TTL:
            return None
        return pending

    def open(self, person: Person, expires_at: float) -> tuple[str, Session]:
        """A new session (ending at the ID token's expiry or after `ttl`) and its id."""
        sid = secrets.token_urlsafe(32)
        ends = min(time.time() + self.ttl, expires_at)
        session = Session(person, secrets.token_urlsafe(32), ends)
        self._sessions[sid] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session of `sid`, else None (an expired one is dropped)."""
        session = self._sessions.get(sid) if sid else None
        if session is not None and session.expires <= time.time():
            self._sessions.pop(sid or "", None)
            return None
        return session

    def close(self, sid: str | None) -> Session | None:
        """End a session; return it (None if there was none)."""
        return self._sessions.pop(sid, None) if sid else None


def csrf_ok(session: Session, presented: str | None) -> bool:
    """True when `presented` is the session's CSRF token (constant-time)."""
    return presented is not None and hmac.compare_digest(presented, session.csrf)
