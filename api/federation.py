"""Federation publisher: a city's aggregated indicators per closed interval, to its own broker.

For every closed interval (aligned to the epoch, `federation.interval` seconds long,
taken `federation.delay` seconds after it closed so late readings are in) the
publisher computes the city's and every district's overview with the code of
`GET /v1/cities/{id}/overview` (one snapshot, `api.overview`), adds response times,
alert and detection counts and delivery, and the traffic of each corridor segment in
the city, and publishes them as `safecity.federation` messages (QoS 1, not retained:
the broker refuses retained messages) on `safecity/v1/{city}/_federation/...` with its
own broker account. A Mosquitto bridge carries only those topics to the regional
broker. An interval counts as published once the broker acknowledged every message of
it; the last one is kept in a small state file, so a restart resumes where it stopped
(bounded by `max_backlog`). Republishing an interval is harmless: the region keys its
points by (city, scope, interval).
"""

# The delivery statement is built from catalogue kinds (quote_ident) only.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args, get_origin

from fastapi import FastAPI
from pydantic import BaseModel

from api.overview import (
    INCIDENT_LOOKBACK,
    Scope,
    Snapshot,
    overview,
    take_snapshot,
)
from api.params import TimeRange
from api.settings import ApiSettings, FederationSettings
from api.snapshotcache import SnapshotCache
from api.tiers import TierBook
from safecity import catalogue
from safecity import federation as fed
from safecity import incidents as inc
from safecity.errors import MqttError, SafecityError, StorageError
from safecity.influx import InfluxClient, quote_ident
from safecity.mqtt import MqttClient
from safecity.readings import format_ts, from_epoch_ms, truncate_ms
from safecity.registry import City, Device
from safecity.settings import MqttSettings

log = logging.getLogger("safecity.api.federation")

DELIVERY_STATEMENT = (
    'SELECT count("seq") AS "n" FROM '
    + ", ".join(quote_ident(k) for k in catalogue.KINDS)
    + ' WHERE "city" = $city AND time >= $from AND time < $to GROUP BY "device_id"'
)


def closed_intervals(after_ms: int, now: datetime, cfg: FederationSettings) -> list[TimeRange]:
    """The epoch-aligned intervals that start at or after `after_ms` and closed `delay` ago."""
    step = round(cfg.interval * 1000)
    last_end = (int((now.timestamp() - cfg.delay) * 1000) // step) * step
    first = -(-after_ms // step) * step
    out = []
    for start in range(first, last_end, step):
        out.append(
            TimeRange(
                from_epoch_ms(start),
                from_epoch_ms(start + step),
            )
        )
    return out[-cfg.max_backlog :]


def latest_closed(now: datetime, cfg: FederationSettings) -> TimeRange:
    """The newest interval the publisher would have published by `now`."""
    step = round(cfg.interval * 1000)
    end = (int((now.timestamp() - cfg.delay) * 1000) // step) * step
    return TimeRange(from_epoch_ms(end - step), from_epoch_ms(end))


# --- the indicators ------------------------------------------------------------------


@dataclass
class Extra:
    """What the overview snapshot lacks: stored readings per device, the incident log."""

    stored: dict[str, int]
    incidents: list[inc.Incident]


async def take_extra(influx: InfluxClient, city: City, window: TimeRange) -> Extra:
    """Readings stored per device in the window, and incidents opened in the lookback."""
    params: dict[str, str | int | float | bool] = {"city": city.id, **window.params()}
    series = await influx.query(DELIVERY_STATEMENT, params)
    stored: dict[str, int] = {}
    for s in series:
        for row in s.rows():
            device = str(row["device_id"])
            stored[device] = stored.get(device, 0) + int(row["n"] or 0)
    found = await inc.IncidentStore(influx).query(
        city.id, window.end - INCIDENT_LOOKBACK, window.end
    )
    return Extra(stored, list(found.values()))


def _model_of(annotation: Any) -> tuple[bool, type[BaseModel] | None]:
    """(is a dict of it, the model) of a field annotation that holds a model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return False, annotation
    if get_origin(annotation) is dict:
        return True, _model_of(get_args(annotation)[1])[1]
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found[1] is not None:
            return found
    return False, None


def fit(data: Any, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` out of an API model's JSON dump (API-only fields left out)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = data.get(name)
        many, sub = _model_of(info.annotation)
        if sub is not None and isinstance(value, dict):
            value = {k: fit(v, sub) for k, v in value.items()} if many else fit(value, sub)
        out[info.alias or name] = value
    return out


def _response(incidents: Iterable[inc.Incident], end: datetime) -> fed.Response:
    """Time to acknowledge as known at `end` (steps after it not yet taken)."""
    members = list(incidents)
    tta = []
    for i in members:
        ack = next(
            (t.at for t in i.transitions if t.state is inc.State.ACKNOWLEDGED and t.at < end), None
        )
        if ack is not None:
            tta.append(max(0.0, (ack - i.opened_at).total_seconds()))
    return fed.Response(
        incidents=len(members),
        acknowledged=len(tta),
        tta_mean_s=round(statistics.fmean(tta), 3) if tta else None,
        tta_median_s=round(statistics.median(tta), 3) if tta else None,
        tta_max_s=round(max(tta), 3) if tta else None,
    )


def _delivery(devices: Sequence[Device], extra: Extra, window: TimeRange) -> fed.Delivery:
    stored = sum(extra.stored.get(d.id, 0) for d in devices)
    expected = round(sum(window.seconds / catalogue.KINDS[d.kind].cadence_s for d in devices))
    ratio = round(stored / expected, 4) if expected else None
    return fed.Delivery(stored=stored, expected=expected, ratio=ratio)


def scope_message(
    snap: Snapshot,
    extra: Extra,
    settings: ApiSettings,
    city: City,
    district: str | None,
    generated_at: datetime,
) -> fed.ScopeIndicators:
    """One scope's message: the overview's sections plus response, activity and delivery."""
    window = snap.window
    view = overview(snap, settings, city, district).model_dump(mode="json")
    districts = {district} if district is not None else {d.id for d in city.districts}
    devices = list(city.devices if district is None else city.select(district=district))
    mine = [i for i in extra.incidents if i.district in districts]
    alerts: dict[str, int] = {}
    for i in mine:
        if window.start <= i.opened_at < window.end:
            alerts[i.severity.value] = alerts.get(i.severity.value, 0) + 1
    detections: dict[str, int] = {}
    for (where, severity), n in snap.events.items():
        if where in districts:
            detections[severity] = detections.get(severity, 0) + n
    name = city.name if district is None else getattr(city.district(district), "name", district)
    return fed.ScopeIndicators(
        city=city.id,
        district=district,
        name=name,
        interval=fed.Interval(start=window.start, end=window.end),
        generated_at=truncate_ms(generated_at),
        air_quality=fed.AirQuality.model_validate(fit(view["air_quality"], fed.AirQuality)),
        traffic=fed.Traffic.model_validate(fit(view["traffic"], fed.Traffic)),
        noise=fed.Noise.model_validate(fit(view["noise"], fed.Noise)),
        devices=fed.DeviceCounts.model_validate(fit(view["devices"], fed.DeviceCounts)),
        incidents=fed.Incidents.model_validate(fit(view["incidents"], fed.Incidents)),
        response=_response(mine, window.end),
        activity=fed.Activity(alerts=alerts, detections=detections),
        delivery=_delivery(devices, extra, window),
    )


def segment_message(
    snap: Snapshot, settings: ApiSettings, city: City, segment: fed.Segment, generated_at: datetime
) -> fed.SegmentIndicators:
    """A corridor segment's traffic: the mean speed of its sensors, the travel time at it."""
    chosen = [
        d
        for d in city.devices
        if d.kind == "traffic" and (not segment.districts or d.district in segment.districts)
    ]
    speed = Scope(snap, settings, chosen).traffic().avg_speed
    value = speed.value
    travel = None if not value else round(segment.length_km / value * 3600, 1)
    return fed.SegmentIndicators(
        city=city.id,
        segment=segment.id,
        interval=fed.Interval(start=snap.window.start, end=snap.window.end),
        generated_at=truncate_ms(generated_at),
        length_km=segment.length_km,
        speed_kmh=None if value is None else max(0.0, min(value, 400.0)),
        travel_time_s=travel,
        sensors=speed.devices,
        expected=speed.expected,
    )


def city_segments(city: City, corridors: Iterable[fed.Corridor]) -> list[fed.Segment]:
    """The corridor segments that lie in `city`."""
    return [s for c in corridors for s in c.segments if s.city == city.id]


async def indicators(
    influx: InfluxClient,
    city: City,
    window: TimeRange,
    settings: ApiSettings,
    corridors: Iterable[fed.Corridor],
    cache: SnapshotCache | None = None,
    tiers: TierBook | None = None,
) -> list[fed.Message]:
    """Every message of one city and interval: the city, each district, each segment.

    With a cache, the snapshot is shared with `GET /v1/cities/{id}/overview` of the same
    window (its key for a fixed window); `tiers` is the app's book of the city's rollup
    tiers (default: a book of its own)."""
    book = tiers if tiers is not None else TierBook.of(influx.settings)

    async def snapshot() -> Snapshot:
        if cache is None:
            return await take_snapshot(influx, city, window, settings, book)
        key = (city.id, "fixed", window.start.isoformat(), window.end.isoformat())
        return await cache.get(key, lambda: take_snapshot(influx, city, window, settings, book))

    snap, extra = await asyncio.gather(snapshot(), take_extra(influx, city, window))
    # Every scope's overview is a city's worth of Python: made off the event loop.
    return await asyncio.to_thread(messages, snap, extra, settings, city, corridors)


def messages(
    snap: Snapshot,
    extra: Extra,
    settings: ApiSettings,
    city: City,
    corridors: Iterable[fed.Corridor],
) -> list[fed.Message]:
    """The messages of the city, each district and each segment, from one snapshot."""
    now = datetime.now(UTC)
    out: list[fed.Message] = [scope_message(snap, extra, settings, city, None, now)]
    out += [scope_message(snap, extra, settings, city, d.id, now) for d in city.districts]
    out += [segment_message(snap, settings, city, s, now) for s in city_segments(city, corridors)]
    return out


def local_cities(app: FastAPI) -> list[tuple[City, InfluxClient]]:
    """The cities this deployment serves, each with a client of its own database."""
    settings: ApiSettings = app.state.settings
    served = getattr(app.state, "cities", None) or {app.state.city.id: app.state.city}
    return with_databases(settings, list(served.values()), app.state.influx)


def with_databases(
    settings: ApiSettings, cities: Sequence[City], base: InfluxClient
) -> list[tuple[City, InfluxClient]]:
    """Each city with a client of its own database (`InfluxSettings.database_for`)."""
    ids = [c.id for c in cities]
    return [(c, base.for_database(settings.influx.database_for(c.id, ids))) for c in cities]


# --- the publisher ---------------------------------------------------------------------


def publisher_mqtt(settings: ApiSettings) -> MqttSettings:
    """The API's broker, logged in as the publisher's own account."""
    values = settings.mqtt.model_dump(exclude={"username", "password"})
    values["username"] = settings.federation.username
    if settings.federation.password is not None:
        values["password"] = settings.federation.password.get_secret_value()
    return MqttSettings.model_validate(values)


class PublishedState:
    """The end (epoch ms) of the last interval fully acknowledged, per city (a JSON file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ends: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError, TypeError):
            raw = json.loads(path.read_text(encoding="utf-8"))
            self.ends = {str(k): int(v) for k, v in raw.items()}

    def save(self) -> None:
        """Write the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.ends, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)


class Publisher:
    """The lifespan task: publishes every city's closed intervals, in order, at least once."""

    def __init__(
        self,
        settings: ApiSettings,
        cities: Sequence[tuple[City, InfluxClient]],
        corridors: Sequence[fed.Corridor],
    ) -> None:
        self.settings = settings
        self.cfg = settings.federation
        self.cities = list(cities)
        self.corridors = corridors
        path = self.cfg.state_file or settings.home / "federation" / "published.json"
        self.state = PublishedState(path)
        self.published = 0
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task."""
        self._task = asyncio.create_task(self._run(), name="safecity-api-federation")

    async def stop(self) -> None:
        """Stop the task and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.disconnect()

    async def _connect(self) -> MqttClient:
        if self._client is None:
            first = self.cities[0][0].id if self.cities else "none"
            client = MqttClient(publisher_mqtt(self.settings), f"safecity-federation-{first}")
            await client.connect()
            self._client = client
        return self._client

    async def _run(self) -> None:
        while True:
            try:
                for city, influx in self.cities:
                    await self.catch_up(city, influx)
            except (SafecityError, TimeoutError) as exc:
                # Nothing is lost: the interval stays unpublished and is retried.
                log.warning("federation publish deferred: %s", exc)
            except Exception:
                # A figure the contract refuses is a bug to see, not a reason to stop.
                log.exception("federation publish failed; retrying the interval")
            await asyncio.sleep(self._pause())

    def _pause(self) -> float:
        """Seconds until the next interval becomes publishable (at most one interval)."""
        now = datetime.now(UTC).timestamp() - self.cfg.delay
        return max(0.2, self.cfg.interval - now % self.cfg.interval + 0.05)

    async def catch_up(self, city: City, influx: InfluxClient) -> int:
        """Publish every closed interval of `city` not yet acknowledged; return how many."""
        now = datetime.now(UTC)
        after = self.state.ends.get(city.id)
        if after is None:
            start = latest_closed(now, self.cfg).start - self.cfg.backfill * timedelta(
                seconds=self.cfg.interval
            )
            after = int(start.timestamp() * 1000)
        done = 0
        for window in closed_intervals(after, now, self.cfg):
            await self.publish_interval(city, influx, window)
            self.state.ends[city.id] = window.end_ms
            self.state.save()
            done += 1
        return done

    async def publish_interval(self, city: City, influx: InfluxClient, window: TimeRange) -> None:
        """Compute and publish one interval; raise unless the broker acknowledged all of it."""
        try:
            messages = await indicators(influx, city, window, self.settings, self.corridors)
        except StorageError as exc:
            raise StorageError(f"{city.id} {format_ts(window.start)}: {exc}") from exc
        client = await self._connect()
        results = await asyncio.wait_for(
            asyncio.gather(*(client.publish(m.topic(), fed.encode(m), qos=1) for m in messages)),
            self.cfg.publish_timeout,
        )
        refused = [r.reason for r in results if not r.ok]
        if refused:
            raise MqttError(f"broker refused federation messages of {city.id}: {refused[:3]}")
        self.published += len(messages)
        log.info(
            "federation interval published",
            extra={"city": city.id, "from": format_ts(window.start), "messages": len(messages)},
        )


def start_publisher(
    settings: ApiSettings, cities: Sequence[tuple[City, InfluxClient]]
) -> Publisher | None:
    """Start the publisher when federation is enabled in the settings, else None."""
    if not settings.federation.enabled:
        return None
    publisher = Publisher(settings, cities, fed.load_corridors(settings.federation.corridors))
    publisher.start()
    return publisher


__all__ = [
    "Publisher",
    "closed_intervals",
    "indicators",
    "latest_closed",
    "start_publisher",
]
