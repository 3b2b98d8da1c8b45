"""Where each device stands: its site, its district's land use, its climate and its neighbours.

A `Profile` is what a generator knows about a device beyond its id: the registry's
site type and land use (or, for an older registry without them, a site drawn from
the kind and ``mixed``), the city's climate and time zone, and the neighbours it is
coupled to: noise, NO2 and CO follow the traffic of the nearest traffic sensor's road,
CCTV analytics the nearest crowd counter, and a gunshot node knows how many nodes
hear the same shot. `World` builds the profiles of a whole city once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from safecity.geography import device_site
from safecity.registry import City, Device, LandUse, Site
from simulators.climate import Climate, climate_at, climate_of
from simulators.spatial import Grid
from simulators.timebase import distance_m, stable_int

GUNSHOT_RANGE_M = 3000.0
"""An acoustic node hears a shot within this distance."""


@dataclass(frozen=True, slots=True)
class Profile:
    """A device and everything its readings depend on besides time and noise."""

    device: Device
    site: Site
    land_use: LandUse
    climate: Climate
    key: int
    """The device's own process key (a hash of its id)."""
    district_key: int
    road_key: int
    """Process key of the road the device stands by (the nearest traffic sensor's)."""
    road_weight: float
    """How much of that road's traffic reaches the device, 0..1 (distance)."""
    crowd_key: int
    """Process key of the nearest crowd counter (own key without one)."""
    heard_by: int
    """Acoustic nodes within range of this device (itself included)."""

    @property
    def id(self) -> str:
        """The device id."""
        return self.device.id

    @property
    def kind(self) -> str:
        """The device kind."""
        return self.device.kind


def process_key(name: str) -> int:
    """The process key of a named thing (device, district, road)."""
    return stable_int("process", name)


def standalone(device: Device, climate: Climate | None = None) -> Profile:
    """A device's profile without its city: own road and crowd, ``mixed`` land use."""
    site = device.site or device_site(device.kind, None, random.Random(f"site:{device.id}"))
    key = process_key(device.id)
    return Profile(
        device=device,
        site=site,
        land_use="mixed",
        climate=climate or climate_at(round(device.location[0], 2), round(device.location[1], 2)),
        key=key,
        district_key=process_key(f"district:{device.district}"),
        road_key=key,
        road_weight=1.0 if site in ("arterial", "side_street") else 0.5,
        crowd_key=key,
        heard_by=1,
    )


class World:
    """The profiles of a city's devices, each built when first asked for (a process that
    runs a share of the fleet builds only its share's)."""

    def __init__(self, city: City) -> None:
        self.city = city
        self.climate = climate_of(city.id, *city.record.centroid, city.record.timezone)
        self._uses = {d.id: d.land_use or "mixed" for d in city.districts}
        lats = [abs(d.location[1]) for d in city.devices] or [0.0]
        span = (min(lats), max(lats))
        # Grids, not scans: every device asks for its neighbours (linear in the fleet).
        self._roads = Grid(city.select(kind="traffic"), span)
        self._crowds = Grid(city.select(kind="crowd"), span)
        self._nodes = Grid(city.select(kind="gunshot"), span, cell_m=GUNSHOT_RANGE_M / 20)
        self._profiles: dict[str, Profile] = {}

    def _profile(self, device: Device) -> Profile:
        uses, roads, crowds, nodes = self._uses, self._roads, self._crowds, self._nodes
        base = standalone(device, self.climate)
        road_key, weight = base.road_key, base.road_weight
        road = roads.nearest(device.location) if device.kind != "traffic" else None
        if road is not None:
            far = distance_m(road.location, device.location)
            road_key = process_key(road.id)
            # Roadside sensors hear their road; the far ones the city's background.
            weight = max(0.15, 1.0 - far / 1500.0) * (1.0 if base.site == "arterial" else 0.7)
        crowd_key = base.crowd_key
        near = crowds.nearest(device.location) if device.kind == "cctv" else None
        if near is not None:
            crowd_key = process_key(near.id)
        heard = nodes.count_within(device.location, GUNSHOT_RANGE_M)
        return Profile(
            device=device,
            site=base.site,
            land_use=uses.get(device.district, "mixed"),
            climate=self.climate,
            key=base.key,
            district_key=base.district_key,
            road_key=road_key,
            road_weight=weight,
            crowd_key=crowd_key,
            heard_by=max(1, heard),
        )

    def profile(self, device: Device) -> Profile:
        """The device's profile (standalone if it is not of this city)."""
        if self.city.device(device.id) != device:
            return standalone(device)
        found = self._profiles.get(device.id)
        if found is None:
            found = self._profiles[device.id] = self._profile(device)
        return found
