"""Validation stage: topic + registry identity + payload contract -> a point, or a rejection."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import NamedTuple, cast

import msgspec

from safecity import schema, topics
from safecity.errors import LineProtocolError, TopicError
from safecity.fastcontract import TelemetryLines, telemetry_lines, window_ms
from safecity.lineprotocol import Point, encode, series_key
from safecity.mqtt import Incoming
from safecity.readings import (
    Event,
    Reading,
    Rejection,
    RejectReason,
    Status,
    claimed_seq,
    decode_json,
    parse,
)
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


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A valid message, as the line it will be written as (a C-built struct: one per reading)."""

    line: str
    """Its line protocol; an offline status's is two lines, its point and its twin
    (`schema.status_points`), written, spooled and refused together."""
    time_ms: int
    measurement: str
    channel: topics.Channel
    device_id: str
    seq: int | None
    """The device's seq (readings and events; None for a status)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message and why."""

    rejection: Rejection
    channel: str

    @property
    def seq(self) -> int | None:
        """The seq the refused payload claims, as validation read it (None: unreadable)."""
        return self.rejection.seq


class DeviceRateLimiter:
    """Per-device token buckets: `rate` messages/s sustained, bursts up to `burst`.

    Memory is one small list per registry device (devices are an allow-list), so it
    is bounded by the registry, not by traffic.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}

    def allow(self, device_id: str, now: float | None = None) -> bool:
        """Take one token from the device's bucket; False when it is empty. `now` is the
        clock's reading when the caller has one for a whole bulk of messages."""
        if now is None:
            now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            self._buckets[device_id] = [self.burst - 1, now]
            return True
        if now < bucket[1]:
            # A reading taken for a whole bulk can predate this bucket's last take (made
            # by a single `validate` within the bulk): no refill, and never a drain.
            now = bucket[1]
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
        self._seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._times: OrderedDict[int, int] = OrderedDict()

    def time_taken_by(self, series: str, time: int, seq: int) -> int | None:
        """The other seq already stored at this series (`lineprotocol.series_key`) and time
        (ms, or ns for an event), else None (and the time is claimed for `seq`)."""
        # A 64-bit hash, not the pair itself: a fraction of the memory per entry; a
        # collision (about 1 in 10^9 at 200,000 entries) dead-letters, never overwrites.
        key = hash((series, time))
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
        # Python's own hash of the bytes: SipHash, 64 bits, keyed at random per process,
        # so two different payloads of one seq match by chance about 1 in 10^19 and cannot
        # be made to from outside; a fifth of a keyed blake2b's cost, and smaller entries.
        digest = hash(payload)
        seen = self._seen.get(key)
        if seen is not None:
            self._seen.move_to_end(key)
            return seen != digest
        self._seen[key] = digest
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False

    def verdict(
        self,
        device_id: str,
        channel: str,
        seq: int,
        payload: bytes,
        series: str,
        time_ms: int,
        stored_at: int | None = None,
    ) -> Rejected | None:
        """Both checks of a reading or event (`conflicts`, then `time_taken_by` of its
        stored time: `stored_at`, else `time_ms`); None when it passes."""
        if self.conflicts(device_id, seq, payload):
            return _conflict(device_id, channel, seq)
        other = self.time_taken_by(series, time_ms if stored_at is None else stored_at, seq)
        if other is not None:
            return _same_time(device_id, channel, seq, other, time_ms)
        return None

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
        rate_limiter: DeviceRateLimiter | None = None,
        duplicates: DuplicateDetector | None = None,
    ) -> None:
        self.cities = as_cities(city)
        self.city = self.cities.first
        self._past = timedelta(seconds=past_window)
        self._future = timedelta(seconds=future_window)
        self.rate_limiter = rate_limiter
        self.duplicates = duplicates
        # Topic -> what a topic that passed the identity checks resolves to. Bounded by
        # the registries (their devices times three channels): a city never changes.
        self._routes: dict[str, _Route] = {}

    def validate(
        self,
        topic: str,
        payload: bytes,
        now: datetime | None = None,
        *,
        redelivery: bool = False,
    ) -> Accepted | Rejected:
        """Validate one message; never raises. A redelivery is not rate limited again."""
        route = self._routes.get(topic)
        if route is None:
            identified = self._identify(topic)
            if isinstance(identified, Rejected):
                if self.cities.owner(claimed_device_id(topic)) is None:
                    return identified  # no device to acknowledge it to: seq is moot
                return _with_seq(identified, payload)
            route = identified
        limiter = self.rate_limiter
        if limiter is not None and not redelivery and not limiter.allow(route.device_id):
            return _with_seq(self._rate_limited(route), payload)
        if route.lines is not None:
            got = route.lines.line(payload, route.series, *window_ms(now, self._past, self._future))
            if got is not None:
                seq, ts_ms, line = got
                if self.duplicates is not None:
                    rejected = self.duplicates.verdict(
                        route.device_id, route.channel, seq, payload, route.series, ts_ms
                    )
                    if rejected is not None:
                        return rejected
                return Accepted(line, ts_ms, route.measurement, route.channel, route.device_id, seq)
        return self._decide(route, payload, now)

    def validate_many(
        self, messages: Sequence[Incoming], now: datetime
    ) -> list[Accepted | Rejected]:
        """`validate` of each message (received together at `now`), in order: the same
        outcomes, with the window, the rate limiter's clock and the loop's lookups taken
        once per bulk instead of once per message."""
        low, high = window_ms(now, self._past, self._future)
        routes = self._routes
        limiter = self.rate_limiter
        allow = limiter.allow if limiter is not None else None
        clock = limiter._clock() if limiter is not None else 0.0
        verdict = self.duplicates.verdict if self.duplicates is not None else None
        validate, decide = self.validate, self._decide
        out: list[Accepted | Rejected] = []
        append = out.append
        for message in messages:
            route = routes.get(message.topic)
            if route is not None:
                _, device_id, channel, measurement, series, lines, _ = route
            if route is None or lines is None:
                append(validate(message.topic, message.payload, now, redelivery=message.duplicate))
                continue
            if allow is not None and not message.duplicate and not allow(device_id, clock):
                append(_with_seq(self._rate_limited(route), message.payload))
                continue
            payload = message.payload
            got = lines.line(payload, series, low, high)
            if got is None:
                append(decide(route, payload, now))
                continue
            seq, ts_ms, line = got
            if verdict is not None:
                rejected = verdict(device_id, channel, seq, payload, series, ts_ms)
                if rejected is not None:
                    append(rejected)
                    continue
            append(Accepted(line, ts_ms, measurement, channel, device_id, seq))
        return out

    def _identify(self, topic: str) -> _Route | Rejected:
        """The topic's route if it names a registered device truthfully, else why not."""
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
        measurement = schema.measurement_of(device.kind)
        series = series_key(measurement, schema.reading_tags(city.id, device))
        lines = telemetry_lines(device.kind) if channel is topics.Channel.TELEMETRY else None
        route = self._routes[topic] = _Route(
            device, device.id, channel, measurement, series, lines, city.id
        )
        return route

    def _foreign(self, parsed: topics.DeviceTopic) -> str:
        """Why a topic of a city this deployment does not serve is refused."""
        if len(self.cities) == 1:
            return f"topic names city {parsed.city!r}; this registry is city {self.city.id!r}"
        return (
            f"topic names city {parsed.city!r}, which this deployment does not serve "
            f"(cities: {', '.join(self.cities.ids)})"
        )

    def _rate_limited(self, route: _Route) -> Rejected:
        limiter = self.rate_limiter
        assert limiter is not None
        return Rejected(
            Rejection(
                RejectReason.RATE_LIMITED,
                f"device {route.device_id} exceeds {limiter.rate:g} messages/s "
                f"(burst {limiter.burst:g})",
            ),
            route.channel,
        )

    def _decide(self, route: _Route, payload: bytes, now: datetime | None) -> Accepted | Rejected:
        """The contract's (pydantic) verdict on a message of an identified device."""
        device, channel, city_id = route.device, route.channel, route.city_id
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
            main, *twin = schema.status_points(city_id, device, cast(Status, message))
            return self._encoded(main, channel, device.id, None, twins=twin)
        numbered = cast(Reading | Event, message)
        if shape is _READING:
            point = schema.reading_point(city_id, device, cast(Reading, message))
        else:
            point = schema.event_point(city_id, device, cast(Event, message))
        try:
            series = series_key(point.measurement, point.tags)
        except LineProtocolError as exc:  # defence in depth, as in `_encoded`
            return Rejected(Rejection(RejectReason.SCHEMA, str(exc)), channel)
        # An event is stored at ns precision with a sub-ms offset from its seq: two events
        # of one device in one millisecond are two points (a reading is one per ms).
        time_ns = None if shape is _READING else schema.event_time_ns(point.time_ms, numbered.seq)
        if self.duplicates is not None:
            rejected = self.duplicates.verdict(
                device.id, channel, numbered.seq, payload, series, point.time_ms, time_ns
            )
            if rejected is not None:
                return rejected
        return self._encoded(point, channel, device.id, numbered.seq, time_ns)

    @staticmethod
    def _encoded(
        point: Point,
        channel: topics.Channel,
        device_id: str,
        seq: int | None,
        time_ns: int | None = None,
        twins: list[Point] | None = None,
    ) -> Accepted | Rejected:
        try:
            # A point's twins (`schema.status_points`) ride in the same line, one line
            # protocol line each: written, spooled and refused together with the point.
            line = "\n".join(encode(p, time_ns=time_ns) for p in (point, *(twins or ())))
        except LineProtocolError as exc:  # defence in depth: validation makes this unreachable
            return Rejected(Rejection(RejectReason.SCHEMA, str(exc)), channel)
        return Accepted(line, point.time_ms, point.measurement, channel, device_id, seq)


class _Route(NamedTuple):
    """What a topic that passed the identity checks resolves to (one per topic; a tuple,
    unpacked in one step on the hot path)."""

    device: Device
    device_id: str
    channel: topics.Channel
    measurement: str
    series: str
    """The line head of the device's readings."""
    lines: TelemetryLines | None
    """The fast path of the device's readings (telemetry topics of a covered kind)."""
    city_id: str
    """The city the topic names (served, and the device's own)."""


def _with_seq(rejected: Rejected, payload: bytes) -> Rejected:
    """`rejected` with the seq its payload claims (one strict decode that never raises: the
    refusal came before the contract read the payload)."""
    seq = claimed_seq(decode_json(payload))
    if seq is None:
        return rejected
    return Rejected(replace(rejected.rejection, seq=seq), rejected.channel)


def _conflict(device_id: str, channel: str, seq: int) -> Rejected:
    return Rejected(
        Rejection(
            RejectReason.CONFLICTING_DUPLICATE,
            f"device {device_id} sent seq {seq} before with other content",
            seq,
        ),
        channel,
    )


def _same_time(device_id: str, channel: str, seq: int, other: int, time_ms: int) -> Rejected:
    return Rejected(
        Rejection(
            RejectReason.CONFLICTING_DUPLICATE,
            f"device {device_id} sent seq {other} and seq {seq} with the "
            f"same ts ({time_ms} ms): storing both would overwrite one",
            seq,
        ),
        channel,
    )
