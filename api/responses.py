"""The documented error responses of the routes (all share the `{"detail": ...}` shape)."""

from __future__ import annotations

from typing import Any

from api.models import ErrorBody

_DESCRIPTIONS = {
    401: (
        "Missing, unknown or revoked API key, or a refused sign-in token (expired, wrong "
        "audience or issuer, signed by an unknown key)",
        "missing API key: send it in the X-API-Key header",
    ),
    403: (
        "The API key or person lacks the scope, a token's claims give no role, or a console "
        "call lacks its session's CSRF token",
        "API key 1a2b3c4d (read) lacks scope 'operate'",
    ),
    404: ("Unknown city, district, device or incident", "unknown device noise-nowhere-001"),
    409: (
        "The incident's lifecycle refuses this step",
        "incident inc-0123456789abcdef0123 is open: cannot go to dispatched "
        "(allowed from open: acknowledged, resolved)",
    ),
    413: ("Request body too large", "request body larger than 16384 bytes"),
    422: (
        "A parameter or the body is invalid (a body that is not JSON included)",
        "query parameter 'limit': must be at most 500",
    ),
    429: (
        "Rate limit exceeded, or too many live streams for the key (see Retry-After)",
        "rate limit of API key 1a2b3c4d exceeded: retry in 1 s",
    ),
    502: ("InfluxDB could not run the query", "storage query failed: ..."),
    503: ("InfluxDB (or the broker, for the stream) is unavailable", "storage unavailable: ..."),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these status codes, plus the auth ones every route has."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({401, 403, 422, 429, *codes}):
        description, example = _DESCRIPTIONS[code]
        out[code] = {
            "model": ErrorBody,
            "description": description,
            "content": {"application/json": {"example": {"detail": example}}},
        }
    return out


STORAGE = (502, 503)
