"""`GET /v1/stream`: Server-Sent Events of live readings, events and alerts, resumable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.apikeys import ApiKey
from api.deps import CityDep, runtime_of
from api.errors import bad_param
from api.live import Hub, Subscriber
from api.responses import errors
from api.routes.common import CITY_QUERY, KINDS, check_district
from api.settings import ApiSettings
from safecity.errors import MqttError, TooManyStreamsError

router = APIRouter(prefix="/v1", tags=["stream"])

_SSE_EXAMPLE = (
    ": connected\nretry: 3000\n\n"
    "id: 5f3a9c1e-42\nevent: reading\n"
    'data: {"type": "reading", "device_id": "noise-chilanzar-001", "district": "chilanzar", '
    '"kind": "noise", "ts": "2026-01-15T06:00:00.000Z", "seq": 42, '
    '"values": {"laeq": 61.5, "lamax": 78.0, "la90": 48.2}}\n\n'
    ": keep-alive\n\n"
)
_DESCRIPTION = """Live readings, events and alerts as Server-Sent Events.

Each item is an SSE event with an `id:` (`<epoch>-<n>`), an `event:` name (`reading`,
`event`, `alert`) and a JSON `data:` line. The stream opens with a `retry:` hint and
sends a `: keep-alive` comment when idle. To resume after a disconnect, reconnect with
the last id seen in `Last-Event-ID` (EventSource does this itself): the items missed
are sent first, each once, from a bounded replay buffer (`stream_replay` items). When
they are no longer kept, or the id is from an earlier run of the API, a `gap` event
(`{"detail": ...}`) says so before the live items. A client too slow to keep up is
sent a `dropped` event and disconnected (it may resume). An API key may hold at most
`stream_max_per_key` streams at once (429 beyond)."""


def _frame(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _events(
    request: Request, hub: Hub, sub: Subscriber, heartbeat: float, retry_ms: int
) -> AsyncIterator[str]:
    try:
        yield f": connected\nretry: {retry_ms}\n\n"
        if sub.gap is not None:
            yield _frame("gap", {"detail": sub.gap})
        for event_id, item in sub.backlog:
            yield _frame(item["type"], item, event_id)
        sub.backlog = []
        while True:
            if sub.dropped.is_set():
                yield _frame(
                    "dropped", {"detail": "too slow: queue full; resume with Last-Event-ID"}
                )
                return
            try:
                event_id, item = await asyncio.wait_for(sub.queue.get(), heartbeat)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            yield _frame(item["type"], item, event_id)
    finally:
        hub.unsubscribe(sub)


@router.get(
    "/stream",
    description=_DESCRIPTION,
    responses={
        200: {
            "description": "An endless text/event-stream: `reading`, `event` and `alert` "
            "events, `gap` and `dropped` notices, keep-alive comments",
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
    city: CityDep,
    city_id: Annotated[
        str | None, Query(alias="city", max_length=64, description=CITY_QUERY)
    ] = None,
    district: Annotated[str | None, Query(max_length=64, description="Only this district")] = None,
    kind: Annotated[
        str | None, Query(description="Only this kind", json_schema_extra={"enum": KINDS})
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=64,
            description="The last `id:` received: resume after it",
        ),
    ] = None,
) -> StreamingResponse:
    """Live readings, events and alerts as Server-Sent Events, resumable with Last-Event-ID."""
    settings: ApiSettings = request.app.state.settings
    check_district(city, district)
    if kind is not None and kind not in KINDS:
        raise bad_param("query", "kind", f"unknown kind {kind!r}")
    hub: Hub = runtime_of(request, city).hub
    key: ApiKey | None = getattr(request.state, "api_key", None)
    try:
        await hub.start()
    except MqttError as exc:
        raise HTTPException(status_code=503, detail=f"live stream unavailable: {exc}") from exc
    try:
        sub = hub.subscribe(district, kind, key.id if key else "", last_event_id)
    except TooManyStreamsError as exc:
        raise HTTPException(status_code=429, detail=str(exc), headers={"Retry-After": "5"}) from exc
    return StreamingResponse(
        _events(request, hub, sub, settings.stream_heartbeat, settings.stream_retry_ms),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Also when the body never started (the generator's own finally did not run).
        background=BackgroundTask(hub.unsubscribe, sub),
    )
