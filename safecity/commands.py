"""Commands to devices: the messages on a device's `cmd` and `result` topics, the statuses
a command goes through, parameter checks against the catalogue, the generated docs table.

A command travels as `Command` (JSON) on `.../{device_id}/cmd`; the device answers on its
own `.../{device_id}/result` with `CommandResult`s: `delivered` on receipt, then
`executed` or `failed` (with a reason), or `expired` when it arrived after its expiry.
The platform's status of a command per device:

    pending -> delivered -> executed | failed (reason) | expired;  rejected (never sent)
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from safecity import catalogue
from safecity.catalogue import CommandSpec, Quantity
from safecity.errors import CommandError

COMMAND_ID = r"^cmd-[0-9a-f]{20}$"
IDEMPOTENCY_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
REASON_MAX = 256
MAX_PAYLOAD = 8192
ParamValue = int | float | str | bool


class CommandStatus(StrEnum):
    """Where one device's copy of a command stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    EXECUTED = "executed"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"


FINAL = frozenset(
    {CommandStatus.EXECUTED, CommandStatus.FAILED, CommandStatus.EXPIRED, CommandStatus.REJECTED}
)
"""Statuses that never change again."""


class ResultStatus(StrEnum):
    """What a device says about a command it received."""

    DELIVERED = "delivered"
    EXECUTED = "executed"
    FAILED = "failed"
    EXPIRED = "expired"


_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True)


class Command(BaseModel):
    """One command to one device, as published on its command topic."""

    model_config = _FROZEN

    id: Annotated[str, Field(pattern=COMMAND_ID)]
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    params: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")], ParamValue]
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    idempotency_key: Annotated[str, Field(pattern=IDEMPOTENCY_KEY)]

    def to_payload(self) -> bytes:
        """The JSON bytes published on the command topic."""
        return self.model_dump_json().encode()

    def expired(self, now: datetime) -> bool:
        """True once `now` is past the command's expiry."""
        return now >= self.expires_at


class CommandResult(BaseModel):
    """A device's answer about one command, as published on its result topic."""

    model_config = _FROZEN

    command_id: Annotated[str, Field(pattern=COMMAND_ID)]
    status: ResultStatus
    reason: Annotated[str, Field(max_length=REASON_MAX)] | None = None
    ts: AwareDatetime

    def to_payload(self) -> bytes:
        """The JSON bytes published on the result topic."""
        return self.model_dump_json(exclude_none=True).encode()


def new_command_id() -> str:
    """A fresh random command id (`cmd-` + 20 hex digits)."""
    return "cmd-" + secrets.token_hex(10)


def _parse(model: type[BaseModel], payload: bytes, what: str) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"{what} of {len(payload)} bytes: at most {MAX_PAYLOAD}")
    try:
        # Strict JSON mode: timestamps as RFC 3339 strings, never "1" for 1.
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise CommandError(f"{what}: {where}: {first['msg']}") from None
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"{what}: unreadable JSON: {exc}") from None


def parse_command(payload: bytes) -> Command:
    """A command from its payload bytes; CommandError naming what is wrong."""
    command: Command = _parse(Command, payload, "command")
    return command


def parse_result(payload: bytes) -> CommandResult:
    """A command result from its payload bytes; CommandError naming what is wrong."""
    result: CommandResult = _parse(CommandResult, payload, "command result")
    return result


def spec(kind: str, name: str) -> CommandSpec:
    """The catalogue's command `name` of devices of `kind`; CommandError if they have none."""
    try:
        known = catalogue.commands_of(kind)
    except KeyError:
        raise CommandError(f"unknown device kind {kind!r}") from None
    if name not in known:
        raise CommandError(
            f"unknown command {name!r} for {kind} devices (known: {', '.join(sorted(known))})"
        )
    return known[name]


def _check_value(q: Quantity, value: Any) -> ParamValue:
    if q.type == "int" and (type(value) is not int):
        raise CommandError(f"parameter {q.name!r} must be an integer, not {value!r}")
    if q.type == "float":
        if type(value) not in (int, float) or not math.isfinite(value):
            raise CommandError(f"parameter {q.name!r} must be a finite number, not {value!r}")
        value = float(value)
    if q.type == "bool" and type(value) is not bool:
        raise CommandError(f"parameter {q.name!r} must be true or false, not {value!r}")
    if q.type == "enum" and value not in q.choices:
        raise CommandError(f"parameter {q.name!r} must be one of {', '.join(q.choices)}")
    if (q.low is not None and value < q.low) or (q.high is not None and value > q.high):
        raise CommandError(
            f"parameter {q.name!r} = {value!r} is out of bounds [{_num(q.low)}, {_num(q.high)}]"
        )
    checked: ParamValue = value
    return checked


def validate_params(kind: str, name: str, params: dict[str, Any]) -> dict[str, ParamValue]:
    """The parameters of command `name` for a `kind` device, checked against the catalogue:
    every one present, none extra, right type, within bounds; else CommandError."""
    command = spec(kind, name)
    wanted = {q.name: q for q in command.params}
    extra = sorted(set(params) - set(wanted))
    if extra:
        raise CommandError(f"command {name!r} takes no parameter {extra[0]!r}")
    missing = [n for n in wanted if n not in params]
    if missing:
        raise CommandError(f"command {name!r} needs parameter {missing[0]!r}")
    return {n: _check_value(q, params[n]) for n, q in wanted.items()}


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _param_text(q: Quantity) -> str:
    unit = f" {q.unit}" if q.unit and q.unit != "1" else ""
    if q.type == "enum":
        return f"`{q.name}`: one of {', '.join(q.choices)}"
    return f"`{q.name}`: {q.type} {_num(q.low)}..{_num(q.high)}{unit}"


def markdown_table() -> str:
    """The command catalogue as a Markdown table (docs/commands.md; a test keeps them equal)."""
    lines = ["| Kind | Command | Parameters | What it does |", "|---|---|---|---|"]
    for kind in catalogue.KINDS:
        for command in catalogue.commands_of(kind).values():
            params = "; ".join(_param_text(q) for q in command.params) or "none"
            lines.append(f"| `{kind}` | `{command.name}` | {params} | {command.description} |")
    return "\n".join(lines) + "\n"


_SAFE_REASON = re.compile(r"[^\x20-\x7e]")


def clean_reason(text: str) -> str:
    """A device's or the platform's failure reason made safe to store and show."""
    return _SAFE_REASON.sub("?", text)[:REASON_MAX]
