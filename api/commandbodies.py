"""Request bodies of the command routes, generated from the catalogue: one variant per
command name (discriminated by `name`), its parameters typed and bounded as the catalogue
says, so the OpenAPI document states exactly what a valid command is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    create_model,
)

from api.routes.common import KINDS
from safecity import catalogue
from safecity.catalogue import CommandSpec, Quantity
from safecity.commands import IDEMPOTENCY_KEY


class CommandBase(BaseModel):
    """What every command body carries besides its name and parameters."""

    model_config = ConfigDict(extra="forbid")

    expires_in: float | None = Field(
        default=None,
        ge=1,
        le=7 * 86_400,
        description="Seconds until it expires (default: the server's, at most its maximum)",
    )
    idempotency_key: str | None = Field(
        default=None,
        pattern=IDEMPOTENCY_KEY,
        description="Sending the same key again (same API key) returns the first command",
        examples=["dim-olmazor-evening"],
    )


class ParamsBase(BaseModel):
    """A command's parameters: exactly the catalogue's, no others."""

    model_config = ConfigDict(extra="forbid")


def _whole(value: Any) -> Any:
    """JSON's 3.0 is the integer 3; strings and booleans stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _field(q: Quantity) -> tuple[Any, Any]:
    if q.type == "int":
        # Bounds first: after a validator they would not reach the JSON schema.
        bounded = Field(ge=q.low, le=q.high, description=q.unit)
        return Annotated[int, bounded, BeforeValidator(_whole), Strict()], ...
    if q.type == "bool":
        return StrictBool, ...
    if q.type == "enum":
        return Literal[q.choices], ...
    return Annotated[float, Field(ge=q.low, le=q.high, allow_inf_nan=False)], ...


def _params_model(spec: CommandSpec) -> type[BaseModel]:
    fields: dict[str, Any] = {q.name: _field(q) for q in spec.params}
    name = "".join(p.title() for p in spec.name.split("_")) + "Params"
    return create_model(name, __base__=ParamsBase, **fields)


def _specs() -> dict[str, CommandSpec]:
    """Every command name once (a name means the same command for every kind)."""
    out: dict[str, CommandSpec] = {}
    for kind in catalogue.KINDS:
        out.update(catalogue.commands_of(kind))
    return out


def _variant(spec: CommandSpec, group: bool) -> type[BaseModel]:
    params = _params_model(spec)
    fields: dict[str, Any] = {
        "name": (Literal[spec.name], ...),
        "params": (params, Field(default_factory=params) if not spec.params else ...),
    }
    if group:
        fields["kind"] = (Literal[tuple(KINDS)], Field(examples=["streetlight"]))
    title = "".join(p.title() for p in spec.name.split("_")) + ("Group" if group else "Command")
    return create_model(title, __base__=CommandBase, __doc__=spec.description, **fields)


def _union(group: bool) -> Any:
    variants = tuple(_variant(s, group) for s in _specs().values())
    return Annotated[Union[variants], Field(discriminator="name")]  # noqa: UP007


if TYPE_CHECKING:
    CommandIn = Any
    GroupCommandIn = Any
else:
    # A command to one device: `name` picks the variant and its parameters.
    CommandIn = _union(group=False)
    # A command to every device of `kind` in a district.
    GroupCommandIn = _union(group=True)
