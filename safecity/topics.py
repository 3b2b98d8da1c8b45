"""The MQTT topic scheme as code: builders, a parser, validators and subscription filters.

safecity/v1/{city}/{district}/{kind}/{device_id}/telemetry|event|status
safecity/v1/{city}/{district}/{kind}/{device_id}/ack   (platform -> that device only)
safecity/v1/{city}/{district}/{kind}/{device_id}/cmd   (the command role -> that device only)
safecity/v1/{city}/{district}/{kind}/{device_id}/result   (that device -> the command role)
safecity/v1/{city}/_alerts/{severity}
safecity/v1/{city}/_incidents/{state}   (every step of an incident's lifecycle)
safecity/v1/{city}/_deadletter/{reason}
safecity/v1/{city}/_stored/{worker}   (the points an ingest worker wrote, as line protocol)
safecity/v1/{city}/_federation/city|district/{district}|segment/{segment}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from safecity.errors import TopicError

ROOT = "safecity"
VERSION = "v1"
PREFIX = f"{ROOT}/{VERSION}"
IDENTIFIER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
ALERTS = "_alerts"
INCIDENTS = "_incidents"
DEADLETTER = "_deadletter"
SERVICES = "_services"
FEDERATION = "_federation"
STORED = "_stored"
ACK = "ack"
CMD = "cmd"
RESULT = "result"


class Channel(StrEnum):
    """What a device topic carries."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Return value if it is a valid identifier (city, district, kind, device id), else raise."""
    if not isinstance(value, str) or IDENTIFIER.fullmatch(value) is None:
        raise TopicError(f"invalid {what} {value!r}: must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$")
    return value


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed device topic."""

    city: str
    district: str
    kind: str
    device_id: str
    channel: Channel

    def __str__(self) -> str:
        return device_topic(self.city, self.district, self.kind, self.device_id, self.channel)


@dataclass(frozen=True, slots=True)
class PlatformTopic:
    """A parsed platform topic: an alert, an incident step, a dead letter, a service status or
    an ingest worker's announced points."""

    city: str
    section: str
    name: str

    def __str__(self) -> str:
        return f"{PREFIX}/{self.city}/{self.section}/{self.name}"


def device_topic(
    city: str, district: str, kind: str, device_id: str, channel: Channel | str
) -> str:
    """Build a device topic after validating every part."""
    validate_identifier(city, "city")
    validate_identifier(district, "district")
    validate_identifier(kind, "kind")
    validate_identifier(device_id, "device id")
    try:
        chan = Channel(channel)
    except ValueError as exc:
        raise TopicError(f"invalid channel {channel!r}") from exc
    return f"{PREFIX}/{city}/{district}/{kind}/{device_id}/{chan.value}"


def telemetry_topic(city: str, district: str, kind: str, device_id: str) -> str:
    """Build a device's telemetry topic."""
    return device_topic(city, district, kind, device_id, Channel.TELEMETRY)


def event_topic(city: str, district: str, kind: str, device_id: str) -> str:
    """Build a device's event topic."""
    return device_topic(city, district, kind, device_id, Channel.EVENT)


def status_topic(city: str, district: str, kind: str, device_id: str) -> str:
    """Build a device's status (birth/will) topic."""
    return device_topic(city, district, kind, device_id, Channel.STATUS)


@dataclass(frozen=True, slots=True)
class AckTopic:
    """A parsed acknowledgement topic: where the platform tells one device what is durable."""

    city: str
    district: str
    kind: str
    device_id: str

    def __str__(self) -> str:
        return ack_topic(self.city, self.district, self.kind, self.device_id)


def _device_leaf(city: str, district: str, kind: str, device_id: str, leaf: str) -> str:
    validate_identifier(city, "city")
    validate_identifier(district, "district")
    validate_identifier(kind, "kind")
    validate_identifier(device_id, "device id")
    return f"{PREFIX}/{city}/{district}/{kind}/{device_id}/{leaf}"


def _parse_leaf(topic: str, leaf: str, what: str) -> tuple[str, str, str, str]:
    parts = topic.split("/")
    if len(parts) != 7 or parts[0] != ROOT or parts[1] != VERSION or parts[6] != leaf:
        raise TopicError(f"not {what} topic: {topic!r}")
    return (
        validate_identifier(parts[2], "city"),
        validate_identifier(parts[3], "district"),
        validate_identifier(parts[4], "kind"),
        validate_identifier(parts[5], "device id"),
    )


def ack_topic(city: str, district: str, kind: str, device_id: str) -> str:
    """Build a device's acknowledgement topic (written by the ingest, read by that device)."""
    return _device_leaf(city, district, kind, device_id, ACK)


def parse_ack_topic(topic: str) -> AckTopic:
    """Parse a device's acknowledgement topic; raise TopicError for anything else."""
    return AckTopic(*_parse_leaf(topic, ACK, "an acknowledgement"))


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    """The device a command or result topic is about."""

    city: str
    district: str
    kind: str
    device_id: str


def command_topic(city: str, district: str, kind: str, device_id: str) -> str:
    """Build a device's command topic (written by the command role, read by that device)."""
    return _device_leaf(city, district, kind, device_id, CMD)


def result_topic(city: str, district: str, kind: str, device_id: str) -> str:
    """Build a device's command-result topic (written by that device, read by the platform)."""
    return _device_leaf(city, district, kind, device_id, RESULT)


def parse_command_topic(topic: str) -> DeviceAddress:
    """Parse a device's command topic; raise TopicError for anything else."""
    return DeviceAddress(*_parse_leaf(topic, CMD, "a command"))


def parse_result_topic(topic: str) -> DeviceAddress:
    """Parse a device's command-result topic; raise TopicError for anything else."""
    return DeviceAddress(*_parse_leaf(topic, RESULT, "a command-result"))


def result_filter(city: str | None = None) -> str:
    """Subscription filter for the command results of every device (of one city, or all)."""
    city_part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{city_part}/+/+/+/{RESULT}"


def alert_topic(city: str, severity: str) -> str:
    """Build a platform alert topic."""
    validate_identifier(city, "city")
    validate_identifier(severity, "severity")
    return f"{PREFIX}/{city}/{ALERTS}/{severity}"


def incident_topic(city: str, state: str) -> str:
    """Build the topic of one incident lifecycle step (`state`: the step's new state)."""
    validate_identifier(city, "city")
    validate_identifier(state, "state")
    return f"{PREFIX}/{city}/{INCIDENTS}/{state}"


def deadletter_topic(city: str, reason: str) -> str:
    """Build a dead-letter topic; an unknown city is filed under `_unknown`."""
    if city != "_unknown":
        validate_identifier(city, "city")
    validate_identifier(reason, "reason")
    return f"{PREFIX}/{city}/{DEADLETTER}/{reason}"


def stored_topic(city: str, worker: str) -> str:
    """Build the topic on which an ingest worker announces the points it wrote."""
    validate_identifier(city, "city")
    validate_identifier(worker, "worker id")
    return f"{PREFIX}/{city}/{STORED}/{worker}"


def stored_filter(city: str | None = None) -> str:
    """Subscription filter for the announced points (of one city, or all)."""
    city_part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{city_part}/{STORED}/+"


def service_status_topic(city: str, service_id: str) -> str:
    """Build the birth/will status topic of a platform service (ingest worker, simulator)."""
    validate_identifier(city, "city")
    validate_identifier(service_id, "service id")
    return f"{PREFIX}/{city}/{SERVICES}/{service_id}"


def parse(topic: str) -> DeviceTopic | PlatformTopic:
    """Parse any topic of the scheme; raise TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT or parts[1] != VERSION:
        raise TopicError(f"not a {PREFIX} topic: {topic!r}")
    city = validate_identifier(parts[2], "city")
    if parts[3] in (ALERTS, INCIDENTS, DEADLETTER, SERVICES, STORED):
        if len(parts) != 5:
            raise TopicError(f"malformed platform topic: {topic!r}")
        return PlatformTopic(city, parts[3], validate_identifier(parts[4], "name"))
    if len(parts) != 7:
        raise TopicError(f"malformed device topic: {topic!r}")
    _, _, _, district, kind, device_id, channel = parts
    try:
        chan = Channel(channel)
    except ValueError as exc:
        raise TopicError(f"invalid channel {channel!r} in {topic!r}") from exc
    return DeviceTopic(
        city,
        validate_identifier(district, "district"),
        validate_identifier(kind, "kind"),
        validate_identifier(device_id, "device id"),
        chan,
    )


def parse_device_topic(topic: str) -> DeviceTopic:
    """Parse a device topic; raise TopicError for platform topics and anything else."""
    parsed = parse(topic)
    if not isinstance(parsed, DeviceTopic):
        raise TopicError(f"not a device topic: {topic!r}")
    return parsed


def device_filter(channel: Channel | str, city: str | None = None) -> str:
    """Subscription filter for one channel of every device (of one city, or all)."""
    chan = Channel(channel)
    city_part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{city_part}/+/+/+/{chan.value}"


def deadletter_filter(city: str | None = None) -> str:
    """Subscription filter for dead letters (of one city, or all)."""
    city_part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{city_part}/{DEADLETTER}/+"


def alert_filter(city: str | None = None) -> str:
    """Subscription filter for alerts (of one city, or all)."""
    city_part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{city_part}/{ALERTS}/+"


def incident_filter(city: str | None = None) -> str:
    """Subscription filter for incident lifecycle steps (of one city, or all)."""
    city_part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{city_part}/{INCIDENTS}/+"


def shared(group: str, topic_filter: str) -> str:
    """Wrap a filter in an MQTT v5 shared subscription for the given group."""
    validate_identifier(group, "share group")
    return f"$share/{group}/{topic_filter}"


# --- federation --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FederationTopic:
    """A parsed federation topic: the city, the kind (city, district, segment), the name."""

    city: str
    kind: Literal["city", "district", "segment"]
    name: str | None

    def __str__(self) -> str:
        if self.kind == "city":
            return city_topic(self.city)
        assert self.name is not None
        return (
            district_topic(self.city, self.name)
            if self.kind == "district"
            else (segment_topic(self.city, self.name))
        )


def city_topic(city: str) -> str:
    """The topic of a city's own indicators."""
    return f"{PREFIX}/{validate_identifier(city, 'city')}/{FEDERATION}/city"


def district_topic(city: str, district: str) -> str:
    """The topic of one district's indicators."""
    validate_identifier(city, "city")
    return f"{PREFIX}/{city}/{FEDERATION}/district/{validate_identifier(district, 'district')}"


def segment_topic(city: str, segment: str) -> str:
    """The topic of one corridor segment's traffic indicators."""
    validate_identifier(city, "city")
    return f"{PREFIX}/{city}/{FEDERATION}/segment/{validate_identifier(segment, 'segment')}"


def federation_filter(city: str | None = None) -> str:
    """Subscription filter (and ACL pattern) of federation topics, of one city or all."""
    part = "+" if city is None else validate_identifier(city, "city")
    return f"{PREFIX}/{part}/{FEDERATION}/#"


def parse_federation_topic(topic: str) -> FederationTopic:
    """Parse a federation topic; raise TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT or parts[1] != VERSION or parts[3] != FEDERATION:
        raise TopicError(f"not a federation topic: {topic!r}")
    city = validate_identifier(parts[2], "city")
    if len(parts) == 5 and parts[4] == "city":
        return FederationTopic(city, "city", None)
    if len(parts) == 6 and parts[4] == "district":
        return FederationTopic(city, "district", validate_identifier(parts[5], "district"))
    if len(parts) == 6 and parts[4] == "segment":
        return FederationTopic(city, "segment", validate_identifier(parts[5], "segment"))
    raise TopicError(f"malformed federation topic: {topic!r}")
