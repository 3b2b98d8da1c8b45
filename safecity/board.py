"""A city's recent points in memory, as the ingest wrote them: the API overview's moving window.

Every ingest worker announces the readings and statuses InfluxDB holds after each write
(`ingest/announce.py`, safecity/v1/<city>/_stored/<worker>). A `Board` keeps from them,
per device, what a snapshot of a window ending now reads (`api.overview.take_snapshot`):
each mean field's points of the last `keep_ms`, each streetlight's states, the times of
its readings and its status messages (the API's `api/boardfeed.py` keeps one a city).
Seeded once from InfluxDB after the subscription is in place, it then holds every point
InfluxDB holds in that span, so a snapshot made from it equals one read from InfluxDB,
without reading one series a device. A point written twice (a redelivery, the seed and
its announcement) overwrites itself, as in InfluxDB.

All access goes through one lock: points are applied and snapshots made in worker
threads, never on the event loop.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from safecity import catalogue
from safecity.lineprotocol import Point
from safecity.schema import DEVICE_STATUS

STREETLIGHT = "streetlight"
Means = dict[str, dict[str, dict[str, float]]]
"""kind -> device -> field -> mean over a window."""
Light = tuple[str | None, str | None]


@dataclass
class Track:
    """One device's points of one field, by time (ms), oldest first."""

    times: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))

    def put(self, time_ms: int, value: float) -> None:
        """Insert a point; one at the same time overwrites it (as InfluxDB does)."""
        times = self.times
        if not times or time_ms > times[-1]:
            times.append(time_ms)
            self.values.append(value)
            return
        i = bisect_left(times, time_ms)
        if i < len(times) and times[i] == time_ms:
            self.values[i] = value
        else:
            times.insert(i, time_ms)
            self.values.insert(i, value)

    def mean(self, start_ms: int, end_ms: int) -> float | None:
        """The mean of the points in [start, end), None if there are none."""
        i, j = bisect_left(self.times, start_ms), bisect_left(self.times, end_ms)
        return sum(self.values[i:j]) / (j - i) if j > i else None

    def drop_before(self, cut_ms: int) -> None:
        """Forget the points older than `cut_ms`."""
        i = bisect_left(self.times, cut_ms)
        if i:
            del self.times[:i]
            del self.values[:i]


@dataclass
class Latest:
    """One device's recent timed values (oldest first) and the newest one before them."""

    times: list[int] = field(default_factory=list)
    values: list[object] = field(default_factory=list)
    older: tuple[int, object] | None = None

    def put(self, time_ms: int, value: object) -> None:
        """Insert a value; one at the same time overwrites it."""
        if self.older is not None and time_ms <= self.older[0]:
            if time_ms == self.older[0]:
                self.older = (time_ms, value)
            return
        i = bisect_left(self.times, time_ms)
        if i < len(self.times) and self.times[i] == time_ms:
            self.values[i] = value
        else:
            self.times.insert(i, time_ms)
            self.values.insert(i, value)

    def before(self, end_ms: int) -> tuple[int, object] | None:
        """The newest (time, value) before `end_ms`."""
        i = bisect_left(self.times, end_ms)
        return (self.times[i - 1], self.values[i - 1]) if i else self.older

    def drop_before(self, cut_ms: int) -> None:
        """Fold the values older than `cut_ms` into `older` (only the newest is needed)."""
        i = bisect_left(self.times, cut_ms)
        if i:
            self.older = (self.times[i - 1], self.values[i - 1])
            del self.times[:i]
            del self.values[:i]


@dataclass
class Parts:
    """What a snapshot reads from storage per device, made from the board."""

    means: Means
    lights: dict[str, Light]
    last_seen: dict[str, int]
    status: dict[str, tuple[int, str]]


class Board:
    """A city's recent points per device; `floor_ms` is the oldest time from which it holds
    every mean point (None until seeded)."""

    def __init__(self, city: str, mean_fields: dict[str, tuple[str, ...]], keep_ms: int) -> None:
        self.city = city
        self.mean_fields = mean_fields
        self.keep_ms = keep_ms
        self.lock = threading.Lock()
        self.floor_ms: int | None = None
        self.seeded_at_ms = 0
        self._means: dict[str, dict[str, dict[str, Track]]] = {k: {} for k in mean_fields}
        self._lights: dict[str, Latest] = {}
        self._seen: dict[str, Latest] = {}
        self._status: dict[str, Latest] = {}

    def clear(self) -> None:
        """Forget everything (a new subscription is seeded anew)."""
        with self.lock:
            self.floor_ms = None
            self._means = {k: {} for k in self.mean_fields}
            self._lights, self._seen, self._status = {}, {}, {}

    def apply(self, points: Iterable[Point]) -> int:
        """Take written points (other cities' and measurements' are ignored); how many."""
        taken = 0
        with self.lock:
            for p in points:
                if p.tags.get("city") != self.city or "device_id" not in p.tags:
                    continue
                taken += self._take(p.measurement, p.tags["device_id"], p.fields, p.time_ms)
        return taken

    def _take(self, measurement: str, device: str, fields: Mapping[str, object], at: int) -> int:
        if measurement == DEVICE_STATUS:
            state = fields.get("state")
            if isinstance(state, str):
                self._status.setdefault(device, Latest()).put(at, state)
            return 1
        if measurement not in catalogue.KINDS:
            return 0
        self._seen.setdefault(device, Latest()).put(at, None)
        names = self.mean_fields.get(measurement)
        if names:
            tracks = self._means[measurement].setdefault(device, {})
            for name in names:
                value = fields.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    tracks.setdefault(name, Track()).put(at, float(value))
        if measurement == STREETLIGHT:
            light = (_text(fields.get("power_state")), _text(fields.get("status")))
            self._lights.setdefault(device, Latest()).put(at, light)
        return 1

    def seed_seen(self, seen: dict[str, int], status: dict[str, tuple[int, str]]) -> None:
        """Newest reading times and deciding statuses read from InfluxDB up to the seed."""
        with self.lock:
            for device, at in seen.items():
                self._seen.setdefault(device, Latest()).put(at, None)
            for device, (at, state) in status.items():
                self._status.setdefault(device, Latest()).put(at, state)

    def ready(self, floor_ms: int, seeded_at_ms: int) -> None:
        """Seeded: every mean point from `floor_ms` on is held."""
        with self.lock:
            self.floor_ms, self.seeded_at_ms = floor_ms, seeded_at_ms

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """True when a snapshot of [start, end) (and its lights' span) can be made here."""
        floor = self.floor_ms
        return floor is not None and start_ms >= floor and end_ms >= self.seeded_at_ms

    def prune(self, now_ms: int) -> None:
        """Forget points older than `keep_ms` before now (the floor moves up with them)."""
        cut = now_ms - self.keep_ms
        with self.lock:
            for devices in self._means.values():
                for tracks in devices.values():
                    for track in tracks.values():
                        track.drop_before(cut)
            for book in (self._lights, self._seen, self._status):
                for latest in book.values():
                    latest.drop_before(cut)
            if self.floor_ms is not None:
                self.floor_ms = max(self.floor_ms, cut)

    def points(self) -> int:
        """How many mean field values and light states it holds (what its memory grows with)."""
        with self.lock:
            means = sum(
                len(track.times)
                for devices in self._means.values()
                for tracks in devices.values()
                for track in tracks.values()
            )
            return means + sum(len(latest.times) for latest in self._lights.values())

    def parts(self, start_ms: int, end_ms: int, light_ms: int, lookback_ms: int) -> Parts:
        """The window's means, the lights' last state since `light_ms`, each device's newest
        reading and status since `lookback_ms`, all before `end_ms`."""
        with self.lock:
            means: Means = {}
            for kind, devices in self._means.items():
                out = means[kind] = {}
                for device, tracks in devices.items():
                    cells = {}
                    for name, track in tracks.items():
                        value = track.mean(start_ms, end_ms)
                        if value is not None:
                            cells[name] = value
                    if cells:
                        out[device] = cells
            lights = _newest(self._lights, end_ms, light_ms)
            seen = _newest(self._seen, end_ms, lookback_ms)
            status = _newest(self._status, end_ms, lookback_ms)
        return Parts(
            means,
            {d: _light(value) for d, (_, value) in lights.items()},
            {d: at for d, (at, _) in seen.items()},
            {d: (at, str(state)) for d, (at, state) in status.items()},
        )


def _newest(book: dict[str, Latest], end_ms: int, since_ms: int) -> dict[str, tuple[int, object]]:
    """device -> its newest (time, value) in [since, end)."""
    out = {}
    for device, latest in book.items():
        last = latest.before(end_ms)
        if last is not None and last[0] >= since_ms:
            out[device] = last
    return out


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _light(value: object) -> Light:
    assert isinstance(value, tuple)
    return (value[0], value[1])
