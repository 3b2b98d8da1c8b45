"""Liveness (`/healthz`) and readiness (`/readyz`) probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServerInfluxDep
from api.models import Status

router = APIRouter(tags=["health"])

PING_TIMEOUT = 5.0


@router.get("/healthz", response_model=Status, response_model_exclude_none=True)
async def healthz() -> Status:
    """Alive: the process serves HTTP. Always 200."""
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    response_model_exclude_none=True,
    responses={503: {"model": Status, "description": "InfluxDB does not answer"}},
)
async def readyz(influx: ServerInfluxDep) -> Status | JSONResponse:
    """Ready: InfluxDB answers /ping (`{"status": "ready"}`); 503 with
    `{"status": "not ready", "detail": <reason>}` otherwise."""
    timeout = min(PING_TIMEOUT, influx.settings.timeout)
    try:
        async with asyncio.timeout(timeout):
            ok = await influx.ping()
    except TimeoutError:
        ok = False
    if ok:
        return Status(status="ready")
    return JSONResponse(
        status_code=503,
        content={
            "status": "not ready",
            "detail": f"InfluxDB at {influx.settings.url} does not answer /ping",
        },
    )
