"""Rule files: one YAML file per city, validated with pydantic, errors with line numbers.

The YAML is composed into nodes first so that a pydantic error location
(`rules.3.threshold.above`) maps back to the line of the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from safecity import catalogue
from safecity.catalogue import Severity
from safecity.errors import RulesError
from safecity.yamlfile import compose, line_of

RULES_DIR = Path(__file__).resolve().parent / "rules"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def _seconds(value: Any) -> Any:
    """Accept '90s', '15m', '2h', '1d' or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 90s, 15m, 2h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"bad duration {value!r} (use e.g. 90s, 15m, 2h)")
        return float(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError("a duration like 90s, 15m, 2h")


Duration = Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=30 * 86_400)]
RuleId = Annotated[str, Field(pattern=_ID)]
Identifier = Annotated[str, Field(pattern=_ID)]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Scope(BaseModel):
    """Where a rule applies: empty lists mean everywhere."""

    model_config = _FROZEN

    districts: tuple[Identifier, ...] = ()
    devices: tuple[Identifier, ...] = ()

    def matches(self, district: str, device_id: str) -> bool:
        """True when the device (in its district) is inside the scope."""
        return (not self.districts or district in self.districts) and (
            not self.devices or device_id in self.devices
        )


class _Rule(BaseModel):
    model_config = _FROZEN

    id: RuleId
    severity: Severity
    message: Annotated[str, Field(min_length=1, max_length=300)]
    scope: Scope = Scope()
    group_by: Literal["device", "district", "city"] = "device"
    # An incident's episode: evidence within this long of its opening joins it.
    episode: Duration = 1800.0
    auto_resolve: bool = False


def _check_field(kind: str, name: str) -> None:
    if kind not in catalogue.KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(catalogue.KINDS)})")
    numeric = {q.name for q in catalogue.telemetry_quantities(kind) if q.type in ("float", "int")}
    if name not in numeric:
        raise ValueError(f"kind {kind} has no numeric field {name!r} (known: {sorted(numeric)})")


class ThresholdRule(_Rule):
    """A field above/below a value for a duration (every reading, or the window mean)."""

    type: Literal["threshold"]
    kind: Identifier
    field: Identifier
    above: float | None = None
    below: float | None = None
    for_: Duration = Field(0.0, alias="for")
    stat: Literal["all", "mean"] = "all"
    auto_resolve: bool = True

    @model_validator(mode="after")
    def _valid(self) -> ThresholdRule:
        _check_field(self.kind, self.field)
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of `above` or `below`")
        if self.stat == "mean" and self.for_ <= 0:
            raise ValueError("stat: mean needs a `for` window")
        return self

    def holds(self, value: float) -> bool:
        """True when the value breaches the threshold."""
        return value > self.above if self.above is not None else value < float(self.below or 0)


class RateRule(_Rule):
    """A field rising (or falling) by at least `by` within `window`."""

    type: Literal["rate"]
    kind: Identifier
    field: Identifier
    rise: float | None = Field(None, gt=0)
    fall: float | None = Field(None, gt=0)
    window: Duration

    @model_validator(mode="after")
    def _valid(self) -> RateRule:
        _check_field(self.kind, self.field)
        if (self.rise is None) == (self.fall is None):
            raise ValueError("give exactly one of `rise` or `fall`")
        if self.window <= 0:
            raise ValueError("window must be positive")
        return self


class StuckRule(_Rule):
    """A field reporting exactly the same value for `for` (a stuck sensor)."""

    type: Literal["stuck"]
    kind: Identifier
    field: Identifier
    for_: Duration = Field(alias="for")
    auto_resolve: bool = True

    @model_validator(mode="after")
    def _valid(self) -> StuckRule:
        _check_field(self.kind, self.field)
        if self.for_ <= 0:
            raise ValueError("`for` must be positive")
        return self


class AbsenceRule(_Rule):
    """A device silent (no telemetry, event or status) for `silent_for`, in event time."""

    type: Literal["absence"]
    kinds: tuple[Identifier, ...] = ()
    silent_for: Duration
    auto_resolve: bool = True

    @model_validator(mode="after")
    def _valid(self) -> AbsenceRule:
        unknown = [k for k in self.kinds if k not in catalogue.KINDS]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}")
        if self.silent_for <= 0:
            raise ValueError("silent_for must be positive")
        return self


class EventRule(_Rule):
    """A discrete event of one type fires at once (severity: the rule's, at least)."""

    type: Literal["event"]
    event: Identifier
    min_confidence: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _valid(self) -> EventRule:
        if self.event not in catalogue.EVENT_TYPES:
            raise ValueError(
                f"unknown event type {self.event!r} (known: {', '.join(catalogue.EVENT_TYPES)})"
            )
        return self


class CompositeRule(_Rule):
    """Every rule of `all_of` fired within `radius_m` of each other inside `within`."""

    type: Literal["composite"]
    all_of: Annotated[tuple[RuleId, ...], Field(min_length=2, max_length=5)]
    radius_m: Annotated[float, Field(gt=0, le=50_000)]
    within: Duration
    group_by: Literal["device", "district", "city"] = "district"


Rule = Annotated[
    ThresholdRule | RateRule | StuckRule | AbsenceRule | EventRule | CompositeRule,
    Field(discriminator="type"),
]


class RuleSet(BaseModel):
    """A city's rules."""

    model_config = _FROZEN

    city: Identifier
    rules: Annotated[tuple[Rule, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _valid(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        for rule in self.rules:
            if isinstance(rule, CompositeRule):
                for ref in rule.all_of:
                    if ref not in seen:
                        raise ValueError(f"composite {rule.id!r} refers to unknown rule {ref!r}")
                    if ref == rule.id:
                        raise ValueError(f"composite {rule.id!r} refers to itself")
        return self

    def rule(self, rule_id: str) -> AnyRule:
        """The rule with this id (KeyError if none)."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


AnyRule = ThresholdRule | RateRule | StuckRule | AbsenceRule | EventRule | CompositeRule


_TAGS = ("threshold", "rate", "stuck", "absence", "event", "composite")


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (
            "threshold",
            "rate",
            "stuck",
            "absence",
            "event",
            "composite",
        ) and out.endswith("]"):
            continue  # the union's tag, not a key of the file
        else:
            out += f".{part}" if out else str(part)
    return out or "<file>"


def loads(text: str, source: str = "<string>") -> RuleSet:
    """Parse and validate a rule file's text; RulesError names the line of any problem."""
    root, data = compose(text, source, RulesError)
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = []
        errors = exc.errors(include_url=False, include_input=False)
        if len(errors) > 1:
            # A list whose items failed is also reported "too short": noise.
            errors = [e for e in errors if e["type"] != "too_short"] or errors
        for err in errors:
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "rules" and loc[2] in _TAGS:
                # The union's tag (the rule's `type`) is no key of the file.
                loc = loc[:2] + loc[3:]
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{line_of(root, loc)}: {_where(loc)}: {msg}")
        raise RulesError("; ".join(problems)) from None


def load(path: Path | str) -> RuleSet:
    """Load a rule file by path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"cannot read rule file {path}: {exc.strerror}") from None
    return loads(text, str(path))


def default_path(city: str) -> Path:
    """The shipped rule file of a city (Tashkent's serves any city without its own)."""
    own = RULES_DIR / f"{city}.yaml"
    return own if own.is_file() else RULES_DIR / "tashkent.yaml"


def load_for(city: str, path: Path | None = None) -> RuleSet:
    """The rules of a city: the given file, else the shipped default (with the city id set)."""
    ruleset = load(path or default_path(city))
    if ruleset.city != city:
        if path is not None:
            raise RulesError(f"{path}: rules are for city {ruleset.city!r}, not {city!r}")
        ruleset = ruleset.model_copy(update={"city": city})
    return ruleset


def load_for_cities(cities: Sequence[str], path: Path | None = None) -> dict[str, RuleSet]:
    """The rules of each city. One city: `load_for`. Several: a given file serves the city
    it names (RulesError if that city is not among them), the others their shipped rules."""
    if len(cities) == 1:
        return {cities[0]: load_for(cities[0], path)}
    own = load(path) if path is not None else None
    if own is not None and own.city not in cities:
        raise RulesError(f"{path}: rules are for city {own.city!r}, not one of {', '.join(cities)}")
    return {c: own if own is not None and own.city == c else load_for(c) for c in cities}
