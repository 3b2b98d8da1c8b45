"""City weather from a climate: a daily calendar of synoptic spells, then hourly values.

Day by day (`day`), a pure function of the climate and the local date:

- *spells* start on hashed days at seasonal rates and last days: cold calm
  anticyclones (November-March: calm, clear, cold nights, dry, pollution builds up),
  fronts (wind, cloud, most of the rain, a temperature drop), heat waves (June-August,
  +4-6 K, dry) and dust events (March-October, `Climate.dust_per_year`, strong wind);
- a temperature anomaly (AR(1), 0.7 a day; sd `t_sd_winter`, half in summer), the
  wind (AR(1) around the monthly normal) and a wet/dry latent (AR(1), 0.5 a day) whose
  wet share is the month's ``precip_days`` once the spells' own share is counted;
  a wet day's amount is exponential around the month's mean amount per wet day, and
  in the warm season a few wet days carry a convective burst of 25-55 mm/h;
- `stagnation`: how far pollution has built up, an exponential average of the
  ventilation deficit (0.6 a day) that wind and rain clear.

Hour by hour (`weather`): the diurnal temperature cycle (min at dawn, max ~15 h,
range shrinking under cloud), the rain window of a wet day, afternoon wind, the
surface `inversion` (night, calm, clear, cold) and the dust load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import NamedTuple

from simulators.climate import Climate, Months
from simulators.timebase import EPOCH_ORDINAL, TWO_PI, clamp, clock, smooth, stable_int, unit

_SQRT2 = math.sqrt(2.0)
_WARMUP_DAYS = 60
_SPELL_MAX_DAYS = 9
# Measured: the wet latent's clustering and the spells' overlap leave ~20 % more wet
# days than the month's normal without it.
_WET_CALIBRATION = 0.85


@dataclass(frozen=True, slots=True)
class Day:
    """One local day of a city's weather."""

    t_mean: float
    t_range: float
    wind: float
    rain_mm: float
    rain_start: float
    rain_hours: float
    burst: float
    """mm/h of a convective burst in the rain window (0: none)."""
    cloud: float
    spell: str
    """'', 'anticyclone', 'front', 'heat' or 'dust'."""
    stagnation: float
    """Pollution build-up multiplier: ~1 ordinary, 2-3 after calm days, < 0.6 after wind/rain."""
    dust: float
    """Dust load, 0..1."""
    dewpoint_spread: float


def monthly(values: Months, doy: float) -> float:
    """A monthly normal interpolated to a day of the year (months centred mid-month)."""
    m = (doy - 15.2) / 30.44
    i = math.floor(m)
    f = m - i
    return values[i % 12] * (1.0 - f) + values[(i + 1) % 12] * f


def _winter(doy: float) -> float:
    return (1.0 + math.cos(TWO_PI * (doy - 15.0) / 365.25)) / 2.0


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / _SQRT2))


def _rates(c: Climate, doy: float) -> tuple[float, float, float, float]:
    """Daily start probabilities: anticyclone, heat wave, dust, front."""
    w = _winter(doy)
    anticyclone = 0.07 * smooth(w, 0.55, 0.9)
    heat = 0.03 * smooth(1.0 - w, 0.8, 0.97)
    dusty = 1.0 if 60 <= doy <= 300 else 0.0
    dust = c.dust_per_year / 240.0 * dusty
    wet_share = monthly(c.precip_days, doy) / 30.4
    front = clamp(0.35 * wet_share, 0.0, 0.25)
    return anticyclone, heat, dust, front


_LENGTHS = {"anticyclone": (3, 7), "heat": (3, 8), "dust": (1, 3), "front": (1, 2)}


def _spell_start(c: Climate, key: int, d: int) -> tuple[str, int] | None:
    doy = float(date.fromordinal(d + EPOCH_ORDINAL).timetuple().tm_yday)
    u = unit(key, d)
    acc = 0.0
    for name, rate in zip(("anticyclone", "heat", "dust", "front"), _rates(c, doy), strict=True):
        acc += rate
        if u < acc:
            lo, hi = _LENGTHS[name]
            return name, lo + int(unit(key ^ 0x5EED, d) * (hi - lo + 1))
    return None


def _spell(c: Climate, key: int, d: int) -> tuple[str, int, int]:
    """The spell on local day d: (name, days since it began, its length), or ('', 0, 0)."""
    for back in range(_SPELL_MAX_DAYS):
        start = _spell_start(c, key, d - back)
        if start is not None and start[1] > back:
            return start[0], back, start[1]
    return "", 0, 0


_climates: dict[str, Climate] = {}


def year_days(c: Climate, year: int) -> tuple[Day, ...]:
    """Every local day of `year` of a climate (computed once, then cached)."""
    _climates.setdefault(c.key, c)
    return _year_of(c.key, year)


@lru_cache(maxsize=64)
def _year_of(key: str, year: int) -> tuple[Day, ...]:
    # A warm-up before 1 January so the AR states match across years.
    c = _climates[key]
    d0 = date(year, 1, 1).toordinal() - EPOCH_ORDINAL
    n = date(year + 1, 1, 1).toordinal() - EPOCH_ORDINAL - d0
    k_spell, k_t, k_wet, k_amt, k_wind = (stable_int("climate", c.key, s) for s in "swatv")
    x_t = z_wet = z_wind = 0.0
    stag = 1.0
    out: list[Day] = []
    for d in range(d0 - _WARMUP_DAYS, d0 + n):
        doy = float((d - d0) % 365 + 1) if d < d0 else float(d - d0 + 1)
        w = _winter(doy)
        spell, since, length = _spell(c, k_spell, d)
        # Daily AR(1) anomalies: temperature, wetness latent, wind.
        x_t = 0.7 * x_t + 0.714 * _normal(k_t, d)
        z_wet = 0.5 * z_wet + 0.866 * _normal(k_wet, d)
        z_wind = 0.5 * z_wind + 0.866 * _normal(k_wind, d)
        sd = c.t_sd_winter * (0.5 + 0.5 * w)
        a_rate, h_rate, d_rate, f_rate = _rates(c, doy)
        # The spells' mean effect is taken out of the base so the month keeps its normal.
        expected = -4.0 * w * 0.7 * 4.0 * a_rate + 4.25 * 0.7 * 4.0 * h_rate
        expected -= 2.5 * (0.5 + w) * 0.75 * 1.5 * f_rate
        t_mean = monthly(c.t_mean, doy) - expected + sd * x_t
        t_range = monthly(c.t_range, doy)
        wind_n = monthly(c.wind, doy)
        wind = wind_n * math.exp(0.35 * z_wind - 0.06)
        p_wet = monthly(c.precip_days, doy) / 30.4
        dry_share = 5.0 * a_rate + 5.5 * h_rate + 2.0 * d_rate
        front_share = 1.5 * f_rate
        p_normal = clamp(
            _WET_CALIBRATION
            * (p_wet - 0.7 * front_share)
            / max(1.0 - dry_share - front_share, 0.2),
            0.0,
            1.0,
        )
        cloud = 0.15 + 0.6 * (1.0 - _phi(z_wet))
        spread = 2.0 + 11.0 * (1.0 - w)
        ramp = min(1.0, (since + 1) / 2.0) * min(1.0, (length - since) / 1.5)
        t_mean, t_range, wind, wet_p, cloud, dust, spread = _in_spell(
            _Sky(t_mean, t_range, wind, p_normal, cloud, 0.0, spread),
            spell,
            (w, ramp, since, d, k_spell),
        )
        wet = _phi(z_wet) < wet_p if spell != "front" else unit(k_wet ^ 0x33, d) < wet_p
        rain = 0.0
        start = hours = burst = 0.0
        if wet:
            rain, start, hours, burst = _rain(c, doy, k_amt, d)
            cloud = max(cloud, 0.85)
            t_range *= 0.6
            spread = 1.0
        stag = _stagnation(stag, wind_n, wind, spell, rain)
        if d >= d0:
            out.append(
                Day(t_mean, t_range, wind, rain, start, hours, burst, cloud, spell, stag, dust,
                    spread)
            )  # fmt: skip
    return tuple(out)


class _Sky(NamedTuple):
    """A day's weather before rain: what a spell changes."""

    t_mean: float
    t_range: float
    wind: float
    wet_p: float
    cloud: float
    dust: float
    spread: float


def _in_spell(sky: _Sky, spell: str, at: tuple[float, float, int, int, int]) -> _Sky:
    """The day's weather under its spell (`at`: winter weight, ramp, days since the
    spell began, the day and the spell key)."""
    w, ramp, since, d, k_spell = at
    t_mean, t_range, wind, wet_p, cloud, dust, spread = sky
    if spell == "anticyclone":
        t_mean -= 4.0 * w * ramp
        t_range *= 1.35
        wind *= 0.45
        wet_p, cloud = 0.0, 0.1
    elif spell == "heat":
        t_mean += (3.0 + 2.5 * unit(k_spell ^ 0x11, d - since)) * ramp
        t_range *= 1.1
        wind *= 0.85
        wet_p, cloud = 0.0, 0.05
        spread += 3.0
    elif spell == "dust":
        dust = (0.5 + 0.5 * unit(k_spell ^ 0x22, d - since)) * (1.0 if since == 0 else 0.45)
        wind *= 2.2 if since == 0 else 1.4
        t_range *= 0.8
        wet_p, cloud = 0.0, 0.55
        spread += 3.0
    elif spell == "front":
        wind *= 1.8
        t_mean -= 2.5 * (0.5 + w) * (1.0 if since else 0.5)
        wet_p = 0.7
        cloud = max(cloud, 0.7)
    return _Sky(t_mean, t_range, wind, wet_p, cloud, dust, spread)


def _stagnation(stag: float, wind_n: float, wind: float, spell: str, rain: float) -> float:
    """The next day's build-up multiplier: ventilation deficit (calm relative to the
    place's normal wind) accumulates; rain washes out."""
    deficit = clamp((wind_n + 0.6) / (wind + 0.6), 0.3, 3.5)
    if spell == "anticyclone":
        deficit *= 1.4
    stag = 0.6 * stag + 0.4 * deficit
    if rain > 0:
        stag /= 1.0 + 0.08 * rain
    return stag


def _rain(c: Climate, doy: float, k_amt: int, d: int) -> tuple[float, float, float, float]:
    """A wet day's rain: mm, start hour, hours and the burst rate (mm/h; 0 = none)."""
    burst = 0.0
    mean = monthly(c.precip_mm, doy) / max(monthly(c.precip_days, doy), 0.3)
    rain = 1.0 + max(mean - 1.0, 0.0) * -math.log(unit(k_amt, d))
    hours = 2.0 + 9.0 * unit(k_amt ^ 0x44, d)
    start = unit(k_amt ^ 0x55, d) * (24.0 - hours)
    warm = monthly(c.t_mean, doy) > 12.0
    if warm and unit(k_amt ^ 0x66, d) < 0.045:
        burst = 25.0 + 30.0 * unit(k_amt ^ 0x77, d)
        rain = max(rain, burst * 0.7)
        start = clamp(12.0 + 5.0 * unit(k_amt ^ 0x88, d), 0.0, 24.0 - hours)
    return rain, start, hours, burst


def _rain_at(today: Day, h: float) -> float:
    """The rain rate (mm/h) at local hour `h` of a day: steady, or its burst in the middle."""
    rain = 0.0
    if today.rain_mm > 0 and today.rain_start <= h < today.rain_start + today.rain_hours:
        steady = today.rain_mm / today.rain_hours
        if today.burst > 0:
            burst_h = min(0.6, today.rain_mm / today.burst)
            rest = max(today.rain_mm - today.burst * burst_h, 0.0) / today.rain_hours
            mid = today.rain_start + today.rain_hours / 2.0
            steady = today.burst if mid <= h < mid + burst_h else rest
        rain = steady
    return rain


def _normal(key: int, d: int) -> float:
    # Inverse-CDF-free normal from two hashed uniforms (Box-Muller).
    u1, u2 = unit(key, d), unit(key ^ 0xABCDEF, d)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(TWO_PI * u2)


def day(c: Climate, local_day: int) -> Day:
    """The weather of local day `local_day` (days since 1970-01-01, local date)."""
    when = date.fromordinal(local_day + EPOCH_ORDINAL)
    return year_days(c, when.year)[when.timetuple().tm_yday - 1]


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
    inversion: float
    """Strength of a surface inversion, 0..1 (night, calm, clear, cold)."""
    stagnation: float
    dust: float
    spell: str
    heating: float
    """Heating demand, 0..1 (daily mean below 12 C)."""


@lru_cache(maxsize=64)
def _dir_key(key: str) -> int:
    return stable_int("dir", key)


def sun_elevation(t: datetime, lon: float, lat: float) -> float:
    """Solar elevation in degrees (NOAA-style approximation, good to ~1 degree)."""
    utc = t.astimezone(UTC)
    doy = utc.timetuple().tm_yday
    hours = utc.hour + utc.minute / 60 + utc.second / 3600
    decl = math.radians(23.44) * math.sin(TWO_PI * (284 + doy) / 365.0)
    b = TWO_PI * (doy - 81) / 364.0
    eot_min = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
    solar_time = hours + lon / 15.0 + eot_min / 60.0
    hour_angle = math.radians(15.0 * (solar_time - 12.0))
    phi = math.radians(lat)
    sin_el = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    return math.degrees(math.asin(clamp(sin_el, -1.0, 1.0)))


def _diurnal(hour: float) -> float:
    """-1 at dawn (06 h), +1 at 15 h; rises over 9 h, falls over 15 h."""
    if 6.0 <= hour < 15.0:
        return -math.cos(math.pi * (hour - 6.0) / 9.0)
    return math.cos(math.pi * ((hour - 15.0) % 24.0) / 15.0)


def weather(t: datetime, c: Climate) -> Weather:
    """The city's weather at `t` (to the minute)."""
    _climates.setdefault(c.key, c)
    return _weather_minute(c.key, int(t.astimezone(UTC).timestamp() // 60))


@lru_cache(maxsize=8192)
def _weather_minute(key: str, minute: int) -> Weather:
    c = _climates[key]
    t = datetime.fromtimestamp(minute * 60, UTC)
    k = clock(t, c.utc_offset_h)
    h = k.hour
    today = day(c, k.local_day)
    # Daily means blend into the neighbouring day's around midnight.
    other = day(c, k.local_day + (1 if h >= 12.0 else -1))
    f = abs(h - 12.0) / 24.0
    t_mean = today.t_mean * (1.0 - f) + other.t_mean * f
    stagnation = today.stagnation * (1.0 - f) + other.stagnation * f
    cloud = today.cloud
    t_range = today.t_range * (1.1 - 0.5 * cloud)
    temperature = t_mean + t_range / 2.0 * _diurnal(h)
    rain = _rain_at(today, h)
    dew = t_mean - today.dewpoint_spread
    humidity = math.exp(17.62 * dew / (243.1 + dew) - 17.62 * temperature / (243.1 + temperature))
    wind = today.wind * (0.6 + 0.7 * math.exp(-0.5 * ((h - 15.0) / 3.5) ** 2)) / 0.856
    spell = today.spell
    base_dir = {"front": 315.0, "dust": 270.0}.get(spell, 60.0)
    wind_dir = (base_dir + 50.0 * (unit(_dir_key(c.key), k.local_day) - 0.5)) % 360.0
    p0 = 1013.25 * math.exp(-c.altitude_m / 8400.0)
    shift = {"anticyclone": 8.0, "front": -7.0, "heat": -4.0, "dust": -3.0}.get(spell, 0.0)
    pressure = p0 + 5.0 * k.winter + shift - 0.8 * _diurnal(h)
    elevation = sun_elevation(t, c.lon, c.lat)
    solar = 0.0
    if elevation > 0:
        clear = (1.0 - 0.7 * cloud) * (1.0 - 0.4 * today.dust)
        solar = 1000.0 * math.sin(math.radians(elevation)) ** 1.15 * clear
    night = smooth(-elevation, -3.0, 6.0)
    calm = clamp((2.5 - wind) / 2.0, 0.0, 1.0)
    heating = clamp((12.0 - today.t_mean) / 14.0, 0.0, 1.0)
    inversion = night * calm * (0.4 + 0.6 * (1.0 - cloud)) * (0.3 + 0.7 * heating)
    if spell == "anticyclone":
        inversion = max(inversion, 0.35)
    dust = today.dust * (0.6 + 0.4 * math.exp(-0.5 * ((h - 15.0) / 4.0) ** 2))
    return Weather(
        temperature=clamp(temperature, -44.0, 55.0),
        humidity=clamp(humidity, 0.05, 1.0),
        pressure=pressure,
        wind_speed=wind,
        wind_dir=wind_dir,
        precipitation=rain,
        solar=solar,
        cloud=cloud,
        sun_elevation=elevation,
        inversion=inversion,
        stagnation=stagnation,
        dust=dust,
        spell=spell,
        heating=heating,
    )
