"""API keys with scopes, people signed in through the city's identity provider, and a
token-bucket rate limit per key or person.

Every non-health route depends on `require(scope)`. The caller is an API key
(`X-API-Key`, or `Authorization: Bearer sck_...`), a person with the provider's access
token (`Authorization: Bearer <JWT>`, `api.oidc`), or a person's console session (its
cookie; a state-changing call also needs the session's CSRF token), or, at the command
service only, the caller an API replica admitted and vouches for with a signature
(`api.commandhop`; refused with the reason when it does not hold). No or unknown key,
or a refused token -> 401 with the reason; a token whose claims give no role, a missing
CSRF token or a caller without the scope -> 403; over the rate -> 429 with Retry-After. The key
check runs before any parameter is looked at, so an anonymous caller learns nothing.
A recognised key calling an `operate`/`admin` route is marked for the audit log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api import audit
from api.apikeys import ApiKey, KeyStore
from api.commandhop import CALLER_HEADER, SIGNATURE_HEADER, HopError, HopVerifier
from api.errors import human_duration
from api.oidc import OidcProvider, ProviderError, TokenError
from api.people import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, Person, person_from_claims
from api.sessions import Sessions, csrf_ok
from safecity.errors import ApiKeyError

HEADER = "X-API-Key"
KEY_PREFIX = "sck_"
api_key_header = APIKeyHeader(
    name=HEADER,
    auto_error=False,
    description="An API key (`safecity apikey create`); scopes read < operate < admin.",
)


bearer = HTTPBearer(
    auto_error=False,
    description="An API key as a bearer token (webhook senders that cannot set X-API-Key).",
)
person_bearer = HTTPBearer(
    scheme_name="OIDC bearer token",
    auto_error=False,
    description="An access token of the city's identity provider (audience and issuer "
    "checked); roles and cities from its claims. API keys stay for machines.",
)


class RateLimiter:
    """Token buckets per key id: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str, now: float | None = None) -> float:
        """Spend one token; return 0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / self.rate


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "ApiKey"})


def _known_key(request: Request, key: str) -> ApiKey:
    store: KeyStore = request.app.state.keys
    try:
        store.refresh()
    except ApiKeyError as exc:
        raise HTTPException(status_code=503, detail=f"key store unreadable: {exc}") from exc
    record = store.verify(key)
    if record is None:
        raise _unauthorized("unknown or revoked API key")
    return record


async def _token_person(request: Request, token: str) -> Person:
    provider: OidcProvider | None = request.app.state.oidc
    if provider is None:
        raise _unauthorized("unknown or revoked API key (this API accepts no sign-in tokens)")
    try:
        claims = await provider.verify(token, provider.settings.audience)
        return person_from_claims(claims, provider.settings)
    except TokenError as exc:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else {}
        raise HTTPException(status_code=exc.status, detail=exc.reason, headers=headers) from None
    except ProviderError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


def _session_person(request: Request, scope: str) -> Person | None:
    """The person of the request's console session; a state-changing call without the
    session's CSRF token is refused."""
    sessions: Sessions = request.app.state.sessions
    session = sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(
        session, request.headers.get(CSRF_HEADER)
    ):
        # A known person's session, used without its token (a forged request?): audited.
        audit.mark(request.scope, scope, session.person)
        raise HTTPException(
            status_code=403,
            detail=f"missing or wrong CSRF token: send the session's token in {CSRF_HEADER}",
        )
    return session.person


async def _vouched(request: Request, caller: str) -> ApiKey:
    """The caller an API replica vouches for on the command hop (`api.commandhop`)."""
    verifier: HopVerifier | None = request.app.state.hop_verifier
    if verifier is None:
        raise _unauthorized(
            f"{CALLER_HEADER} is accepted only by the command service, from an API replica"
        )
    try:
        return verifier.verify(
            request.method, request.url.path, request.url.query, await request.body(),
            caller, request.headers.get(SIGNATURE_HEADER),
        )  # fmt: skip
    except HopError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.reason) from None


async def _caller(request: Request, key: str | None, token: str | None, scope: str) -> ApiKey:
    """Who calls: a caller an API replica vouches for, an API key (header or bearer), a
    provider's token, or a console session."""
    vouched = request.headers.getlist(CALLER_HEADER)
    if vouched:
        if len(vouched) > 1:
            raise _unauthorized(f"{CALLER_HEADER} given {len(vouched)} times")
        return await _vouched(request, vouched[0])
    if key:
        return _known_key(request, key)
    if token:
        if token.startswith(KEY_PREFIX):
            return _known_key(request, token)
        return await _token_person(request, token)
    person = _session_person(request, scope)
    if person is None:
        raise _unauthorized(
            f"missing API key: send it in the {HEADER} header (or sign in / a bearer token)"
        )
    return person


async def admit(request: Request, key: str | None, scope: str, token: str | None = None) -> ApiKey:
    """The caller's record if it may call a `scope` route now: 401, 403, 429 or 503 otherwise."""
    limiter: RateLimiter = request.app.state.limiter
    record = await _caller(request, key, token, scope)
    audit.mark(request.scope, scope, record)
    request.state.api_key = record
    if not record.allows(scope):
        raise HTTPException(status_code=403, detail=f"{who(record)} lacks scope {scope!r}")
    wait = limiter.take(record.id)
    if wait > 0:
        raise HTTPException(
            status_code=429,
            detail=f"rate limit of {who(record)} exceeded: retry in {human_duration(wait)}",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return record


def who(record: ApiKey) -> str:
    """How a refusal names the caller: the key id, or the person."""
    if isinstance(record, Person):
        return f"{record.display_name} ({record.subject}; {', '.join(record.scopes)})"
    return f"API key {record.id} ({', '.join(record.scopes)})"


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting only keys with `scope` (or a higher one), within their rate."""

    async def check(
        request: Request,
        key: Annotated[str | None, Security(api_key_header)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(person_bearer)],
    ) -> ApiKey:
        return await admit(request, key, scope, credentials.credentials if credentials else None)

    return check


def require_bearer(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """As `require`, the key sent as `Authorization: Bearer <key>` (what webhook senders
    such as Grafana's contact points can send)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> ApiKey:
        return await admit(request, None, scope, credentials.credentials if credentials else None)

    return check
