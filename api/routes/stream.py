"""`GET /v1/stream`: Server-Sent Events of live readings, events and alerts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api.errors import bad_param
from api.live import Hub, Subscriber
from api.responses import errors
from api.routes.common import KINDS
from api.settings import ApiSettings
from safecity.errors import MqttError
from safecity.registry import City

router = APIRouter(prefix="/v1", tags=["stream"])

_SSE_EXAMPLE = (
    "event: reading\n"
    'data: {"type": "reading", "device_id": "noise-chilanzar-001", "district": "chilanzar", '
    '"kind": "noise", "ts": "2026-01-15T06:00:00.000Z", "seq": 42, '
    '"values": {"laeq": 61.5, "lamax": 78.0, "la90": 48.2}}\n\n'
)


async def _events(
    request: Request, hub: Hub, sub: Subscriber, heartbeat: float
) -> AsyncIterator[str]:
    try:
        yield ": connected\n\n"
        while True:
            if sub.dropped.is_set():
                yield 'event: dropped\ndata: {"detail": "too slow: queue full"}\n\n'
                return
            try:
                item = await asyncio.wait_for(sub.queue.get(), heartbeat)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            yield f"event: {item['type']}\ndata: {json.dumps(item, separators=(',', ':'))}\n\n"
    finally:
        hub.unsubscribe(sub)


@router.get(
    "/stream",
    responses={
        200: {
            "description": "An endless text/event-stream: `reading`, `event` and `alert` events",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}, "example": _SSE_EXAMPLE}
            },
        },
        **errors(404, 503),
    },
    response_class=StreamingResponse,
)
async def stream_live(
    request: Request,
    city_id: Annotated[
        str | None, Query(alias="city", max_length=64, description="City id (must be this one)")
    ] = None,
    district: Annotated[str | None, Query(max_length=64, description="Only this district")] = None,
    kind: Annotated[
        str | None, Query(description="Only this kind", json_schema_extra={"enum": KINDS})
    ] = None,
) -> StreamingResponse:
    """Live readings, events and alerts as Server-Sent Events (a slow client is dropped)."""
    city: City = request.app.state.city
    settings: ApiSettings = request.app.state.settings
    if city_id is not None and city_id != city.id:
        raise HTTPException(status_code=404, detail=f"unknown city {city_id}")
    if district is not None and city.district(district) is None:
        raise bad_param("query", "district", f"unknown district {district!r}")
    if kind is not None and kind not in KINDS:
        raise bad_param("query", "kind", f"unknown kind {kind!r}")
    hub: Hub = request.app.state.hub
    try:
        await hub.start()
    except MqttError as exc:
        raise HTTPException(status_code=503, detail=f"live stream unavailable: {exc}") from exc
    sub = hub.subscribe(district, kind)
    return StreamingResponse(
        _events(request, hub, sub, settings.stream_heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
