"""Validation stage: topic + registry identity + payload contract -> a point, or a rejection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from safecity import schema, topics
from safecity.errors import TopicError
from safecity.lineprotocol import LineProtocolError, Point, encode
from safecity.readings import Event, Reading, Rejection, RejectReason, parse
from safecity.registry import City


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


class Validator:
    """Checks a message against the topic scheme, the registry and the catalogue."""

    def __init__(self, city: City, past_window: float, future_window: float) -> None:
        self.city = city
        self._past = timedelta(seconds=past_window)
        self._future = timedelta(seconds=future_window)

    def validate(
        self, topic: str, payload: bytes, now: datetime | None = None
    ) -> Accepted | Rejected:
        """Validate one message; never raises."""
        try:
            parsed = topics.parse_device_topic(topic)
        except TopicError as exc:
            # Our filters only match the device scheme, so an invalid part (upper case,
            # odd characters) cannot name a registered device.
            return Rejected(
                Rejection(RejectReason.UNKNOWN_DEVICE, str(exc)), topic.rsplit("/", 1)[-1]
            )
        channel = parsed.channel
        device = self.city.device(parsed.device_id)
        if device is None or parsed.city != self.city.id:
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
        if isinstance(message, Reading):
            point = schema.reading_point(self.city.id, device, message)
        elif isinstance(message, Event):
            point = schema.event_point(self.city.id, device, message)
        else:
            point = schema.status_point(self.city.id, device, message)
        try:
            line = encode(point)
        except (
            LineProtocolError
        ) as exc:  # defence in depth: validation should make this unreachable
            return Rejected(Rejection(RejectReason.SCHEMA, str(exc)), channel)
        return Accepted(point, line, channel)
