"""Geography of a city: each district's land use and each device's site type.

Tashkent's districts get their real character; other cities get a generated one (the
central district is the centre, the one farthest out industrial, the rest residential
or mixed). A device's site is drawn per kind from weights that follow its district.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from safecity.registry import City, District, LandUse, Site

# Tashkent's districts by their real character: the old town and the administrative
# centre, the big Soviet-era housing estates, the south-eastern industrial zones.
TASHKENT_LAND_USE: dict[str, LandUse] = {
    "bektemir": "industrial",
    "chilanzar": "residential",
    "yashnobod": "mixed",
    "mirobod": "centre",
    "mirzo_ulugbek": "residential",
    "olmazor": "mixed",
    "sergeli": "industrial",
    "shaykhontohur": "centre",
    "uchtepa": "residential",
    "yakkasaray": "centre",
    "yunusabad": "residential",
    "yangihayot": "mixed",
}

# Where each kind stands, by the district's land use: (site, weight) pairs.
_ROADSIDE: tuple[tuple[Site, float], ...] = (("arterial", 0.7), ("side_street", 0.3))
_SITE_WEIGHTS: dict[str, tuple[tuple[Site, float], ...]] = {
    "traffic": _ROADSIDE,
    "anpr": (("arterial", 1.0),),
    "air_quality": (("arterial", 0.35), ("side_street", 0.25), ("park", 0.15), ("school", 0.15),
                    ("market", 0.1)),
    "noise": (("arterial", 0.35), ("side_street", 0.3), ("park", 0.1), ("school", 0.15),
              ("market", 0.1)),
    "parking": (("side_street", 0.4), ("market", 0.3), ("arterial", 0.3)),
    "streetlight": (("arterial", 0.5), ("side_street", 0.4), ("park", 0.1)),
    "crowd": (("market", 0.4), ("arterial", 0.3), ("park", 0.15), ("school", 0.15)),
    "cctv": (("market", 0.3), ("arterial", 0.3), ("school", 0.2), ("park", 0.2)),
    "waste": (("side_street", 0.5), ("market", 0.3), ("park", 0.2)),
    "weather": (("park", 0.7), ("school", 0.3)),
    "panic_button": (("school", 0.4), ("arterial", 0.4), ("market", 0.2)),
    "gunshot": (("side_street", 0.5), ("market", 0.3), ("arterial", 0.2)),
}  # fmt: skip
_INDUSTRIAL_KINDS = frozenset({"air_quality", "noise", "traffic", "streetlight", "waste"})


def district_land_uses(city_id: str, districts: Sequence[District], seed: int) -> list[LandUse]:
    """Tashkent's real land use; elsewhere the central district is the centre, the one
    farthest from it industrial, the rest residential or mixed (seeded)."""
    if city_id == "tashkent":
        return [TASHKENT_LAND_USE.get(d.id, "mixed") for d in districts]
    rng = random.Random(f"land-use:{city_id}:{seed}")
    lon_c = sum(d.centroid[0] for d in districts) / len(districts)
    lat_c = sum(d.centroid[1] for d in districts) / len(districts)
    far = sorted(
        range(len(districts)),
        key=lambda i: (
            (districts[i].centroid[0] - lon_c) ** 2 + (districts[i].centroid[1] - lat_c) ** 2
        ),
    )
    out: list[LandUse] = ["residential" if rng.random() < 0.6 else "mixed" for _ in districts]
    if len(districts) >= 3:
        out[far[-1]] = "industrial"
    out[far[0]] = "centre"
    return out


def device_site(kind: str, land_use: LandUse | None, rng: random.Random) -> Site:
    """A site type for a device of `kind` in a district of `land_use` (seeded draw)."""
    if land_use == "industrial" and kind in _INDUSTRIAL_KINDS and rng.random() < 0.5:
        return "industrial"
    weights = _SITE_WEIGHTS.get(kind, _ROADSIDE)
    return rng.choices([w[0] for w in weights], weights=[w[1] for w in weights])[0]


def with_geography(city: City, seed: int = 0) -> City:
    """The city with every missing district land use and device site filled in."""
    uses = district_land_uses(city.id, city.districts, seed)
    districts = tuple(
        d if d.land_use is not None else d.model_copy(update={"land_use": use})
        for d, use in zip(city.districts, uses, strict=True)
    )
    by_id = {d.id: d.land_use for d in districts}
    devices = tuple(
        d
        if d.site is not None
        else d.model_copy(
            update={
                "site": device_site(
                    d.kind, by_id.get(d.district), random.Random(f"site:{d.id}:{seed}")
                )
            }
        )
        for d in city.devices
    )
    return City(city.record, districts, devices, city.source)
