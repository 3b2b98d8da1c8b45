"""Validation stage: topic + registry identity + payload contract -> a point, or a rejection."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import cast

from safecity import schema, topics
from safecity.errors import LineProtocolError, TopicError
from safecity.fastcontract import decode_telemetry
from safecity.lineprotocol import Point, encode, series_key
from safecity.readings import Event, Reading, Rejection, RejectReason, Status, parse
from safecity.registry import Cities, City, Device, as_cities

_READING, _EVENT, _STATUS = "reading", "event", "status"


@cache
def _shape(model: type) -> str:
    """Which of Reading / Event / Status a parsed message's class is (memoised per class)."""
    if issubclass(model, Reading):
        return _READING
    if issubclass(model, Event):
        return _EVENT
    return _STATUS


@lru_cache(maxsize=16_384)
def _device_topic(topic: str) -> topics.DeviceTopic:
    """`topics.parse_device_topic`, memoised (bounded): a device's topic never changes."""
    return topics.parse_device_topic(topic)


def claimed_device_id(topic: str) -> str:
    """The device id a device topic claims (its sixth level) as sent, or ''."""
    parts = topic.split("/", 6)
    return parts[5] if len(parts) > 5 else ""


def claimed_city(topic: str) -> str:
    """The city a device topic names (its third level) as sent, or ''."""
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 2 else ""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid message, as the line it will be written as."""

    point: Point
    line: str
    channel: topics.Channel


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message and why."""

    rejection: Rejection
    channel: str


class RateLimiter:
    """Per-device token buckets: `rate` messages/s sustained, bursts up to `burst`.

    Memory is one small list per registry device (devices are an allow-list), so it
    is bounded by the registry, not by traffic.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}

    def allow(self, device_id: str) -> bool:
        """Take one token from the device's bucket; False when it is empty."""
        now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            self._buckets[device_id] = [self.burst - 1, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True


class DuplicateDetector:
    """Remembers the payload hash of the last `capacity` (device, seq) pairs, and the seq of
    the last `capacity` stored (series, time) pairs (two LRUs).

    Same device and seq with the same bytes is a harmless redelivery (the point
    overwrites itself); with different bytes it is a conflicting duplicate. Another seq
    for a series and millisecond already taken is one too: InfluxDB keys a point by
    series and time, so storing it would silently overwrite the first.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._times: OrderedDict[int, int] = OrderedDict()

    def time_taken_by(
        self, point: Point, seq: int, tags_key: tuple[tuple[str, str], ...] | None = None
    ) -> int | None:
        """The other seq already stored at this point's series and time, else None (and
        the time is claimed for `seq`); `tags_key` is the point's sorted tags if known."""
        # A 64-bit hash, not the tuple itself: a fraction of the memory per entry; a
        # collision (about 1 in 10^9 at 200,000 entries) dead-letters, never overwrites.
        if tags_key is None:
            tags_key = tuple(sorted(point.tags.items()))
        key = hash((point.measurement, tags_key, point.time_ms))
        seen = self._times.get(key)
        if seen is not None:
            self._times.move_to_end(key)
            return seen if seen != seq else None
        self._times[key] = seq
        if len(self._times) > self.capacity:
            self._times.popitem(last=False)
        return None

    def conflicts(self, device_id: str, seq: int, payload: bytes) -> bool:
        """True when (device, seq) was seen with other content; else remember it."""
        key = (device_id, seq)
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        seen = self._seen.get(key)
        if seen is not None:
            self._seen.move_to_end(key)
            return seen != digest
        self._seen[key] = digest
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)


class Validator:
    """Checks a message against the topic scheme, the registry and the catalogue.

    With a `rate_limiter` and a `duplicates` detector it also applies the per-device
    rate limit and the conflicting-duplicate check (the live ingest does; a
    dead-letter replay does not).
    """

    def __init__(
        self,
        city: City | Cities,
        past_window: float,
        future_window: float,
        *,
        rate_limiter: RateLimiter | None = None,
        duplicates: DuplicateDetector | None = None,
    ) -> None:
        self.cities = as_cities(city)
        self.city = self.cities.first
        self._past = timedelta(seconds=past_window)
        self._future = timedelta(seconds=future_window)
        self.rate_limiter = rate_limiter
        self.duplicates = duplicates
        self._device_series: dict[str, tuple[str, dict[str, str], tuple[tuple[str, str], ...]]] = {}

    def validate(
        self,
        topic: str,
        payload: bytes,
        now: datetime | None = None,
        *,
        redelivery: bool = False,
    ) -> Accepted | Rejected:
        """Validate one message; never raises. A redelivery is not rate limited again."""
        try:
            parsed = _device_topic(topic)
        except TopicError as exc:
            # Our filters only match the device scheme, so an invalid part (upper case,
            # odd characters) cannot name a registered device.
            return Rejected(
                Rejection(RejectReason.UNKNOWN_DEVICE, str(exc)), topic.rsplit("/", 1)[-1]
            )
        channel = parsed.channel
        city = self.cities.get(parsed.city)
        if city is None:
            # Every city's topics are subscribed so that this is seen at all: the broker
            # would otherwise PUBACK "no subscribers" and drop it without a trace.
            return Rejected(
                Rejection(RejectReason.IDENTITY_MISMATCH, self._foreign(parsed)), channel
            )
        device = city.device(parsed.device_id)
        if device is None:
            owner = self.cities.owner(parsed.device_id)
            if owner is not None:
                # A device of one city writing into another's data: never stored there.
                return Rejected(
                    Rejection(
                        RejectReason.IDENTITY_MISMATCH,
                        f"device {parsed.device_id!r} belongs to city {owner.id!r}; the topic "
                        f"names city {parsed.city!r}",
                    ),
                    channel,
                )
            return Rejected(
                Rejection(
                    RejectReason.UNKNOWN_DEVICE,
                    f"device {parsed.device_id!r} is not in the registry of city {parsed.city!r}",
                ),
                channel,
            )
        if parsed.district != device.district or parsed.kind != device.kind:
            return Rejected(
                Rejection(
                    RejectReason.IDENTITY_MISMATCH,
                    f"topic says {parsed.district}/{parsed.kind}, registry says "
                    f"{device.district}/{device.kind} for {device.id}",
                ),
                channel,
            )
        if (
            self.rate_limiter is not None
            and not redelivery
            and not self.rate_limiter.allow(device.id)
        ):
            return Rejected(
                Rejection(
                    RejectReason.RATE_LIMITED,
                    f"device {device.id} exceeds {self.rate_limiter.rate:g} messages/s "
                    f"(burst {self.rate_limiter.burst:g})",
                ),
                channel,
            )
        if channel is topics.Channel.TELEMETRY:
            # The C-backed path accepts the common valid reading; anything it cannot vouch
            # for (and every rejection) is decided by `parse` below.
            fast = decode_telemetry(device.kind, payload, now, self._past, self._future)
            if fast is not None:
                seq, ts_ms, fields, field_set = fast
                series, tags, tags_key = self._series(city.id, device)
                point = Point(schema.measurement_of(device.kind), tags, fields, ts_ms)
                return self._numbered(
                    device, payload, seq, point, channel, tags_key, f"{series} {field_set} {ts_ms}"
                )
        message = parse(
            device.kind,
            payload,
            channel=channel,
            now=now,
            past_window=self._past,
            future_window=self._future,
        )
        if isinstance(message, Rejection):
            return Rejected(message, channel)
        # A dict lookup per model class: pydantic's isinstance goes through ABCMeta.
        shape = _shape(type(message))
        if shape is _STATUS:
            point = schema.status_point(city.id, device, cast(Status, message))
            return self._encoded(point, channel)
        numbered = cast(Reading | Event, message)
        if shape is _READING:
            point = schema.reading_point(city.id, device, cast(Reading, message))
        else:
            point = schema.event_point(city.id, device, cast(Event, message))
        return self._numbered(device, payload, numbered.seq, point, channel)

    def _foreign(self, parsed: topics.DeviceTopic) -> str:
        """Why a topic of a city this deployment does not serve is refused."""
        if len(self.cities) == 1:
            return f"topic names city {parsed.city!r}; this registry is city {self.city.id!r}"
        return (
            f"topic names city {parsed.city!r}, which this deployment does not serve "
            f"(cities: {', '.join(self.cities.ids)})"
        )

    def _series(
        self, city_id: str, device: Device
    ) -> tuple[str, dict[str, str], tuple[tuple[str, str], ...]]:
        """A device's reading series key, tags and sorted tags, built once per device (the
        tags dict is shared by its points and never mutated; device ids are unique across
        cities)."""
        cached = self._device_series.get(device.id)
        if cached is None:
            tags = schema.reading_tags(city_id, device)
            series = series_key(schema.measurement_of(device.kind), tags)
            cached = self._device_series[device.id] = (series, tags, tuple(sorted(tags.items())))
        return cached

    def _numbered(
        self,
        device: Device,
        payload: bytes,
        seq: int,
        point: Point,
        channel: topics.Channel,
        tags_key: tuple[tuple[str, str], ...] | None = None,
        line: str | None = None,
    ) -> Accepted | Rejected:
        """The duplicate checks of a reading or event, then its line (`line` when the fast
        path built it already)."""
        if self.duplicates is not None and self.duplicates.conflicts(device.id, seq, payload):
            return Rejected(
                Rejection(
                    RejectReason.CONFLICTING_DUPLICATE,
                    f"device {device.id} sent seq {seq} before with other content",
                ),
                channel,
            )
        if (
            self.duplicates is not None
            and (other := self.duplicates.time_taken_by(point, seq, tags_key)) is not None
        ):
            return Rejected(
                Rejection(
                    RejectReason.CONFLICTING_DUPLICATE,
                    f"device {device.id} sent seq {other} and seq {seq} with the "
                    f"same ts ({point.time_ms} ms): storing both would overwrite one",
                ),
                channel,
            )
        if line is not None:
            return Accepted(point, line, channel)
        return self._encoded(point, channel)

    @staticmethod
    def _encoded(point: Point, channel: topics.Channel) -> Accepted | Rejected:
        try:
            line = encode(point)
        except (
            LineProtocolError
        ) as exc:  # defence in depth: validation should make this unreachable
            return Rejected(Rejection(RejectReason.SCHEMA, str(exc)), channel)
        return Accepted(point, line, channel)
