"""Statistical shape of the simulated city, against the reference figures (pure computation).

Each test is one named property of `simulators.shapes` for one city: Tashkent (the
shipped registry) and two generated ones, Almaty and Bishkek (UTC+6). The figures,
their references and bands are those of the README table (`simulators/report.py`).
"""

from __future__ import annotations

from functools import cache

import pytest

from safecity import citygen, registry
from safecity.registry import City
from simulators.report import BEGIN, END, README, table
from simulators.shapes import Figure, measure

CITIES = ("tashkent", "almaty", "bishkek")

PROPERTIES = (
    "annual_precipitation",
    "monthly_temperature",
    "days_above_40",
    "days_below_minus_20",
    "days_rain_over_30",
    "utc_offset",
    "winter_days_pm25_over_100",
    "winter_clean_days",
    "winter_evening_peaks_over_170",
    "dust_pm10_max",
    "dust_pm_ratio",
    "pairwise_traffic",
    "pairwise_deviation_traffic",
    "pairwise_noise",
    "pairwise_air_quality",
    "pairwise_deviation_air_quality",
    "pairwise_weather",
    "autocorr_5min",
    "autocorr_72h",
    "land_use_pm25",
    "coupling_noise_road",
    "coupling_noise_far_road",
    "weekend_volume",
    "night_traffic",
    "weekend_traffic",
    "anpr_red_light",
    "anpr_speeding",
    "accidents_per_day",
    "accidents_with_casualties",
    "accidents_at_night",
    "accidents_seen",
    "gunshot_sensors",
    "crowd_spikes",
)


def city(name: str) -> City:
    return registry.default_city() if name == "tashkent" else citygen.generate(name, 300, 3)


@cache
def figures(name: str) -> dict[str, Figure]:
    return {f.name: f for f in measure(city(name))}


@pytest.mark.parametrize("name", CITIES)
def test_every_property_is_measured(name: str) -> None:
    assert tuple(figures(name)) == PROPERTIES


@pytest.mark.parametrize("prop", PROPERTIES)
@pytest.mark.parametrize("name", CITIES)
def test_property_within_its_reference_band(name: str, prop: str) -> None:
    f = figures(name)[prop]
    assert f.lo <= f.value <= f.hi, f"{name} {f.aspect}: {f.value} not in [{f.lo}, {f.hi}]"


def test_time_zones_are_the_real_ones() -> None:
    assert figures("tashkent")["utc_offset"].value == 5.0
    assert figures("almaty")["utc_offset"].value == 5.0
    assert figures("bishkek")["utc_offset"].value == 6.0


def test_cities_differ_in_climate() -> None:
    # Bishkek's winters are smokier than Tashkent's; Almaty wetter (catalogue figures).
    assert (
        figures("bishkek")["winter_days_pm25_over_100"].value
        > figures("tashkent")["winter_days_pm25_over_100"].value
    )
    assert (
        figures("almaty")["annual_precipitation"].value
        > figures("tashkent")["annual_precipitation"].value + 100
    )


def test_readme_table_is_the_report_for_tashkent() -> None:
    # The full report (same sample sizes) for the shipped Tashkent and 2026: regenerate
    # it with `python -m simulators.report --readme` after changing the model.
    expected = table(list(figures("tashkent").values()), "Tashkent", 2026)
    assert f"{BEGIN}\n{expected}{END}" in README.read_text("utf-8")
