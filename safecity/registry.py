"""The city registry: districts (id, name, centroid, polygon, land use) and devices
(kind, location, site type).

A registry file is JSON Lines: one city record first, then district and device
records, one per line, so every error can name its line and field. Coordinates
are GeoJSON order, `[lon, lat]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safecity import catalogue
from safecity.errors import RegistryError
from safecity.topics import IDENTIFIER

Identifier = Annotated[str, Field(pattern=rf"^{IDENTIFIER.pattern}$")]
Lon = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Point = tuple[Lon, Lat]

_RECORD = ConfigDict(frozen=True, extra="forbid", strict=True)

LandUse = Literal["centre", "residential", "industrial", "mixed"]
"""A district's character: what its streets are mostly for."""
Site = Literal["arterial", "side_street", "park", "market", "school", "industrial"]
"""Where a device stands: it sets its levels, daily shape and dynamics."""
LAND_USES: tuple[LandUse, ...] = ("centre", "residential", "industrial", "mixed")
SITES: tuple[Site, ...] = ("arterial", "side_street", "park", "market", "school", "industrial")


class CityRecord(BaseModel):
    """The first line of a registry file."""

    model_config = _RECORD

    type: Literal["city"]
    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=100)]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    timezone: Annotated[str, Field(min_length=1, max_length=64)]
    centroid: Point


class District(BaseModel):
    """A district: id, display name, centroid and boundary polygon (closed ring)."""

    model_config = _RECORD

    type: Literal["district"] = "district"
    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=100)]
    centroid: Point
    polygon: Annotated[tuple[Point, ...], Field(min_length=4, max_length=10_000)]
    land_use: LandUse | None = None
    """None in registries written before land use existed: treated as ``mixed``."""


class Device(BaseModel):
    """A device: id (its MQTT identity), kind, district and location."""

    model_config = _RECORD

    type: Literal["device"] = "device"
    id: Identifier
    kind: Identifier
    district: Identifier
    location: Point
    site: Site | None = None
    """None in registries written before site types existed: derived from the kind."""


@dataclass(frozen=True)
class City:
    """A city model: its record, districts and devices, with lookups by id."""

    record: CityRecord
    districts: tuple[District, ...]
    devices: tuple[Device, ...]
    source: str = field(default="<memory>", compare=False)

    @property
    def id(self) -> str:
        """The city's identifier (the topic's `city`)."""
        return self.record.id

    @property
    def name(self) -> str:
        """The city's display name."""
        return self.record.name

    @cached_property
    def _devices(self) -> dict[str, Device]:
        return {d.id: d for d in self.devices}

    @cached_property
    def _districts(self) -> dict[str, District]:
        return {d.id: d for d in self.districts}

    def device(self, device_id: str) -> Device | None:
        """The device with this id, or None."""
        return self._devices.get(device_id)

    def district(self, district_id: str) -> District | None:
        """The district with this id, or None."""
        return self._districts.get(district_id)

    def select(self, *, kind: str | None = None, district: str | None = None) -> list[Device]:
        """Devices filtered by kind and district, in registry order."""
        return [
            d
            for d in self.devices
            if (kind is None or d.kind == kind) and (district is None or d.district == district)
        ]

    def dumps(self) -> str:
        """Serialise to the JSON Lines registry format."""
        records: list[BaseModel] = [self.record, *self.districts, *self.devices]
        return "".join(r.model_dump_json(exclude_none=True) + "\n" for r in records)


def _error(source: str, line: int, exc: ValidationError) -> RegistryError:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "<record>"
    return RegistryError(f"{source}:{line}: field {where!r}: {first['msg']}")


def _record(raw: str, source: str, number: int) -> dict[str, Any]:
    """One line as a JSON object; RegistryError naming the line otherwise."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{source}:{number}: not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RegistryError(f"{source}:{number}: a record must be a JSON object")
    return obj


def loads(text: str, source: str = "<string>") -> City:
    """Parse a registry from JSON Lines text; RegistryError names the line and field."""
    city: CityRecord | None = None
    districts: list[District] = []
    devices: list[Device] = []
    device_lines: dict[str, int] = {}
    district_lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        rtype = _record(raw, source, number).get("type")
        # JSON has arrays, the models have tuples: strict mode wants the exact type.
        try:
            if rtype == "city":
                if city is not None:
                    raise RegistryError(f"{source}:{number}: a second city record")
                city = CityRecord.model_validate_json(raw, strict=True)
            elif rtype == "district":
                district = District.model_validate_json(raw, strict=True)
                if district.id in district_lines:
                    raise RegistryError(
                        f"{source}:{number}: field 'id': district {district.id!r} already "
                        f"defined on line {district_lines[district.id]}"
                    )
                district_lines[district.id] = number
                districts.append(district)
            elif rtype == "device":
                device = Device.model_validate_json(raw, strict=True)
                _check_device(device, source, number, device_lines, district_lines)
                device_lines[device.id] = number
                devices.append(device)
            else:
                raise RegistryError(
                    f"{source}:{number}: field 'type': must be city, district or device, "
                    f"not {rtype!r}"
                )
        except ValidationError as exc:
            raise _error(source, number, exc) from exc
        if city is None:
            raise RegistryError(
                f"{source}:{number}: field 'type': the first record must be the city"
            )
    if city is None:
        raise RegistryError(f"{source}: empty registry (no city record)")
    return City(city, tuple(districts), tuple(devices), source)


def _check_device(
    device: Device,
    source: str,
    number: int,
    device_lines: dict[str, int],
    district_lines: dict[str, int],
) -> None:
    if device.id in device_lines:
        raise RegistryError(
            f"{source}:{number}: field 'id': device {device.id!r} already defined on "
            f"line {device_lines[device.id]}"
        )
    if device.kind not in catalogue.KINDS:
        raise RegistryError(
            f"{source}:{number}: field 'kind': unknown kind {device.kind!r} "
            f"(known: {', '.join(sorted(catalogue.KINDS))})"
        )
    if device.district not in district_lines:
        raise RegistryError(
            f"{source}:{number}: field 'district': {device.district!r} is not a district "
            "defined above"
        )


def load(path: Path | str) -> City:
    """Load a registry file; RegistryError names the file, line and field on bad input."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"cannot read registry {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RegistryError(f"registry {p} is not UTF-8: {exc.reason}") from exc
    return loads(text, str(p))


def default_city() -> City:
    """The built-in default city: Tashkent, its 12 districts and a few hundred devices."""
    text = resources.files("safecity").joinpath("data/tashkent.jsonl").read_text("utf-8")
    return loads(text, "safecity/data/tashkent.jsonl")


def load_or_default(path: Path | str | Sequence[Path] | None) -> City:
    """Load the given registry, or the built-in default when path is None.

    Given several (the `registry` setting, or its text), the home city: the first loaded.
    """
    if path is None:
        return default_city()
    if isinstance(path, Path):
        return load(path)
    return load_cities(registry_paths(path)).first


# --- several cities ---------------------------------------------------------------

# A built-in city other than Tashkent is generated: this many devices per district,
# from a fixed seed, so every process of a deployment derives the same fleet.


@dataclass(frozen=True, eq=False)
class Cities(Mapping[str, City]):
    """The cities of a deployment, in order (city id -> City); the first is the home city.

    Device ids are unique across all of them: they are identities on one broker.
    """

    cities: tuple[City, ...]

    def __post_init__(self) -> None:
        if not self.cities:
            raise RegistryError("no city: a deployment needs at least one registry")
        seen: dict[str, City] = {}
        for city in self.cities:
            if city.id in seen:
                raise RegistryError(
                    f"city {city.id!r} is defined twice: in {seen[city.id].source} and "
                    f"in {city.source}"
                )
            seen[city.id] = city
        owners: dict[str, City] = {}
        for city in self.cities:
            for device in city.devices:
                other = owners.setdefault(device.id, city)
                if other is not city:
                    raise RegistryError(
                        f"device {device.id!r} is in two registries: {other.source} "
                        f"({other.id}) and {city.source} ({city.id}); device ids must be "
                        "unique across cities"
                    )

    @cached_property
    def _by_id(self) -> dict[str, City]:
        return {c.id: c for c in self.cities}

    @cached_property
    def _owner(self) -> dict[str, City]:
        return {d.id: c for c in self.cities for d in c.devices}

    def __getitem__(self, city_id: str) -> City:
        return self._by_id[city_id]

    def __iter__(self) -> Iterator[str]:
        return iter(c.id for c in self.cities)

    def get(self, city_id: str, default: Any = None) -> Any:
        """The city with this id, or `default` (a plain dict lookup: on the hot path)."""
        return self._by_id.get(city_id, default)

    def __len__(self) -> int:
        return len(self.cities)

    @property
    def first(self) -> City:
        """The home city: the first registry loaded."""
        return self.cities[0]

    @property
    def ids(self) -> tuple[str, ...]:
        """The city ids, in order."""
        return tuple(c.id for c in self.cities)

    def device(self, city_id: str, device_id: str) -> Device | None:
        """The device `device_id` of city `city_id`, or None (unknown city or device)."""
        city = self._by_id.get(city_id)
        return None if city is None else city.device(device_id)

    def owner(self, device_id: str) -> City | None:
        """The city whose registry holds this device, or None."""
        return self._owner.get(device_id)


def registry_paths(value: Any) -> tuple[Path, ...]:
    """The `registry` setting as paths: None, a path, "a,b", '["a", "b"]' or a list of them."""
    if value is None:
        return ()
    if isinstance(value, Path):
        return (value,)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise RegistryError(f"registry: not a JSON list of paths: {exc}") from exc
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise RegistryError("registry: a JSON list must hold path strings")
            return tuple(Path(i) for i in items if i.strip())
        return tuple(Path(part.strip()) for part in text.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(p for item in value for p in registry_paths(item))
    raise RegistryError(f"registry: expected paths, not {type(value).__name__}")


def as_cities(city: City | Cities) -> Cities:
    """The cities a component serves: a single City is a deployment of one."""
    return city if isinstance(city, Cities) else Cities((city,))


def registry_files(paths: Iterable[Path | str]) -> tuple[Path, ...]:
    """The registry files `paths` name: a directory stands for its `*.jsonl`, sorted by name."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.jsonl") if p.is_file())
            if not found:
                raise RegistryError(f"registry directory {path} holds no *.jsonl file")
            out.extend(found)
        else:
            out.append(path)
    return tuple(out)


def load_cities(paths: Sequence[Path | str]) -> Cities:
    """Load every registry `paths` name (files or directories); none: the built-in Tashkent.

    RegistryError on a bad file, a city defined twice, or a device id in two cities.
    """
    files = registry_files(paths)
    if not files:
        return Cities((default_city(),))
    return Cities(tuple(load(p) for p in files))


def write(city: City, path: Path | str) -> None:
    """Write a registry file atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(city.dumps(), encoding="utf-8")
    tmp.replace(p)


def geojson(city: City, properties: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The districts as a GeoJSON FeatureCollection, with optional per-district properties."""
    props = properties or {}
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": d.id,
                "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in d.polygon]]},
                "properties": {"id": d.id, "name": d.name, **props.get(d.id, {})},
            }
            for d in city.districts
        ],
    }


def kinds_present(devices: Iterable[Device]) -> set[str]:
    """The set of kinds among devices."""
    return {d.kind for d in devices}
