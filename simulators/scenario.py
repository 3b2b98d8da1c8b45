"""Scenarios: small declarative TOML files under simulators/scenarios/ (stdlib tomllib).

A scenario fixes the start (simulated), speed, duration, seed, the incidents and the
fault rates of a run, and says in its ``[expect]`` section what an operator should
then see. ``expect`` is data, not prose, so that ``safecity verify --scenario`` can
check it later: lists of ``events`` (type, district, min, within), ``readings``
(kind, district, field, above/below, within), ``dead_letters`` (reason, min) and
``alerts`` (rule, district, within; or rule, fault, kind, lasting, within for a rule
scored against the ledger's fault episodes) and ``rejected`` (fault, min: messages the
platform must refuse, at the broker or as dead letters); ``operator`` is the
one-paragraph description. Durations are strings like ``"90s"``, ``"15m"``, ``"2h"``.

An optional ``[fleet]`` table (``kinds``, ``districts``) runs only the registry's
devices of those kinds in those districts (before ``devices``, the first N of them):
a scenario about one district or one kind of sensor needs no other traffic.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safecity import catalogue
from safecity.errors import ScenarioError
from safecity.readings import epoch_ms
from safecity.registry import City
from simulators.incidents import TYPES, SimulatedIncident
from simulators.timebase import offset

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(text: str | float | int) -> float:
    """Seconds of a duration like '90s', '15m', '2h' (a bare number is seconds)."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ScenarioError(f"bad duration {text!r} (use e.g. 90s, 15m, 2h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_start(text: str) -> datetime:
    """A start time: ISO 8601; without a zone it is UTC (e.g. 2026-01-15T06:00)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ScenarioError(f"bad start {text!r}: {exc}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class IncidentSpec:
    """An incident as written in a scenario, relative to the run's start."""

    type: str
    at_s: float
    lasts_s: float
    district: str | None = None
    location: tuple[float, float] | None = None
    offset_m: tuple[float, float] = (0.0, 0.0)
    radius_m: float = 1500.0
    params: dict[str, float] = field(default_factory=dict)
    citywide: bool = False

    def resolve(self, city: City, start: datetime) -> SimulatedIncident:
        """The incident at its absolute time and place in `city`."""
        location = self.location
        if self.district is not None:
            district = city.district(self.district)
            if district is None:
                known = ", ".join(d.id for d in city.districts)
                raise ScenarioError(f"unknown district {self.district!r} (known: {known})")
            if location is None and not self.citywide:
                location = offset(district.centroid, *self.offset_m)
        begin = epoch_ms(start) + round(self.at_s * 1000)
        return SimulatedIncident(
            self.type,
            begin,
            begin + round(self.lasts_s * 1000),
            None if self.citywide else location,
            self.radius_m,
            None if self.citywide else self.district,
            dict(self.params),
            f"{self.type}@{self.district or 'city'}",
        )


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario file."""

    name: str
    summary: str
    path: Path
    start: datetime | None
    speed: float | None
    duration: float | None
    seed: int | None
    devices: int | None
    incidents: tuple[IncidentSpec, ...]
    faults: dict[str, float]
    expect: dict[str, Any]
    fleet_kinds: tuple[str, ...] = ()
    fleet_districts: tuple[str, ...] = ()

    def resolve(self, city: City, start: datetime) -> list[SimulatedIncident]:
        """The scenario's incidents for a run in `city` starting (simulated) at `start`."""
        return [spec.resolve(city, start) for spec in self.incidents]

    @property
    def scoped(self) -> bool:
        """True when the `[fleet]` table narrows the fleet to some kinds or districts."""
        return bool(self.fleet_kinds or self.fleet_districts)

    def fleet(self, city: City) -> City:
        """`city` with only the devices of the `[fleet]` kinds and districts (all if none)."""
        if not self.scoped:
            return city
        known = {d.id for d in city.districts}
        unknown = sorted(set(self.fleet_districts) - known)
        if unknown:
            raise ScenarioError(f"{self.path}: [fleet] unknown districts {unknown}")
        devices = tuple(
            d
            for d in city.devices
            if (not self.fleet_kinds or d.kind in self.fleet_kinds)
            and (not self.fleet_districts or d.district in self.fleet_districts)
        )
        if not devices:
            raise ScenarioError(f"{self.path}: [fleet] selects no device of {city.id}")
        return replace(city, devices=devices)


def available(directory: Path = SCENARIO_DIR) -> list[str]:
    """Names of the scenarios shipped (file stems)."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name_or_path: str, directory: Path = SCENARIO_DIR) -> Scenario:
    """Load a scenario by name (from `directory`) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(
            f"no scenario {name_or_path!r} (available: {', '.join(available(directory))})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    try:
        return _build(data, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: {type(exc).__name__}: {exc}") from None


def _build(data: dict[str, Any], path: Path) -> Scenario:
    allowed = {
        "name",
        "summary",
        "start",
        "speed",
        "duration",
        "seed",
        "devices",
        "incident",
        "faults",
        "expect",
        "fleet",
    }
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    specs = []
    for raw in data.get("incident", []):
        if raw["type"] not in TYPES:
            raise ValueError(f"incident type {raw['type']!r} not one of {TYPES}")
        location = raw.get("location")
        specs.append(
            IncidentSpec(
                type=raw["type"],
                at_s=seconds(raw.get("at", 0)),
                lasts_s=seconds(raw.get("lasts", "30m")),
                district=raw.get("district"),
                location=(float(location[0]), float(location[1])) if location else None,
                offset_m=tuple(float(x) for x in raw.get("offset_m", (0.0, 0.0))),  # type: ignore[arg-type]
                radius_m=float(raw.get("radius_m", 1500.0)),
                params={k: float(v) for k, v in raw.get("params", {}).items()},
                citywide=bool(raw.get("citywide", False)),
            )
        )
    faults = {k: float(v) for k, v in data.get("faults", {}).items()}
    fleet = data.get("fleet", {})
    if not isinstance(fleet, dict) or set(fleet) - {"kinds", "districts"}:
        raise ValueError("[fleet] takes only `kinds` and `districts` (lists)")
    kinds = tuple(str(k) for k in fleet.get("kinds", ()))
    unknown_kinds = sorted(set(kinds) - set(catalogue.KINDS))
    if unknown_kinds:
        raise ValueError(f"[fleet] unknown kinds {unknown_kinds}")
    expect = data.get("expect", {})
    if not isinstance(expect, dict) or "operator" not in expect:
        raise ValueError("an [expect] section with an `operator` description is required")
    return Scenario(
        name=str(data.get("name", path.stem)),
        summary=str(data.get("summary", "")),
        path=path,
        start=parse_start(data["start"]) if "start" in data else None,
        speed=float(data["speed"]) if "speed" in data else None,
        duration=seconds(data["duration"]) if "duration" in data else None,
        seed=int(data["seed"]) if "seed" in data else None,
        devices=int(data["devices"]) if "devices" in data else None,
        incidents=tuple(specs),
        faults=faults,
        expect=expect,
        fleet_kinds=kinds,
        fleet_districts=tuple(str(d) for d in fleet.get("districts", ())),
    )
