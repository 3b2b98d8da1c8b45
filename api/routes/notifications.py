"""Notifications in the API: acknowledgement links, and what was sent to whom.

- `GET /v1/ack/{token}` shows what the link acknowledges with a button; `POST` acts (a
  mail scanner that fetches links must not acknowledge). No API key: the signed token is
  the credential. A valid link acknowledges the incident *by the person on the roster it
  was sent to*, noting the channel; a forged (403), malformed (400), expired (410) or
  reused (409) link is refused, and every use, good or refused, is in the audit log.
- `GET /v1/notifications` and `GET /v1/incidents/{id}/notifications`: channel, recipient,
  attempts, status, latency (`safecity.notifications`), read from the notifier's outboxes
  in the instance, or asked of the notifier (`notify_url`) where its volume is not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from api import audit
from api.deps import client_of, key_of, tenancy_of
from api.errors import bad_param
from api.models import ErrorBody
from api.responses import errors
from api.settings import ApiSettings
from safecity import acklinks, notifications
from safecity import incidents as inc
from safecity.errors import AckLinkError, ConfigError, IncidentError, TransitionError
from safecity.notifications import NotificationOut
from safecity.outbox import DeliveryStatus
from safecity.readings import format_ts

ack_router = APIRouter(prefix="/v1/ack", tags=["notifications"])
router = APIRouter(prefix="/v1", tags=["notifications"])
Token = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,2000}\.[A-Za-z0-9_-]{1,200}$", max_length=2300)
]
_REFUSAL = {"forged": 403, "malformed": 400, "expired": 410, "reused": 409}


def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def _record(request: Request, who: str, outcome: str, status: int, claim: Any = None) -> None:
    """Every use of a link, good or refused, in the audit log."""
    audit_log = getattr(request.app.state, "audit", None)
    client = request.client
    record = {
        "ts": format_ts(datetime.now(UTC)),
        "key_id": f"ack-link:{who}",
        "scope": "ack-link",
        "method": request.method,
        "route": "/v1/ack/{token}",
        "target": getattr(claim, "incident_id", None),
        "city": getattr(claim, "city", None),
        "channel": getattr(claim, "channel", None),
        "outcome": outcome,
        "status": status,
        "client": client.host if client else None,
    }
    if audit_log is not None:
        # Unwritable: the structured log line below still records it.
        with contextlib.suppress(OSError):
            audit_log.append(record)
    audit.log.info("ack link", extra={"audit": record})


def _claim(request: Request, token: str) -> acklinks.AckClaim:
    settings = _settings(request)
    try:
        key = acklinks.read_key(settings.ack_key_file)
        return acklinks.verify(key, token, time.time())
    except ConfigError:
        # No key: no notifier ever signed a link for this instance, so none is genuine.
        _record(request, "unknown", "no key", 404)
        raise HTTPException(404, "no acknowledgement links are issued here") from None
    except AckLinkError as exc:
        _record(request, "unknown", exc.reason, _REFUSAL[exc.reason])
        raise HTTPException(_REFUSAL[exc.reason], f"link refused: {exc}") from None


def _link_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The refusals of a link: the shared ones, plus malformed (400) and expired (410)."""
    own = {
        400: ("A token that is not an acknowledgement link", "link refused: malformed: ..."),
        410: ("The link expired", "link refused: expired: the link expired at 1765100000"),
    }
    out = errors(*codes)
    for code, (description, example) in own.items():
        out[code] = {
            "model": ErrorBody,
            "description": description,
            "content": {"application/json": {"example": {"detail": example}}},
        }
    return out


@ack_router.get("/{token}", response_class=HTMLResponse, responses=_link_errors(404))
async def ack_page(request: Request, token: Token) -> HTMLResponse:
    """What the link acknowledges, with the button that does it (nothing changes yet)."""
    claim = _claim(request, token)
    body = (
        "<!doctype html><meta charset=utf-8><title>Acknowledge</title>"
        f"<p>Acknowledge incident <b>{html.escape(claim.incident_id)}</b> "
        f"({html.escape(claim.city)}) as <b>{html.escape(claim.person)}</b>?"
        f"<form method=post><button type=submit>Acknowledge</button></form>"
    )
    return HTMLResponse(body)


class AckOut(BaseModel):
    """An acknowledgement made through a link."""

    incident_id: str
    state: str
    by: str
    channel: str


@ack_router.post("/{token}", response_model=AckOut, responses=_link_errors(404, 409))
async def ack_link(request: Request, token: Token) -> AckOut:
    """Acknowledge the incident as the person the link was sent to (once per link)."""
    claim = _claim(request, token)
    if claim.city not in tenancy_of(request).runtimes:
        _record(request, claim.person, "unknown city", 404, claim)
        raise HTTPException(404, f"city {claim.city} is not served here")
    spent = acklinks.Spent(_settings(request).ack_spent_file)
    try:
        await asyncio.to_thread(spent.spend, claim, time.time())
    except AckLinkError as exc:
        _record(request, claim.person, exc.reason, 409, claim)
        raise HTTPException(409, f"link refused: {exc}") from None
    finally:
        spent.close()
    store = inc.IncidentStore(client_of(request.app, claim.city))
    lock: asyncio.Lock = request.app.state.incident_lock
    try:
        async with lock:
            updated = await store.transition(
                claim.incident_id, inc.State.ACKNOWLEDGED, claim.person,
                f"via {claim.channel} (acknowledgement link)",
            )  # fmt: skip
    except IncidentError as exc:
        status = 409 if isinstance(exc, TransitionError) else 404
        _record(request, claim.person, "incident " + type(exc).__name__, status, claim)
        raise HTTPException(status, str(exc)) from None
    request.app.state.announcer.announce(updated)
    _record(request, claim.person, "acknowledged", 200, claim)
    return AckOut(
        incident_id=updated.id, state=updated.state.value, by=claim.person, channel=claim.channel
    )


async def _listing(request: Request, city: str | None, **filters: Any) -> list[NotificationOut]:
    """The notifications of the cities the key may see (one city: 404 if it may not), from
    the notifier's outboxes when this process can read them, else from the notifier."""
    settings = _settings(request)
    tenancy, key = tenancy_of(request), key_of(request)
    cities = [tenancy.city(key, city).id] if city else [c.id for c in tenancy.visible(key)]
    if settings.notify_url is None:
        return await asyncio.to_thread(notifications.read, settings.notify_dir, cities, **filters)
    params: dict[str, Any] = {"city": cities}
    params.update({k: str(v) for k, v in filters.items() if v is not None})
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.get(f"{settings.notify_url.rstrip('/')}/notifications",
                                      params=params)  # fmt: skip
    except httpx.HTTPError as exc:
        raise HTTPException(503, f"the notifier cannot be reached: {exc}") from None
    if answer.status_code != 200:
        raise HTTPException(503, f"the notifier answered {answer.status_code}: {answer.text[:200]}")
    return [NotificationOut.model_validate(item) for item in answer.json()]


@router.get("/notifications", response_model=list[NotificationOut], responses=errors(404, 503))
async def list_notifications(
    request: Request,
    city: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = None,
    channel: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = None,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[NotificationOut]:
    """Notifications in enqueue order (channel, recipient, attempts, status, latency)."""
    settings: ApiSettings = request.app.state.settings
    if limit > settings.max_page_size:  # the published bound of every `limit`
        raise bad_param("query", "limit", f"must be at most {settings.max_page_size}")
    found = await _listing(request, city, channel=channel, status=status, limit=limit)
    return found[:limit]


@router.get(
    "/incidents/{incident_id}/notifications",
    response_model=list[NotificationOut],
    responses=errors(404, 503),
)
async def incident_notifications(
    request: Request,
    incident_id: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")],
) -> list[NotificationOut]:
    """An incident's delivery timeline: every page and resolution notice, each with its
    attempts."""
    return await _listing(request, None, incident=incident_id)
