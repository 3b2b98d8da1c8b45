"""The InfluxDB schema as code: which measurement, tags and fields each message becomes.

Tags come only from bounded, registry-known sets (city, district, device_id, and
type/severity on events); everything else, `seq` included, is a field. The
timestamp is the device's `ts`, so a redelivered message overwrites itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from safecity import catalogue
from safecity.lineprotocol import FieldValue, Point
from safecity.readings import Event, Reading, RejectReason, Status
from safecity.registry import Device
from safecity.rollups import parse_tiers
from safecity.settings import InfluxSettings

EVENTS = "events"
DEVICE_STATUS = "device_status"
DEVICE_OFFLINE = "device_offline"
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


def reading_tags(city: str, device: Device) -> dict[str, str]:
    """The tags of a device's readings and status points (identity from the registry)."""
    return _tags(city, device)


def reading_point(city: str, device: Device, reading: Reading) -> Point:
    """The point of a telemetry reading; identity comes from the registry, not the payload."""
    fields: dict[str, FieldValue] = {"seq": reading.seq, **reading.fields()}
    return Point(measurement_of(device.kind), _tags(city, device), fields, reading.ts_ms)


EVENT_OFFSETS_NS = 1_000_000
"""An event's stored time is its `ts` plus `seq mod` this many ns (under a millisecond)."""


def event_time_ns(time_ms: int, seq: int) -> int:
    """The stored time of an event (ns): its `ts` plus a sub-millisecond offset from its seq,
    so two events of one device in one millisecond are two points, and the same event
    again (a redelivery) lands on itself."""
    return time_ms * 1_000_000 + seq % EVENT_OFFSETS_NS


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


def offline_point(city: str, device: Device, status: Status) -> Point | None:
    """The twin of an `offline` status message in `device_offline` (None for `online`).

    Written with its `device_status` point (one line each, the same tags and time: a
    redelivery or replay overwrites both), so the devices whose last status may say
    offline are found by reading the series of the few devices that ever went offline,
    not every device's status (`api.offline`)."""
    if status.state != "offline":
        return None
    return Point(DEVICE_OFFLINE, _tags(city, device), {"state": status.state}, status.ts_ms)


OFFLINE_BACKFILL = (
    'SELECT "state" INTO "device_offline" FROM "device_status" '
    "WHERE \"state\" = 'offline' GROUP BY *"
)
"""Once, on a database written before `device_offline` existed: every stored offline
status gets its twin (the same points the ingest writes now; running it again changes
nothing). `InfluxClient.ensure_database` runs it while the twin measurement is missing."""


def status_points(city: str, device: Device, status: Status) -> list[Point]:
    """Every point a status message is stored as: its `device_status` point, and its
    `device_offline` twin when it says offline."""
    twin = offline_point(city, device, status)
    main = status_point(city, device, status)
    return [main] if twin is None else [main, twin]


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
    lines.append(
        f"| `{DEVICE_OFFLINE}` | {', '.join(READING_TAGS)} | `state` (string: offline): the "
        f"twin of each offline `{DEVICE_STATUS}` point, same tags and time |"
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
        (*catalogue.KINDS, DEVICE_STATUS, DEVICE_OFFLINE, INGEST_STATS),
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
    """(name, duration) of every non-default policy, from the settings: the families'
    and the rollup tiers' (`safecity.rollups`)."""
    families = [
        (f.policy, str(getattr(settings, f.duration_setting)))
        for f in RETENTION_FAMILIES
        if f.policy is not None
    ]
    return families + [(t.policy, t.keep) for t in parse_tiers(settings.rollup_tiers)]


def shard_durations(settings: InfluxSettings) -> dict[str, str]:
    """Policies created with their own shard group duration (the rollup tiers')."""
    return {t.policy: t.shard_duration for t in parse_tiers(settings.rollup_tiers)}


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
            names = (
                "every kind's measurement, "
                + f"`{DEVICE_STATUS}`, `{DEVICE_OFFLINE}`, `{INGEST_STATS}`"
            )
        else:
            names = ", ".join(f"`{m}`" for m in f.measurements)
        duration = getattr(s, f.duration_setting)
        lines.append(f"| {f.family}: {f.what} | {policy} | {duration} | {setting} | {names} |")
    for tier in parse_tiers(s.rollup_tiers):
        lines.append(
            f"| rollups: {tier.every_s} s buckets of every kind (rollups/README.md) | "
            f"`{tier.policy}` | {tier.keep} | `SAFECITY_INFLUX__ROLLUP_TIERS` | "
            "`<kind>_by_device`, `<kind>_by_district`, `rollup_watermark` |"
        )
    return "\n".join(lines) + "\n"


# --- ingest_stats: ingest's own statistics (the platform and security dashboards) ----------

INGEST_STATS_TAGS = ("city", "worker_id")
REJECT_REASONS = tuple(r.value for r in RejectReason)
INGEST_STATS_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("received", "int", "messages received from the broker since the previous point"),
    ("written", "int", "points written to InfluxDB since the previous point"),
    ("rejected", "int", "messages dead-lettered since the previous point (all reasons)"),
    *((f"rejected_{r}", "int", f"of which with reason `{r}`") for r in REJECT_REASONS),
    ("write_errors", "int", "failed InfluxDB write attempts since the previous point"),
    ("redelivered", "int", "messages received with the MQTT DUP flag since the previous point"),
    ("pending", "int", "received, not yet durable and acked (gauge)"),
    ("lag_seconds", "float", "wall clock minus device ts of the last written reading (gauge)"),
    ("spool_messages", "int", "messages in the disk spool waiting for InfluxDB (gauge)"),
    ("spool_bytes", "int", "size of the disk spool in bytes (gauge)"),
    ("mqtt_connected", "bool", "true while connected to the broker (gauge)"),
    (
        "broker_dropped",
        "int",
        "increase of the broker's `$SYS/broker/publish/messages/dropped` since the previous point",
    ),
)
INGEST_STATS_INTERVAL_S = 10
_STATS_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool}


def ingest_stats_point(
    city: str, worker_id: str, values: Mapping[str, FieldValue], time_ms: int
) -> Point:
    """One `ingest_stats` point; exactly the contract's fields, each of its type."""
    names = [name for name, _, _ in INGEST_STATS_FIELDS]
    if set(values) != set(names):
        missing = sorted(set(names) - set(values))
        extra = sorted(set(values) - set(names))
        raise ValueError(f"ingest_stats fields: missing {missing}, unknown {extra}")
    fields: dict[str, FieldValue] = {}
    for name, kind, _ in INGEST_STATS_FIELDS:
        value = values[name]
        wanted = _STATS_TYPES[kind]
        # bool is an int subclass: check it exactly; an int is a fine float.
        if kind == "float" and type(value) is int:
            value = float(value)
        if type(value) is not wanted:
            raise ValueError(f"ingest_stats field {name} must be {kind}, not {value!r}")
        fields[name] = value
    return Point(INGEST_STATS, {"city": city, "worker_id": worker_id}, fields, time_ms)


# --- security_events: attacks seen by ingest and in the broker's log ----------------------

SECURITY_SOURCES = ("broker", "ingest", "api")
# type -> (source, what happened). A bounded set: these are the only `type` tag values.
SECURITY_EVENT_TYPES: dict[str, tuple[str, str]] = {
    "auth_failure": (
        "broker",
        "a CONNECT refused for a wrong/missing password or unknown user "
        "(`Client <unknown> disconnected, not authorised.`)",
    ),
    "acl_denied": (
        "broker",
        "a device's subscribe or publish refused on the command topics by the broker's guard "
        "plugin (`safecity-guard: denied ...`); any other PUBLISH the ACL refused "
        "(`Denied PUBLISH from ...`) only with `log_type debug`",
    ),
    "dangerous_identity": (
        "broker",
        "a client id or username with `+`/`#` (`ACL denying access to client with dangerous ...`)",
    ),
    RejectReason.IDENTITY_MISMATCH.value: (
        "ingest",
        "spoofing: a registry device's id under another district or kind",
    ),
    RejectReason.UNKNOWN_DEVICE.value: ("ingest", "a device id the registry does not know"),
    RejectReason.RATE_LIMITED.value: ("ingest", "flood: over the per-device rate limit"),
    RejectReason.CONFLICTING_DUPLICATE.value: (
        "ingest",
        "a seq seen before with other content (replay or tampering)",
    ),
    RejectReason.POISON.value: (
        "ingest",
        "a message that made a stage fail on every retry (quarantined: a crafted payload?)",
    ),
    "alerts_poison": (
        "alerts",
        "a message that made an alerts stage fail on every retry (quarantined, acked)",
    ),
    "command_forgery": (
        "api",
        "a device's command result about a command that was not sent to it, or under "
        "another district or kind than the registry's",
    ),
}
INGEST_SECURITY_REASONS = frozenset(
    t for t, (src, _) in SECURITY_EVENT_TYPES.items() if src == "ingest"
)
SECURITY_EVENTS_TAGS: tuple[tuple[str, str], ...] = (
    ("city", "the ingest's city"),
    (
        "source",
        "`broker` (its log), `ingest` (a rejection), `alerts` (a quarantine) or `api` "
        "(the command service)",
    ),
    ("type", "one of the types below"),
    ("worker_id", "the ingest worker or alerts instance (sources `ingest`, `alerts`)"),
    ("district", "the registry device's district (only when the id is a registry device)"),
    ("device_id", "the registry device (only when the id is a registry device)"),
)
SECURITY_EVENTS_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("count", "int", "occurrences this point stands for (ingest: per batch and device; broker: 1)"),
    (
        "client_id",
        "string",
        "the MQTT client id the broker logged (`<unknown>` before authentication), or the "
        "device id the topic claimed; printable ASCII, at most 64 characters",
    ),
    ("detail", "string", "the log message or the rejection detail, at most 256 characters"),
)
CLIENT_ID_MAX = 64
DETAIL_MAX = 256
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def sanitize_text(value: str, limit: int) -> str:
    """An untrusted string made safe to store: printable ASCII (others -> `?`), truncated."""
    return _UNPRINTABLE.sub("?", value[:limit])


def security_event_point(
    city: str,
    type_: str,
    time_ms: int,
    *,
    device: Device | None,
    client_id: str,
    detail: str,
    count: int = 1,
    worker_id: str | None = None,
) -> Point:
    """A `security_events` point. Tags only from bounded sets: the device's tags only for a
    registry device (never a raw client id), the worker only for ingest's own events."""
    if type_ not in SECURITY_EVENT_TYPES:
        raise ValueError(f"unknown security event type {type_!r}")
    source_ = SECURITY_EVENT_TYPES[type_][0]
    tags = {"city": city, "source": source_, "type": type_}
    if source_ in ("ingest", "alerts") and worker_id is not None:
        tags["worker_id"] = worker_id
    if device is not None:
        tags["district"] = device.district
        tags["device_id"] = device.id
    fields: dict[str, FieldValue] = {
        "count": count,
        "client_id": sanitize_text(client_id, CLIENT_ID_MAX),
        "detail": sanitize_text(detail, DETAIL_MAX),
    }
    return Point(SECURITY_EVENTS, tags, fields, time_ms)


def security_events_markdown() -> str:
    """The README's `security_events` table (a test keeps them equal)."""
    lines = [
        f"Measurement `{SECURITY_EVENTS}` (retention policy "
        f"`{retention_policy_of(SECURITY_EVENTS)}`), timestamp ms. Tags:",
        "",
        *(f"- `{name}`: {meaning}" for name, meaning in SECURITY_EVENTS_TAGS),
        "",
        "| Field | Type | Meaning |",
        "|---|---|---|",
        *(f"| `{n}` | {k} | {m} |" for n, k, m in SECURITY_EVENTS_FIELDS),
        "",
        "| `type` | `source` | What happened |",
        "|---|---|---|",
        *(f"| `{t}` | {src} | {what} |" for t, (src, what) in SECURITY_EVENT_TYPES.items()),
    ]
    return "\n".join(lines) + "\n"
