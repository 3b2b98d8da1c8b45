"""Events of the event-source kinds (CCTV, panic buttons, acoustic nodes, ANPR cameras).

An event generator is ``(profile, rng, t, interval_s) -> EventDraft | None``: at most
one event in the `interval_s` seconds before `t`, a Poisson draw at hourly rates.
Whether an event happens is a hash of the device, the time slot and a draw from the
device's rng: a different stream on every date, the same for the same seed and
start. Rates, per device and hour (the README's table cites each):

- ANPR enforcement camera: ~28 red-light and ~24 speeding violations a day (Tashkent
  traffic police figures for its 115 camera sites reported in the press), red-light
  following traffic, speeding the free-flowing hours; ~1 watch-list hit a day;
- CCTV analytics: intrusions mostly at night, crowd thresholds following the nearest
  crowd counter, a few of each per camera per day;
- a panic button about once every three weeks; an acoustic node's impulsive-noise
  detection about twice a year, reporting the number of nodes that really hear it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from safecity import catalogue
from safecity.registry import Device
from simulators.generators import crowd_level, profile_of, traffic_shape
from simulators.processes import ou
from simulators.sites import Profile
from simulators.timebase import clamp, clock, mix64, window

Detail = float | int | str


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event to publish: its type, severity and details (valid per `event_model`)."""

    type: str
    severity: str
    details: dict[str, Detail]


EventGenerator = Callable[[Profile, random.Random, datetime, float], EventDraft | None]

PLATE_SALT = b"safecity-simulator-plate-salt"
"""Salt of the simulator's plate hashes. Public on purpose: simulated plates are not secret."""

_REGIONS = (1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95)
_LETTERS = "ABCDEFHKMNOPTXYZ"


def plate_hash(plate: str, salt: bytes = PLATE_SALT) -> str:
    """Hex sha256 of salt + plate: a plate never leaves the device in clear."""
    return hashlib.sha256(salt + plate.encode("utf-8")).hexdigest()


def _plate(rng: random.Random) -> str:
    """A random Uzbek-style plate, e.g. 01A123BC."""
    return (
        f"{rng.choice(_REGIONS):02d}{rng.choice(_LETTERS)}{rng.randrange(1000):03d}"
        f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}"
    )


def _draft(event_type: str, details: dict[str, Detail]) -> EventDraft:
    return EventDraft(event_type, catalogue.EVENT_TYPES[event_type].default_severity.value, details)


def _pick(rng: random.Random, rates: dict[str, float], interval_s: float) -> str | None:
    """Poisson arrivals: at most one event per interval, its type weighted by rate (per hour)."""
    total = sum(rates.values())
    hit = rng.random() < 1.0 - math.exp(-total * interval_s / 3600.0)
    if not hit or total <= 0:
        return None
    return rng.choices(list(rates), weights=list(rates.values()))[0]


def _slot_rng(p: Profile, rng: random.Random, t: datetime, interval_s: float) -> random.Random:
    """A stream for this device, this time slot and this seed: events differ by date."""
    slot = int(t.astimezone(UTC).timestamp() // max(interval_s, 1.0))
    return random.Random(mix64(p.key ^ rng.getrandbits(64)) ^ mix64(slot))


def _confidence(rng: random.Random, lo: float = 0.6) -> float:
    return round(rng.uniform(lo, 0.99), 2)


_PEOPLE_FIRST = ("person", "person", "person", "person", "car", "bicycle", "motorcycle", "animal")
_VEHICLES = ("car", "car", "car", "truck", "bus", "motorcycle", "bicycle")


def cctv_events(
    p: Profile, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """Video analytics: intrusions mostly at night, crowding with the nearest crowd counter."""
    c = clock(t, p.climate.utc_offset_h)
    rng = _slot_rng(p, rng, t, interval_s)
    night = c.hour >= 22.0 or c.hour < 5.0
    crowded = crowd_level(p, c, t.astimezone(UTC).timestamp() / 3600.0, p.crowd_key)
    rates = {
        "intrusion": 0.06 if night else 0.02,
        "line_crossing": 0.02 + 0.12 * traffic_shape(c),
        "wrong_way": 0.01,
        "loitering": 0.01 + 0.05 * crowded,
        "abandoned_object": 0.002 + 0.01 * crowded,
        "crowd_threshold": 0.002 + 0.08 * max(0.0, crowded - 0.3),
        "camera_tamper": 0.002,
    }
    kind = _pick(rng, rates, interval_s)
    if kind is None:
        return None
    zone = f"zone-{1 + rng.randrange(4)}"
    line = f"line-{1 + rng.randrange(3)}"
    if kind == "intrusion":
        details: dict[str, Detail] = {
            "zone": zone,
            "object_class": rng.choice(_PEOPLE_FIRST),
            "confidence": _confidence(rng),
        }
    elif kind == "line_crossing":
        details = {
            "line": line,
            "direction": rng.choice(("in", "out")),
            "object_class": rng.choice(_PEOPLE_FIRST),
        }
    elif kind == "wrong_way":
        details = {
            "line": line,
            "object_class": rng.choice(_VEHICLES),
            "confidence": _confidence(rng),
        }
    elif kind in ("loitering", "abandoned_object"):
        low, high = (120.0, 1800.0) if kind == "loitering" else (60.0, 900.0)
        details = {"zone": zone, "dwell_s": round(rng.uniform(low, high), 0)}
    elif kind == "crowd_threshold":
        threshold = 50 * (1 + rng.randrange(10))
        details = {
            "zone": zone,
            "count": threshold + rng.randrange(1, threshold),
            "threshold": threshold,
        }
    else:
        details = {"cause": rng.choice(("covered", "moved", "defocused"))}
    return _draft(kind, details)


def panic_events(
    p: Profile, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """An SOS press: rare (about once per button per three weeks), more by day."""
    device = p.device
    rng = _slot_rng(p, rng, t, interval_s)
    day = window(clock(t, p.climate.utc_offset_h).hour, 7.0, 9.0, 20.0, 23.0)
    if _pick(rng, {"panic": 0.0006 + 0.003 * day}, interval_s) is None:
        return None
    return _draft(
        "panic",
        {"button": device.id, "location_name": f"{device.district} stop {1 + rng.randrange(20)}"},
    )


def gunshot_events(
    p: Profile, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """An impulsive-noise detection, very rare; located by the nodes that hear it (~15 m
    with 6 or more, coarser with fewer), and it says how many they are."""
    rng = _slot_rng(p, rng, t, interval_s)
    if _pick(rng, {"gunshot": 0.0002}, interval_s) is None:
        return None
    lon, lat = p.device.location
    sensors = p.heard_by
    accuracy = min(1000.0, 15.0 * math.sqrt(6.0 / sensors))
    north = rng.gauss(0.0, accuracy / 2)
    east = rng.gauss(0.0, accuracy / 2)
    return _draft(
        "gunshot",
        {
            "rounds": 1 + (rng.randrange(1, 8) if rng.random() < 0.3 else 0),
            "lat": round(clamp(lat + north / 111_320.0, -90.0, 90.0), 6),
            "lon": round(
                clamp(lon + east / (111_320.0 * math.cos(math.radians(lat))), -180.0, 180.0), 6
            ),
            "accuracy_m": round(accuracy, 1),
            "sensors": sensors,
            "confidence": _confidence(rng, 0.75),
        },
    )


RED_LIGHT_PER_DAY = 28.0
"""Red-light violations per enforcement camera site per day (Tashkent traffic police)."""
SPEEDING_PER_DAY = 24.0
"""Speeding violations per enforcement camera site per day (Tashkent traffic police)."""
ANPR_HITS_PER_DAY = 1.0
"""Watch-list hits per camera per day (an assumption: no public figure)."""


def anpr_events(
    p: Profile, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """Plate reads: watch-list hits, red-light and speeding violations; plates salted-hashed."""
    c = clock(t, p.climate.utc_offset_h)
    rng = _slot_rng(p, rng, t, interval_s)
    lvl = traffic_shape(c) * math.exp(
        0.2 * ou(p.road_key, t.astimezone(UTC).timestamp() / 3600.0, 2.0, 0.25)
    )
    # Daily means of the two shapes (weekday): 0.38 for lvl, 0.92 for free flow.
    free = 0.4 + 0.6 * (1.0 - min(lvl, 1.0))
    rates = {
        "anpr_hit": ANPR_HITS_PER_DAY / 24.0 * lvl / 0.38,
        "red_light_violation": RED_LIGHT_PER_DAY / 24.0 * lvl / 0.38,
        "speeding_violation": SPEEDING_PER_DAY / 24.0 * free / 0.8,
    }
    kind = _pick(rng, rates, interval_s)
    if kind is None:
        return None
    plate = plate_hash(_plate(rng))
    if kind == "anpr_hit":
        details: dict[str, Detail] = {
            "plate_hash": plate,
            "list": rng.choice(("stolen", "wanted", "unpaid-fines", "no-insurance")),
            "confidence": _confidence(rng, 0.8),
        }
    elif kind == "red_light_violation":
        details = {"plate_hash": plate}
    else:
        limit = rng.choice((50.0, 60.0, 70.0, 80.0))
        details = {
            "plate_hash": plate,
            "speed": round(limit + rng.uniform(11.0, 50.0), 1),
            "limit": limit,
        }
    return _draft(kind, details)


EVENT_GENERATORS: dict[str, EventGenerator] = {
    "cctv": cctv_events,
    "panic_button": panic_events,
    "gunshot": gunshot_events,
    "anpr": anpr_events,
}
"""Event generators of the event-source kinds: ``(device, rng, t, interval_s)``."""


def maybe_event(
    device: Device | Profile, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """An event of a device during the `interval_s` seconds before `t`, or None (mostly)."""
    p = profile_of(device)
    gen = EVENT_GENERATORS.get(p.kind)
    if gen is None or interval_s <= 0:
        return None
    return gen(p, rng, t, interval_s)
