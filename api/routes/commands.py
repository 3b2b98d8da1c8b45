"""Commands to devices: send one (a device, or every device of a kind in a district), read
one with a status per device, list them; scope `operate` for all (audited, rate-limited).

A command is checked against the catalogue (422 naming the bad parameter, before anything
is stored or sent), stored with one pending delivery per device, handed to the durable
outbox and published by the command service (`api.commanding`); docs/commands.md.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from api.apikeys import ApiKey
from api.commandbodies import CommandIn, GroupCommandIn
from api.commandstore import CommandStore, Delivery, StoredCommand, Target
from api.cursors import PATTERN as CURSOR_PATTERN
from api.cursors import command_cursor, command_position
from api.deps import CityDep, SettingsDep, TenancyDep
from api.errors import bad_param
from api.people import Person
from api.responses import errors
from api.routes.common import CITY_QUERY, CityId, DeviceId, check_district, device_or_404
from api.security import require
from safecity.commands import (
    COMMAND_ID,
    CommandStatus,
    new_command_id,
    validate_params,
)
from safecity.errors import CommandError
from safecity.readings import epoch_ms, format_epoch_ms
from safecity.registry import City

router = APIRouter(tags=["commands"])
OperateKey = Annotated[ApiKey, Depends(require("operate"))]
STATUSES = [s.value for s in CommandStatus]


class DeliveryOut(BaseModel):
    """Where one device's copy of the command stands."""

    device_id: str
    district: str
    kind: str
    status: str = Field(json_schema_extra={"enum": list(STATUSES)}, examples=["executed"])
    reason: str | None = Field(description="why it failed or expired; null otherwise")
    updated_at: str = Field(examples=["2026-03-10T18:42:10.000Z"])


class CommandOut(BaseModel):
    """A command, what it was sent to and a status per device."""

    id: str = Field(examples=["cmd-0123456789abcdef0123"])
    city: str
    name: str
    params: dict[str, Any]
    target: dict[str, str] = Field(description="`device_id`, or `district` and `kind`")
    issued_at: str
    expires_at: str
    idempotency_key: str
    by: str = Field(description="the API key id (or person id) that sent it")
    by_subject: str = Field(
        default="",
        description="A person who sent it (signed in through the identity provider): the "
        "provider's subject; empty for a key",
    )
    by_name: str = Field(default="", description="That person's name")
    statuses: dict[str, int] = Field(description="devices per status")
    deliveries: list[DeliveryOut]


class CommandPage(BaseModel):
    """A page of commands, newest first; pass `next_cursor` back as `cursor` for the next."""

    items: list[CommandOut]
    truncated: bool
    next_cursor: str | None = Field(description="null on the last page")


def command_out(command: StoredCommand, deliveries: list[Delivery]) -> CommandOut:
    """The response view of a stored command."""
    return CommandOut(
        id=command.id,
        city=command.city,
        name=command.name,
        params=command.params,
        target=command.target,
        issued_at=format_epoch_ms(command.issued_ms),
        expires_at=format_epoch_ms(command.expires_ms),
        idempotency_key=command.idempotency_key,
        by=command.by,
        by_subject=command.by_subject,
        by_name=command.by_name,
        statuses=dict(Counter(d.status.value for d in deliveries)),
        deliveries=[
            DeliveryOut(
                device_id=d.device_id,
                district=d.district,
                kind=d.kind,
                status=d.status.value,
                reason=d.reason,
                updated_at=format_epoch_ms(d.updated_ms),
            )
            for d in deliveries
        ],
    )


def _store(request: Request) -> CommandStore:
    store: CommandStore = request.app.state.commands
    return store


def _accept(
    request: Request,
    response: Response,
    city: City,
    body: Any,
    targets: list[Target],
    target: dict[str, str],
    key: ApiKey,
) -> CommandOut:
    """Check, store and hand to the command service; a repeated idempotency key: the first."""
    settings = request.app.state.settings.commands
    try:
        params = validate_params(targets[0].kind, body.name, body.params.model_dump())
    except CommandError as exc:
        # The body is the catalogue's (its schema says so): only the kind can disagree.
        raise HTTPException(status_code=404, detail=str(exc)) from None
    expires_in = settings.default_expiry if body.expires_in is None else body.expires_in
    if expires_in > settings.max_expiry:
        raise bad_param("body", "expires_in", f"must be at most {settings.max_expiry:g} s")
    now = epoch_ms(datetime.now(UTC))
    command_id = new_command_id()
    wanted = StoredCommand(
        0, command_id, city.id, body.name, params, target, now, now + int(expires_in * 1000),
        body.idempotency_key or command_id, key.id,
        *((key.subject, key.display_name) if isinstance(key, Person) else ()),
    )  # fmt: skip
    stored, created = _store(request).create(wanted, targets, now)
    if not created and (stored.name, stored.params, stored.target) != (body.name, params, target):
        raise HTTPException(
            status_code=409,
            detail=f"idempotency key {stored.idempotency_key!r} was used for another command "
            f"({stored.id})",
        )
    if created:
        request.app.state.command_service.submit(stored, targets)
    response.status_code = 202 if created else 200
    found = _store(request).get(stored.id)
    assert found is not None
    return command_out(*found)


_SEND: dict[str, Any] = {
    "status_code": 202,
    "response_model": CommandOut,
    "responses": {
        200: {"description": "The command sent before with this idempotency key"},
        **errors(404, 409),
    },
}


@router.post("/v1/devices/{device_id}/commands", **_SEND)
async def send_device_command(
    request: Request,
    response: Response,
    key: OperateKey,
    city: CityDep,
    device_id: DeviceId,
    body: Annotated[CommandIn, Body()],
) -> CommandOut:
    """Send a command to one device (202; its status: `GET /v1/commands/{id}`)."""
    device = device_or_404(city, device_id)
    target = Target(device.id, device.district, device.kind)
    return _accept(request, response, city, body, [target], {"device_id": device.id}, key)


@router.post("/v1/cities/{city_id}/districts/{district_id}/commands", **_SEND)
async def send_district_command(
    request: Request,
    response: Response,
    key: OperateKey,
    city: CityDep,
    settings: SettingsDep,
    city_id: CityId,
    district_id: Annotated[str, Path(max_length=64, description="District id")],
    body: Annotated[GroupCommandIn, Body()],
) -> CommandOut:
    """Send a command to every device of a kind in a district: one status per device."""
    check_district(city, district_id)
    targets = [
        Target(d.id, d.district, d.kind)
        for d in city.devices
        if d.district == district_id and d.kind == body.kind
    ]
    if not targets:
        raise HTTPException(status_code=404, detail=f"no {body.kind} devices in {district_id}")
    if len(targets) > settings.commands.max_group:
        raise bad_param("body", "kind", f"more than {settings.commands.max_group} devices")
    target = {"district": district_id, "kind": body.kind}
    return _accept(request, response, city, body, targets, target, key)


@router.get("/v1/commands/{command_id}", response_model=CommandOut, responses=errors(404))
async def get_command(
    request: Request,
    key: OperateKey,
    tenancy: TenancyDep,
    command_id: Annotated[str, Path(pattern=COMMAND_ID, description="Command id")],
) -> CommandOut:
    """A command and the status of each device it went to."""
    found = _store(request).get(command_id)
    if found is None or found[0].city not in {c.id for c in tenancy.visible(key)}:
        raise HTTPException(status_code=404, detail=f"unknown command {command_id}")
    return command_out(*found)


@router.get("/v1/commands", response_model=CommandPage, responses=errors(404))
async def list_commands(
    request: Request,
    key: OperateKey,
    city: CityDep,
    settings: SettingsDep,
    city_id: Annotated[
        str | None, Query(alias="city", max_length=64, description=CITY_QUERY)
    ] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size")] = None,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the last page")
    ] = None,
) -> CommandPage:
    """The city's commands, newest first, cursor-paged."""
    size = min(limit or 100, settings.max_page_size)
    if limit is not None and limit > settings.max_page_size:
        raise bad_param("query", "limit", f"must be at most {settings.max_page_size}")
    before = command_position(cursor) if cursor is not None else None
    found = _store(request).page([city.id], before, size + 1)
    page = found[:size]
    more = len(found) > size
    return CommandPage(
        items=[command_out(*item) for item in page],
        truncated=more,
        next_cursor=command_cursor(page[-1][0].seq) if more and page else None,
    )
