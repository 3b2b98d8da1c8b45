"""API keys with scopes, and a token-bucket rate limit per key.

Every non-health route depends on `require(scope)`: no or unknown key -> 401, a key
without the scope -> 403, over the key's rate -> 429 with Retry-After. The key
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
from api.errors import human_duration
from safecity.errors import ApiKeyError

HEADER = "X-API-Key"
api_key_header = APIKeyHeader(
    name=HEADER,
    auto_error=False,
    description="An API key (`safecity apikey create`); scopes read < operate < admin.",
)


bearer = HTTPBearer(
    auto_error=False,
    description="An API key as a bearer token (webhook senders that cannot set X-API-Key).",
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


async def admit(request: Request, key: str | None, scope: str) -> ApiKey:
    """The key's record if it may call a `scope` route now: 401, 403, 429 or 503 otherwise."""
    store: KeyStore = request.app.state.keys
    limiter: RateLimiter = request.app.state.limiter
    if not key:
        raise HTTPException(
            status_code=401,
            detail=f"missing API key: send it in the {HEADER} header",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    try:
        store.refresh()
    except ApiKeyError as exc:
        raise HTTPException(status_code=503, detail=f"key store unreadable: {exc}") from exc
    record = store.verify(key)
    if record is None:
        raise HTTPException(
            status_code=401,
            detail="unknown or revoked API key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    audit.mark(request.scope, scope, record)
    request.state.api_key = record
    if not record.allows(scope):
        raise HTTPException(
            status_code=403,
            detail=f"API key {record.id} ({', '.join(record.scopes)}) lacks scope {scope!r}",
        )
    wait = limiter.take(record.id)
    if wait > 0:
        raise HTTPException(
            status_code=429,
            detail=f"rate limit of API key {record.id} exceeded: retry in {human_duration(wait)}",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return record


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting only keys with `scope` (or a higher one), within their rate."""

    async def check(request: Request, key: str | None = Security(api_key_header)) -> ApiKey:
        return await admit(request, key, scope)

    return check


def require_bearer(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """As `require`, the key sent as `Authorization: Bearer <key>` (what webhook senders
    such as Grafana's contact points can send)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> ApiKey:
        return await admit(request, credentials.credentials if credentials else None, scope)

    return check
