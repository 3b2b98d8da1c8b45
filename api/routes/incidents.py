"""Incidents: list, one with its history, lifecycle steps (scope `operate`), figures.

The incidents are those the alerts service opened (`safecity.incidents`): the store is
the append-only `incident_transitions` log, folded on read. A step is checked against
the stored log (409 with the state machine's reason when it refuses) and appended with
`by` = the calling API key's id — never a name the client claims; a person signed in
through the identity provider is also named (`by_subject`, `by_name`, from its token).
Each step is audited.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from api import audit, metrics
from api.apikeys import ApiKey
from api.cursors import incident_cursor, incident_position
from api.deps import CityDep, InfluxDep, KeyDep, SettingsDep, influx_of
from api.errors import bad_param
from api.models import Window
from api.params import TimeRange, time_range
from api.people import Person
from api.responses import STORAGE, errors
from api.routes.common import (
    SEVERITIES,
    CityQuery,
    Cursor,
    DistrictQuery,
    From,
    Limit,
    SeverityQuery,
    To,
    check_district,
    page_size,
)
from api.security import require
from api.tenancy import Tenancy
from safecity import incidents as inc
from safecity.errors import IncidentError, TransitionError
from safecity.influx import InfluxClient
from safecity.readings import epoch_ms
from safecity.registry import City

router = APIRouter(prefix="/v1/incidents", tags=["incidents"])
operate_router = APIRouter(prefix="/v1/incidents", tags=["incidents"])

STATES = [s.value for s in inc.State]
DEFAULT_WINDOW = timedelta(days=7)
FIGURES_WINDOW = timedelta(days=30)
INCIDENT_ID = r"^inc-[0-9a-f]{20}$"
NOTE_MAX = 500
# A note is free text, one line: no control characters.
NOTE_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def _enum(values: list[str]) -> dict[str, JsonValue]:
    return {"enum": list[JsonValue](values)}


IncidentId = Annotated[
    str,
    Path(
        description="Incident id",
        pattern=INCIDENT_ID,
        max_length=24,
        examples=["inc-0123456789abcdef0123"],
    ),
]
OperateKey = Annotated[ApiKey, Depends(require("operate"))]


class TransitionOut(BaseModel):
    """One appended lifecycle step."""

    seq: int = Field(examples=[1])
    state: str = Field(json_schema_extra=_enum(STATES), examples=["acknowledged"])
    from_state: str | None = Field(examples=["open"])
    at: str = Field(examples=["2026-03-10T18:42:10.000Z"])
    by: str = Field(
        description="API key id, a person's id (p + 12 hex), or `alerts` for the service",
        examples=["1a2b3c4d"],
    )
    note: str = Field(examples=["unit 7 on the way"])
    by_subject: str = Field(
        default="",
        description="A person who took the step: the identity provider's subject (else empty)",
        examples=["248289761001"],
    )
    by_name: str = Field(default="", description="That person's name", examples=["Jane Doe"])


class IncidentOut(BaseModel):
    """An incident, its current state and its full transition history (oldest first)."""

    id: str = Field(examples=["inc-0123456789abcdef0123"])
    city: str
    district: str
    rule_id: str = Field(description="the rule: the incident's type", examples=["gunshot"])
    rule_type: str = Field(examples=["event"])
    severity: str = Field(json_schema_extra=_enum(SEVERITIES), examples=["critical"])
    place: str
    devices: list[str]
    opened_at: str
    value: float | None
    message: str
    event: str | None
    state: str = Field(json_schema_extra=_enum(STATES))
    time_to_acknowledge_s: float | None
    time_to_resolve_s: float | None
    transitions: list[TransitionOut]


class IncidentPage(BaseModel):
    """A page of incidents opened in the window, newest first; pass `next_cursor` back as
    `cursor` for the next (`truncated` is true exactly when it is set)."""

    items: list[IncidentOut]
    truncated: bool
    next_cursor: str | None = Field(description="null on the last page")
    window: Window


class FigureOut(BaseModel):
    """Response times of one (type, district) group, in seconds (null: none yet)."""

    rule_id: str
    district: str
    incidents: int
    open: int = Field(description="not yet resolved")
    acknowledged: int
    resolved: int
    tta_mean: float | None
    tta_median: float | None
    tta_max: float | None
    ttr_mean: float | None
    ttr_median: float | None
    ttr_max: float | None


class FiguresOut(BaseModel):
    """Time to acknowledge (tta) and to resolve (ttr) of the incidents opened in the window."""

    window: Window
    items: list[FigureOut]


class TransitionIn(BaseModel):
    """An optional note for the step (one line, at most 500 characters)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    note: str = Field(default="", max_length=NOTE_MAX, pattern=NOTE_PATTERN)


def incident_out(incident: inc.Incident) -> IncidentOut:
    """The response view of an incident (`Incident.to_public()` plus response times)."""
    public: dict[str, Any] = incident.to_public()
    return IncidentOut(
        **{k: v for k, v in public.items() if k != "transitions"},
        time_to_acknowledge_s=incident.time_to_acknowledge,
        time_to_resolve_s=incident.time_to_resolve,
        transitions=[
            TransitionOut(**{k: v for k, v in t.items() if k != "incident_id"})
            for t in public["transitions"]
        ],
    )


async def incidents_in(
    influx: InfluxClient,
    city: City,
    window: TimeRange,
    district: str | None = None,
    rule_id: str | None = None,
    severity: str | None = None,
) -> list[inc.Incident]:
    """Incidents of the city opened in the window, newest first."""
    found = await inc.IncidentStore(influx).query(
        city.id, window.start, window.end, district=district, rule_id=rule_id, severity=severity
    )
    return sorted(found.values(), key=lambda i: (i.opened_at, i.id), reverse=True)


RuleQuery = Annotated[
    str | None,
    Query(
        alias="type",
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Incident type: the rule id, e.g. gunshot, pm25_who",
    ),
]


@router.get("", response_model=IncidentPage, responses=errors(404, *STORAGE))
async def list_incidents(
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    city_id: CityQuery = None,
    district: DistrictQuery = None,
    rule_id: RuleQuery = None,
    severity: SeverityQuery = None,
    state: Annotated[
        str | None, Query(description="Current state", json_schema_extra={"enum": STATES})
    ] = None,
    start: From = None,
    end: To = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> IncidentPage:
    """Incidents opened in the window (default: the last 7 days), newest first, filtered,
    page by page: pass `next_cursor` back as `cursor` with the same filters and window."""
    limit = page_size(settings, limit)
    check_district(city, district)
    if severity is not None and severity not in SEVERITIES:
        raise bad_param("query", "severity", f"must be one of {', '.join(SEVERITIES)}")
    if state is not None and state not in STATES:
        raise bad_param("query", "state", f"must be one of {', '.join(STATES)}")
    after = incident_position(cursor) if cursor is not None else None
    window = time_range(settings, start, end, DEFAULT_WINDOW)
    found = await incidents_in(influx, city, window, district, rule_id, severity)
    if state is not None:
        found = [i for i in found if i.state.value == state]
    if after is not None:
        found = [i for i in found if (epoch_ms(i.opened_at), i.id) < after]
    page = found[:limit]
    more = len(found) > limit
    return IncidentPage(
        items=[incident_out(i) for i in page],
        truncated=more,
        next_cursor=incident_cursor(epoch_ms(page[-1].opened_at), page[-1].id) if more else None,
        window=window.model(),
    )


@router.get("/figures", response_model=FiguresOut, responses=errors(404, *STORAGE))
async def get_incident_figures(
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    city_id: CityQuery = None,
    district: DistrictQuery = None,
    rule_id: RuleQuery = None,
    group_by: Annotated[
        Literal["type_district", "type", "district"],
        Query(description="Groups: by type and district (default), by type, or by district"),
    ] = "type_district",
    start: From = None,
    end: To = None,
) -> FiguresOut:
    """Time to acknowledge and time to resolve of incidents opened in the window
    (default: the last 30 days, bounded by max_range), by type and district."""
    check_district(city, district)
    default = min(FIGURES_WINDOW, timedelta(seconds=settings.max_range))
    window = time_range(settings, start, end, default)
    found = await incidents_in(influx, city, window, district, rule_id)
    figures = inc.figures(found, by_type=group_by != "district", by_district=group_by != "type")
    return FiguresOut(
        window=window.model(),
        items=[FigureOut(**{k: getattr(f, k) for k in FigureOut.model_fields}) for f in figures],
    )


@router.get("/{incident_id}", response_model=IncidentOut, responses=errors(404, *STORAGE))
async def get_incident(request: Request, key: KeyDep, incident_id: IncidentId) -> IncidentOut:
    """One incident with its full transition history."""
    _, incident = await _incident(request, key, incident_id)
    return incident_out(incident)


async def _incident(
    request: Request, key: ApiKey, incident_id: str
) -> tuple[InfluxClient, inc.Incident]:
    """The incident in the database of one of the key's cities (and that database's
    client); 404 the same for an unknown incident and one of a city the key may not see."""
    tenancy: Tenancy = request.app.state.tenancy
    for city in tenancy.visible(key):
        influx = influx_of(request, city)
        try:
            incident = await inc.IncidentStore(influx).get(incident_id)
        except IncidentError:
            continue
        if incident.city == city.id:
            audit.note_city(request.scope, city.id)
            return influx, incident
    raise HTTPException(status_code=404, detail=f"unknown incident {incident_id}")


async def _step(
    request: Request,
    key: ApiKey,
    incident_id: str,
    target: inc.State,
    body: TransitionIn | None,
) -> IncidentOut:
    # One step at a time in this process: two operators acknowledging at once must not
    # both read `open` and both append step 1 (the log would keep only the first).
    lock: asyncio.Lock = request.app.state.incident_lock
    async with lock:
        influx, _ = await _incident(request, key, incident_id)
        try:
            updated = await inc.IncidentStore(influx).transition(
                incident_id,
                target,
                key.id,
                body.note if body is not None else "",
                person=(key.subject, key.display_name) if isinstance(key, Person) else ("", ""),
            )
        except TransitionError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
    request.app.state.announcer.announce(updated)
    metrics.observe_step(updated, target)
    request.app.state.figures.poke()  # the gauges follow a change made here at once
    return incident_out(updated)


_STEP_RESPONSES = errors(404, 409, *STORAGE)


@operate_router.post("/{incident_id}/ack", response_model=IncidentOut, responses=_STEP_RESPONSES)
async def acknowledge_incident(
    request: Request,
    key: OperateKey,
    incident_id: IncidentId,
    body: TransitionIn | None = None,
) -> IncidentOut:
    """Acknowledge an open incident (scope `operate`; `by` = this key's id; audited)."""
    return await _step(request, key, incident_id, inc.State.ACKNOWLEDGED, body)


@operate_router.post(
    "/{incident_id}/dispatch", response_model=IncidentOut, responses=_STEP_RESPONSES
)
async def dispatch_incident(
    request: Request,
    key: OperateKey,
    incident_id: IncidentId,
    body: TransitionIn | None = None,
) -> IncidentOut:
    """Dispatch a unit to an acknowledged incident (scope `operate`; audited)."""
    return await _step(request, key, incident_id, inc.State.DISPATCHED, body)


@operate_router.post(
    "/{incident_id}/resolve", response_model=IncidentOut, responses=_STEP_RESPONSES
)
async def resolve_incident(
    request: Request,
    key: OperateKey,
    incident_id: IncidentId,
    body: TransitionIn | None = None,
) -> IncidentOut:
    """Resolve an incident from any state but resolved (scope `operate`; audited)."""
    return await _step(request, key, incident_id, inc.State.RESOLVED, body)
