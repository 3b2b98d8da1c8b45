"""The InfluxDB schema as code: which measurement, tags and fields each message becomes.

Tags come only from bounded, registry-known sets (city, district, device_id, and
type/severity on events); everything else, `seq` included, is a field. The
timestamp is the device's `ts`, so a redelivered message overwrites itself.
"""

from __future__ import annotations

from safecity import catalogue
from safecity.lineprotocol import FieldValue, Point
from safecity.readings import Event, Reading, Status
from safecity.registry import Device

EVENTS = "events"
DEVICE_STATUS = "device_status"
INGEST_STATS = "ingest_stats"
READING_TAGS = ("city", "district", "device_id")
EVENT_TAGS = ("city", "district", "device_id", "type", "severity")


def measurement_of(kind: str) -> str:
    """The measurement holding a kind's readings (its own name)."""
    if kind not in catalogue.KINDS:
        raise KeyError(kind)
    return kind


def _tags(city: str, device: Device) -> dict[str, str]:
    return {"city": city, "district": device.district, "device_id": device.id}


def reading_point(city: str, device: Device, reading: Reading) -> Point:
    """The point of a telemetry reading; identity comes from the registry, not the payload."""
    fields: dict[str, FieldValue] = {"seq": reading.seq, **reading.fields()}
    return Point(measurement_of(device.kind), _tags(city, device), fields, reading.ts_ms)


def event_point(city: str, device: Device, event: Event) -> Point:
    """The point of a safe-city event in the `events` measurement."""
    tags = {**_tags(city, device), "type": event.type, "severity": event.severity.value}
    fields: dict[str, FieldValue] = {"seq": event.seq, "kind": device.kind, **event.detail_fields()}
    return Point(EVENTS, tags, fields, event.ts_ms)


def status_point(city: str, device: Device, status: Status) -> Point:
    """The point of a birth/will status message in `device_status`."""
    fields: dict[str, FieldValue] = {
        "state": status.state,
        "online": status.state == "online",
        "kind": device.kind,
    }
    if status.reason is not None:
        fields["reason"] = status.reason
    return Point(DEVICE_STATUS, _tags(city, device), fields, status.ts_ms)
