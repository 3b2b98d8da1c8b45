"""The calling key (`GET /v1/me`, scope `read`) and the audit log (`GET /v1/audit`, `admin`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from api.apikeys import ApiKey
from api.audit import AuditLog
from api.deps import SettingsDep, TenancyDep
from api.people import Person
from api.responses import errors
from api.routes.common import page_size
from api.security import require

router = APIRouter(prefix="/v1", tags=["keys"])


class Me(BaseModel):
    """The API key of this request: its id, name, scopes and cities (never its secret)."""

    id: str = Field(examples=["1a2b3c4d"])
    name: str = Field(examples=["dashboards"])
    scopes: list[str] = Field(examples=[["read", "operate"]])
    cities: list[str] = Field(
        default_factory=list,
        description="The cities the key may read or operate (of those this API serves)",
        examples=[["tashkent"]],
    )
    subject: str | None = Field(
        default=None,
        description="A person signed in through the identity provider: its `sub` (a key: null)",
    )


class AuditRecord(BaseModel):
    """One audited call: who (key id; a person: subject and name), what (method, route,
    target, outcome), when."""

    ts: str = Field(examples=["2026-03-10T18:42:10.123Z"])
    key_id: str = Field(examples=["1a2b3c4d"])
    key_name: str = Field(examples=["duty officer"])
    subject: str | None = Field(
        default=None,
        description="A person who acted (signed in through the identity provider): the "
        "provider's `sub`; null for an API key",
        examples=["248289761001"],
    )
    person: str | None = Field(
        default=None, description="That person's name (from the provider)", examples=["Jane Doe"]
    )
    scope: str = Field(description="the scope the route needs", examples=["operate"])
    method: str = Field(examples=["POST"])
    route: str = Field(examples=["/v1/incidents/{incident_id}/ack"])
    target: str | None = Field(examples=["inc-0123456789abcdef0123"])
    city: str | None = Field(
        default=None, description="The city the call was about", examples=["tashkent"]
    )
    status: int = Field(examples=[200])
    client: str | None = Field(examples=["127.0.0.1"])
    duration_ms: float | None = None


class AuditPage(BaseModel):
    """Audit records, newest first; `truncated` says the limit cut the list."""

    items: list[AuditRecord]
    truncated: bool


@router.get("/me", response_model=Me, responses=errors())
async def get_current_key(
    tenancy: TenancyDep, key: Annotated[ApiKey, Depends(require("read"))]
) -> Me:
    """The calling key: id, name, scopes and cities (what the console shows and allows)."""
    cities = [c.id for c in tenancy.visible(key)]
    subject = key.subject if isinstance(key, Person) else None
    return Me(id=key.id, name=key.name, scopes=list(key.scopes), cities=cities, subject=subject)


@router.get("/audit", response_model=AuditPage, responses=errors())
async def list_audit_records(
    request: Request,
    settings: SettingsDep,
    key: Annotated[ApiKey, Depends(require("admin"))],
    key_id: Annotated[
        str | None,
        Query(
            pattern=r"^([0-9a-f]{8}|p[0-9a-f]{12})$",
            description="Only the calls of this key id (or person id, p + 12 hex digits)",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, description="Most records returned, 1..max_page_size (default 100)"),
    ] = None,
) -> AuditPage:
    """The audit log of `operate`/`admin` calls, newest first (scope `admin`; audited too);
    a key of some cities sees only the calls about those cities."""
    limit = page_size(settings, limit)
    audit: AuditLog = request.app.state.audit
    records, truncated = audit.newest(limit, key_id, key.cities)
    items = []
    for record in records:
        try:
            items.append(AuditRecord.model_validate(record))
        except ValueError:
            continue  # not one of ours: the file is append-only, never trusted blindly
    return AuditPage(items=items, truncated=truncated)
