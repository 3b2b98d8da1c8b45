"""City and district metrics: one city-wide snapshot per window, aggregated per scope.

A snapshot is a handful of InfluxQL queries run concurrently, each grouped by
`device_id` (the district comes from the registry, never from storage): the window
means per device of the numeric kinds, the latest state of streetlights, the last
reading and last status of every device (for online/stale/offline), and the event
counts by district and severity. Any scope (the city, a district) is then an
in-memory aggregation of the snapshot, so the city overview, every district
overview and the districts GeoJSON share one set of queries (and one cache entry).
"""

# Statements are built only from allow-listed identifiers (quote_ident) and ints we
# computed; request values travel as bound $parameters, which S608 cannot see.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from api import aqi
from api.lastseen import newest_readings, span_params, stale_limit_s
from api.models import (
    AirQuality,
    Crowd,
    DeviceCounts,
    Exceedance,
    Figure,
    Incidents,
    Noise,
    Overview,
    Parking,
    Streetlights,
    Traffic,
)
from api.offline import Statuses, deciding_statuses, newest_offline
from api.params import TimeRange
from api.queries import CHUNK_ROWS, flat
from api.settings import ApiSettings
from api.tiers import BOARD, Piece, TierBook, served
from api.windows import window_means
from safecity import catalogue
from safecity import incidents as inc
from safecity.board import Board
from safecity.influx import InfluxClient, Series
from safecity.readings import epoch_ms, format_epoch_ms, format_ts
from safecity.registry import City, Device
from safecity.schema import EVENTS, source

# Window means fetched per device, by kind.
MEAN_FIELDS: dict[str, tuple[str, ...]] = {
    "air_quality": ("pm25", "pm10", "no2", "o3", "so2", "co"),
    "traffic": ("avg_speed", "intensity", "occupancy"),
    "noise": ("laeq",),
    "parking": ("occupancy",),
    "crowd": ("people_count", "occupancy"),
}
# Free-flow speed: the catalogue's urban free speed (40-60 km/h, limit 60), one value
# for every sensor. A per-sensor p85 needs hours of history per request; a fixed,
# stated reference keeps the index comparable across sensors and windows.
FREE_FLOW_KMH = 50.0
FREE_FLOW_BASIS = "fixed urban free-flow speed of the catalogue (40-60 km/h, limit 60): 50 km/h"
NOISE_DAY_DB, NOISE_NIGHT_DB = catalogue.WHO_NOISE_DAY_DB, catalogue.WHO_NOISE_NIGHT_DB
SEVERITIES = tuple(s.value for s in catalogue.Severity)
INCIDENT_SOURCE = (
    "the incident store (incidents the alerts service opened): those opened in the 7 days "
    "before the window's end and not resolved by then, as GET /v1/incidents lists them"
)
INCIDENT_LOOKBACK = timedelta(days=7)
OVERVIEW_WINDOW = timedelta(minutes=15)
"""The overview's default window: the last 15 minutes."""
T = TypeVar("T")


@dataclass
class Snapshot:
    """What the queries returned for one city and window (per device id)."""

    window: TimeRange
    generated_at: datetime
    means: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    lights: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)
    status: Statuses = field(default_factory=dict)
    """The last status message of the devices it may make offline (`api.offline`)."""
    events: dict[tuple[str, str], int] = field(default_factory=dict)
    event_devices: dict[str, int] = field(default_factory=dict)
    open_incidents: list[inc.Incident] = field(default_factory=list)
    views: dict[str | None, Overview] = field(default_factory=dict)
    """Overviews made from this snapshot, by district (None: the city): a cached
    snapshot's overview is made once, not at every request."""
    states: dict[str, str] = field(default_factory=dict)
    """Every device's state (`device_state`), made at the first need (`states_of`)."""
    served: dict[str, list[Piece]] = field(default_factory=dict)
    board: bool = False
    """Its means and states came from the board (`served_by` says `board`)."""
    making: dict[tuple[str, str | None], asyncio.Future[Any]] = field(default_factory=dict)
    """What `view` and `states` are making off the event loop, by what and scope."""


def _where_city(extra: str = "") -> str:
    return f'"city" = $city AND time >= $from AND time < $to{extra}'


# The per-device statements as InfluxDB groups them (one series a device), and as the
# snapshot asks them: one row a device (`flat`).
LIGHTS_GROUPED = (
    'SELECT last("power_state") AS "power_state", last("status") AS "status" '
    f'FROM "streetlight" WHERE {_where_city()} GROUP BY "device_id"'
)
EVENTS_GROUPED = (
    f'SELECT count("seq") AS "n" FROM {source(EVENTS)} '
    f'WHERE {_where_city()} GROUP BY "district", "severity", "device_id"'
)
LIGHTS_STATEMENT = flat(LIGHTS_GROUPED, ("power_state", "status"), ("device_id",))
EVENTS_STATEMENT = flat(EVENTS_GROUPED, ("n",), ("district", "severity", "device_id"))


def light_start(window: TimeRange) -> datetime:
    """Where the lights' last state is looked for: further back than the window, since a
    light reporting every 15 min is still on between its reports."""
    return min(window.start, window.end - timedelta(seconds=2 * 900))


def lookback_start(window: TimeRange, settings: ApiSettings) -> datetime:
    """Where each device's newest reading and status are looked for."""
    return min(window.start, window.end - timedelta(seconds=settings.status_lookback))


async def take_snapshot(
    influx: InfluxClient,
    city: City,
    window: TimeRange,
    settings: ApiSettings,
    book: TierBook,
    board: Board | None = None,
) -> Snapshot:
    """Run the snapshot's queries concurrently and index the answers by device; the window
    means come from the rollup tiers where they hold whole buckets of the window. With a
    `board` that covers the window, what it holds is read from it instead (`safecity.board`):
    only the events and incidents are asked of InfluxDB."""
    if board is not None and board.covers(window.start_ms, window.end_ms):
        return await _from_board(influx, city, window, settings, board)
    snap = Snapshot(window, datetime.now(UTC))
    base = span_params(city.id, window.start, window.end)
    lookback = lookback_start(window, settings)
    kinds = list(MEAN_FIELDS)
    span = (window.start_ms, window.end_ms)
    # Means and states in one round of concurrent queries: an overview costs one round trip.
    sums, results = await asyncio.gather(
        asyncio.gather(
            *(window_means(influx, book, k, MEAN_FIELDS[k], city.id, span) for k in kinds)
        ),
        asyncio.gather(
            influx.query(
                LIGHTS_STATEMENT,
                span_params(city.id, light_start(window), window.end),
                chunk_rows=CHUNK_ROWS,
            ),
            seen_and_status(influx, settings, city, (lookback, window.end)),
            influx.query(EVENTS_STATEMENT, base, chunk_rows=CHUNK_ROWS),
        ),
    )
    snap.open_incidents = await open_incidents(influx, city, window)
    for kind, (per_device, pieces) in zip(kinds, sums, strict=True):
        snap.means[kind] = per_device
        snap.served[kind] = pieces
    # Thousands of rows a statement: indexed in a worker thread, the loop free meanwhile.
    await asyncio.to_thread(_index_states, snap, *results)
    return snap


async def open_incidents(influx: InfluxClient, city: City, window: TimeRange) -> list[inc.Incident]:
    """The incidents open at the window's end (opened in the lookback before it)."""
    found = await inc.IncidentStore(influx).query(
        city.id, window.end - INCIDENT_LOOKBACK, window.end
    )
    return [i for i in found.values() if _open_at(i, window.end)]


async def _from_board(
    influx: InfluxClient, city: City, window: TimeRange, settings: ApiSettings, board: Board
) -> Snapshot:
    """The snapshot with the board's means and states, and InfluxDB's events and incidents."""
    snap = Snapshot(window, datetime.now(UTC), board=True)
    events, snap.open_incidents = await asyncio.gather(
        influx.query(
            EVENTS_STATEMENT, span_params(city.id, window.start, window.end), chunk_rows=CHUNK_ROWS
        ),
        open_incidents(influx, city, window),
    )
    ms = window.start_ms, window.end_ms
    parts = await asyncio.to_thread(
        board.parts,
        *ms,
        epoch_ms(light_start(window)),
        epoch_ms(lookback_start(window, settings)),
    )
    snap.means, snap.lights = parts.means, parts.lights
    snap.last_seen, snap.status = parts.last_seen, parts.status
    snap.served = {kind: [Piece(None, *ms)] for kind in MEAN_FIELDS}
    _index_events(snap, events)  # events are few: no thread needed
    return snap


async def seen_and_status(
    influx: InfluxClient, settings: ApiSettings, city: City, span: tuple[datetime, datetime]
) -> tuple[dict[str, int], Statuses]:
    """Each device's newest reading, and the last status of those it may make offline
    (`api.offline`): the newest offline messages are read beside the readings."""
    seen, offline = await asyncio.gather(
        newest_readings(influx, settings, city, span), newest_offline(influx, city.id, span)
    )
    return seen, await deciding_statuses(influx, city.id, span[1], offline, seen)


def _index_states(
    snap: Snapshot,
    lights: list[Series],
    seen_and_status: tuple[dict[str, int], Statuses],
    events: list[Series],
) -> None:
    """The lights' states, last readings, status messages and event counts, by device."""
    for s in lights:
        for row in s.rows():
            snap.lights[str(row["device_id"])] = (row.get("power_state"), row.get("status"))
    snap.last_seen, snap.status = seen_and_status
    _index_events(snap, events)


def _index_events(snap: Snapshot, events: list[Series]) -> None:
    """The window's event counts by district and severity, and by district its devices."""
    for s in events:
        for row in s.rows():
            key = (str(row["district"]), str(row["severity"]))
            snap.events[key] = snap.events.get(key, 0) + int(row["n"])
            district = str(row["district"])
            snap.event_devices[district] = snap.event_devices.get(district, 0) + 1


def device_state(snap: Snapshot, settings: ApiSettings, device: Device) -> str:
    """online, stale or offline at the window's end.

    offline: its last status message says offline (and no reading came after it), or
    no reading within status_lookback; stale: last reading older than the stale limit;
    online otherwise.
    """
    limit_ms = stale_limit_s(settings, device.kind) * 1000
    return _state(snap, device.id, snap.window.end_ms, limit_ms)


def _state(snap: Snapshot, device_id: str, end_ms: int, limit_ms: float) -> str:
    seen = snap.last_seen.get(device_id)
    status = snap.status.get(device_id)
    if status is not None and status[1] == "offline" and (seen is None or status[0] >= seen):
        return "offline"
    if seen is None:
        return "offline"
    return "stale" if end_ms - seen > limit_ms else "online"


def states_of(snap: Snapshot, settings: ApiSettings, city: City) -> dict[str, str]:
    """Every device's state at the snapshot's window end, made once per snapshot (the
    window's end and each kind's stale limit worked out once, not once a device)."""
    if not snap.states:
        end_ms = snap.window.end_ms
        limits = {k: stale_limit_s(settings, k) * 1000 for k in {d.kind for d in city.devices}}
        snap.states = {d.id: _state(snap, d.id, end_ms, limits[d.kind]) for d in city.devices}
    return snap.states


STATE_RULE = (
    "offline: last status message says offline (no reading since) or no reading within "
    "status_lookback; stale: last reading older than max(stale_after, 2 x the kind's "
    "cadence); online: otherwise"
)


class Scope:
    """The devices of a city or a district, and the figures over them."""

    def __init__(self, snap: Snapshot, settings: ApiSettings, devices: Iterable[Device]) -> None:
        self.snap = snap
        self.settings = settings
        self.by_kind: dict[str, list[Device]] = {}
        self._kept: dict[tuple[str, str], dict[str, float]] = {}
        for d in devices:
            self.by_kind.setdefault(d.kind, []).append(d)

    def _figure(self, kind: str, ids: list[str], value: float | None, unit: str) -> Figure:
        newest = max(
            (self.snap.last_seen[i] for i in ids if i in self.snap.last_seen), default=None
        )
        return Figure(
            value=None if value is None else round(value, 4),
            unit=unit,
            devices=len(ids),
            expected=len(self.by_kind.get(kind, ())),
            newest=format_epoch_ms(newest) if newest is not None else None,
            age_s=None if newest is None else round((self.snap.window.end_ms - newest) / 1000, 3),
        )

    def _means(self, kind: str, name: str) -> dict[str, float]:
        """device -> its window mean of a field, for the scope's devices that have one
        (worked out once per scope: several figures read the same means)."""
        kept = self._kept.get((kind, name))
        if kept is None:
            per_device = self.snap.means.get(kind, {})
            kept = self._kept[kind, name] = {
                d.id: cells[name]
                for d in self.by_kind.get(kind, ())
                if (cells := per_device.get(d.id)) is not None and name in cells
            }
        return kept

    def _mean_figure(self, kind: str, name: str, unit: str, total: bool = False) -> Figure:
        values = self._means(kind, name)
        value = None
        if values:
            value = sum(values.values()) if total else sum(values.values()) / len(values)
        return self._figure(kind, list(values), value, unit)

    def air(self) -> AirQuality:
        """AQI of the scope: EPA sub-indices of the mean over devices of each pollutant."""
        pollutants: dict[str, Figure] = {}
        means: dict[str, float] = {}
        exceed: dict[str, Exceedance] = {}
        contributing: set[str] = set()
        for p in MEAN_FIELDS["air_quality"]:
            values = self._means("air_quality", p)
            unit = catalogue.WHO_AIR[p].unit
            pollutants[p] = self._mean_figure("air_quality", p, unit)
            if values and p in aqi.TABLES:
                means[p] = sum(values.values()) / len(values)
                contributing |= set(values)
            who = catalogue.WHO_AIR[p]
            guideline, g_unit, period = who.value, who.unit, who.period
            exceed[p] = Exceedance(
                guideline=guideline,
                unit=g_unit,
                averaging=period,
                devices_above=sum(1 for v in values.values() if v > guideline),
                devices=len(values),
            )
        result = aqi.aqi(means)
        worst = None
        per_device = self.snap.means.get("air_quality", {})
        for device_id in contributing:
            device_aqi = aqi.aqi(per_device.get(device_id, {}))
            if device_aqi is not None:
                worst = device_aqi[0] if worst is None else max(worst, device_aqi[0])
        return AirQuality(
            aqi=self._figure(
                "air_quality", sorted(contributing), None if result is None else result[0], "AQI"
            ),
            category=None if result is None else aqi.category(result[0]),
            driving_pollutant=None if result is None else result[1],
            worst_device_aqi=worst,
            sub_indices={p: aqi.sub_index(p, v) for p, v in means.items()},
            pollutants=pollutants,
            who_exceedances=exceed,
        )

    def traffic(self) -> Traffic:
        """Mean speed, congestion index vs the fixed free-flow speed, summed volume."""
        speeds = self._means("traffic", "avg_speed")
        index = [max(0.0, 1.0 - v / FREE_FLOW_KMH) for v in speeds.values()]
        return Traffic(
            avg_speed=self._mean_figure("traffic", "avg_speed", "km/h"),
            congestion_index=self._figure(
                "traffic", list(speeds), sum(index) / len(index) if index else None, "1"
            ),
            free_flow_kmh=FREE_FLOW_KMH,
            free_flow_basis=FREE_FLOW_BASIS,
            volume=self._mean_figure("traffic", "intensity", "veh/h", total=True),
            occupancy=self._mean_figure("traffic", "occupancy", "1"),
        )

    def noise(self, timezone: str) -> Noise:
        """Energy-mean LAeq over sensors and the share above the WHO day/night guideline."""
        levels = self._means("noise", "laeq")
        local_hour = self.snap.window.end.astimezone(ZoneInfo(timezone)).hour
        night = local_hour >= 22 or local_hour < 6
        guideline = NOISE_NIGHT_DB if night else NOISE_DAY_DB
        energy = None
        if levels:
            energy = 10 * math.log10(sum(10 ** (v / 10) for v in levels.values()) / len(levels))
        share = sum(1 for v in levels.values() if v > guideline) / len(levels) if levels else None
        return Noise(
            laeq=self._figure("noise", list(levels), energy, "dB(A)"),
            share_above_who=self._figure("noise", list(levels), share, "1"),
            who_guideline_db=guideline,
            who_period="night (Lnight 45 dB)" if night else "day (Lden 53 dB)",
        )

    def lights(self) -> Streetlights:
        """Lights on or dimmed, and lights whose status is not ok, from their latest state."""
        ids = [d.id for d in self.by_kind.get("streetlight", ()) if d.id in self.snap.lights]
        states = [self.snap.lights[i] for i in ids]
        on = sum(1 for power, _ in states if power in ("on", "dimmed"))
        failed = sum(1 for _, status in states if status is not None and status != "ok")
        return Streetlights(
            on=self._figure("streetlight", ids, float(on) if ids else None, "count"),
            failed=self._figure("streetlight", ids, float(failed) if ids else None, "count"),
        )

    def devices(self, total: list[Device], states: dict[str, str]) -> DeviceCounts:
        """online / stale / offline over every device of the scope."""
        counts = {"online": 0, "stale": 0, "offline": 0}
        for d in total:
            counts[states[d.id]] += 1
        return DeviceCounts(total=len(total), rule=STATE_RULE, **counts)

    def incidents(self, districts: set[str]) -> Incidents:
        """Open incidents of the scope by severity, from the incident store."""
        by = dict.fromkeys(SEVERITIES, 0)
        devices: set[str] = set()
        for incident in self.snap.open_incidents:
            if incident.district in districts:
                by[incident.severity.value] = by.get(incident.severity.value, 0) + 1
                devices.update(incident.devices)
        return Incidents(
            total=sum(by.values()), by_severity=by, devices=len(devices), source=INCIDENT_SOURCE
        )


def _open_at(incident: inc.Incident, end: datetime) -> bool:
    """Not resolved by `end` (steps after `end` are not yet taken then)."""
    steps = [t for t in incident.transitions if t.at < end]
    return not steps or steps[-1].state is not inc.State.RESOLVED


def overview(snap: Snapshot, settings: ApiSettings, city: City, district: str | None) -> Overview:
    """The overview of the city, or of one of its districts, from a snapshot (of that city,
    under these settings): made once per snapshot and scope."""
    view = snap.views.get(district)
    if view is None:
        view = snap.views[district] = _overview(snap, settings, city, district)
    return view


async def view(snap: Snapshot, settings: ApiSettings, city: City, district: str | None) -> Overview:
    """`overview` off the event loop: made once per snapshot and scope in a worker thread
    (a city's is hundreds of ms of Python; the loop answers other requests meanwhile)."""
    made = snap.views.get(district)
    if made is not None:
        return made
    return await _off_loop(snap, ("view", district), overview, snap, settings, city, district)


async def ready(snap: Snapshot, settings: ApiSettings, city: City) -> Snapshot:
    """The snapshot with the city's overview (and so every device's state) already made: a
    refreshed snapshot replaces the cached one only once a poll can be answered from it
    (else each refresh made the next polls wait for a city's worth of Python)."""
    await view(snap, settings, city, None)
    return snap


async def states(snap: Snapshot, settings: ApiSettings, city: City) -> dict[str, str]:
    """`states_of` off the event loop (once per snapshot, in a worker thread)."""
    if snap.states:
        return snap.states
    return await _off_loop(snap, ("states", None), states_of, snap, settings, city)


async def _off_loop(
    snap: Snapshot, key: tuple[str, str | None], make: Callable[..., T], *args: Any
) -> T:
    """`make(*args)` in a worker thread, once for the snapshot and `key` (concurrent
    callers wait for the same run; a failed run is not kept)."""
    making = snap.making.get(key)
    if making is None:
        making = snap.making[key] = asyncio.ensure_future(asyncio.to_thread(make, *args))
    try:
        result: T = await asyncio.shield(making)
    except BaseException:
        if making.done() and snap.making.get(key) is making:
            del snap.making[key]
        raise
    return result


def _overview(snap: Snapshot, settings: ApiSettings, city: City, district: str | None) -> Overview:
    devices = list(city.devices if district is None else city.select(district=district))
    scope = Scope(snap, settings, devices)
    districts = {district} if district is not None else {d.id for d in city.districts}
    return Overview(
        city=city.id,
        district=district,
        window=snap.window.model(),
        generated_at=format_ts(snap.generated_at),
        air_quality=scope.air(),
        traffic=scope.traffic(),
        noise=scope.noise(city.record.timezone),
        parking=Parking(occupancy=scope._mean_figure("parking", "occupancy", "1")),
        streetlights=scope.lights(),
        crowd=Crowd(
            people=scope._mean_figure("crowd", "people_count", "count", total=True),
            occupancy=scope._mean_figure("crowd", "occupancy", "1"),
        ),
        devices=scope.devices(devices, states_of(snap, settings, city)),
        incidents=scope.incidents(districts),
        served_by={
            kind: served(pieces, BOARD if snap.board else None)
            for kind, pieces in snap.served.items()
        },
    )


def kpis(view: Overview) -> dict[str, Any]:
    """Flat per-district KPIs for GeoJSON properties."""
    return {
        "aqi": view.air_quality.aqi.value,
        "aqi_category": view.air_quality.category,
        "driving_pollutant": view.air_quality.driving_pollutant,
        "avg_speed_kmh": view.traffic.avg_speed.value,
        "congestion_index": view.traffic.congestion_index.value,
        "laeq_db": view.noise.laeq.value,
        "noise_share_above_who": view.noise.share_above_who.value,
        "parking_occupancy": view.parking.occupancy.value,
        "streetlights_on": view.streetlights.on.value,
        "streetlights_failed": view.streetlights.failed.value,
        "crowd_people": view.crowd.people.value,
        "devices_online": view.devices.online,
        "devices_stale": view.devices.stale,
        "devices_offline": view.devices.offline,
        "incidents": view.incidents.total,
        "window_from": view.window.from_,
        "window_to": view.window.to,
    }
