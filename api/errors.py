"""One error shape for every failure: `{"detail": "<reason>"}`.

Bad input is a 4xx naming the offending parameter; storage trouble is a 502/503
with the reason; nothing a client sends can produce a 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from safecity.errors import QueryError, StorageAuthError, StorageError, StorageUnavailableError

log = logging.getLogger("safecity.api")

_SOURCES = {"query": "query", "path": "path", "header": "header", "cookie": "cookie"}


def bad_param(source: str, name: str, reason: str) -> HTTPException:
    """A 422 whose reason names the parameter, e.g. `query parameter 'kind': ...`."""
    return HTTPException(status_code=422, detail=f"{source} parameter {name!r}: {reason}")


def describe_validation(errors: Sequence[Any]) -> str:
    """One line naming each invalid parameter and why."""
    parts: list[str] = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        msg = str(error.get("msg", "invalid"))
        if loc and loc[0] in _SOURCES:
            name = ".".join(loc[1:]) or "?"
            parts.append(f"{_SOURCES[loc[0]]} parameter {name!r}: {msg}")
        elif loc and loc[0] == "body" and error.get("type") == "json_invalid":
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (error.get("ctx") or {}).get("error", "not valid JSON")
            parts.append(f"body: not valid JSON{at} ({reason})")
        elif loc and loc[0] == "body":
            name = ".".join(loc[1:])
            parts.append(f"body field {name!r}: {msg}" if name else f"body: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts) or "invalid request"


def human_duration(seconds: float) -> str:
    """A duration as a person reads it: `45 s`, `12 min`, `3 h 20 min`, `31 days`."""
    whole = max(1, math.ceil(seconds))
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{round(whole / 60)} min"
    if whole < 2 * 86_400:
        hours, rest = divmod(whole, 3600)
        minutes = round(rest / 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = whole / 86_400
    return f"{days:.0f} days" if days == int(days) else f"{days:.1f} days"


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


_UNPARSED_BODY = "There was an error parsing the body"
"""FastAPI's 400 for a JSON body its decoder raised on other than a syntax error (bytes
that are not UTF-8, nesting past the recursion limit)."""


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == _UNPARSED_BODY:
        # One status for every body that is not JSON, as for a syntax error: 422 (the
        # one the OpenAPI document lists), naming why.
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "unreadable"
        return _error(422, f"body: not valid JSON ({cause})")
    return _error(exc.status_code, detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(422, describe_validation(exc.errors()))


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StorageError)
    if isinstance(exc, StorageUnavailableError):
        headers = None
        if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        log.warning("storage unavailable: %s", exc, extra={"path": request.url.path})
        return _error(503, f"storage unavailable: {exc}", headers)
    if isinstance(exc, StorageAuthError):
        log.error("storage refused us: %s", exc, extra={"path": request.url.path})
        return _error(503, f"storage refused the API's credentials or database: {exc}")
    if isinstance(exc, QueryError) and "database not found" in str(exc):
        log.warning("storage has no database: %s", exc, extra={"path": request.url.path})
        return _error(503, f"storage not initialised: {exc}")
    log.error("storage query failed: %s", exc, extra={"path": request.url.path})
    return _error(502, f"storage query failed: {exc}")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error(500, "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the `{"detail": ...}` shape."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(Exception, _unexpected)
