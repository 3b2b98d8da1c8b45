"""The InfluxDB schema as code: which measurement, tags and fields each message becomes.

Tags come only from bounded, registry-known sets (city, district, device_id, and
type/severity on events); everything else, `seq` included, is a field. The
timestamp is the device's `ts`, so a redelivered message overwrites itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from safecity import catalogue
from safecity.lineprotocol import FieldValue, Point
from safecity.readings import Event, Reading, Status
from safecity.registry import Device
from safecity.settings import InfluxSettings

EVENTS = "events"
DEVICE_STATUS = "device_status"
INGEST_STATS = "ingest_stats"
SECURITY_EVENTS = "security_events"
# Written by safecity.incidents (alerts service, API); named here for the retention map.
ALERTS = "alerts"
INCIDENT_TRANSITIONS = "incident_transitions"
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


def _unit(q: catalogue.Quantity) -> str:
    if q.type == "enum":
        return "string: " + "/".join(q.choices) if q.choices else "string"
    if q.type == "bool":
        return "boolean"
    unit = q.unit if q.unit != "1" else "ratio" if q.type == "float" else "count"
    return f"{unit}, int" if q.type == "int" and unit not in ("count",) else unit


def _fields_cell(quantities: tuple[catalogue.Quantity, ...]) -> str:
    return ", ".join(f"`{q.name}`{'' if q.required else '?'} ({_unit(q)})" for q in quantities)


def markdown_table() -> str:
    """The README's schema table, generated from the catalogue (a test keeps them equal)."""
    health = _fields_cell(catalogue.HEALTH)
    lines = [
        "| Measurement | Tags | Fields (unit; `?` = optional) |",
        "|---|---|---|",
    ]
    for kind in catalogue.KINDS.values():
        own = _fields_cell(kind.quantities) if kind.name != "device_health" else ""
        fields = ", ".join(x for x in ("`seq` (int)", own, health) if x)
        lines.append(f"| `{kind.name}` | {', '.join(READING_TAGS)} | {fields} |")
    detail_names = sorted({q.name for e in catalogue.EVENT_TYPES.values() for q in e.details})
    lines.append(
        f"| `{EVENTS}` | {', '.join(EVENT_TAGS)} | `seq` (int), `kind` (string), and the "
        f"event type's details: {', '.join(f'`{n}`' for n in detail_names)} |"
    )
    lines.append(
        f"| `{DEVICE_STATUS}` | {', '.join(READING_TAGS)} | `state` (string: online/offline), "
        "`online` (boolean), `kind` (string), `reason`? (string) |"
    )
    return "\n".join(lines) + "\n"


# --- retention: one policy per measurement family ----------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionFamily:
    """A family of measurements kept for the same time, in its own retention policy.

    `policy` None is the database's default policy (`InfluxSettings.retention_policy`,
    `raw`); the others are created next to it at start-up and are never the default.
    """

    family: str
    policy: str | None
    duration_setting: str
    measurements: tuple[str, ...]
    what: str


RETENTION_FAMILIES: tuple[RetentionFamily, ...] = (
    RetentionFamily(
        "telemetry",
        None,
        "retention_duration",
        (*catalogue.KINDS, DEVICE_STATUS, INGEST_STATS),
        "raw readings of every kind, device status, ingest statistics",
    ),
    RetentionFamily("events", "events", "events_retention_duration", (EVENTS,), "safe-city events"),
    RetentionFamily(
        "security",
        "security",
        "security_retention_duration",
        (SECURITY_EVENTS,),
        "security events (auth failures, spoofing, floods)",
    ),
    RetentionFamily(
        "incidents",
        "incidents",
        "incidents_retention_duration",
        (ALERTS, INCIDENT_TRANSITIONS),
        "alerts and the incident lifecycle log",
    ),
)
_POLICY_OF = {m: f.policy for f in RETENTION_FAMILIES for m in f.measurements}


def retention_policy_of(measurement: str) -> str | None:
    """The retention policy a measurement is written to; None = the database default."""
    return _POLICY_OF.get(measurement)


def retention_policies(settings: InfluxSettings) -> list[tuple[str, str]]:
    """(name, duration) of every non-default policy, from the settings."""
    return [
        (f.policy, str(getattr(settings, f.duration_setting)))
        for f in RETENTION_FAMILIES
        if f.policy is not None
    ]


def source(measurement: str) -> str:
    """The InfluxQL FROM of a measurement, for reads.

    A measurement of the default policy is read unqualified. One with its own policy
    is read from that policy *and* the default one: points written before the policy
    existed (or by a writer not yet moved to it) stay visible until they age out of
    the default policy. InfluxDB merges the two sources into one series per tag set.
    """
    policy = retention_policy_of(measurement)
    if policy is None:
        return f'"{measurement}"'
    return f'"{measurement}", "{policy}"."{measurement}"'


def retention_markdown_table(settings: InfluxSettings | None = None) -> str:
    """The README's retention table (a test keeps them equal)."""
    s = settings or InfluxSettings()
    lines = [
        "| Family | Retention policy | Default duration | Setting | Measurements |",
        "|---|---|---|---|---|",
    ]
    for f in RETENTION_FAMILIES:
        policy = f"`{f.policy}`" if f.policy else f"`{s.retention_policy}` (the default)"
        setting = f"`SAFECITY_INFLUX__{f.duration_setting.upper()}`"
        if f.family == "telemetry":
            names = "every kind's measurement, " + f"`{DEVICE_STATUS}`, `{INGEST_STATS}`"
        else:
            names = ", ".join(f"`{m}`" for m in f.measurements)
        duration = getattr(s, f.duration_setting)
        lines.append(f"| {f.family}: {f.what} | {policy} | {duration} | {setting} | {names} |")
    return "\n".join(lines) + "\n"
