"""The federation contract: what a city may send across a border, and nothing else.

A city instance publishes, per closed interval, its own and each district's aggregated
indicators (the figures of `GET /v1/cities/{id}/overview` with their basis), counts of
alerts, detections and response times, delivery, and per corridor segment its traffic
indicators. Every model is frozen and forbids unknown fields, and none has a place for a
raw reading, a device id, an event's details (a plate hash, a face match) or any
personal field: a message carrying one is invalid, not filtered.

Topics (the reserved `_federation` segment: no district or device id starts with `_`):

safecity/v1/{city}/_federation/city                    the city's indicators
safecity/v1/{city}/_federation/district/{district}     one district's indicators
safecity/v1/{city}/_federation/segment/{segment}       one corridor segment's traffic
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from safecity.errors import ConfigError, FederationError, TopicError
from safecity.readings import Timestamp, format_ts
from safecity.topics import (
    FEDERATION,
    IDENTIFIER,
    FederationTopic,
    city_topic,
    district_topic,
    federation_filter,
    parse_federation_topic,
    segment_topic,
)

__all__ = [
    "CITY_SCOPE",
    "FEDERATION",
    "SCHEMA",
    "Corridor",
    "FederationTopic",
    "Interval",
    "RegionSettings",
    "ScopeIndicators",
    "Segment",
    "SegmentIndicators",
    "city_topic",
    "district_topic",
    "federation_filter",
    "load_corridors",
    "parse_federation_topic",
    "parse_message",
    "segment_topic",
]

SCHEMA: Final = "safecity.federation/v1"
CITY_SCOPE = "_city"
"""The scope tag of a city's own indicators (a district id never starts with `_`)."""
MAX_INTERVAL = timedelta(days=1)
_FROZEN = ConfigDict(frozen=True, extra="forbid")
_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# Free text of the contract is our own basis wording (units, rules), one bounded line.
_TEXT = r"^[^\x00-\x1f\x7f]{0,400}$"

Identifier = Annotated[str, Field(pattern=_ID)]
Text = Annotated[str, Field(pattern=_TEXT)]
Count = Annotated[int, Field(ge=0, le=10_000_000)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]


def _severities(value: dict[str, int]) -> dict[str, int]:
    if len(value) > 8 or any(IDENTIFIER.fullmatch(k) is None for k in value):
        raise ValueError("at most 8 severities, each an identifier")
    return value


BySeverity = Annotated[dict[str, Count], AfterValidator(_severities)]


# --- the models --------------------------------------------------------------------


class Interval(BaseModel):
    """A closed interval [start, end) of at most a day, in UTC."""

    model_config = _FROZEN

    start: Timestamp
    end: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if not self.start < self.end <= self.start + MAX_INTERVAL:
            raise ValueError("interval must have start < end <= start + 1 day")
        return self

    @property
    def seconds(self) -> float:
        """Its length in seconds."""
        return (self.end - self.start).total_seconds()

    def key(self) -> tuple[str, str]:
        """(start, end) as RFC 3339 strings."""
        return format_ts(self.start), format_ts(self.end)


class Figure(BaseModel):
    """An aggregated number with its basis (devices behind it, of how many, freshness)."""

    model_config = _FROZEN

    value: Number | None
    unit: Text
    devices: Count
    expected: Count
    newest: Timestamp | None
    age_s: Number | None


class Exceedance(BaseModel):
    """How many devices' interval means exceed a WHO guideline."""

    model_config = _FROZEN

    guideline: Number
    unit: Text
    averaging: Text
    devices_above: Count
    devices: Count


class AirQuality(BaseModel):
    """The scope's AQI (EPA), its sub-indices, pollutant means and WHO exceedances."""

    model_config = _FROZEN

    aqi: Figure
    category: Text | None
    driving_pollutant: Identifier | None
    worst_device_aqi: Annotated[int, Field(ge=0, le=100_000)] | None
    sub_indices: dict[Identifier, Annotated[int, Field(ge=0, le=100_000)]]
    pollutants: dict[Identifier, Figure]
    who_exceedances: dict[Identifier, Exceedance]


class Traffic(BaseModel):
    """Mean speed, congestion index, volume and occupancy of the scope."""

    model_config = _FROZEN

    avg_speed: Figure
    congestion_index: Figure
    free_flow_kmh: Number
    free_flow_basis: Text
    volume: Figure
    occupancy: Figure


class Noise(BaseModel):
    """Energy-mean LAeq and the share of sensors above the WHO guideline."""

    model_config = _FROZEN

    laeq: Figure
    share_above_who: Figure
    who_guideline_db: Number
    who_period: Text


class DeviceCounts(BaseModel):
    """Devices online, stale and offline at the interval's end."""

    model_config = _FROZEN

    total: Count
    online: Count
    stale: Count
    offline: Count
    rule: Text


class Incidents(BaseModel):
    """Incidents open at the interval's end, by severity."""

    model_config = _FROZEN

    total: Count
    by_severity: BySeverity
    devices: Count
    source: Text


class Response(BaseModel):
    """Time to acknowledge of the incidents opened in the 7 days before the interval's end."""

    model_config = _FROZEN

    incidents: Count
    acknowledged: Count
    tta_mean_s: Seconds | None
    tta_median_s: Seconds | None
    tta_max_s: Seconds | None


class Activity(BaseModel):
    """Alerts raised (incidents opened) and detections stored in the interval, counted only."""

    model_config = _FROZEN

    alerts: BySeverity
    detections: BySeverity


class Delivery(BaseModel):
    """Readings stored in the interval against those the devices' cadences promise."""

    model_config = _FROZEN

    stored: Count
    expected: Count
    ratio: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None


class ScopeIndicators(BaseModel):
    """A city's or one district's indicators for one closed interval."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["safecity.federation/v1"] = Field(default=SCHEMA, alias="schema")
    city: Identifier
    district: Identifier | None
    name: Text
    interval: Interval
    generated_at: Timestamp
    air_quality: AirQuality
    traffic: Traffic
    noise: Noise
    devices: DeviceCounts
    incidents: Incidents
    response: Response
    activity: Activity
    delivery: Delivery

    @property
    def scope(self) -> str:
        """The district id, or CITY_SCOPE for the whole city."""
        return self.district if self.district is not None else CITY_SCOPE

    def topic(self) -> str:
        """Where this message is published."""
        if self.district is None:
            return city_topic(self.city)
        return district_topic(self.city, self.district)


class SegmentIndicators(BaseModel):
    """Traffic on one corridor segment of a city for one closed interval."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["safecity.federation/v1"] = Field(default=SCHEMA, alias="schema")
    city: Identifier
    segment: Identifier
    interval: Interval
    generated_at: Timestamp
    length_km: Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)]
    speed_kmh: Annotated[float, Field(ge=0, le=400, allow_inf_nan=False)] | None
    travel_time_s: Seconds | None
    sensors: Count
    expected: Count

    def topic(self) -> str:
        """Where this message is published."""
        return segment_topic(self.city, self.segment)


Message = ScopeIndicators | SegmentIndicators


def encode(message: Message) -> bytes:
    """The message as compact UTF-8 JSON (the wire form)."""
    return message.model_dump_json(by_alias=True).encode()


def parse_message(topic: str, payload: bytes) -> Message:
    """Validate a received message against its topic; FederationError says why not.

    The error's `reason` is the dead-letter reason: `federation_topic`, `bad_json`,
    `federation_schema` or `federation_mismatch` (payload and topic disagree).
    """
    try:
        where = parse_federation_topic(topic)
    except TopicError as exc:
        raise FederationError("federation_topic", str(exc)) from exc
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FederationError("bad_json", f"payload is not JSON: {exc}") from exc
    model = SegmentIndicators if where.kind == "segment" else ScopeIndicators
    try:
        message: Message = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "(message)"
        raise FederationError(
            "federation_schema", f"{exc.error_count()} error(s), first at {at}: {first['msg']}"
        ) from exc
    if message.topic() != topic:
        raise FederationError(
            "federation_mismatch", f"payload belongs on {message.topic()}, received on {topic}"
        )
    return message


# --- the regional instance's settings (read by its ingest and its API) ---------------


class RegionSettings(BaseModel):
    """A regional instance: its ingest takes federated indicators, its API shows them."""

    model_config = _FROZEN

    enabled: bool = Field(
        default=False,
        description="Region: the ingest consumes safecity/v1/+/_federation/# (validated "
        "federated indicators) instead of device topics.",
    )
    database: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        default="safecity_federation",
        description="Region: the database holding the federated indicators (the regional "
        "ingest writes it, the regional view reads it).",
    )
    local: bool = Field(
        default=True,
        description="Region: the regional view shows this deployment's own cities beside "
        "the federated ones.",
    )
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=500, description="Region: most messages the ingest writes per batch."
    )
    flush_interval: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.2, description="Region: seconds a batch of the ingest waits to fill."
    )
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=1000,
        description="Region: unacknowledged messages the broker may send the ingest at once.",
    )


# --- corridors ------------------------------------------------------------------------


class Segment(BaseModel):
    """A named stretch of a corridor inside one city, measured by that city's traffic sensors.

    Its sensors are the traffic sensors of `districts` (all of the city's when empty).
    """

    model_config = _FROZEN

    id: Identifier
    city: Identifier
    name: Text = ""
    from_: Annotated[str, Field(alias="from", pattern=_TEXT)]
    to: Text
    length_km: Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)]
    districts: tuple[Identifier, ...] = ()


class Corridor(BaseModel):
    """A named route across cities: its segments in order."""

    model_config = _FROZEN

    id: Identifier
    name: Text
    segments: Annotated[tuple[Segment, ...], Field(min_length=1)]

    @field_validator("segments")
    @classmethod
    def _unique(cls, value: tuple[Segment, ...]) -> tuple[Segment, ...]:
        ids = [s.id for s in value]
        if len(set(ids)) != len(ids):
            raise ValueError("segment ids must be unique within a corridor")
        return value


DEFAULT_CORRIDORS = Path(__file__).resolve().parent / "data" / "corridors.json"


def load_corridors(path: Path | None = None) -> tuple[Corridor, ...]:
    """The corridors of a JSON file (default: the shipped one); ConfigError if invalid."""
    source = path or DEFAULT_CORRIDORS
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
        corridors = tuple(Corridor.model_validate(c) for c in raw["corridors"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot load corridors from {source}: {exc}") from exc
    seen: set[str] = set()
    for corridor in corridors:
        for segment in corridor.segments:
            if segment.id in seen:
                raise ConfigError(f"{source}: segment {segment.id} appears twice")
            seen.add(segment.id)
    return corridors
