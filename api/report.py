"""The annual air-quality report: PM2.5, PM10 and NO2 of each district and the city
against the WHO 2021 guidelines, from daily sums and counts (`api.tiers.daily_sums`).

Days are UTC days (the rollups' day buckets). An annual mean is the mean of every
reading of the year (sum over count), a daily mean that of the day's readings; a day is
"above" when its daily mean exceeds the 24-hour guideline; an episode is a run of
consecutive days above; completeness is the share of the period's days with readings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from api.models import Served
from safecity.readings import from_epoch_ms

DAY_MS = 86_400_000
WORST_EPISODES = 3
# WHO global air quality guidelines (2021), ug/m3: (annual mean, 24-hour mean).
WHO_2021: dict[str, tuple[float, float]] = {
    "pm25": (5.0, 15.0),
    "pm10": (15.0, 45.0),
    "no2": (10.0, 25.0),
}
POLLUTANTS = tuple(WHO_2021)
VALID_COMPLETENESS = 0.75


class Episode(BaseModel):
    """Consecutive days above the 24-hour guideline."""

    model_config = ConfigDict(frozen=True)

    start: str = Field(description="First day (UTC date)")
    end: str = Field(description="Last day (UTC date)")
    days: int
    peak: float = Field(description="Highest daily mean of the episode, ug/m3")
    peak_day: str


class PollutantYear(BaseModel):
    """One pollutant of one area over the period."""

    model_config = ConfigDict(frozen=True)

    annual_mean: float | None = Field(description="Mean of every reading, ug/m3")
    annual_guideline: float
    exceeds_annual: bool | None
    daily_guideline: float
    days_above: int = Field(description="Days whose daily mean exceeds the 24-hour guideline")
    days_with_data: int
    days_in_period: int
    completeness: float = Field(description="days_with_data / days_in_period")
    valid: bool = Field(description=f"completeness at least {VALID_COMPLETENESS}")
    readings: int
    worst_episodes: list[Episode] = Field(description="Longest runs above, then by peak")


class AreaYear(BaseModel):
    """A district (or the whole city, `district` null) over the period."""

    district: str | None
    name: str
    pollutants: dict[str, PollutantYear]


class AirQualityReport(BaseModel):
    """The annual air-quality report of a city."""

    city: str
    year: int
    window_from: str = Field(alias="from")
    window_to: str = Field(alias="to")
    day_basis: str = "UTC"
    guidelines: str = "WHO global air quality guidelines 2021"
    served_by: list[Served]
    areas: list[AreaYear]

    model_config = ConfigDict(populate_by_name=True)


def _date(day_ms: int) -> str:
    return from_epoch_ms(day_ms).date().isoformat()


def episodes(daily: Mapping[int, float], limit: float) -> list[Episode]:
    """Runs of consecutive days above `limit`, longest first, then by peak."""
    runs: list[list[int]] = []
    for day in sorted(d for d, v in daily.items() if v > limit):
        if runs and runs[-1][-1] + DAY_MS == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    out = []
    for run in runs:
        peak_day = max(run, key=lambda d: daily[d])
        out.append(
            Episode(
                start=_date(run[0]),
                end=_date(run[-1]),
                days=len(run),
                peak=round(daily[peak_day], 2),
                peak_day=_date(peak_day),
            )
        )
    out.sort(key=lambda e: (-e.days, -e.peak, e.start))
    return out[:WORST_EPISODES]


def pollutant_year(
    days: Mapping[int, tuple[float, int]], pollutant: str, period: int
) -> PollutantYear:
    """One pollutant's year from its (sum, count) per day."""
    annual, daily_limit = WHO_2021[pollutant]
    total = sum(s for s, _ in days.values())
    count = sum(n for _, n in days.values())
    mean = total / count if count else None
    daily = {d: s / n for d, (s, n) in days.items() if n}
    completeness = len(daily) / period if period else 0.0
    return PollutantYear(
        annual_mean=round(mean, 3) if mean is not None else None,
        annual_guideline=annual,
        exceeds_annual=mean > annual if mean is not None else None,
        daily_guideline=daily_limit,
        days_above=sum(1 for v in daily.values() if v > daily_limit),
        days_with_data=len(daily),
        days_in_period=period,
        completeness=round(completeness, 4),
        valid=completeness >= VALID_COMPLETENESS,
        readings=count,
        worst_episodes=episodes(daily, daily_limit),
    )


def areas(
    sums: Mapping[tuple[str, int], Mapping[str, tuple[float, int]]],
    districts: Iterable[tuple[str, str]],
    city_name: str,
    period: int,
) -> list[AreaYear]:
    """The city (first) and each district of (id, name), from per-district daily sums."""
    # One pass over the cells: (area, pollutant) -> day -> (sum, count); None = the city.
    days: dict[tuple[str | None, str], dict[int, tuple[float, int]]] = {}
    for (district, day), cell in sums.items():
        for pollutant, (total, count) in cell.items():
            for area in (None, district):
                per_day = days.setdefault((area, pollutant), {})
                s, n = per_day.get(day, (0.0, 0))
                per_day[day] = (s + total, n + count)
    return [
        AreaYear(
            district=district,
            name=name,
            pollutants={
                p: pollutant_year(days.get((district, p), {}), p, period) for p in POLLUTANTS
            },
        )
        for district, name in [(None, city_name), *districts]
    ]


CSV_COLUMNS = (
    "district",
    "pollutant",
    "annual_mean",
    "annual_guideline",
    "exceeds_annual",
    "daily_guideline",
    "days_above",
    "days_with_data",
    "days_in_period",
    "completeness",
    "worst_episode_start",
    "worst_episode_end",
    "worst_episode_days",
    "worst_episode_peak",
)


def csv_rows(report: AirQualityReport) -> list[list[object]]:
    """One row per area and pollutant (the city's district is empty)."""
    rows: list[list[object]] = []
    for area in report.areas:
        for pollutant, p in area.pollutants.items():
            worst = p.worst_episodes[0] if p.worst_episodes else None
            rows.append(
                [
                    area.district or "",
                    pollutant,
                    "" if p.annual_mean is None else p.annual_mean,
                    p.annual_guideline,
                    "" if p.exceeds_annual is None else str(p.exceeds_annual).lower(),
                    p.daily_guideline,
                    p.days_above,
                    p.days_with_data,
                    p.days_in_period,
                    p.completeness,
                    worst.start if worst else "",
                    worst.end if worst else "",
                    worst.days if worst else "",
                    worst.peak if worst else "",
                ]
            )
    return rows
