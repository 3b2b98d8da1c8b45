"""Hashing, local time and shape helpers shared by the weather, the processes and the generators.

Everything random in the simulator is either a device's own `random.Random` stream
(measurement noise) or a *hash of a key and an instant* (`unit`, `normal`): the
latter makes a value a pure function of time, the same whichever order it is asked
in, and different on every date.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache

DAY_S = 86_400.0
YEAR_DAYS = 365.25
TWO_PI = 2.0 * math.pi
_MASK = (1 << 64) - 1
_TO_UNIT = 2.0**-53


def stable_int(*parts: object) -> int:
    """A 64-bit integer from the sha256 of the parts: stable across runs and interpreters."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def device_rng(seed: int, device_id: str, stream: str = "values") -> random.Random:
    """The device's own random stream for (seed, device id, stream name)."""
    return random.Random(stable_int("rng", seed, device_id, stream))


_STEP_RNG = random.Random()


def step_rng(key: int, ts_ms: int) -> random.Random:
    """The stream of one device's step at `ts_ms`, `key` its `stable_int`: valid until the
    next call (one shared generator, reseeded).

    A fleet of thousands holds an int per device instead of a 2.5 KB Mersenne Twister.
    """
    _STEP_RNG.seed(mix64(key ^ mix64(ts_ms & _MASK)))
    return _STEP_RNG


@lru_cache(maxsize=1 << 16)
def device_trait(device_id: str, name: str) -> float:
    """A static trait of a device in [0, 1), from a stable hash of its id (seed-independent)."""
    return stable_int("trait", device_id, name) / 2.0**64


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def unit(key: int, k: int) -> float:
    """A uniform number in (0, 1) for (key, k): a pure function, cheap (no sha256)."""
    return ((mix64(key ^ mix64(k & _MASK)) >> 11) + 0.5) * _TO_UNIT


_MIXED: dict[int, int] = {}
_MIXED_MAX = 1 << 16


def normal(key: int, k: int) -> float:
    """A standard normal number for (key, k) (Box-Muller on two hashed uniforms).

    `mix64(key ^ mix64(k))` and `mix64` of that, written out: the processes draw millions
    of these in a backfill, and the calls cost more than the arithmetic. `mix64(k)` is
    the same for every key: every device's processes ask for the same few hundred knots
    around the current time, so it is looked up (a third of the hashing) most times."""
    mixed = _MIXED.get(k)
    if mixed is None:
        mixed = _MIXED[k] = mix64(k & _MASK)
        if len(_MIXED) > _MIXED_MAX:
            _MIXED.clear()
    z = ((key ^ mixed) + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    h = z ^ (z >> 31)
    z = (h + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    u1 = ((h >> 11) + 0.5) * _TO_UNIT
    u2 = (((z ^ (z >> 31)) >> 11) + 0.5) * _TO_UNIT
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(TWO_PI * u2)


# --- local time ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clock:
    """Simulated time broken down in a city's local terms."""

    hour: float
    """Local hour of day, [0, 24)."""
    weekday: int
    """Local weekday, Monday 0."""
    doy: int
    """Local day of the year, 1..366."""
    month: int
    day: int
    days: float
    """Days since the Unix epoch (UTC), fractional."""
    local_day: int
    """Local date as days since the Unix epoch."""
    winter: float
    """Seasonal weight: 1 in mid-January, 0 in mid-July."""

    @property
    def weekend(self) -> bool:
        """Saturday or Sunday."""
        return self.weekday >= 5

    @property
    def holiday(self) -> bool:
        """New Year, Navruz (21 March), Independence Day (1 September)."""
        return (self.month, self.day) in {(1, 1), (3, 21), (9, 1)}


EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


@lru_cache(maxsize=4096)
def _date_parts(local_day: int) -> tuple[int, int, int, float]:
    d = date.fromordinal(local_day + EPOCH_ORDINAL)
    doy = d.timetuple().tm_yday
    return doy, d.month, d.day, (1.0 + math.cos(TWO_PI * (doy - 15) / YEAR_DAYS)) / 2.0


def clock(t: datetime, utc_offset_h: float = 5.0) -> Clock:
    """Break an aware datetime down into local hour, weekday, season (fixed UTC offset)."""
    if t.tzinfo is None:
        raise ValueError("simulated time must be timezone-aware")
    stamp = t.timestamp()
    local = stamp + utc_offset_h * 3600.0
    local_day = int(local // DAY_S)
    doy, month, day, winter = _date_parts(local_day)
    return Clock(
        hour=(local - local_day * DAY_S) / 3600.0,
        weekday=(local_day + 3) % 7,  # 1 January 1970 was a Thursday
        doy=doy,
        month=month,
        day=day,
        days=stamp / DAY_S,
        local_day=local_day,
        winter=winter,
    )


# --- shapes -------------------------------------------------------------------


def clamp(x: float, lo: float, hi: float) -> float:
    """x limited to [lo, hi]."""
    return lo if x < lo else hi if x > hi else x


def bump(hour: float, centre: float, width: float) -> float:
    """A Gaussian bump on the 24 h circle."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width) ** 2)


def smooth(x: float, lo: float, hi: float) -> float:
    """Smoothstep from 0 at lo to 1 at hi."""
    u = clamp((x - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def window(hour: float, up0: float, up1: float, down0: float, down1: float) -> float:
    """0 outside, 1 inside [up1, down0], smooth ramps in between (no wrap over midnight)."""
    return smooth(hour, up0, up1) * (1.0 - smooth(hour, down0, down1))


def lognormal(rng: random.Random, sigma: float) -> float:
    """Multiplicative noise with median 1."""
    return math.exp(rng.gauss(0.0, sigma))


# --- geometry -----------------------------------------------------------------

EARTH_M_PER_DEG = 111_320.0


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Equirectangular distance between two [lon, lat] points, metres (fine within a city)."""
    mean_lat = math.radians((a[1] + b[1]) / 2)
    dx = (a[0] - b[0]) * math.cos(mean_lat) * EARTH_M_PER_DEG
    dy = (a[1] - b[1]) * EARTH_M_PER_DEG
    return math.hypot(dx, dy)


def offset(point: tuple[float, float], east_m: float, north_m: float) -> tuple[float, float]:
    """A point moved by metres east and north."""
    lat = point[1] + north_m / EARTH_M_PER_DEG
    lon = point[0] + east_m / (EARTH_M_PER_DEG * math.cos(math.radians(point[1])))
    return (lon, lat)
