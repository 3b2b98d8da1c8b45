"""US EPA Air Quality Index (2024 breakpoints) and WHO 2021 guideline values.

Concentrations arrive in ug/m3 (the catalogue's unit); the EPA tables for NO2 and
O3 are in ppb, converted at 25 degC and 1 atm (NO2: 1 ppb = 1.88 ug/m3, O3: 1 ppb =
1.96 ug/m3). The index is computed from window means: an indicator for the window
asked, not the EPA's regulatory 24 h / 8 h averages.
"""

from __future__ import annotations

import math

# (C_low, C_high, I_low, I_high) per pollutant, in the EPA table's unit.
_PM25 = (
    (0.0, 9.0, 0, 50),
    (9.1, 35.4, 51, 100),
    (35.5, 55.4, 101, 150),
    (55.5, 125.4, 151, 200),
    (125.5, 225.4, 201, 300),
    (225.5, 325.4, 301, 500),
)
_PM10 = (
    (0, 54, 0, 50),
    (55, 154, 51, 100),
    (155, 254, 101, 150),
    (255, 354, 151, 200),
    (355, 424, 201, 300),
    (425, 604, 301, 500),
)
_NO2 = (
    (0, 53, 0, 50),
    (54, 100, 51, 100),
    (101, 360, 101, 150),
    (361, 649, 151, 200),
    (650, 1249, 201, 300),
    (1250, 2049, 301, 500),
)
# O3: the 8 h table up to 200 ppb, above it the 1 h table (as the EPA does).
_O3 = (
    (0, 54, 0, 50),
    (55, 70, 51, 100),
    (71, 85, 101, 150),
    (86, 105, 151, 200),
    (106, 200, 201, 300),
    (201, 404, 201, 300),
    (405, 604, 301, 500),
)
TABLES: dict[str, tuple[tuple[float, float, int, int], ...]] = {
    "pm25": _PM25,
    "pm10": _PM10,
    "no2": _NO2,
    "o3": _O3,
}
_TO_TABLE_UNIT = {"pm25": 1.0, "pm10": 1.0, "no2": 1 / 1.88, "o3": 1 / 1.96}
# EPA truncation of the concentration before the lookup: decimals kept per pollutant.
_DECIMALS = {"pm25": 1, "pm10": 0, "no2": 0, "o3": 0}
AQI_POLLUTANTS = tuple(TABLES)

CATEGORIES = (
    (50, "Good"),
    (100, "Moderate"),
    (150, "Unhealthy for Sensitive Groups"),
    (200, "Unhealthy"),
    (300, "Very Unhealthy"),
    (500, "Hazardous"),
)


def sub_index(pollutant: str, ug_m3: float) -> int:
    """The AQI sub-index of one pollutant's concentration (ug/m3); 500 at the table's top."""
    value = max(0.0, ug_m3) * _TO_TABLE_UNIT[pollutant]
    scale: float = 10.0 ** _DECIMALS[pollutant]
    value = math.floor(value * scale + 1e-9) / scale
    table = TABLES[pollutant]
    for c_lo, c_hi, i_lo, i_hi in table:
        if value <= c_hi:
            value = max(value, c_lo)
            return round((i_hi - i_lo) / (c_hi - c_lo) * (value - c_lo) + i_lo)
    return 500


def aqi(means: dict[str, float]) -> tuple[int, str] | None:
    """The AQI (highest sub-index) and the pollutant driving it, or None without data."""
    subs = {p: sub_index(p, v) for p, v in means.items() if p in TABLES}
    if not subs:
        return None
    driver = max(subs, key=lambda p: (subs[p], -AQI_POLLUTANTS.index(p)))
    return subs[driver], driver


def category(index: int) -> str:
    """The EPA category name of an AQI value."""
    for top, name in CATEGORIES:
        if index <= top:
            return name
    return "Hazardous"
