"""Errors under `/ngsi-ld/` as the NGSI-LD problem details: `{type, title, status, detail}`.

The app's own handlers keep the `{"detail": ...}` shape everywhere else; these wrap
them and answer for the NGSI-LD paths only. A refused parameter is a 400
`BadRequestData` (NGSI-LD has no 422); an unknown entity or city a 404
`ResourceNotFound` with the same reason as `/v1`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from safecity.errors import StorageError

PREFIX = "/ngsi-ld/"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
BAD_REQUEST = ERRORS + "BadRequestData"
NOT_FOUND = ERRORS + "ResourceNotFound"
INTERNAL = ERRORS + "InternalError"
# Statuses the NGSI-LD error types do not cover (keys, scopes, limits): RFC 7807's default.
GENERIC = "about:blank"
TITLES = {
    400: "Bad request data",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Resource not found",
    413: "Payload too large",
    429: "Too many requests",
    500: "Internal error",
    502: "Internal error",
    503: "Service unavailable",
}
_TYPES = {400: BAD_REQUEST, 404: NOT_FOUND, 500: INTERNAL, 502: INTERNAL, 503: INTERNAL}

Handler = Callable[[Request, Exception], Awaitable[Response]]


class ProblemDetails(BaseModel):
    """An NGSI-LD error: its type URI, title, HTTP status and the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Error type URI, e.g. " + BAD_REQUEST)
    title: str = Field(description="Short summary of the error type")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="The reason, naming the offending parameter or resource")


def bad_request(detail: str) -> HTTPException:
    """A 400 BadRequestData with the reason."""
    return HTTPException(status_code=400, detail=detail)


def not_found(detail: str) -> HTTPException:
    """A 404 ResourceNotFound with the reason."""
    return HTTPException(status_code=404, detail=detail)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The problem-details response of a status and reason."""
    body = ProblemDetails(
        type=_TYPES.get(status, GENERIC),
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
    )
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _reshaped(fallback: Handler) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        shaped = await fallback(request, exc)
        if not request.url.path.startswith(PREFIX):
            return shaped
        try:
            detail = str(json.loads(bytes(shaped.body)).get("detail", "error"))
        except (ValueError, AttributeError):
            detail = "error"
        status = 400 if shaped.status_code == 422 else shaped.status_code
        keep = {k: v for k, v in shaped.headers.items() if k.lower() in _KEPT_HEADERS}
        return problem(status, detail, keep or None)

    return handle


_KEPT_HEADERS = ("retry-after", "www-authenticate")


def install(app: FastAPI) -> None:
    """Answer errors under /ngsi-ld/ as problem details, with the status and reason the
    app's own handlers give (422 becomes NGSI-LD's 400)."""
    handlers = app.exception_handlers
    for cls in (StarletteHTTPException, RequestValidationError, StorageError):
        app.add_exception_handler(cls, _reshaped(cast(Handler, handlers[cls])))


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses (plus the key's and limits' ones)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({400, 401, 403, 429, *codes}):
        example = ProblemDetails(
            type=_TYPES.get(code, GENERIC), title=TITLES[code], status=code, detail="..."
        )
        out[code] = {
            "model": ProblemDetails,
            "description": TITLES[code],
            "content": {"application/json": {"example": example.model_dump()}},
        }
    return out
