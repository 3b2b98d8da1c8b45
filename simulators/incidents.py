"""Incidents: what happens *somewhere* in the city and shows in many sensors at once.

An `Incident` has a type, a place (point + radius, or a district, or the whole
city) and a simulated time span. While it is active it changes the readings of the
devices it reaches and makes some of them publish events:

- ``road_accident``: the nearest traffic sensor reports it; traffic within the radius
  slows (speed down, occupancy up, congested), nearby noise rises (horns, sirens),
  NO2 rises a little; near traffic sensors report ``congestion`` after 5 minutes.
- ``gunshot``: every acoustic node within the radius (default 3 km) reports a
  located detection; the location error shrinks with the number of nodes that heard
  it (~15 m with 6 or more); nearby noise sensors catch the LAmax spike.
- ``pollution_episode`` / ``inversion``: PM, CO, SO2 multiplied (calm air); every
  air-quality sensor in the area reports a ``pollution_episode`` once.
- ``mass_event`` (stadium, concert, bazaar): crowds within the radius multiply,
  traffic around slows an hour before and after; cameras report ``crowd_threshold``.

Besides scripted incidents (scenarios), an `Scene` adds *ambient* ones, a pure
function of the seed and time: road accidents at a rate following traffic, and
occasional evening mass events on Fridays and Saturdays. Everything is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from safecity import catalogue
from safecity.registry import City, Device
from simulators.generators import (
    Detail,
    EventDraft,
    Values,
    device_rng,
    stable_int,
    traffic_level,
)

TYPES = ("road_accident", "gunshot", "pollution_episode", "inversion", "mass_event")
_MIN_MS = 60_000
_HOUR_MS = 3_600_000
_EARTH_M_PER_DEG = 111_320.0


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Equirectangular distance between two [lon, lat] points, metres (fine within a city)."""
    mean_lat = math.radians((a[1] + b[1]) / 2)
    dx = (a[0] - b[0]) * math.cos(mean_lat) * _EARTH_M_PER_DEG
    dy = (a[1] - b[1]) * _EARTH_M_PER_DEG
    return math.hypot(dx, dy)


def offset(point: tuple[float, float], east_m: float, north_m: float) -> tuple[float, float]:
    """A point moved by metres east and north."""
    lat = point[1] + north_m / _EARTH_M_PER_DEG
    lon = point[0] + east_m / (_EARTH_M_PER_DEG * math.cos(math.radians(point[1])))
    return (lon, lat)


@dataclass(frozen=True, slots=True)
class Incident:
    """Something happening at a place over a simulated time span."""

    type: str
    start_ms: int
    end_ms: int
    location: tuple[float, float] | None = None
    """[lon, lat]; None with a district = the district, None without = the whole city."""
    radius_m: float = 1500.0
    district: str | None = None
    params: dict[str, float] = field(default_factory=dict)
    name: str = ""

    def param(self, key: str, default: float) -> float:
        """A numeric parameter, or its default."""
        return float(self.params.get(key, default))

    def reach(self, device: Device) -> float:
        """How strongly the incident reaches a device: 1 at its centre, 0 outside."""
        if self.location is None:
            if self.district is None or self.district == device.district:
                return 1.0
            return 0.0
        d = distance_m(self.location, device.location)
        if d >= self.radius_m:
            return 0.0
        return 1.0 - d / self.radius_m

    def active(self, t_ms: int, lead_ms: int = 0) -> bool:
        """Active at t (optionally counting `lead_ms` before the start and after the end)."""
        return self.start_ms - lead_ms <= t_ms < self.end_ms + lead_ms


def _q(kind: str, name: str) -> catalogue.Quantity:
    return next(q for q in catalogue.telemetry_quantities(kind) if q.name == name)


def _cap(kind: str, name: str, value: float) -> float:
    q = _q(kind, name)
    hi = float(q.high) if q.high is not None else value
    lo = float(q.low) if q.low is not None else value
    return min(max(value, lo), hi)


class Scene:
    """The incidents of a run (scripted plus ambient) and their effect on each device."""

    def __init__(
        self, city: City, incidents: list[Incident], seed: int, *, ambient: bool = True
    ) -> None:
        self.city = city
        self.seed = seed
        self.scripted = list(incidents)
        self.ambient = ambient
        self._by_kind: dict[str, list[Device]] = {}
        for device in city.devices:
            self._by_kind.setdefault(device.kind, []).append(device)
        self._ambient_cache = lru_cache(maxsize=512)(self._ambient_hour)

    # --- which incidents --------------------------------------------------------

    def incidents_at(self, t_ms: int, lead_ms: int = _HOUR_MS) -> list[Incident]:
        """Incidents active at t (with a lead/lag window for traffic around events)."""
        out = [i for i in self.scripted if i.active(t_ms, lead_ms)]
        if self.ambient:
            hour = t_ms // _HOUR_MS
            for h in range(hour - 6, hour + 2):
                out.extend(i for i in self._ambient_cache(h) if i.active(t_ms, lead_ms))
        return out

    def _ambient_hour(self, hour: int) -> tuple[Incident, ...]:
        from datetime import UTC, datetime

        t = datetime.fromtimestamp(hour * 3600 + 1800, UTC)
        level = traffic_level(t)
        out: list[Incident] = []
        for district in self.city.districts:
            # About one accident per district every ~2 days, more at rush hour.
            u = stable_int("accident", self.seed, district.id, hour) / 2.0**64
            if u < 0.03 * level:
                rng = device_rng(self.seed, district.id, f"accident-{hour}")
                start = hour * _HOUR_MS + rng.randrange(_HOUR_MS)
                out.append(
                    Incident(
                        "road_accident",
                        start,
                        start + rng.randrange(20, 70) * _MIN_MS,
                        offset(district.centroid, rng.gauss(0, 800), rng.gauss(0, 800)),
                        1200.0,
                        district.id,
                        {"vehicles": 2 + rng.randrange(3), "lanes_blocked": 1 + rng.randrange(2)},
                        f"ambient accident {district.id} h{hour}",
                    )
                )
            local_hour = (hour + 5) % 24
            weekday = t.weekday() if local_hour >= 5 else (t.weekday() - 1) % 7
            if local_hour == 18 and weekday in (4, 5):
                v = stable_int("event", self.seed, district.id, hour) / 2.0**64
                if v < 0.15:
                    start = hour * _HOUR_MS + _HOUR_MS
                    out.append(
                        Incident(
                            "mass_event",
                            start,
                            start + 3 * _HOUR_MS,
                            district.centroid,
                            1500.0,
                            district.id,
                            {"factor": 2.5},
                            f"ambient event {district.id} h{hour}",
                        )
                    )
        return tuple(out)

    # --- effects on readings ----------------------------------------------------

    def apply(self, device: Device, values: Values, t_ms: int) -> Values:
        """The device's values with every active incident's effect."""
        incidents = self.incidents_at(t_ms)
        if not incidents:
            return values
        out = dict(values)
        for incident in incidents:
            reach = incident.reach(device)
            if reach <= 0.0:
                continue
            on = incident.active(t_ms)
            kind = device.kind
            if incident.type == "road_accident" and on:
                _accident(kind, out, reach, incident)
            elif incident.type == "mass_event":
                _mass_event(kind, out, reach, incident, on)
            elif incident.type in ("pollution_episode", "inversion") and on:
                _pollution(kind, out, reach, incident, t_ms)
            elif incident.type == "gunshot" and on and kind == "noise":
                rounds_db = 112.0 - 20.0 * math.log10(max(1.0, (1.0 - reach) * 40.0))
                lamax = max(float(out["lamax"]), rounds_db)
                out["lamax"] = round(_cap(kind, "lamax", lamax), 1)
        return out

    # --- events -----------------------------------------------------------------

    def events(self, device: Device, t_ms: int, interval_ms: int) -> list[EventDraft]:
        """Events the device reports for incidents that started in (t - interval, t]."""
        out: list[EventDraft] = []
        for incident in self.incidents_at(t_ms, lead_ms=interval_ms):
            reach = incident.reach(device)
            if reach <= 0.0:
                continue
            fresh = t_ms - interval_ms < incident.start_ms <= t_ms
            draft = self._event(incident, device, reach, fresh, t_ms, interval_ms)
            if draft is not None:
                out.append(draft)
        return out

    def _nearest(self, kind: str, incident: Incident) -> Device | None:
        candidates = [d for d in self._by_kind.get(kind, ()) if incident.reach(d) > 0]
        if not candidates or incident.location is None:
            return candidates[0] if candidates else None
        loc = incident.location
        return min(candidates, key=lambda d: distance_m(loc, d.location))

    def _event(
        self,
        incident: Incident,
        device: Device,
        reach: float,
        fresh: bool,
        t_ms: int,
        interval_ms: int,
    ) -> EventDraft | None:
        kind, kind_type = device.kind, incident.type
        rng = device_rng(self.seed, device.id, f"incident-{incident.start_ms}-{incident.type}")
        if kind_type == "road_accident" and kind == "traffic":
            if fresh and self._nearest("traffic", incident) == device:
                return _draft(
                    "road_accident",
                    {
                        "vehicles": int(incident.param("vehicles", 2)),
                        "casualties": int(incident.param("casualties", 0)),
                        "lanes_blocked": int(incident.param("lanes_blocked", 1)),
                    },
                )
            jammed = incident.start_ms + 5 * _MIN_MS
            if reach > 0.4 and t_ms - interval_ms < jammed <= t_ms and incident.active(t_ms):
                return _draft(
                    "congestion",
                    {
                        "segment": device.id,
                        "speed": round(8.0 + 6.0 * (1.0 - reach), 1),
                        "queue_m": round(300.0 + 1200.0 * reach, 0),
                    },
                )
        elif kind_type == "gunshot" and kind == "gunshot" and fresh:
            heard = [d for d in self._by_kind.get("gunshot", ()) if incident.reach(d) > 0]
            n = max(1, len(heard))
            accuracy = min(1000.0, 15.0 * math.sqrt(6.0 / n))
            assert incident.location is not None
            lon, lat = offset(
                incident.location, rng.gauss(0, accuracy / 2), rng.gauss(0, accuracy / 2)
            )
            return _draft(
                "gunshot",
                {
                    "rounds": int(incident.param("rounds", 3)),
                    "lat": round(lat, 6),
                    "lon": round(lon, 6),
                    "accuracy_m": round(accuracy, 1),
                    "sensors": min(n, 100),
                    "confidence": round(min(0.99, 0.7 + 0.05 * n), 2),
                },
            )
        elif kind_type in ("pollution_episode", "inversion") and kind == "air_quality" and fresh:
            factor = incident.param("factor", 3.0)
            return _draft(
                "pollution_episode",
                {
                    "pollutant": "pm25",
                    "value": round(min(3000.0, 60.0 * factor * (0.8 + 0.4 * rng.random())), 1),
                    "duration_s": round((incident.end_ms - incident.start_ms) / 1000.0, 0),
                },
            )
        elif kind_type == "mass_event" and kind in ("cctv", "crowd") and fresh:
            threshold = 500
            return _draft(
                "crowd_threshold",
                {
                    "zone": f"{incident.district or 'city'} venue"[:60],
                    "count": threshold + int(threshold * incident.param("factor", 3.0)),
                    "threshold": threshold,
                },
            )
        return None


def _draft(event_type: str, details: dict[str, Detail]) -> EventDraft:
    return EventDraft(event_type, catalogue.EVENT_TYPES[event_type].default_severity.value, details)


def _accident(kind: str, out: Values, reach: float, incident: Incident) -> None:
    if kind == "traffic":
        slow = incident.param("speed_factor", 0.25)
        factor = 1.0 - (1.0 - slow) * min(1.0, 1.5 * reach)
        speed = max(3.0, float(out["avg_speed"]) * factor)
        out["avg_speed"] = round(speed, 1)
        out["intensity"] = round(float(out["intensity"]) * (0.5 + 0.5 * factor), 0)
        out["occupancy"] = round(min(0.95, float(out["occupancy"]) + 0.4 * reach), 3)
        out["congested"] = speed < 15.0
    elif kind == "noise":
        extra = incident.param("noise_db", 8.0) * reach
        for name in ("laeq", "la90"):
            out[name] = round(_cap(kind, name, float(out[name]) + extra), 1)
        out["lamax"] = round(_cap(kind, "lamax", float(out["lamax"]) + 1.5 * extra), 1)
    elif kind == "air_quality":
        out["no2"] = round(_cap(kind, "no2", float(out["no2"]) * (1.0 + 0.4 * reach)), 1)


def _mass_event(kind: str, out: Values, reach: float, incident: Incident, on: bool) -> None:
    factor = incident.param("factor", 3.0)
    if kind == "crowd" and on:
        # Crowds spill along the routes to the venue: strong well beyond its gates.
        reach = min(1.0, 3.0 * reach)
        count = min(19_000, int(int(out["people_count"]) * (1.0 + (factor - 1.0) * reach)))
        occupancy = min(1.0, float(out["occupancy"]) * (1.0 + (factor - 1.0) * reach))
        out["people_count"] = count
        out["occupancy"] = round(occupancy, 3)
        out["avg_speed"] = round(max(0.05, 1.4 * (1.0 - 0.85 * occupancy)), 2)
        out["congested"] = occupancy >= 0.7
    elif kind == "traffic":
        # Arrivals before, departures after, parking search during: the roads fill up.
        out["intensity"] = round(min(2000.0, float(out["intensity"]) * (1.0 + 0.4 * reach)), 0)
        speed = max(3.0, float(out["avg_speed"]) * (1.0 - 0.5 * reach))
        out["avg_speed"] = round(speed, 1)
        out["occupancy"] = round(min(0.95, float(out["occupancy"]) + 0.2 * reach), 3)
        out["congested"] = speed < 15.0
    elif kind == "noise" and on:
        out["laeq"] = round(_cap(kind, "laeq", float(out["laeq"]) + 6.0 * reach), 1)
        out["lamax"] = round(_cap(kind, "lamax", float(out["lamax"]) + 8.0 * reach), 1)


def _pollution(kind: str, out: Values, reach: float, incident: Incident, t_ms: int) -> None:
    if kind != "air_quality":
        return
    # Builds up over the first hour, as an inversion does.
    ramp = min(1.0, (t_ms - incident.start_ms) / _HOUR_MS + 0.2)
    factor = 1.0 + (incident.param("factor", 3.0) - 1.0) * reach * ramp
    for name in ("pm25", "pm10", "co", "so2"):
        out[name] = round(_cap(kind, name, float(out[name]) * factor), 2)
    if float(out["pm10"]) < float(out["pm25"]):
        out["pm10"] = out["pm25"]
