"""Value generators, one per sensor kind: shared drivers + a device's own process + noise.

A generator is a function ``(profile, rng, t) -> values``:

- ``profile``: the device's `sites.Profile` (site, land use, climate, neighbours);
- ``rng``: the device's stream for this step (`step_rng` in the fleet, or any
  `random.Random`, e.g. `device_rng`): measurement noise only;
- ``t``: the simulated time, an aware datetime.

A reading is built from three layers:

- *shared drivers*, pure functions of time: the city's weather (`simulators.weather`:
  spells, inversions, dust, rain), its traffic demand (`traffic_level`, weekday and
  weekend shapes) and, for air quality, the city's pollution load;
- the device's *persistent deviation*: mean-reverting processes
  (`simulators.processes.ou`) over hours (the device, its road) and days (its
  district), keyed so that neighbours share them: a noise sensor hears the same road
  process the nearest traffic sensor counts;
- *measurement noise* from the device's rng.

Levels and daily shapes follow the site type and the district's land use, not a
hash. Local time is the city's (its climate's UTC offset).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime

from safecity.registry import Device
from simulators.processes import ou
from simulators.sites import Profile, standalone
from simulators.timebase import (
    DAY_S,
    YEAR_DAYS,
    Clock,
    bump,
    clamp,
    clock,
    device_rng,
    device_trait,
    lognormal,
    stable_int,
    window,
)
from simulators.weather import Weather, sun_elevation, weather

__all__ = [
    "GENERATORS",
    "Generator",
    "Value",
    "Values",
    "device_rng",
    "device_trait",
    "generate",
    "profile_of",
    "stable_int",
    "sun_elevation",
    "traffic_level",
]

Value = float | int | bool | str
Values = dict[str, Value]
Generator = Callable[[Profile, random.Random, datetime], Values]

_H = 3600.0


def _hours(t: datetime) -> float:
    return t.astimezone(UTC).timestamp() / _H


# --- shared drivers -----------------------------------------------------------------


def traffic_shape(c: Clock) -> float:
    """City traffic demand in (0, 1]: weekday peaks 07:30-09:30 and 17:00-19:30, trough
    02-05; Saturdays and holidays a late-morning and evening swell, Sundays lighter still."""
    h = c.hour
    if c.weekday < 5 and not c.holiday:
        level = (
            0.05
            + 0.50 * window(h, 6.0, 7.5, 20.5, 23.8)
            + 0.42 * bump(h, 8.5, 0.75)
            + 0.40 * bump(h, 18.25, 0.95)
        )
    else:
        sunday = c.weekday == 6 or c.holiday
        level = (0.06 + 0.45 * window(h, 6.5, 10.0, 21.0, 24.0) + 0.2 * bump(h, 12.5, 2.0)
                 + 0.15 * bump(h, 19.0, 1.5)) * (0.75 if sunday else 0.9)  # fmt: skip
    return min(level, 1.0)


def traffic_level(t: datetime, utc_offset_h: float = 5.0) -> float:
    """City traffic demand at `t` (see `traffic_shape`)."""
    return traffic_shape(clock(t, utc_offset_h))


def road_level(p: Profile, c: Clock, hours: float, road_key: int | None = None) -> float:
    """Traffic demand on a road: the city's, times the road's own hours-long and days-long swing."""
    key = p.road_key if road_key is None else road_key
    dev = 0.2 * ou(key, hours, 2.0, 0.25) + 0.12 * ou(key ^ 0x51, hours, 36.0, 6.0)
    return traffic_shape(c) * math.exp(dev - 0.027)


_LAND_PM = {"industrial": 1.35, "centre": 1.12, "mixed": 1.0, "residential": 0.9}
_SITE_PM = {"industrial": 1.2, "arterial": 1.1, "market": 1.05, "side_street": 1.0,
            "school": 0.95, "park": 0.85}  # fmt: skip


def city_pm25(p: Profile, c: Clock, w: Weather) -> float:
    """The city's PM2.5 background: heating season, stagnation, night inversions, rain."""
    climate = p.climate
    heating = max(w.heating, 0.6 * c.winter**2)
    base = climate.summer_pm25 + (climate.winter_pm25 - climate.summer_pm25) * heating
    diurnal = 0.75 + 0.25 * bump(c.hour, 8.5, 1.3) + (0.3 + 1.0 * heating) * w.inversion
    diurnal += 0.5 * heating * bump(c.hour, 20.5, 2.5)
    washout = 1.0 / (1.0 + 0.2 * w.precipitation)
    return float(base * w.stagnation**0.75 * diurnal * washout)


# --- generators -----------------------------------------------------------------------


def air_quality(p: Profile, rng: random.Random, t: datetime) -> Values:
    """PM from the city load, the district's land use and the site; NO2/CO from the nearest road."""
    c = clock(t, p.climate.utc_offset_h)
    w = weather(t, p.climate)
    hours = _hours(t)
    road = road_level(p, c, hours) * p.road_weight
    own = 0.22 * ou(p.key, hours, 8.0) + 0.15 * ou(p.district_key, hours, 30.0, 3.0)
    local = _LAND_PM[p.land_use] * _SITE_PM[p.site] * math.exp(own - 0.035)
    dispersion = 1.6 / (1.0 + 0.3 * w.wind_speed)
    # Relative noise, plus an optical sensor's absolute noise (~0.3 ug/m3): on very clean
    # air a purely relative one would repeat the same rounded value for half an hour.
    pm25 = city_pm25(p, c, w) * local * (1.0 + 0.25 * road) * lognormal(rng, 0.04)
    pm25 = abs(pm25 + rng.gauss(0.0, 0.3))
    ratio = (1.6 + (0.5 if p.site == "industrial" else 0.0)) * math.exp(
        0.1 * ou(p.key ^ 7, hours, 12)
    )
    coarse = 1400.0 * w.dust * math.exp(0.2 * ou(p.district_key ^ 3, hours, 6.0))
    pm10 = pm25 * ratio + coarse
    pm25 += 0.21 * coarse
    no2 = (15.0 + 10.0 * w.heating) * math.exp(0.5 * own) + 110.0 * road * dispersion
    no2 *= lognormal(rng, 0.05)
    co = (0.3 + 1.4 * road * dispersion) * (1.0 + 2.5 * w.heating * (0.5 + w.inversion))
    co *= lognormal(rng, 0.05)
    daylight = clamp(w.sun_elevation / 10.0, 0.0, 1.0)
    summer = 1.0 - c.winter
    titration = road * (0.5 + 0.5 * (1.0 - daylight))
    o3 = (20.0 + 15.0 * summer) * (1.0 - 0.8 * min(titration, 1.0)) + (
        130.0 * summer**1.2 * bump(c.hour, 15.0, 2.3) * (1.0 - 0.6 * w.cloud)
    ) * math.exp(0.2 * own)
    coal = 40.0 if p.land_use == "industrial" else 20.0
    so2 = (5.0 + coal * w.heating * (1.0 + w.inversion)) * math.exp(own) * lognormal(rng, 0.05)
    return {
        "pm25": round(clamp(pm25, 1.0, 1400.0), 1),
        "pm10": round(clamp(max(pm10, pm25 * 1.05), 1.0, 2900.0), 1),
        "no2": round(clamp(no2, 2.0, 900.0), 1),
        "o3": round(clamp(o3 * lognormal(rng, 0.05), 0.0, 700.0), 1),
        "so2": round(clamp(so2, 0.5, 900.0), 1),
        "co": round(clamp(co, 0.05, 90.0), 2),
        "temperature": round(w.temperature + _heat_island(p, c) + rng.gauss(0.0, 0.2), 1),
        "humidity": round(clamp(w.humidity + rng.gauss(0.0, 0.015), 0.01, 1.0), 2),
    }


def _heat_island(p: Profile, c: Clock) -> float:
    """Dense districts stay warmer at night; parks cooler."""
    night = 1.0 - window(c.hour, 7.0, 10.0, 17.0, 20.0)
    urban = {"centre": 1.2, "industrial": 0.8, "mixed": 0.6, "residential": 0.4}[p.land_use]
    return urban * night - (0.5 if p.site == "park" else 0.0)


def weather_station(p: Profile, rng: random.Random, t: datetime) -> Values:
    """The city's weather at the station, with its own small offsets and instrument noise."""
    w = weather(t, p.climate)
    c = clock(t, p.climate.utc_offset_h)
    gust = lognormal(rng, 0.2)
    # Siting: shade, walls, a park's cool pocket: a slow local offset of ~0.6 K.
    own = 0.6 * ou(p.key, _hours(t), 6.0, 1.0)
    rain = w.precipitation * rng.uniform(0.85, 1.15) if w.precipitation > 0 else 0.0
    return {
        "temperature": round(w.temperature + _heat_island(p, c) + own + rng.gauss(0.0, 0.15), 1),
        "humidity": round(clamp(w.humidity + rng.gauss(0.0, 0.01), 0.01, 1.0), 2),
        "pressure": round(w.pressure + rng.gauss(0.0, 0.2), 1),
        "wind_speed": round(clamp(w.wind_speed * gust, 0.0, 70.0), 1),
        "wind_dir": float(round(w.wind_dir + rng.gauss(0.0, 15.0)) % 360),
        "precipitation": round(clamp(rain, 0.0, 250.0), 1),
        "solar": round(clamp(w.solar * rng.uniform(0.97, 1.03), 0.0, 1400.0), 0),
    }


_NOISE_BASE = {"arterial": 77.0, "industrial": 72.0, "market": 71.0, "side_street": 67.0,
               "school": 65.0, "park": 60.0}  # fmt: skip


def noise(p: Profile, rng: random.Random, t: datetime) -> Values:
    """LAeq from the nearest road's traffic (log), the site's level and a night floor."""
    c = clock(t, p.climate.utc_offset_h)
    hours = _hours(t)
    flow = road_level(p, c, hours) * p.road_weight + 0.01
    base = _NOISE_BASE[p.site] + 1.5 * ou(p.key, hours, 24.0, 3.0)
    floor = 38.0 + (4.0 if p.land_use in ("centre", "industrial") else 0.0)
    laeq = 10.0 * math.log10(10 ** (floor / 10.0) + 10 ** ((base + 12.0 * math.log10(flow)) / 10.0))
    laeq += rng.gauss(0.0, 0.7)
    la90 = max(laeq - 4.0 - 4.0 * (1.0 - flow) - rng.uniform(0.0, 2.0), 25.0)
    # Now and then a horn, a motorbike or a siren.
    lamax = laeq + (rng.uniform(20.0, 30.0) if rng.random() < 0.04 else rng.uniform(8.0, 18.0))
    return {"laeq": round(laeq, 1), "lamax": round(min(lamax, 108.0), 1), "la90": round(la90, 1)}


_CAPACITY = {"arterial": (1400.0, 500.0), "side_street": (500.0, 400.0),
             "industrial": (700.0, 400.0)}  # fmt: skip


def traffic(p: Profile, rng: random.Random, t: datetime) -> Values:
    """Per-lane flow from the road's demand; rain slows it; congested iff avg_speed < 15 km/h."""
    c = clock(t, p.climate.utc_offset_h)
    lvl = road_level(p, c, _hours(t))
    rain = weather(t, p.climate).precipitation
    did = p.id
    cap0, cap1 = _CAPACITY.get(p.site, _CAPACITY["side_street"])
    capacity = cap0 + cap1 * device_trait(did, "capacity")
    v_free = (50.0 if p.site == "arterial" else 38.0) + 12.0 * device_trait(did, "v_free")
    jam_prone = 0.6 + 0.4 * device_trait(did, "jam")
    wet = min(rain, 20.0)
    demand = capacity * lvl * (1.0 - 0.01 * wet)
    # Counting noise of a minute's vehicles.
    demand += rng.gauss(0.0, math.sqrt(max(demand, 1.0) * 60.0)) / 60.0 * 0.5
    saturation = lvl * jam_prone * (1.0 + 0.02 * wet)
    speed = v_free * (1.0 - 0.88 * min(saturation, 1.05) ** 4) / (1.0 + 0.025 * wet)
    speed = round(clamp(speed + rng.gauss(0.0, 1.0), 3.0, 80.0), 1)
    intensity = round(clamp(demand * (0.7 + 0.3 * min(1.0, speed / 20.0)), 0.0, 2000.0), 0)
    occupancy = round(1.0 - math.exp(-intensity / max(speed, 3.0) * 0.0055), 3)
    return {
        "intensity": intensity,
        "occupancy": occupancy,
        "avg_speed": speed,
        "congested": speed < 15.0,
        "lane": 1 + int(device_trait(did, "lane") * 3),
    }


def parking(p: Profile, rng: random.Random, t: datetime) -> Values:
    """Occupancy by land use: business plateau in the centre, full at night in housing areas."""
    c = clock(t, p.climate.utc_offset_h)
    did = p.id
    total = 20 + int(380 * device_trait(did, "size"))
    off_day = c.weekend or c.holiday
    business = 0.12 + (0.9 * (0.6 if off_day else 1.0) - 0.12) * window(
        c.hour, 7.5, 10.0, 18.0, 21.0
    )
    night = 0.9 - (0.9 - (0.7 if off_day else 0.45)) * window(c.hour, 7.0, 9.0, 17.5, 21.0)
    shift = 0.1 + (0.0 if off_day else 0.65) * window(c.hour, 6.5, 8.0, 17.0, 18.5)
    occ = {"centre": business, "residential": night, "industrial": shift}.get(
        p.land_use, 0.5 * business + 0.5 * night
    )
    if p.site == "market":
        occ = max(occ, 0.15 + 0.75 * window(c.hour, 7.0, 9.0, 16.0, 18.0))
    occ += 0.05 * ou(p.key, _hours(t), 3.0, 0.5) + rng.gauss(0.0, 0.01)
    occupied = min(total, max(0, round(clamp(occ, 0.0, 1.0) * total)))
    return {
        "occupancy": round(occupied / total, 3),
        "occupied_spots": occupied,
        "total_spots": total,
    }


_LAMP_FAULTS = ("defective_lamp", "defective_lamp", "defective_lamp", "column_issue",
                "broken_lantern")  # fmt: skip


def lamp_status(device_id: str, t: datetime) -> str:
    """~3 % of lamps fail per year, each for 2-14 days, at a hashed moment: a pure function."""
    days = t.astimezone(UTC).timestamp() / DAY_S
    year = int(days // YEAR_DAYS)
    for y in (year - 1, year):
        if stable_int("lamp", device_id, y) / 2.0**64 >= 0.03:
            continue
        start = y * YEAR_DAYS + YEAR_DAYS * stable_int("lamp-at", device_id, y) / 2.0**64
        length = 2.0 + 12.0 * stable_int("lamp-for", device_id, y) / 2.0**64
        if start <= days < start + length:
            return _LAMP_FAULTS[stable_int("lamp-how", device_id, y) % len(_LAMP_FAULTS)]
    return "ok"


SWITCH_ON_ELEVATION = -3.0
"""Lamps switch on a little after sunset (between sunset and civil dusk)."""


def rated_power(p: Profile) -> float:
    """A streetlight's rated LED power (W), a trait of the lamp: 40-150 W."""
    return round(40.0 + 110.0 * device_trait(p.id, "watt"))


def streetlight(p: Profile, rng: random.Random, t: datetime) -> Values:
    """On from dusk to dawn (by sun elevation), dimmed to 50 % 00-05 h local, off by day."""
    lon, lat = p.device.location
    rated = rated_power(p)
    hour = clock(t, p.climate.utc_offset_h).hour
    if sun_elevation(t, lon, lat) >= SWITCH_ON_ELEVATION:
        state = "off"
    elif hour < 5.0:
        state = "dimmed"
    else:
        state = "on"
    status = lamp_status(p.id, t)
    if state == "off":
        power = rng.uniform(0.2, 0.8)  # driver standby
    elif status in ("defective_lamp", "column_issue"):
        power = rng.uniform(0.0, 2.0)
    else:
        power = rated * (0.5 if state == "dimmed" else 1.0) * rng.uniform(0.97, 1.03)
    return {"power_state": state, "power": round(power, 1), "status": status}


_CROWD_CAPACITY = {"market": (1200.0, 2000.0), "arterial": (800.0, 1700.0),
                   "park": (300.0, 1200.0), "school": (200.0, 600.0)}  # fmt: skip


def crowd_level(p: Profile, c: Clock, hours: float, key: int | None = None) -> float:
    """Share of a zone's capacity present, by site and day type, with the zone's own swing."""
    h = c.hour
    off = c.weekend or c.holiday
    if p.site == "market":
        shape = 0.05 + 0.55 * window(h, 5.5, 10.5, 14.5, 19.0) * (1.15 if off else 1.0)
    elif p.site == "school":
        shape = 0.03 + (0.0 if off else 0.6 * window(h, 7.5, 8.2, 12.5, 14.0))
    elif p.site == "park":
        shape = 0.03 + 0.35 * window(h, 9.0, 11.0, 19.0, 22.0) * (1.6 if off else 1.0)
    else:
        shape = 0.04 + (0.2 if off else 0.3) * (bump(h, 8.3, 1.0) + bump(h, 18.2, 1.3))
        shape += 0.25 * window(h, 9.5, 11.0, 16.0, 20.5)
    if c.holiday:
        shape += 0.3 * window(h, 11.0, 14.0, 21.0, 23.5)
    k = p.key if key is None else key
    return shape * math.exp(0.1 * ou(k, hours, 3.0, 0.25) - 0.005)


def crowd(p: Profile, rng: random.Random, t: datetime) -> Values:
    """People in a zone: site-shaped day (markets, schools, parks, stations), smooth swings."""
    c = clock(t, p.climate.utc_offset_h)
    lo, span = _CROWD_CAPACITY.get(p.site, _CROWD_CAPACITY["arterial"])
    capacity = lo + span * device_trait(p.id, "capacity")
    people = capacity * crowd_level(p, c, _hours(t)) * (1.0 + rng.gauss(0.0, 0.015))
    count = int(clamp(people, 0.0, 19_000.0))
    occupancy = round(min(1.0, count / capacity), 3)
    speed = 1.4 * (1.0 - 0.85 * occupancy) + rng.gauss(0.0, 0.03)
    return {
        "people_count": count,
        "occupancy": occupancy,
        "avg_speed": round(clamp(speed, 0.05, 2.5), 2),
        "congested": occupancy >= 0.7,
    }


def waste(p: Profile, rng: random.Random, t: datetime) -> Values:
    """Filling sawtooth: +5-20 %/day (markets faster), emptied at 06:00 every 2-6 days."""
    did = p.id
    period = 2 + int(5 * device_trait(did, "collection"))
    phase = int(period * device_trait(did, "phase"))
    offset_s = p.climate.utc_offset_h * _H
    local_days = (t.astimezone(UTC).timestamp() + offset_s) / DAY_S - 0.25  # 06:00
    elapsed = (local_days - phase) % period
    rate = (0.05 + 0.10 * device_trait(did, "rate")) * (1.5 if p.site == "market" else 1.0)
    level = 0.02 + rate * elapsed + rng.gauss(0.0, 0.01)
    w = weather(t, p.climate)
    temperature = w.temperature + 1.5 + 0.008 * w.solar * device_trait(did, "sunny")
    return {
        "filling_level": round(clamp(level, 0.0, 1.0), 3),
        "temperature": round(clamp(temperature + rng.gauss(0.0, 0.4), -40.0, 80.0), 1),
    }


_MAINS = frozenset({"cctv", "anpr"})
"""Mains-powered kinds report the state of charge of their backup battery."""


def health(p: Profile, rng: random.Random, t: datetime) -> Values:
    """Battery slow drain (and cold-weather drop), RSSI, uptime since the last reboot."""
    did = p.id
    days = t.astimezone(UTC).timestamp() / DAY_S
    if p.kind in _MAINS:
        battery = 0.97 + 0.03 * device_trait(did, "ups") + rng.gauss(0.0, 0.003)
    else:
        drain = 0.002 + 0.004 * device_trait(did, "drain")  # per day
        life = 0.85 / drain  # days until the battery is swapped at ~13 %
        age = (days + device_trait(did, "installed") * life) % life
        cold = 0.004 * max(0.0, -weather(t, p.climate).temperature)
        battery = 0.98 - drain * age - cold + rng.gauss(0.0, 0.003)
    rssi = -118.0 + 55.0 * device_trait(did, "rssi") + rng.gauss(0.0, 2.5)
    period_s = (5.0 + 55.0 * device_trait(did, "reboot")) * DAY_S
    uptime = int((days * DAY_S + device_trait(did, "booted") * period_s) % period_s)
    return {
        "battery": round(clamp(battery, 0.0, 1.0), 3),
        "rssi": round(clamp(rssi, -130.0, -45.0), 1),
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

_standalone: dict[str, Profile] = {}


def profile_of(device: Device | Profile) -> Profile:
    """A profile as is, or a bare device's standalone profile (cached)."""
    if isinstance(device, Profile):
        return device
    found = _standalone.get(device.id)
    # Identity first: comparing two registry models field by field costs more than a reading.
    if found is None or (found.device is not device and found.device != device):
        found = _standalone[device.id] = standalone(device)
    return found


def generate(device: Device | Profile, rng: random.Random, t: datetime) -> Values:
    """The values of one reading of a device at simulated time `t` (KeyError if kind unknown)."""
    p = profile_of(device)
    return GENERATORS[p.kind](p, rng, t)
