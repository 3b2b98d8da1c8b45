"""Deterministic value generators, one per sensor kind, and rare safe-city events.

A generator is a pure function ``(device, rng, t) -> values``:

- ``device``: the registry `Device`;
- ``rng``: the device's own `random.Random` (see `device_rng`), the only source of noise;
- ``t``: the simulated time, an aware datetime (converted to UTC).

It returns the telemetry ``values`` dict of the device's kind, always inside the
catalogue's hard limits and inside the realistic ranges of CATALOGUE.md.

Where the numbers come from:

- *Static traits* of a device (arterial or side street, lamp wattage, bin size, ...)
  come from a stable hash of its id (`device_trait`), so a device keeps its
  character across seeds and restarts; the seed only changes the noise.
- *City-wide state* (weather, rain, the traffic daily curve) is a pure function of
  time (and of the rounded city location), so every device of a city sees the same
  weather and the same rush hour.
- *Slow state* (waste filling sawtooth, battery drain, uptime, lamp failures) is a
  pure function of time and traits, not something accumulated call after call, so a
  generator can be asked about any instant in any order.

Local time is Asia/Tashkent, a fixed UTC+5 (no DST), for every city.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from safecity import catalogue
from safecity.registry import Device

Value = float | int | bool | str
Values = dict[str, Value]
Generator = Callable[[Device, random.Random, datetime], Values]

LOCAL_OFFSET = timedelta(hours=5)
"""Asia/Tashkent: UTC+5 all year."""

_DAY_S = 86_400.0
_YEAR_DAYS = 365.25
_TWO_PI = 2.0 * math.pi

# --- stable hashing ------------------------------------------------------------------


def stable_int(*parts: object) -> int:
    """A 64-bit integer from the sha256 of the parts: stable across runs and interpreters."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def device_rng(seed: int, device_id: str, stream: str = "values") -> random.Random:
    """The device's own random stream for (seed, device id, stream name)."""
    return random.Random(stable_int("rng", seed, device_id, stream))


def device_trait(device_id: str, name: str) -> float:
    """A static trait of a device in [0, 1), from a stable hash of its id (seed-independent)."""
    return stable_int("trait", device_id, name) / 2.0**64


# --- time -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clock:
    """Simulated time broken down in local (UTC+5) terms."""

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


def clock(t: datetime) -> Clock:
    """Break an aware datetime down into local (UTC+5) hour, weekday, season."""
    if t.tzinfo is None:
        raise ValueError("simulated time must be timezone-aware")
    utc = t.astimezone(UTC)
    local = utc + LOCAL_OFFSET
    hour = local.hour + local.minute / 60 + (local.second + local.microsecond / 1e6) / 3600
    doy = local.timetuple().tm_yday
    return Clock(
        hour=hour,
        weekday=local.weekday(),
        doy=doy,
        month=local.month,
        day=local.day,
        days=utc.timestamp() / _DAY_S,
        winter=(1.0 + math.cos(_TWO_PI * (doy - 15) / _YEAR_DAYS)) / 2.0,
    )


def local_time(t: datetime) -> datetime:
    """The wall-clock time in Tashkent (a UTC-tagged datetime shifted by +5 h)."""
    return t.astimezone(UTC) + LOCAL_OFFSET


# --- shape helpers --------------------------------------------------------------------


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _bump(hour: float, centre: float, width: float) -> float:
    """A Gaussian bump on the 24 h circle."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width) ** 2)


def _year_bump(doy: float, centre: float, width: float) -> float:
    """A Gaussian bump on the year circle."""
    d = (doy - centre + _YEAR_DAYS / 2) % _YEAR_DAYS - _YEAR_DAYS / 2
    return math.exp(-0.5 * (d / width) ** 2)


def _smooth(x: float, lo: float, hi: float) -> float:
    """Smoothstep from 0 at lo to 1 at hi."""
    u = _clamp((x - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _window(hour: float, up0: float, up1: float, down0: float, down1: float) -> float:
    """0 outside, 1 inside [up1, down0], smooth ramps in between (no wrap over midnight)."""
    return _smooth(hour, up0, up1) * (1.0 - _smooth(hour, down0, down1))


def _lognormal(rng: random.Random, sigma: float) -> float:
    """Multiplicative noise with median 1."""
    return math.exp(rng.gauss(0.0, sigma))


# --- city-wide patterns -------------------------------------------------------------


def traffic_level(t: datetime) -> float:
    """City traffic demand in (0, 1]: peaks 07:30-09:30 and 17:00-19:30, trough 02-05."""
    c = clock(t)
    h = c.hour
    level = (
        0.06
        + 0.50 * _window(h, 6.0, 7.5, 20.5, 23.5)
        + 0.42 * _bump(h, 8.5, 0.75)
        + 0.40 * _bump(h, 18.25, 0.95)
    )
    if c.holiday:
        level = 0.06 + (level - 0.06) * 0.55
    elif c.weekday == 6:
        level = 0.06 + (level - 0.06) * 0.6
    elif c.weekday == 5:
        level = 0.06 + (level - 0.06) * 0.75
    return min(level, 1.0)


def sun_elevation(t: datetime, lon: float, lat: float) -> float:
    """Solar elevation in degrees (NOAA-style approximation, good to ~1 degree)."""
    utc = t.astimezone(UTC)
    doy = utc.timetuple().tm_yday
    hours = utc.hour + utc.minute / 60 + utc.second / 3600
    decl = math.radians(23.44) * math.sin(_TWO_PI * (284 + doy) / 365.0)
    b = _TWO_PI * (doy - 81) / 364.0
    eot_min = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
    solar_time = hours + lon / 15.0 + eot_min / 60.0
    hour_angle = math.radians(15.0 * (solar_time - 12.0))
    phi = math.radians(lat)
    sin_el = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    return math.degrees(math.asin(_clamp(sin_el, -1.0, 1.0)))


# Approximate altitude (m) of the cities the registry knows, for station pressure.
_ALTITUDES: tuple[tuple[float, float, float], ...] = (
    (69.28, 41.31, 450.0),  # Tashkent
    (76.90, 43.25, 800.0),  # Almaty
    (74.60, 42.87, 800.0),  # Bishkek
    (68.78, 38.56, 800.0),  # Dushanbe
)


def _altitude(lon: float, lat: float) -> float:
    best = min(_ALTITUDES, key=lambda a: (a[0] - lon) ** 2 + (a[1] - lat) ** 2)
    if (best[0] - lon) ** 2 + (best[1] - lat) ** 2 <= 1.0:
        return best[2]
    return 450.0


@dataclass(frozen=True, slots=True)
class Weather:
    """City-wide weather at an instant: what a perfect station would measure."""

    temperature: float
    humidity: float
    pressure: float
    wind_speed: float
    wind_dir: float
    precipitation: float
    solar: float
    cloud: float
    sun_elevation: float


def _diurnal_temperature(hour: float) -> float:
    """-1 at dawn (06 h), +1 at 15 h; rises over 9 h, falls over 15 h."""
    if 6.0 <= hour < 15.0:
        return -math.cos(math.pi * (hour - 6.0) / 9.0)
    return math.cos(math.pi * ((hour - 15.0) % 24.0) / 15.0)


def weather(t: datetime, lon: float, lat: float) -> Weather:
    """City-wide weather: seasonal and diurnal cycles plus smooth synoptic anomalies."""
    c = clock(t)
    # Same phase for the whole city: location rounded to a degree.
    phase = round(lon) * 0.37 + round(lat) * 0.11
    d = c.days
    synoptic = (
        0.5 * math.sin(_TWO_PI * d / 3.7 + phase)
        + 0.3 * math.sin(_TWO_PI * d / 6.1 + 1.7 * phase + 0.4)
        + 0.2 * math.sin(_TWO_PI * d / 11.3 + 2.1)
    )
    wet = (
        0.5 * math.sin(_TWO_PI * d / 1.3 + 2.0 * phase)
        + 0.3 * math.sin(_TWO_PI * d / 2.9 + 0.5)
        + 0.2 * math.sin(_TWO_PI * d / 7.1 + 1.1 + phase)
    )
    # Rain falls mostly in spring (Mar-Apr) and late autumn; summers are dry.
    rain_season = 0.1 + 0.9 * max(_year_bump(c.doy, 95, 35), _year_bump(c.doy, 340, 40))
    precipitation = max(0.0, wet - (0.92 - 0.45 * rain_season)) * 25.0
    cloud = _clamp(0.25 + 0.45 * wet + 0.25 * rain_season, 0.0, 1.0)
    if precipitation > 0:
        cloud = max(cloud, 0.8)
    f = _diurnal_temperature(c.hour)
    mean = 15.5 - 13.5 * math.cos(_TWO_PI * (c.doy - 15) / _YEAR_DAYS)
    amplitude = 12.0 - 4.0 * c.winter
    temperature = (
        mean
        + amplitude / 2 * f * (1.0 - 0.5 * cloud)
        + (3.0 + 3.0 * c.winter) * synoptic
        - 0.4 * precipitation
    )
    humidity = 0.45 + 0.3 * c.winter - 0.18 * f + 0.05 * precipitation + 0.08 * cloud
    p0 = 1013.25 * math.exp(-_altitude(lon, lat) / 8400.0)
    pressure = p0 + 4.0 * c.winter - 6.0 * synoptic - 0.8 * f
    wind_speed = 1.0 + 1.4 * _bump(c.hour, 15.0, 3.5) + 1.5 * max(0.0, wet)
    wind_dir = (60.0 + 90.0 * synoptic) % 360.0
    elevation = sun_elevation(t, lon, lat)
    solar = 0.0
    if elevation > 0:
        solar = 1000.0 * math.sin(math.radians(elevation)) ** 1.15 * (1.0 - 0.7 * cloud)
    return Weather(
        temperature=_clamp(temperature, -30.0, 44.0),
        humidity=_clamp(humidity, 0.08, 1.0),
        pressure=pressure,
        wind_speed=wind_speed,
        wind_dir=wind_dir,
        precipitation=precipitation,
        solar=solar,
        cloud=cloud,
        sun_elevation=elevation,
    )


# --- generators -----------------------------------------------------------------------


def air_quality(device: Device, rng: random.Random, t: datetime) -> Values:
    """PM, NO2, CO follow traffic and winter heating/inversions; O3 peaks summer afternoons."""
    c = clock(t)
    lon, lat = device.location
    w = weather(t, lon, lat)
    lvl = traffic_level(t)
    trait = device.id
    road = 0.3 + 0.7 * device_trait(trait, "arterial")
    heating = c.winter**1.5
    # Oct-Mar x3..x5 (mid-January), summer x1.
    season = 1.0 + 4.0 * c.winter
    diurnal = (
        0.65
        + 0.35 * _bump(c.hour, 9.0, 1.2)
        + (0.3 + 0.7 * heating) * 0.8 * _bump(c.hour, 22.0, 2.2)
    )
    washout = 1.0 / (1.0 + 0.15 * w.precipitation)
    # Calm air (inversions) concentrates, wind disperses.
    dispersion = 1.4 / (1.0 + 0.2 * w.wind_speed)
    pm25 = (
        (14.0 + 10.0 * device_trait(trait, "pm_site"))
        * season
        * diurnal
        * washout
        * dispersion
        * (1.0 + 0.15 * road * lvl)
        * _lognormal(rng, 0.12)
    )
    pm25 = round(_clamp(pm25, 1.0, 600.0), 1)
    ratio = (1.3 + 1.2 * device_trait(trait, "pm_ratio")) * _lognormal(rng, 0.05)
    pm10 = round(_clamp(pm25 * max(ratio, 1.05), pm25, 1400.0), 1)
    no2 = (18.0 + 8.0 * device_trait(trait, "no2_site")) * (1.0 + 0.3 * c.winter) + road * (
        40.0 + 70.0 * device_trait(trait, "road_load")
    ) * lvl * dispersion
    no2 = round(_clamp(no2 * _lognormal(rng, 0.1), 2.0, 400.0), 1)
    co = (0.25 + 1.0 * road * lvl) * (1.0 + 3.5 * heating) * dispersion * _lognormal(rng, 0.1)
    co = round(_clamp(co, 0.05, 30.0), 2)
    daylight = _clamp(w.sun_elevation / 10.0, 0.0, 1.0)
    summer = 1.0 - c.winter
    titration = road * (0.5 + 0.5 * (1.0 - daylight))
    o3_background = (20.0 + 15.0 * summer) * (1.0 - 0.9 * titration)
    o3_photo = (
        (60.0 + 100.0 * device_trait(trait, "o3_site"))
        * summer**1.2
        * _bump(c.hour, 15.0, 2.3)
        * (1.0 - 0.6 * w.cloud)
    )
    o3 = round(_clamp((o3_background + o3_photo) * _lognormal(rng, 0.08), 0.0, 400.0), 1)
    so2 = (5.0 + 10.0 * device_trait(trait, "so2_site")) + heating * (
        25.0 + 60.0 * device_trait(trait, "coal")
    ) * diurnal * dispersion / 1.2
    so2 = round(_clamp(so2 * _lognormal(rng, 0.1), 0.5, 500.0), 1)
    return {
        "pm25": pm25,
        "pm10": pm10,
        "no2": no2,
        "o3": o3,
        "so2": so2,
        "co": co,
        "temperature": round(w.temperature + rng.gauss(0.0, 0.3), 1),
        "humidity": round(_clamp(w.humidity + rng.gauss(0.0, 0.02), 0.01, 1.0), 2),
    }


def weather_station(device: Device, rng: random.Random, t: datetime) -> Values:
    """Temperature min at dawn, max ~15 h, seasonal mean; solar follows sun elevation."""
    lon, lat = device.location
    w = weather(t, lon, lat)
    wind = w.wind_speed * _lognormal(rng, 0.25)
    if rng.random() < 0.02:
        wind *= rng.uniform(2.0, 4.0)  # a gust
    rain = w.precipitation * rng.uniform(0.8, 1.2) if w.precipitation > 0 else 0.0
    return {
        "temperature": round(w.temperature + rng.gauss(0.0, 0.2), 1),
        "humidity": round(_clamp(w.humidity + rng.gauss(0.0, 0.01), 0.01, 1.0), 2),
        "pressure": round(w.pressure + rng.gauss(0.0, 0.3), 1),
        "wind_speed": round(_clamp(wind, 0.0, 30.0), 1),
        "wind_dir": float(round(w.wind_dir + rng.gauss(0.0, 20.0)) % 360),
        "precipitation": round(_clamp(rain, 0.0, 60.0), 1),
        "solar": round(_clamp(w.solar * rng.uniform(0.95, 1.05), 0.0, 1200.0), 0),
    }


def noise(device: Device, rng: random.Random, t: datetime) -> Values:
    """LAeq follows traffic (floor 02-05 h); LA90 <= LAeq <= LAmax."""
    lvl = traffic_level(t)
    peak = 60.0 + 16.0 * device_trait(device.id, "road")  # 60 residential .. 76 arterial
    floor = 36.0 + 6.0 * device_trait(device.id, "floor")
    laeq = max(peak + 15.0 * math.log10(max(lvl, 0.02)) + rng.gauss(0.0, 1.2), floor)
    la90 = max(laeq - rng.uniform(4.0, 10.0), 25.0)
    # Now and then a horn, a motorbike or a siren.
    lamax = laeq + (rng.uniform(20.0, 35.0) if rng.random() < 0.05 else rng.uniform(8.0, 20.0))
    return {
        "laeq": round(laeq, 1),
        "lamax": round(min(lamax, 110.0), 1),
        "la90": round(la90, 1),
    }


def traffic(device: Device, rng: random.Random, t: datetime) -> Values:
    """Per-lane flow: rush hours, weekends lighter; congested iff avg_speed < 15 km/h."""
    lvl = traffic_level(t)
    lon, lat = device.location
    rain = weather(t, lon, lat).precipitation
    did = device.id
    capacity = 1350.0 + 450.0 * device_trait(did, "capacity")  # peak-hour demand
    v_free = 45.0 + 15.0 * device_trait(did, "v_free")
    jam_prone = 0.6 + 0.4 * device_trait(did, "jam")
    demand = capacity * lvl * _lognormal(rng, 0.08) * (1.0 - 0.02 * min(rain, 10.0))
    saturation = lvl * jam_prone * _lognormal(rng, 0.06)
    speed = v_free * (1.0 - 0.88 * min(saturation, 1.05) ** 4) / (1.0 + 0.03 * rain)
    speed = round(_clamp(speed + rng.gauss(0.0, 1.5), 3.0, 80.0), 1)
    # Flow breaks down in a jam.
    intensity = demand * (0.7 + 0.3 * min(1.0, speed / 20.0))
    intensity = round(_clamp(intensity, 0.0, 2000.0), 0)
    # Density (veh/km) x effective vehicle length, saturating.
    occupancy = round(1.0 - math.exp(-intensity / max(speed, 3.0) * 0.0055), 3)
    return {
        "intensity": intensity,
        "occupancy": occupancy,
        "avg_speed": speed,
        "congested": speed < 15.0,
        "lane": 1 + int(device_trait(did, "lane") * 3),
    }


def parking(device: Device, rng: random.Random, t: datetime) -> Values:
    """Zone occupancy: business-hour plateau in the centre, full at night in residential areas."""
    c = clock(t)
    did = device.id
    total = 20 + int(380 * device_trait(did, "size"))
    off_day = c.weekend or c.holiday
    if device_trait(did, "cbd") < 0.5:
        plateau = 0.85 + 0.10 * device_trait(did, "plateau")
        if off_day:
            plateau *= 0.6
        occ = 0.12 + (plateau - 0.12) * _window(c.hour, 7.5, 10.0, 18.0, 21.0)
    else:
        night = 0.85 + 0.10 * device_trait(did, "night")
        day_level = 0.7 if off_day else 0.45
        occ = night - (night - day_level) * _window(c.hour, 7.0, 9.0, 17.5, 21.0)
    occ = _clamp(occ + rng.gauss(0.0, 0.03), 0.0, 1.0)
    occupied = min(total, max(0, round(occ * total)))
    return {
        "occupancy": round(occupied / total, 3),
        "occupied_spots": occupied,
        "total_spots": total,
    }


_LAMP_FAULTS = (
    "defective_lamp",
    "defective_lamp",
    "defective_lamp",
    "column_issue",
    "broken_lantern",
)


def lamp_status(device_id: str, t: datetime) -> str:
    """~3 % of lamps fail per year, each for 2-14 days, at a hashed moment: a pure function."""
    days = t.astimezone(UTC).timestamp() / _DAY_S
    year = int(days // _YEAR_DAYS)
    for y in (year - 1, year):
        if stable_int("lamp", device_id, y) / 2.0**64 >= 0.03:
            continue
        start = y * _YEAR_DAYS + _YEAR_DAYS * stable_int("lamp-at", device_id, y) / 2.0**64
        length = 2.0 + 12.0 * stable_int("lamp-for", device_id, y) / 2.0**64
        if start <= days < start + length:
            return _LAMP_FAULTS[stable_int("lamp-how", device_id, y) % len(_LAMP_FAULTS)]
    return "ok"


# Lamps switch on a little after sunset (between sunset and civil dusk).
SWITCH_ON_ELEVATION = -3.0


def streetlight(device: Device, rng: random.Random, t: datetime) -> Values:
    """On from dusk to dawn (by sun elevation), dimmed to 50 % 00-05 h local, off by day."""
    lon, lat = device.location
    rated = round(40.0 + 110.0 * device_trait(device.id, "watt"))
    hour = clock(t).hour
    if sun_elevation(t, lon, lat) >= SWITCH_ON_ELEVATION:
        state = "off"
    elif hour < 5.0:
        state = "dimmed"
    else:
        state = "on"
    status = lamp_status(device.id, t)
    if state == "off":
        power = rng.uniform(0.2, 0.8)  # driver standby
    elif status in ("defective_lamp", "column_issue"):
        power = rng.uniform(0.0, 2.0)
    else:
        power = rated * (0.5 if state == "dimmed" else 1.0) * rng.uniform(0.97, 1.03)
    return {"power_state": state, "power": round(power, 1), "status": status}


def crowd(device: Device, rng: random.Random, t: datetime) -> Values:
    """People in a zone: commute peaks, midday plateau, bazaar days, holidays."""
    c = clock(t)
    did = device.id
    capacity = 300.0 + 4700.0 * device_trait(did, "capacity")
    h = c.hour
    profile = (
        0.04
        + 0.30 * _bump(h, 8.3, 1.0)
        + 0.30 * _bump(h, 18.2, 1.3)
        + 0.30 * _window(h, 9.5, 11.0, 16.0, 20.5)
    )
    if device_trait(did, "bazaar") < 0.3 and c.weekend:
        profile += 0.40 * _window(h, 7.0, 9.0, 14.0, 16.0)
    if c.holiday:
        profile += 0.35 * _window(h, 11.0, 14.0, 21.0, 23.5)
    people = capacity * profile * _lognormal(rng, 0.1)
    if rng.random() < 0.005:
        people *= rng.uniform(1.3, 1.8)  # a concert, a match, a demonstration
    count = int(_clamp(people, 0.0, 19_000.0))
    occupancy = round(min(1.0, count / capacity), 3)
    speed = 1.4 * (1.0 - 0.85 * occupancy) + rng.gauss(0.0, 0.05)
    return {
        "people_count": count,
        "occupancy": occupancy,
        "avg_speed": round(_clamp(speed, 0.05, 2.5), 2),
        "congested": occupancy >= 0.7,
    }


def waste(device: Device, rng: random.Random, t: datetime) -> Values:
    """Filling sawtooth: +5-15 %/day, emptied at 06:00 local every 2-6 days."""
    did = device.id
    period = 2 + int(5 * device_trait(did, "collection"))
    phase = int(period * device_trait(did, "phase"))
    local_days = (t.astimezone(UTC) + LOCAL_OFFSET).timestamp() / _DAY_S - 0.25  # 06:00
    elapsed = (local_days - phase) % period
    rate = 0.05 + 0.10 * device_trait(did, "rate")
    level = 0.02 + rate * elapsed + rng.gauss(0.0, 0.01)
    lon, lat = device.location
    w = weather(t, lon, lat)
    temperature = (
        w.temperature + 1.5 + 0.008 * w.solar * device_trait(did, "sunny") + rng.gauss(0.0, 0.4)
    )
    return {
        "filling_level": round(_clamp(level, 0.0, 1.0), 3),
        "temperature": round(_clamp(temperature, -40.0, 80.0), 1),
    }


# Mains-powered kinds report the state of charge of their backup battery.
_MAINS = frozenset({"cctv", "anpr"})


def health(device: Device, rng: random.Random, t: datetime) -> Values:
    """Battery slow drain (and cold-weather drop), RSSI, uptime since the last reboot."""
    did = device.id
    days = t.astimezone(UTC).timestamp() / _DAY_S
    if device.kind in _MAINS:
        battery = 0.97 + 0.03 * device_trait(did, "ups") + rng.gauss(0.0, 0.003)
    else:
        drain = 0.002 + 0.004 * device_trait(did, "drain")  # per day
        life = 0.85 / drain  # days until the battery is swapped at ~13 %
        age = (days + device_trait(did, "installed") * life) % life
        lon, lat = device.location
        cold = 0.004 * max(0.0, -weather(t, lon, lat).temperature)
        battery = 0.98 - drain * age - cold + rng.gauss(0.0, 0.003)
    rssi = -118.0 + 55.0 * device_trait(did, "rssi") + rng.gauss(0.0, 2.5)
    period_s = (5.0 + 55.0 * device_trait(did, "reboot")) * _DAY_S
    uptime = int((days * _DAY_S + device_trait(did, "booted") * period_s) % period_s)
    return {
        "battery": round(_clamp(battery, 0.0, 1.0), 3),
        "rssi": round(_clamp(rssi, -130.0, -45.0), 1),
        "uptime": uptime,
    }


GENERATORS: dict[str, Generator] = {
    "air_quality": air_quality,
    "weather": weather_station,
    "noise": noise,
    "traffic": traffic,
    "parking": parking,
    "streetlight": streetlight,
    "crowd": crowd,
    "waste": waste,
    "device_health": health,
    "cctv": health,
    "panic_button": health,
    "gunshot": health,
    "anpr": health,
}
"""The value generator of every catalogue kind."""


def generate(device: Device, rng: random.Random, t: datetime) -> Values:
    """The values of one reading of `device` at simulated time `t` (KeyError if kind unknown)."""
    return GENERATORS[device.kind](device, rng, t)


# --- events ---------------------------------------------------------------------------

Detail = float | int | str


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event to publish: its type, severity and details (valid per `event_model`)."""

    type: str
    severity: str
    details: dict[str, Detail]


EventGenerator = Callable[[Device, random.Random, datetime, float], EventDraft | None]

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


def _confidence(rng: random.Random, lo: float = 0.6) -> float:
    return round(rng.uniform(lo, 0.99), 2)


_PEOPLE_FIRST = ("person", "person", "person", "person", "car", "bicycle", "motorcycle", "animal")
_VEHICLES = ("car", "car", "car", "truck", "bus", "motorcycle", "bicycle")


def cctv_events(
    device: Device, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """Video analytics: intrusions mostly at night, crowding by day; a few per camera per day."""
    c = clock(t)
    night = c.hour >= 22.0 or c.hour < 5.0
    day = _window(c.hour, 7.0, 9.0, 19.0, 22.0)
    rates = {
        "intrusion": 0.06 if night else 0.02,
        "line_crossing": 0.02 + 0.12 * traffic_level(t),
        "wrong_way": 0.01,
        "loitering": 0.03,
        "abandoned_object": 0.008,
        "crowd_threshold": 0.005 + 0.03 * day,
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
    device: Device, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """An SOS press: rare (about once per button per three weeks)."""
    if _pick(rng, {"panic": 0.002}, interval_s) is None:
        return None
    return _draft(
        "panic",
        {"button": device.id, "location_name": f"{device.district} stop {1 + rng.randrange(20)}"},
    )


def gunshot_events(
    device: Device, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """An impulsive-noise detection, very rare, located within ~15 m by >= 6 sensors."""
    if _pick(rng, {"gunshot": 0.0002}, interval_s) is None:
        return None
    lon, lat = device.location
    north = rng.gauss(0.0, 10.0)
    east = rng.gauss(0.0, 10.0)
    return _draft(
        "gunshot",
        {
            "rounds": 1 + (rng.randrange(1, 8) if rng.random() < 0.3 else 0),
            "lat": round(_clamp(lat + north / 111_320.0, -90.0, 90.0), 6),
            "lon": round(
                _clamp(lon + east / (111_320.0 * math.cos(math.radians(lat))), -180.0, 180.0), 6
            ),
            "accuracy_m": round(rng.uniform(3.0, 15.0), 1),
            "sensors": rng.randrange(6, 13),
            "confidence": _confidence(rng, 0.75),
        },
    )


def anpr_events(
    device: Device, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """Plate reads: watch-list hits, red-light and speeding violations; plates salted-hashed."""
    lvl = traffic_level(t)
    rates = {
        "anpr_hit": 0.01 + 0.02 * lvl,
        "red_light_violation": 0.03 + 0.1 * lvl,
        "speeding_violation": 0.15 * (1.2 - lvl),
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
    device: Device, rng: random.Random, t: datetime, interval_s: float
) -> EventDraft | None:
    """An event of `device` during the `interval_s` seconds before `t`, or None (mostly)."""
    gen = EVENT_GENERATORS.get(device.kind)
    return None if gen is None else gen(device, rng, t, interval_s)
