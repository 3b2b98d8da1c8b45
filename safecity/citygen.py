"""Generated and built-in city registries: districts as Voronoi cells around named
centres, a fleet of every kind spread over them, and the cities built into the project.

Deterministic for a seed, so a generated city is the same on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from safecity.errors import RegistryError
from safecity.knowncities import KNOWN_CITIES
from safecity.registry import Cities, City, CityRecord, Device, District, default_city
from safecity.topics import IDENTIFIER

BUILTIN_DEVICES_PER_DISTRICT = 25
BUILTIN_SEED = 7


def builtin(city_id: str) -> City:
    """A built-in city: Tashkent's real registry, or a generated one for another city the
    generator knows (samarkand, almaty, ...), deterministic, device ids prefixed by the city.
    """
    if city_id == "tashkent":
        return default_city()
    if city_id not in KNOWN_CITIES:
        known = ", ".join(sorted(KNOWN_CITIES))
        raise RegistryError(f"no built-in registry for city {city_id!r} (built in: {known})")
    districts = len(KNOWN_CITIES[city_id][3])
    city = generate(city_id, BUILTIN_DEVICES_PER_DISTRICT * districts, BUILTIN_SEED)
    devices = tuple(
        Device.model_validate({**d.model_dump(), "id": f"{city_id}-{d.id}"}) for d in city.devices
    )
    return City(city.record, city.districts, devices, f"builtin:{city_id}")


def builtin_cities(city_ids: Sequence[str]) -> Cities:
    """The built-in registries of these cities, in this order."""
    return Cities(tuple(builtin(c) for c in city_ids))


# --- generation -------------------------------------------------------------------

# Share of each kind in a generated fleet; every kind gets at least one device.
KIND_MIX: dict[str, float] = {
    "air_quality": 0.10,
    "weather": 0.03,
    "noise": 0.10,
    "traffic": 0.17,
    "parking": 0.12,
    "streetlight": 0.14,
    "crowd": 0.06,
    "waste": 0.08,
    "device_health": 0.04,
    "cctv": 0.08,
    "panic_button": 0.03,
    "gunshot": 0.02,
    "anpr": 0.03,
}


def slug(name: str) -> str:
    """An identifier from a display name: lower case, spaces to underscores."""
    out = "".join(c if c.isalnum() else "_" for c in name.lower().strip()).strip("_")
    return out[:64] or "x"


def _clip(
    poly: list[tuple[float, float]], a: float, b: float, c: float
) -> list[tuple[float, float]]:
    """Keep the part of a convex polygon where a*x + b*y <= c (Sutherland-Hodgman, one edge)."""
    out: list[tuple[float, float]] = []
    for i, p in enumerate(poly):
        q = poly[(i + 1) % len(poly)]
        pin = a * p[0] + b * p[1] <= c
        qin = a * q[0] + b * q[1] <= c
        if pin:
            out.append(p)
        if pin != qin:
            t = (c - a * p[0] - b * p[1]) / (a * (q[0] - p[0]) + b * (q[1] - p[1]))
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def voronoi_cells(
    centres: Sequence[tuple[float, float]], margin: float = 0.03
) -> list[list[tuple[float, float]]]:
    """Voronoi cells of (lon, lat) centres clipped to their bounding box plus a margin."""
    xs = [p[0] for p in centres]
    ys = [p[1] for p in centres]
    box = [
        (min(xs) - margin, min(ys) - margin),
        (max(xs) + margin, min(ys) - margin),
        (max(xs) + margin, max(ys) + margin),
        (min(xs) - margin, max(ys) + margin),
    ]
    cells = []
    for i, p in enumerate(centres):
        cell = list(box)
        for j, q in enumerate(centres):
            if i != j:
                # Points closer to p than to q: (q - p) . x <= (|q|^2 - |p|^2) / 2
                a, b = q[0] - p[0], q[1] - p[1]
                c = (q[0] ** 2 + q[1] ** 2 - p[0] ** 2 - p[1] ** 2) / 2
                cell = _clip(cell, a, b, c)
        cells.append(cell)
    return cells


def contains(polygon: Sequence[tuple[float, float]], lon: float, lat: float) -> bool:
    """Whether a point lies inside a polygon (ray casting)."""
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _synthetic_districts(rng: random.Random, count: int) -> tuple[tuple[str, float, float], ...]:
    # A ring of districts around a made-up centre at Central Asian latitudes.
    lat0, lon0 = rng.uniform(38.0, 44.0), rng.uniform(66.0, 78.0)
    out = []
    for i in range(count):
        out.append(
            (
                f"District {i + 1:02d}",
                lat0 + rng.uniform(-0.08, 0.08),
                lon0 + rng.uniform(-0.1, 0.1),
            )
        )
    return tuple(out)


def _kind_counts(devices: int) -> dict[str, int]:
    kinds = list(KIND_MIX)
    if devices < len(kinds):
        return {k: (1 if i < devices else 0) for i, k in enumerate(kinds)}
    counts = {k: max(1, int(devices * share)) for k, share in KIND_MIX.items()}
    # Hand out the rounding remainder to the biggest shares, deterministically.
    order = sorted(kinds, key=lambda k: -KIND_MIX[k])
    i = 0
    while sum(counts.values()) < devices:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts.values()) > devices:
        k = order[i % len(order)]
        if counts[k] > 1:
            counts[k] -= 1
        i += 1
    return counts


def generate(city: str, devices: int, seed: int, districts: int | None = None) -> City:
    """Generate a city registry deterministically from a seed.

    Known cities (tashkent, samarkand, almaty, astana, bishkek, dushanbe) get their real
    districts with approximate centroids; any other name gets `districts` synthetic
    ones. Districts get a land use and devices a site type (`with_geography`).
    """
    city_id = slug(city)
    if IDENTIFIER.fullmatch(city_id) is None:
        raise RegistryError(f"--city {city!r} does not give a valid city identifier")
    if devices < 1 or devices > 1_000_000:
        raise RegistryError(f"--devices {devices}: must be between 1 and 1000000")
    rng = random.Random(seed)
    if city_id in KNOWN_CITIES:
        name, country, tz, spots = KNOWN_CITIES[city_id]
    else:
        name, country, tz = city.strip().title(), "UZ", "Asia/Tashkent"
        spots = _synthetic_districts(rng, districts or 6)
    centres = [(lon, lat) for _, lat, lon in spots]
    cells = voronoi_cells(centres)
    district_models = [
        District(
            id=slug(dname),
            name=dname,
            centroid=(round(lon, 5), round(lat, 5)),
            polygon=tuple((round(x, 5), round(y, 5)) for x, y in [*cell, cell[0]]),
        )
        for (dname, lat, lon), cell in zip(spots, cells, strict=True)
    ]
    device_models: list[Device] = []
    per_district: dict[tuple[str, str], int] = {}
    for kind_name, count in _kind_counts(devices).items():
        for n in range(count):
            district = district_models[
                (n + rng.randrange(len(district_models))) % len(district_models)
            ]
            key = (kind_name, district.id)
            per_district[key] = per_district.get(key, 0) + 1
            device_models.append(
                Device(
                    id=_device_id(kind_name, district.id, per_district[key]),
                    kind=kind_name,
                    district=district.id,
                    location=_point_in(rng, district.polygon),
                )
            )
    lon_c = sum(c[0] for c in centres) / len(centres)
    lat_c = sum(c[1] for c in centres) / len(centres)
    record = CityRecord(
        type="city",
        id=city_id,
        name=name,
        country=country,
        timezone=tz,
        centroid=(round(lon_c, 5), round(lat_c, 5)),
    )
    city_model = City(
        record, tuple(district_models), tuple(device_models), f"generated:{city_id}:{seed}"
    )
    from safecity.geography import with_geography  # it builds on this module's models

    return with_geography(city_model, seed)


def _device_id(kind_name: str, district_id: str, number: int) -> str:
    return f"{kind_name.replace('_', '')}-{district_id.replace('_', '')}-{number:03d}"


def _point_in(rng: random.Random, polygon: Sequence[tuple[float, float]]) -> tuple[float, float]:
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    for _ in range(1000):
        lon, lat = rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys))
        if contains(polygon, lon, lat):
            return (round(lon, 6), round(lat, 6))
    return (round(sum(xs) / len(xs), 6), round(sum(ys) / len(ys), 6))
