"""Incidents: what happens *somewhere* in the city and shows in many sensors at once.

A `SimulatedIncident` has a type, a place (point + radius, or a district, or the whole
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
from datetime import UTC, datetime
from functools import lru_cache

from safecity import catalogue
from safecity.readings import from_epoch_ms
from safecity.registry import City, Device
from simulators.climate import climate_of
from simulators.events import Detail, EventDraft
from simulators.generators import Values, traffic_shape
from simulators.timebase import clock, device_rng, distance_m, offset, stable_int
from simulators.weather import weather

ACCIDENTS_PER_DISTRICT_DAY = 1.5
"""Tashkent registers ~18 road accidents a day over its 12 districts (police statistics)."""
INJURY_SHARE = 2.6 / 18.0
"""Share of accidents with casualties: ~2.6 injury accidents of ~18 a day (police statistics)."""
TYPES = ("road_accident", "gunshot", "pollution_episode", "inversion", "mass_event")
_MIN_MS = 60_000
_HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class SimulatedIncident:
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
        self, city: City, incidents: list[SimulatedIncident], seed: int, *, ambient: bool = True
    ) -> None:
        self.city = city
        self.seed = seed
        self.scripted = list(incidents)
        self.ambient = ambient
        self._by_kind: dict[str, list[Device]] = {}
        for device in city.devices:
            self._by_kind.setdefault(device.kind, []).append(device)
        self.climate = climate_of(city.id, *city.record.centroid, city.record.timezone)
        self.utc_offset_h = self.climate.utc_offset_h
        self._ambient_cache = lru_cache(maxsize=512)(self._ambient_hour)
        self._ambient_near = lru_cache(maxsize=64)(self._ambient_window)
        self._recent: dict[tuple[int, int], tuple[SimulatedIncident, ...]] = {}

    # --- which incidents --------------------------------------------------------

    def incidents_at(self, t_ms: int, lead_ms: int = _HOUR_MS) -> tuple[SimulatedIncident, ...]:
        """Incidents active at t (with a lead/lag window for traffic around events)."""
        key = (t_ms, lead_ms)
        found = self._recent.get(key)
        if found is not None:
            # A whole fleet's first readings share their instant.
            return found
        near = self._ambient_near(t_ms // _HOUR_MS) if self.ambient else ()
        out = tuple(i for i in (*self.scripted, *near) if i.active(t_ms, lead_ms))
        if len(self._recent) >= 8:
            self._recent.clear()
        self._recent[key] = out
        return out

    def _ambient_window(self, hour: int) -> tuple[SimulatedIncident, ...]:
        """The ambient incidents of the hours that may be active in `hour` (6 before, 1 after)."""
        return tuple(i for h in range(hour - 6, hour + 2) for i in self._ambient_cache(h))

    def _ambient_hour(self, hour: int) -> tuple[SimulatedIncident, ...]:
        t = datetime.fromtimestamp(hour * 3600 + 1800, UTC)
        c = clock(t, self.utc_offset_h)
        # Accidents per district-hour: ACCIDENTS_PER_DISTRICT_DAY spread over the day as
        # traffic is, with a floor so nights have their share too.
        per_hour = ACCIDENTS_PER_DISTRICT_DAY / 24.0 * (0.25 + traffic_shape(c)) / (0.25 + 0.36)
        out: list[SimulatedIncident] = []
        for district in self.city.districts:
            u = stable_int("accident", self.seed, district.id, hour) / 2.0**64
            if u < 1.0 - math.exp(-per_hour):
                out.append(self._accident_in(district.id, district.centroid, hour))
            if c.hour // 1 == 18 and c.weekday in (4, 5):
                v = stable_int("event", self.seed, district.id, hour) / 2.0**64
                if v < 0.15:
                    start = hour * _HOUR_MS + _HOUR_MS
                    out.append(
                        SimulatedIncident(
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

    def _accident_in(
        self, district: str, centroid: tuple[float, float], hour: int
    ) -> SimulatedIncident:
        """An accident on a monitored road of the district: a traffic sensor sees it."""
        rng = device_rng(self.seed, district, f"accident-{hour}")
        roads = [d for d in self._by_kind.get("traffic", ()) if d.district == district]
        if not roads:
            roads = sorted(
                self._by_kind.get("traffic", ()), key=lambda d: distance_m(d.location, centroid)
            )[:3]
        place = rng.choice(roads).location if roads else centroid
        start = hour * _HOUR_MS + rng.randrange(_HOUR_MS)
        hurt = rng.random() < INJURY_SHARE
        return SimulatedIncident(
            "road_accident",
            start,
            start + rng.randrange(20, 70) * _MIN_MS,
            offset(place, rng.uniform(-150, 150), rng.uniform(-150, 150)),
            1200.0,
            district,
            {
                "vehicles": 2 + (1 if rng.random() < 0.2 else 0),
                "lanes_blocked": 1 + (1 if rng.random() < 0.3 else 0),
                "casualties": (1 + (1 if rng.random() < 0.3 else 0)) if hurt else 0,
            },
            f"ambient accident {district} h{hour}",
        )

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
            if incident.type == "road_accident":
                _accident(kind, out, reach, incident, t_ms)
            elif incident.type == "mass_event":
                _mass_event(kind, out, reach, incident, on, t_ms)
            elif incident.type in ("pollution_episode", "inversion"):
                # The weather's own build-up already counts towards the episode's factor.
                stagnation = weather(from_epoch_ms(t_ms), self.climate).stagnation
                _pollution(kind, out, reach, incident, t_ms, stagnation)
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

    def _nearest(self, kind: str, incident: SimulatedIncident) -> Device | None:
        candidates = [d for d in self._by_kind.get(kind, ()) if incident.reach(d) > 0]
        if not candidates or incident.location is None:
            return candidates[0] if candidates else None
        loc = incident.location
        return min(candidates, key=lambda d: distance_m(loc, d.location))

    def _event(
        self,
        incident: SimulatedIncident,
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


def queue_strength(incident: SimulatedIncident, reach: float, t_ms: int) -> float:
    """How far an accident's queue has reached a point (0..1): the queue grows upstream
    over ~15 minutes (far points later) and dissolves over ~15 minutes after clearance."""
    if t_ms < incident.start_ms:
        return 0.0
    grown = min(1.0, (t_ms - incident.start_ms) / (15.0 * _MIN_MS))
    if reach < 1.0 - grown:
        return 0.0
    strength = min(1.0, 1.5 * reach)
    if t_ms >= incident.end_ms:
        strength *= math.exp(-(t_ms - incident.end_ms) / (6.0 * _MIN_MS))
        if strength < 0.02:
            return 0.0
    return strength


def _accident(kind: str, out: Values, reach: float, incident: SimulatedIncident, t_ms: int) -> None:
    queue = queue_strength(incident, reach, t_ms)
    if queue <= 0.0:
        return
    reach = queue if kind == "traffic" else reach * min(queue * 1.5, 1.0)
    if kind == "traffic":
        slow = incident.param("speed_factor", 0.25)
        factor = 1.0 - (1.0 - slow) * queue
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


def crowd_phase(incident: SimulatedIncident, t_ms: int) -> float:
    """How much of an event's crowd is there: arrivals over the last 45 min before the start
    (up to half), the full house ten minutes in, then a surge out (x1.25 for 10 min) ebbing
    over ~20 min."""
    start, end = incident.start_ms, incident.end_ms
    if t_ms < start:
        # Arrivals pass through on their way in: half the house at most on the streets.
        return max(0.0, 0.5 * (1.0 - (start - t_ms) / (45.0 * _MIN_MS)))
    if t_ms < end:
        # The rest arrive over the first ten minutes.
        return min(1.0, 0.5 + 0.5 * (t_ms - start) / (10.0 * _MIN_MS))
    after = (t_ms - end) / _MIN_MS
    if after < 10.0:
        return 1.25
    return 1.25 * math.exp(-(after - 10.0) / 12.0)


def _mass_event(
    kind: str, out: Values, reach: float, incident: SimulatedIncident, on: bool, t_ms: int
) -> None:
    phase = crowd_phase(incident, t_ms)
    factor = 1.0 + (incident.param("factor", 3.0) - 1.0) * min(phase, 1.25)
    if kind == "crowd" and phase > 0.02:
        # Crowds spill along the routes to the venue: strong well beyond its gates.
        # The event's people add to whoever is there: a share of the zone per unit of factor.
        reach = min(1.0, 3.0 * reach)
        base_occ = float(out["occupancy"])
        occupancy = min(1.0, base_occ + 0.4 * (factor - 1.0) * reach)
        capacity = int(out["people_count"]) / base_occ if base_occ > 0.01 else 1000.0
        out["people_count"] = min(19_000, int(occupancy * capacity))
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
    elif kind == "noise" and phase > 0.02:
        reach *= min(phase, 1.0)
        out["laeq"] = round(_cap(kind, "laeq", float(out["laeq"]) + 6.0 * reach), 1)
        out["lamax"] = round(_cap(kind, "lamax", float(out["lamax"]) + 8.0 * reach), 1)


def pollution_ramp(incident: SimulatedIncident, t_ms: int) -> float:
    """An inversion's hold on the air (0..1): it builds up over hours (time constant 90 min)
    and, when wind breaks it up at the end, decays over ~20 min (gone within ~80 min)."""
    if t_ms < incident.start_ms:
        return 0.0
    built = 1.0 - math.exp(-(t_ms - incident.start_ms) / (90.0 * _MIN_MS))
    if t_ms < incident.end_ms:
        return built
    decay = math.exp(-(t_ms - incident.end_ms) / (20.0 * _MIN_MS))
    return built * decay if decay > 0.02 else 0.0


def _pollution(
    kind: str, out: Values, reach: float, incident: SimulatedIncident, t_ms: int, stagnation: float
) -> None:
    """PM, CO, SO2 times the episode's factor over an *ordinary* day, ramped in and out.

    A scripted episode is the scenario's weather: from the hour before it until it has
    decayed, the weather's own build-up (`stagnation`) is taken out, so the scenario's
    figures hold whatever the calendar's weather on its date.
    """
    if kind != "air_quality":
        return
    if t_ms < incident.start_ms:
        ordinary = max(0.0, 1.0 - (incident.start_ms - t_ms) / _HOUR_MS)
    elif t_ms < incident.end_ms:
        ordinary = 1.0
    else:
        ordinary = math.exp(-(t_ms - incident.end_ms) / (15.0 * _MIN_MS))
    ramp = pollution_ramp(incident, t_ms)
    factor = (1.0 + (incident.param("factor", 3.0) - 1.0) * reach * ramp) / max(
        1.0, stagnation
    ) ** (0.75 * reach * ordinary)
    for name in ("pm25", "pm10", "co", "so2"):
        out[name] = round(_cap(kind, name, float(out[name]) * factor), 2)
    if float(out["pm10"]) < float(out["pm25"]):
        out["pm10"] = out["pm25"]
