"""Tokens of the city's OpenID Connect provider: discovery, signing keys, verification.

The provider's discovery document and its JWKS are fetched over HTTPS (httpx) and kept
`jwks_ttl` seconds; a token naming a key id the cached set lacks refetches the set
once (the provider rotated its keys), at most once a second (`REFETCH_GAP`) so that
forged key ids cannot make the API hammer the provider. A token is accepted only with
a signature by one of the provider's keys under an allowed asymmetric algorithm, the
configured issuer, the expected audience, and exp/nbf/iat within `leeway` seconds of
this clock. Every refusal is a `TokenError` naming the reason.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from api.settings import OidcSettings

REFETCH_GAP = 1.0
# Symmetric algorithms would let anyone holding the client secret mint tokens.
_FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})


class TokenError(Exception):
    """A token or a sign-in the API refuses: the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ProviderError(Exception):
    """The provider could not be reached or answered nonsense (a 503 for the caller)."""


@dataclass
class _Cached:
    value: Any
    fetched: float


class OidcProvider:
    """The provider of `settings.issuer`: its metadata, its keys and token verification."""

    def __init__(self, settings: OidcSettings, client: httpx.AsyncClient | None = None) -> None:
        if not settings.issuer:
            raise ValueError("OIDC provider without an issuer")
        self.settings = settings
        self.issuer = settings.issuer
        self.client = client or httpx.AsyncClient(timeout=settings.timeout)
        self._metadata: _Cached | None = None
        self._keys: _Cached | None = None
        self._lock = asyncio.Lock()
        self.algorithms = [a for a in settings.algorithms if a not in _FORBIDDEN_ALGORITHMS]

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self.client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"OIDC provider: GET {url} failed: {exc}") from exc
        if not isinstance(body, dict):
            raise ProviderError(f"OIDC provider: {url} is not a JSON object")
        return body

    async def metadata(self) -> dict[str, Any]:
        """The discovery document (cached `jwks_ttl` seconds); its issuer must be ours."""
        now = time.monotonic()
        cached = self._metadata
        if cached is not None and now - cached.fetched < self.settings.jwks_ttl:
            return dict(cached.value)
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if document.get("issuer") != self.issuer:
            raise ProviderError(
                f"OIDC provider: {url} names issuer {document.get('issuer')!r}, "
                f"not the configured {self.issuer!r}"
            )
        self._metadata = _Cached(document, now)
        return document

    async def _key_set(self, refresh: bool) -> jwt.PyJWKSet:
        async with self._lock:
            now = time.monotonic()
            cached = self._keys
            fresh = cached is not None and now - cached.fetched < self.settings.jwks_ttl
            recent = cached is not None and now - cached.fetched < REFETCH_GAP
            if cached is not None and fresh and (not refresh or recent):
                keys: jwt.PyJWKSet = cached.value
                return keys
            uri = (await self.metadata()).get("jwks_uri")
            if not isinstance(uri, str):
                raise ProviderError("OIDC provider: the discovery document has no jwks_uri")
            try:
                keys = jwt.PyJWKSet.from_dict(await self._get_json(uri))
            except jwt.PyJWKSetError as exc:
                raise ProviderError(f"OIDC provider: {uri}: {exc}") from exc
            self._keys = _Cached(keys, now)
            return keys

    async def signing_key(self, kid: str) -> jwt.PyJWK:
        """The provider's key `kid`; the set is refetched once when it lacks it."""
        for refresh in (False, True):
            for key in (await self._key_set(refresh)).keys:
                if key.key_id == kid:
                    return key
        raise TokenError(
            401, f"token signed by an unknown key (kid {kid!r} is not in the provider's key set)"
        )

    async def verify(self, token: str, audience: str, nonce: str | None = None) -> dict[str, Any]:
        """The claims of a valid token for `audience`; TokenError naming the fault."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise TokenError(401, f"not a signed token (JWT): {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise TokenError(
                401,
                f"token algorithm {alg!r} not accepted (accepted: {', '.join(self.algorithms)})",
            )
        if not isinstance(kid, str):
            raise TokenError(401, "token names no signing key (no kid in its header)")
        key = await self.signing_key(kid)
        claims = _decode(token, key, alg, audience, self.issuer, self.settings.leeway)
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenError(401, "ID token nonce does not match the sign-in's")
        return claims


def _decode(
    token: str, key: jwt.PyJWK, alg: str, audience: str, issuer: str, leeway: float
) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(401, f"token expired (clock skew allowed: {leeway:g} s)") from None
    except jwt.InvalidAudienceError:
        raise TokenError(401, f"token audience is not {audience!r}") from None
    except jwt.InvalidIssuerError:
        raise TokenError(401, f"token issuer is not {issuer!r}") from None
    except jwt.ImmatureSignatureError:
        raise TokenError(
            401, f"token not valid yet (issued in the future beyond {leeway:g} s of skew)"
        ) from None
    except jwt.InvalidSignatureError:
        raise TokenError(401, "token signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(401, f"token refused: {exc}") from None
    return claims
