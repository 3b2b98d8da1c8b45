"""Statistical shape of a simulated city, measured against reference figures.

`measure(city, year)` generates what the city's devices would report (pure
computation, no broker: `generate` on sampled instants, the weather calendar, the
scene's ambient incidents) and returns `Figure`s: an aspect, its reference value and
source, the simulated value and the band the value must fall in. The shape tests
assert the bands; `simulators.report` prints the table and draws the plots.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from safecity.registry import City, Device
from simulators.climate import climate_of
from simulators.events import RED_LIGHT_PER_DAY, SPEEDING_PER_DAY, maybe_event
from simulators.generators import generate
from simulators.incidents import ACCIDENTS_PER_DISTRICT_DAY, INJURY_SHARE, Scene
from simulators.sites import Profile, World
from simulators.timebase import device_rng, distance_m
from simulators.weather import year_days

CATALOGUE = "CATALOGUE.md"
ASSUMED = "model target (no public figure)"


@dataclass(frozen=True)
class Figure:
    """One measured aspect: reference, simulated value and the band it must fall in."""

    name: str
    aspect: str
    reference: str
    source: str
    value: float
    lo: float
    hi: float
    unit: str = ""

    @property
    def ok(self) -> bool:
        """Whether the simulated value falls in the band."""
        return self.lo <= self.value <= self.hi

    def shown(self) -> str:
        """The value as the table prints it."""
        return f"{self.value:.3g}{self.unit}"


def _corr(a: Sequence[float], b: Sequence[float]) -> float:
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:
        return 0.0


def _local(c: Profile, day: date, hour: float) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        hours=hour - c.climate.utc_offset_h
    )


def series(p: Profile, field: str, start: datetime, steps: int, step: timedelta) -> list[float]:
    """A device's `field` at `steps` instants from `start`, its own noise stream."""
    rng = device_rng(7, p.id)
    return [float(generate(p, rng, start + i * step)[field]) for i in range(steps)]


def _deviations(values: Sequence[float], per_day: int) -> list[float]:
    """Values minus the mean of their time of day (the daily cycle taken out)."""
    slots = [statistics.fmean(values[i::per_day]) for i in range(per_day)]
    return [v - slots[i % per_day] for i, v in enumerate(values)]


def _mean_pairwise(rows: Sequence[Sequence[float]]) -> float:
    pairs = [_corr(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
    return statistics.fmean(pairs) if pairs else 0.0


class Measure:
    """The figures of one city and year; each method adds its figures to `figures`."""

    def __init__(self, city: City, year: int = 2026, devices: int = 8) -> None:
        self.city = city
        self.world = World(city)
        self.climate = climate_of(city.id, *city.record.centroid, city.record.timezone)
        self.year = year
        self.n = devices
        self.figures: list[Figure] = []

    def _profiles(self, kind: str, n: int | None = None) -> list[Profile]:
        devices = self.city.select(kind=kind)
        return [self.world.profile(d) for d in devices[: n or self.n]]

    def add(self, *args: object, **kw: object) -> None:
        """Add a figure (Figure's fields)."""
        self.figures.append(Figure(*args, **kw))  # type: ignore[arg-type]

    # --- climate --------------------------------------------------------------

    def climate_figures(self, years: int = 20) -> None:
        """Annual precipitation, monthly temperature, days over the alert thresholds."""
        c = self.climate
        totals, hot, cold, heavy = [], 0, 0, 0
        months: list[list[float]] = [[] for _ in range(12)]
        for y in range(self.year, self.year + years):
            days = year_days(c, y)
            totals.append(sum(d.rain_mm for d in days))
            for i, d in enumerate(days):
                months[date.fromordinal(date(y, 1, 1).toordinal() + i).month - 1].append(d.t_mean)
                half = d.t_range * (1.1 - 0.5 * d.cloud) / 2.0
                hot += d.t_mean + half > 40.5  # the rule needs an hour above 40
                cold += d.t_mean - half < -20.5
                heavy += d.burst > 30.0
        normal = c.annual_precip_mm
        ref = f"{c.name} normals"
        self.add(
            "annual_precipitation",
            "Annual precipitation, mm (20-year mean)",
            f"{normal:.0f}",
            ref,
            statistics.fmean(totals),
            0.85 * normal,
            1.15 * normal,
        )
        worst = max(abs(statistics.fmean(m) - n) for m, n in zip(months, c.t_mean, strict=True))
        self.add(
            "monthly_temperature",
            "Monthly mean temperature: worst month off the normal, K",
            f"0 (Jan {c.t_mean[0]:+.1f}, Jul {c.t_mean[6]:+.1f} C)",
            ref,
            worst,
            0.0,
            2.0,
        )
        self.add(
            "days_above_40",
            "Days a year above 40 C (extreme_heat)",
            "Tashkent: a few (Jul highs 36-41 C)",
            CATALOGUE,
            hot / years,
            0.0,
            15.0,
        )
        self.add(
            "days_below_minus_20",
            "Days a year below -20 C (extreme_cold)",
            "0 in Tashkent; weeks in Astana",
            ASSUMED,
            cold / years,
            0.0,
            60.0,
        )
        self.add(
            "days_rain_over_30",
            "Days a year with rain > 30 mm/h (heavy_rain)",
            "rare: about one a year",
            ASSUMED,
            heavy / years,
            0.05,
            3.0,
        )
        self.add("utc_offset", "UTC offset of local time, h", "IANA tz database", CATALOGUE,
                 c.utc_offset_h, c.utc_offset_h, c.utc_offset_h)  # fmt: skip

    # --- air quality ----------------------------------------------------------

    def winter_pm(self, days: int = 90) -> None:
        """Daily PM2.5 over the heating season: bad days, clean days, evening peaks."""
        sensors = self._profiles("air_quality", 6)
        start = _local(sensors[0], date(self.year, 12, 1), 0.0) - timedelta(days=365)
        rows = [series(p, "pm25", start, days * 24, timedelta(hours=1)) for p in sensors]
        hourly = [statistics.fmean(col) for col in zip(*rows, strict=True)]
        daily = [statistics.fmean(hourly[d * 24 : d * 24 + 24]) for d in range(days)]
        peaks = [max(max(r[d * 24 + 18 : d * 24 + 24]) for r in rows) for d in range(days)]
        # Tashkent ~100 on bad days; Almaty's winter mean ~94; Bishkek's 200-300.
        usual = self.climate.winter_pm25
        lo, hi = (0.03, 0.6) if usual < 80 else (0.2, 0.85) if usual < 110 else (0.5, 1.0)
        self.add("winter_days_pm25_over_100", "Winter days (Dec-Feb) with city PM2.5 > 100",
                 "Tashkent: bad days ~100; Almaty mean ~94; Bishkek 200-300", CATALOGUE,
                 sum(x > 100 for x in daily) / days, lo, hi)  # fmt: skip
        mean = statistics.fmean(daily)
        self.add("winter_clean_days", "Winter days below half the winter mean (after fronts)",
                 "clean days after a front", ASSUMED,
                 sum(x < mean / 2 for x in daily) / days, 0.02, 0.5)  # fmt: skip
        self.add(
            "winter_evening_peaks_over_170",
            "Winter days with an evening peak > 170",
            "evening peaks > 170",
            CATALOGUE,
            sum(x > 170 for x in peaks) / days,
            0.05,
            1.0,
        )
        self.winter_daily = daily

    def dust(self, days: int = 3) -> None:
        """Dust days (the first few from the weather calendar) against ordinary ones: PM10
        above 1,000 and a PM10/PM2.5 ratio far above the ordinary ~1.6-2.1."""
        p = self._profiles("air_quality", 1)[0]
        rng = device_rng(7, p.id)
        dusty: list[date] = []
        for y in range(self.year, self.year + 10):
            for i, d in enumerate(year_days(self.climate, y)):
                if d.dust > 0.6 and len(dusty) < days:
                    dusty.append(date.fromordinal(date(y, 1, 1).toordinal() + i))
        pm10, ratios = 0.0, []
        for day in dusty:
            for h in range(24):
                v = generate(p, rng, _local(p, day, h + 0.5))
                pm10 = max(pm10, float(v["pm10"]))
                ratios.append(float(v["pm10"]) / float(v["pm25"]))
        self.add("dust_pm10_max", "Highest hourly PM10 on dust days, ug/m3",
                 "> 1,000 in dust haze", CATALOGUE, pm10, 1000.0, 3000.0)  # fmt: skip
        self.add("dust_pm_ratio", "PM10/PM2.5 on dust days (ordinary ~1.6-2.1)",
                 "PM10 > 1,000 with PM2.5 > 200: ~3-5", CATALOGUE,
                 statistics.fmean(ratios) if ratios else 0.0, 2.5, 6.0)  # fmt: skip

    # --- devices as processes ------------------------------------------------------

    def correlations(self, days: int = 14) -> None:
        """Pairwise correlation of same-kind devices; autocorrelation of deviations."""
        start = datetime(self.year, 1, 12, tzinfo=UTC)
        bands = {
            ("traffic", "intensity"): (0.6, 0.97),
            ("noise", "laeq"): (0.5, 0.97),
            ("air_quality", "pm25"): (0.6, 0.97),
            ("weather", "temperature"): (0.95, 0.997),
        }
        for (kind, field), (lo, hi) in bands.items():  # fmt: skip
            rows = [series(p, field, start, days * 24, timedelta(hours=1))
                    for p in self._profiles(kind)]  # fmt: skip
            self.add(f"pairwise_{kind}", f"{kind} {field}: mean pairwise correlation, hourly",
                     "neither lockstep (0.98) nor independent", ASSUMED,
                     _mean_pairwise(rows), lo, hi)  # fmt: skip
            if kind in ("traffic", "air_quality"):
                devs = [_deviations(r, 24) for r in rows]
                self.add(
                    f"pairwise_deviation_{kind}",
                    f"{kind} {field}: pairwise correlation of deviations from the daily cycle",
                    "shared drivers, own processes",
                    ASSUMED,
                    _mean_pairwise(devs),
                    0.05,
                    0.9,
                )
        p = self._profiles("air_quality", 1)[0]
        five = series(p, "pm25", start, 3 * 288, timedelta(minutes=5))
        dev5 = _deviations(five, 288)
        hourly = _deviations(series(p, "pm25", start, 28 * 24, timedelta(hours=1)), 24)
        self.add(
            "autocorr_5min",
            "PM2.5 deviation: autocorrelation 5 min apart",
            "persistent (was ~0.01)",
            ASSUMED,
            _corr(dev5[:-1], dev5[1:]),
            0.8,
            1.0,
        )
        self.add("autocorr_72h", "PM2.5 deviation: autocorrelation 3 days apart",
                 "episodes last days, then clear", ASSUMED,
                 _corr(hourly[:-72], hourly[72:]), -0.3, 0.45)  # fmt: skip

    def geography(self, days: int = 14) -> None:
        """District ordering by land use; noise coupled to the nearest road."""
        start = datetime(self.year, 1, 12, tzinfo=UTC)
        by_use: dict[str, list[float]] = {}
        for p in self._profiles("air_quality", 200):
            mean = statistics.fmean(series(p, "pm25", start, days * 8, timedelta(hours=3)))
            by_use.setdefault(p.land_use, []).append(mean)
        means = {u: statistics.fmean(v) for u, v in by_use.items()}
        ordered = means.get("industrial", 0) > means.get("residential", math.inf)
        self.add("land_use_pm25", "PM2.5: industrial districts over residential ones (ratio)",
                 "industrial > centre > residential", ASSUMED,
                 means.get("industrial", 0) / means.get("residential", 1) if ordered else 0.0,
                 1.1, 2.5)  # fmt: skip
        roads = self.city.select(kind="traffic")
        near, far = [], []
        monday = start - timedelta(days=start.weekday())  # weekdays only: one daily cycle
        step = timedelta(minutes=15)
        for p in self._profiles("noise", 6):
            by_d = sorted(roads, key=lambda r: distance_m(r.location, p.device.location))
            noise = _deviations(series(p, "laeq", monday, 5 * 96, step), 96)
            flows = [
                _deviations(series(self.world.profile(r), "intensity", monday, 5 * 96, step), 96)
                for r in (by_d[0], by_d[-1])
            ]
            near.append(_corr(noise, flows[0]))
            far.append(_corr(noise, flows[1]))
        self.add(
            "coupling_noise_road",
            "Noise deviation vs its nearest road's traffic deviation",
            "follows its road (was ~0.00)",
            ASSUMED,
            statistics.fmean(near),
            0.3,
            1.0,
        )
        self.add(
            "coupling_noise_far_road",
            "Noise deviation vs the farthest road's",
            "unrelated",
            ASSUMED,
            statistics.fmean(far),
            -0.2,
            0.2,
        )

    def traffic_shapes(self, weeks: int = 2) -> None:
        """Weekday night trough and the weekend's missing commuter peak."""
        roads = self._profiles("traffic")
        monday = date(self.year, 3, 2)
        monday -= timedelta(days=monday.weekday())

        def mean_at(day_offsets: Sequence[int], hour: float) -> float:
            vals = []
            for p in roads:
                rng = device_rng(7, p.id)
                for w in range(weeks):
                    for d in day_offsets:
                        t = _local(p, monday + timedelta(days=7 * w + d), hour)
                        vals.append(float(generate(p, rng, t)["intensity"]))
            return statistics.fmean(vals)

        peak = mean_at(range(5), 8.5)
        weekday = statistics.fmean(mean_at(range(5), h + 1.0) for h in range(0, 24, 2))
        weekend = statistics.fmean(mean_at([5, 6], h + 1.0) for h in range(0, 24, 2))
        self.add("weekend_volume", "Weekend daily traffic / weekday", "weekends -20..40 %",
                 CATALOGUE, weekend / weekday, 0.6, 0.8)  # fmt: skip
        self.add("night_traffic", "Weekday 03:00 traffic / 08:30", "trough 02-05", CATALOGUE,
                 mean_at(range(5), 3.0) / peak, 0.03, 0.2)  # fmt: skip
        self.add("weekend_traffic", "Sunday 08:30 traffic / weekday 08:30",
                 "weekends -20..40 %, no commuter peak", CATALOGUE,
                 mean_at([6], 8.5) / peak, 0.2, 0.7)  # fmt: skip

    # --- events -----------------------------------------------------------------

    def event_rates(self, days: int = 14, accident_days: int = 60) -> None:
        """Violations per ANPR camera-day; accidents per day, share with casualties, at night."""
        cams = self._profiles("anpr", 3)
        start = datetime(self.year, 3, 2, tzinfo=UTC)
        counts = {"red_light_violation": 0, "speeding_violation": 0}
        for p in cams:
            rng = device_rng(7, p.id)
            for i in range(days * 288):
                draft = maybe_event(p, rng, start + timedelta(seconds=300 * (i + 1)), 300.0)
                if draft is not None and draft.type in counts:
                    counts[draft.type] += 1
        per = len(cams) * days
        src = "Tashkent traffic police (press)"
        self.add("anpr_red_light", "Red-light violations per camera-day",
                 f"~{RED_LIGHT_PER_DAY:.0f}", src, counts["red_light_violation"] / per,
                 0.75 * RED_LIGHT_PER_DAY, 1.25 * RED_LIGHT_PER_DAY)  # fmt: skip
        self.add("anpr_speeding", "Speeding violations per camera-day", f"~{SPEEDING_PER_DAY:.0f}",
                 src, counts["speeding_violation"] / per, 0.75 * SPEEDING_PER_DAY,
                 1.25 * SPEEDING_PER_DAY)  # fmt: skip
        scene = Scene(self.city, [], 7)
        h0 = int(start.timestamp() // 3600)
        accidents = [
            i for h in range(h0, h0 + accident_days * 24) for i in scene._ambient_cache(h)
            if i.type == "road_accident"
        ]  # fmt: skip
        expected = ACCIDENTS_PER_DISTRICT_DAY * len(self.city.districts)
        police = "police statistics (Tashkent ~18/day)"
        self.add("accidents_per_day", "Road accidents per day, city",
                 f"{expected:.0f} ({ACCIDENTS_PER_DISTRICT_DAY}/district)", police,
                 len(accidents) / accident_days, 0.8 * expected, 1.2 * expected)  # fmt: skip
        hurt = sum(1 for i in accidents if i.param("casualties", 0) > 0) / max(len(accidents), 1)
        self.add(
            "accidents_with_casualties",
            "Share of accidents with casualties",
            f"{INJURY_SHARE:.2f} (2.6 of 18 a day)",
            police,
            hurt,
            0.08,
            0.22,
        )
        offset = self.climate.utc_offset_h
        night = sum(
            1 for i in accidents
            if not 5 <= (i.start_ms / 3.6e6 + offset) % 24 < 23
        ) / max(len(accidents), 1)  # fmt: skip
        self.add("accidents_at_night", "Share of accidents 23:00-05:00", "every hour of the day",
                 police, night, 0.04, 0.3)  # fmt: skip
        traffic = self.city.select(kind="traffic")
        seen = sum(1 for i in accidents if any(i.reach(d) > 0 for d in traffic))
        self.add(
            "accidents_seen",
            "Share of accidents a traffic sensor reports",
            "every one",
            ASSUMED,
            seen / max(len(accidents), 1),
            1.0,
            1.0,
        )
        nodes = len(self.city.select(kind="gunshot"))
        claimed = max((p.heard_by for p in self._profiles("gunshot", 100)), default=0)
        self.add(
            "gunshot_sensors",
            "Most sensors a gunshot report claims / nodes in the city",
            "never more than exist",
            ASSUMED,
            claimed / max(nodes, 1),
            0.0,
            1.0,
        )

    def crowd_quiet(self, days: int = 2) -> None:
        """10-minute rises of >= 300 people on ordinary crowd data (the crowd_spike rule)."""
        start = datetime(self.year, 5, 11, tzinfo=UTC)
        spikes = 0
        for p in self._profiles("crowd", 100):
            counts = series(p, "people_count", start, days * 1440, timedelta(minutes=1))
            # The rule's sliding window: any reading 300 above one of the previous 10 minutes.
            spikes += sum(
                1 for i in range(10, len(counts)) if counts[i] - min(counts[i - 10 : i]) >= 300
            )
        self.add(
            "crowd_spikes",
            "crowd_spike rule triggers on ordinary days (all counters)",
            "0 (was ~7 in 8 minutes)",
            ASSUMED,
            spikes,
            0,
            0,
        )


STEPS: tuple[Callable[[Measure], None], ...] = (
    Measure.climate_figures,
    Measure.winter_pm,
    Measure.dust,
    Measure.correlations,
    Measure.geography,
    Measure.traffic_shapes,
    Measure.event_rates,
    Measure.crowd_quiet,
)


def measure(city: City, year: int = 2026) -> list[Figure]:
    """Every figure of `city` in `year` (a few seconds)."""
    m = Measure(city, year)
    for step in STEPS:
        step(m)
    return m.figures


def devices_of(city: City, kind: str) -> list[Device]:
    """The city's devices of a kind (for plots)."""
    return city.select(kind=kind)
