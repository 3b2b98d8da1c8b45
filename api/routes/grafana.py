"""`POST /v1/alerts/grafana`: Grafana's alert notifications become incidents.

Grafana's contact point (dashboards/alerting.py) posts its webhook payload here with an
`operate` key as a bearer token. Each firing alert opens an incident in the same store
the alerts service writes (id from the rule, the place and the start time, so repeated
notifications of one alert are one incident); a resolved alert resolves it. Grafana's
rules and the alerts service's thus meet in one incident list.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from api import audit
from api.apikeys import ApiKey
from api.deps import TenancyDep, influx_of
from api.errors import bad_param
from api.params import parse_instant
from api.responses import STORAGE, errors
from api.security import require_bearer
from safecity import incidents as inc
from safecity.errors import IncidentError
from safecity.readings import truncate_ms

router = APIRouter(prefix="/v1/alerts", tags=["incidents"])

SEVERITY = {"info": "low", "warning": "medium", "error": "high", "critical": "critical"}
CITYWIDE = "citywide"
# An alert opens an incident only if it started within this window (Grafana re-notifies
# a long-firing alert with its original start; its incident exists by then).
OPEN_WINDOW = timedelta(days=30)
CLOCK_SKEW = timedelta(hours=1)
_SLUG = re.compile(r"[^a-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a message is one line of text


class GrafanaAlert(BaseModel):
    """One alert of a Grafana webhook notification (fields we use; others ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    status: Literal["firing", "resolved"] = Field(examples=["firing"])
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Grafana's field name; RFC 3339, held to 1970..2200 like every time the API takes.
    startsAt: Annotated[datetime, BeforeValidator(parse_instant)]  # noqa: N815
    fingerprint: str = ""


class GrafanaNotification(BaseModel):
    """Grafana's webhook body (version 1): a group of alerts."""

    model_config = ConfigDict(extra="ignore", strict=True)

    status: str = Field(examples=["firing"])
    alerts: list[GrafanaAlert] = Field(max_length=1000)


class IntakeOut(BaseModel):
    """What the notification did: incident ids opened and resolved, alerts skipped."""

    opened: list[str]
    resolved: list[str]
    ignored: int = Field(
        description="alerts of another city, started over 30 days ago or in the future, "
        "or resolved before we knew them"
    )


def _current(start: datetime) -> bool:
    """A start Grafana could be notifying now (not a replay of the distant past/future)."""
    now = datetime.now(UTC)
    return now - OPEN_WINDOW <= start <= now + CLOCK_SKEW


def _slug(text: str, fallback: str) -> str:
    slug = _SLUG.sub("-", text.lower()).strip("-.")[:64]
    return slug if slug and slug[0].isalnum() else fallback


def _incident(city: str, alert: GrafanaAlert) -> inc.Incident:
    labels = alert.labels
    district = _slug(labels.get("district", ""), CITYWIDE)
    place = labels.get("district") or labels.get("worker_id") or labels.get("device_id") or city
    summary = alert.annotations.get("summary") or labels.get("alertname", "Grafana alert")
    start = truncate_ms(alert.startsAt)
    return inc.open_incident(
        city=city,
        district=district,
        rule_id=_slug("grafana-" + labels.get("alertname", "alert"), "grafana-alert"),
        rule_type="grafana",
        severity=SEVERITY.get(labels.get("severity", ""), "high"),
        place=_slug(place, city),
        devices=[labels["device_id"]] if "device_id" in labels else [],
        opened_at=start,
        value=None,
        message=_CONTROL.sub(" ", summary)[:500],
        event=None,
        by="grafana",
    )


@router.post("/grafana", response_model=IntakeOut, responses=errors(*STORAGE))
async def grafana_alerts(
    request: Request,
    key: Annotated[ApiKey, Depends(require_bearer("operate"))],
    tenancy: TenancyDep,
    body: GrafanaNotification,
) -> IntakeOut:
    """Open an incident per firing Grafana alert, resolve it when Grafana says resolved
    (scope `operate`, key as `Authorization: Bearer`; audited). Each alert goes to the
    database of its `city` label (default: the key's first city); an alert of a city the
    key may not operate is ignored."""
    out = IntakeOut(opened=[], resolved=[], ignored=0)
    lock: asyncio.Lock = request.app.state.incident_lock
    default = tenancy.default(key)
    seen: list[str] = []
    async with lock:
        for alert in body.alerts:
            city_id = alert.labels.get("city", default.id)
            if city_id not in tenancy.runtimes or not key.sees(city_id):
                out.ignored += 1
                continue
            city = tenancy.runtimes[city_id].city
            store = inc.IncidentStore(influx_of(request, city))
            if city.id not in seen:
                seen.append(city.id)
                audit.note_city(request.scope, ",".join(seen))
            try:
                incident = _incident(city.id, alert)
            except ValidationError as exc:
                reason = exc.errors()[0].get("msg", "invalid")
                raise bad_param("body", "alerts", f"not an incident: {reason}") from None
            if alert.status == "firing":
                if not _current(incident.opened_at):
                    out.ignored += 1
                    continue
                await store.open(incident)
                request.app.state.announcer.announce(incident)
                out.opened.append(incident.id)
                continue
            try:
                stored = await store.get(incident.id)
            except IncidentError:
                out.ignored += 1
                continue
            if stored.state is not inc.State.RESOLVED:
                resolved = await store.transition(
                    incident.id, inc.State.RESOLVED, key.id, "resolved in Grafana"
                )
                request.app.state.announcer.announce(resolved)
            out.resolved.append(incident.id)
    return out
