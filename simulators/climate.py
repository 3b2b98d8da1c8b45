"""Per-city climate: monthly normals, time zone, altitude, and the character of its winters.

Monthly normals (January first) are rounded from the 1991-2020 WMO climate normals of
each city's main station as tabulated in public climate summaries (Uzhydromet,
Kazhydromet, Kyrgyzhydromet, Tajik Hydromet); Tashkent's are the project's reference
figures (~444 mm/yr, March ~69, July ~4, August ~1 mm; January mean
+1..+3 C, July ~27.5-28 C) and Almaty's too (January ~-4.7 C, July ~23.8 C,
~650-700 mm). Time zones are the IANA database's (Kazakhstan is UTC+5 since March
2024; Bishkek UTC+6). A place the table does not know gets Tashkent's climate shifted
by latitude and its time zone from its longitude.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Months = tuple[float, float, float, float, float, float, float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class Climate:
    """A city's climate: monthly normals and what drives its episodes."""

    key: str
    name: str
    lon: float
    lat: float
    altitude_m: float
    utc_offset_h: float
    timezone: str
    t_mean: Months
    """Monthly mean air temperature, C."""
    t_range: Months
    """Mean daily range (max - min), K."""
    precip_mm: Months
    """Monthly precipitation, mm."""
    precip_days: Months
    """Days with >= 1 mm."""
    wind: Months
    """Mean wind speed, m/s."""
    t_sd_winter: float = 4.5
    """Day-to-day sd of the daily mean temperature anomaly in winter, K (summer: half)."""
    winter_pm25: float = 70.0
    """Heating-season PM2.5 city mean on an ordinary day, ug/m3."""
    summer_pm25: float = 22.0
    """Summer PM2.5 city mean, ug/m3."""
    dust_per_year: float = 4.0
    """Dust events a year (each 1-3 days)."""

    @property
    def annual_precip_mm(self) -> float:
        """The annual precipitation normal, mm."""
        return sum(self.precip_mm)


CLIMATES: dict[str, Climate] = {
    c.key: c
    for c in (
        Climate(
            "tashkent", "Tashkent", 69.28, 41.31, 455.0, 5.0, "Asia/Tashkent",
            (2.3, 4.5, 10.0, 16.0, 21.2, 26.5, 28.0, 26.3, 20.7, 13.7, 7.5, 3.3),
            (9.0, 9.5, 10.5, 12.0, 13.5, 15.0, 15.5, 16.0, 16.0, 14.0, 11.0, 9.0),
            (53.0, 61.0, 69.0, 64.0, 35.0, 8.0, 4.0, 1.0, 5.0, 26.0, 48.0, 70.0),
            (9.0, 9.0, 10.0, 9.0, 7.0, 3.0, 1.0, 0.6, 1.0, 5.0, 7.0, 9.0),
            (1.8, 2.0, 2.2, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.6, 1.7),
        ),
        Climate(
            "samarkand", "Samarkand", 66.96, 39.65, 720.0, 5.0, "Asia/Samarkand",
            (0.9, 3.0, 8.7, 14.8, 19.9, 25.0, 27.0, 25.1, 19.5, 12.8, 7.0, 2.6),
            (10.0, 10.0, 10.5, 12.0, 13.5, 15.5, 16.0, 16.5, 16.5, 15.0, 12.0, 10.0),
            (44.0, 46.0, 68.0, 59.0, 34.0, 5.0, 2.0, 0.5, 2.0, 16.0, 35.0, 45.0),
            (8.0, 9.0, 10.0, 9.0, 6.0, 2.0, 1.0, 0.3, 0.5, 3.0, 6.0, 8.0),
            (1.7, 1.9, 2.1, 2.2, 2.2, 2.2, 2.1, 1.9, 1.7, 1.5, 1.5, 1.6),
            winter_pm25=55.0,
        ),
        Climate(
            "almaty", "Almaty", 76.93, 43.24, 850.0, 5.0, "Asia/Almaty",
            (-4.7, -3.0, 3.4, 11.4, 16.6, 21.7, 23.8, 22.7, 17.3, 9.6, 2.4, -2.8),
            (10.0, 10.0, 10.0, 12.0, 12.0, 12.5, 13.0, 13.5, 14.0, 12.0, 10.0, 9.5),
            (34.0, 41.0, 77.0, 106.0, 104.0, 59.0, 40.0, 27.0, 27.0, 58.0, 56.0, 42.0),
            (7.0, 8.0, 11.0, 12.0, 12.0, 9.0, 7.0, 5.0, 5.0, 8.0, 8.0, 8.0),
            (1.0, 1.1, 1.3, 1.5, 1.5, 1.5, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0),
            t_sd_winter=5.0, winter_pm25=90.0, dust_per_year=1.0,
        ),
        Climate(
            "astana", "Astana", 71.45, 51.17, 350.0, 5.0, "Asia/Almaty",
            (-14.2, -13.6, -6.6, 5.0, 13.3, 19.0, 20.7, 18.8, 12.1, 4.2, -5.4, -11.6),
            (9.0, 10.0, 9.0, 12.0, 13.0, 13.0, 12.5, 13.0, 13.0, 10.0, 8.0, 8.5),
            (16.0, 15.0, 19.0, 23.0, 34.0, 42.0, 56.0, 35.0, 26.0, 27.0, 24.0, 19.0),
            (5.0, 4.0, 4.0, 5.0, 6.0, 6.0, 7.0, 5.0, 4.0, 5.0, 5.0, 5.0),
            (4.5, 4.4, 4.5, 4.6, 4.4, 3.9, 3.4, 3.4, 3.7, 4.3, 4.6, 4.5),
            t_sd_winter=7.0, winter_pm25=45.0, summer_pm25=15.0, dust_per_year=2.0,
        ),
        Climate(
            "bishkek", "Bishkek", 74.59, 42.87, 800.0, 6.0, "Asia/Bishkek",
            (-2.8, -0.5, 5.7, 12.8, 17.9, 23.2, 25.8, 24.6, 18.9, 11.4, 4.1, -1.1),
            (10.0, 10.0, 10.0, 12.5, 13.0, 14.0, 14.5, 15.0, 15.0, 13.5, 11.0, 10.0),
            (28.0, 36.0, 53.0, 74.0, 66.0, 34.0, 17.0, 12.0, 13.0, 43.0, 42.0, 31.0),
            (6.0, 7.0, 9.0, 10.0, 9.0, 6.0, 4.0, 3.0, 3.0, 6.0, 6.0, 6.0),
            (1.5, 1.6, 1.8, 2.0, 2.0, 2.0, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5),
            t_sd_winter=5.0, winter_pm25=120.0, dust_per_year=2.0,
        ),
        Climate(
            "dushanbe", "Dushanbe", 68.78, 38.56, 800.0, 5.0, "Asia/Dushanbe",
            (2.0, 4.6, 9.9, 15.6, 20.0, 25.1, 27.4, 25.7, 20.5, 14.0, 8.6, 4.1),
            (10.0, 10.0, 10.5, 12.0, 14.0, 16.0, 17.0, 17.5, 17.5, 15.0, 12.0, 10.0),
            (74.0, 91.0, 117.0, 110.0, 70.0, 12.0, 4.0, 1.0, 3.0, 35.0, 60.0, 71.0),
            (10.0, 11.0, 12.0, 11.0, 8.0, 2.0, 1.0, 0.4, 0.6, 5.0, 7.0, 9.0),
            (1.3, 1.5, 1.7, 1.8, 1.8, 1.8, 1.8, 1.7, 1.5, 1.3, 1.2, 1.2),
            winter_pm25=60.0, dust_per_year=6.0,
        ),
    )
}  # fmt: skip
"""The climates the simulator knows, by city id."""


@lru_cache(maxsize=1024)
def climate_at(lon: float, lat: float) -> Climate:
    """The climate of the known city within ~1.2 degrees, else Tashkent's adjusted to the place."""
    best = min(CLIMATES.values(), key=lambda c: (c.lon - lon) ** 2 + (c.lat - lat) ** 2)
    if (best.lon - lon) ** 2 + (best.lat - lat) ** 2 <= 1.5:
        return best
    base = CLIMATES["tashkent"]
    # About 0.8 K cooler per degree of latitude northwards in Central Asia.
    shift = -0.8 * (lat - base.lat)
    return replace(
        base,
        key=f"synthetic-{round(lon, 1)}-{round(lat, 1)}",
        name="generated",
        lon=lon,
        lat=lat,
        utc_offset_h=float(round(lon / 15.0)),
        timezone="",
        t_mean=tuple(t + shift for t in base.t_mean),  # type: ignore[arg-type]
    )


def climate_of(city_id: str, lon: float, lat: float, timezone: str = "") -> Climate:
    """The climate of a city by id, or by its location (in its registry time zone if known)."""
    known = CLIMATES.get(city_id)
    if known is not None:
        return known
    found = climate_at(round(lon, 2), round(lat, 2))
    offset = _utc_offset(timezone)
    if found.timezone or offset is None:
        return found
    return replace(found, timezone=timezone, utc_offset_h=offset)


@lru_cache(maxsize=64)
def _utc_offset(timezone: str) -> float | None:
    """The zone's UTC offset in hours (Central Asia keeps no summer time), None if unknown."""
    try:
        delta = ZoneInfo(timezone).utcoffset(datetime(2026, 1, 1))
    except (ValueError, ZoneInfoNotFoundError):
        return None
    return None if delta is None else delta.total_seconds() / 3600.0
