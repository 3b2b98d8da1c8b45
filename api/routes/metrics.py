"""Prometheus exposition of the process's default registry."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus text format of every metric in the default registry."""
    return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
