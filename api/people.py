"""People signed in through the city's identity provider.

A person is admitted like a key (`Person` is an `ApiKey`: scopes, cities, an id for
rate limits and the audit log), with scopes and cities read from token claims under
the configured names and role mapping. The record names them: `subject` (the
provider's `sub`) and `display_name`. A console session lives on the server
(`api.sessions`; the browser holds only a random id in a Secure, HttpOnly, SameSite
cookie) with its own CSRF token, which every state-changing call must echo in
`X-CSRF-Token`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from api.apikeys import SCOPES, ApiKey, parse_cities
from api.oidc import TokenError
from api.settings import OidcSettings
from safecity.errors import ApiKeyError

SESSION_COOKIE = "safecity_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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
