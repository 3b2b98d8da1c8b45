"""Immutable message models (reading, event, status) and the one `parse` that validates them.

`parse(kind, payload)` returns a model or a `Rejection` carrying a reason code
(`RejectReason`, listed in docs/contract.md); it never raises anything else, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    create_model,
)

from safecity import catalogue
from safecity.catalogue import Quantity, Severity
from safecity.topics import Channel

MAX_PAYLOAD_BYTES = 8 * 1024
MAX_SEQ = 2**63 - 1
DEFAULT_PAST_WINDOW = timedelta(days=7)
DEFAULT_FUTURE_WINDOW = timedelta(minutes=5)

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|\+00:00)")
# Epoch ms range that datetime can represent with margin: years 1970..9999.
_MAX_EPOCH_MS = 253_402_300_799_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = EPOCH.toordinal()


class RejectReason(StrEnum):
    """Why a message was refused; also the last segment of its dead-letter topic."""

    BAD_JSON = "bad_json"
    SCHEMA = "schema"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_DEVICE = "unknown_device"
    IDENTITY_MISMATCH = "identity_mismatch"
    TS_OUT_OF_WINDOW = "ts_out_of_window"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    QOS0 = "qos0"
    """Published at QoS 0 on a device topic (the contract is QoS 1): counted, kept here."""
    POISON = "poison"
    """A message that made a stage fail on every bounded retry (quarantined, see
    `safecity.quarantine`)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A typed refusal: the reason code and a human-readable detail."""

    reason: RejectReason
    detail: str
    seq: int | None = None
    """The seq the payload claims, when it decoded to an object with a valid one (so a
    refused message can still be acknowledged without decoding it again)."""


def _to_utc(value: Any) -> Any:
    """Accept an RFC 3339 UTC string or epoch milliseconds; return an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 UTC string or epoch milliseconds")
    if isinstance(value, int):
        if not 0 <= value <= _MAX_EPOCH_MS:
            raise ValueError("ts epoch milliseconds out of range")
        return from_epoch_ms(value)
    if isinstance(value, str):
        if _RFC3339.fullmatch(value) is None:
            raise ValueError("ts must be RFC 3339 in UTC, e.g. 2026-01-15T06:00:00.000Z")
        parsed = datetime.fromisoformat(value)
        if parsed.microsecond % 1000:
            raise ValueError("ts precision finer than a millisecond")
        return parsed.astimezone(UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() != timedelta(0):
            raise ValueError("ts must be timezone-aware UTC")
        if value.microsecond % 1000:
            raise ValueError("ts precision finer than a millisecond")
        return value.astimezone(UTC)
    raise ValueError("ts must be an RFC 3339 UTC string or epoch milliseconds")


def format_ts(value: datetime) -> str:
    """Format a UTC datetime as RFC 3339 with milliseconds and a Z."""
    # isoformat, not strftime: a third of the cost on every point an API answer formats,
    # and a four-digit year before 1000 too (strftime's %Y gives "999").
    return value.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def now_ms() -> int:
    """The wall clock in epoch milliseconds (whole, like every stored timestamp)."""
    return time.time_ns() // 1_000_000


def from_epoch_ms(ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds; exact, the inverse of `epoch_ms`."""
    return EPOCH + timedelta(milliseconds=ms)


def format_epoch_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds and a Z."""
    # Integer arithmetic, no datetime: every point of an API answer is formatted here,
    # and this is half the cost of the datetime path (floor division keeps it exact
    # before 1970 too).
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    day = date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
    return f"{day}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def truncate_ms(value: datetime) -> datetime:
    """`value` truncated to the millisecond (the contract's precision)."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_utc),
    PlainSerializer(format_ts, return_type=str, when_used="json"),
]
DetailText = Annotated[str, StringConstraints(pattern=catalogue.DETAIL_TEXT_PATTERN)]
PlateHash = Annotated[str, StringConstraints(pattern=catalogue.PLATE_HASH_PATTERN)]

_FROZEN_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class Message(BaseModel):
    """Common envelope of device messages: timestamp and per-device sequence number."""

    model_config = _FROZEN_STRICT

    ts: Timestamp
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)]

    @property
    def ts_ms(self) -> int:
        """The timestamp in epoch milliseconds."""
        return epoch_ms(self.ts)

    def to_payload(self) -> bytes:
        """Serialise to the compact UTF-8 JSON wire form."""
        return self.model_dump_json(exclude_none=True).encode()


class Reading(Message):
    """A telemetry reading; `values` is the per-kind values model."""

    values: BaseModel

    def fields(self) -> dict[str, float | int | bool | str]:
        """The reported values, without the unreported optional ones."""
        return {k: v for k, v in self.values.model_dump().items() if v is not None}


class Event(Message):
    """A discrete safe-city event; `details` is the per-type details model."""

    type: str
    # Lax only here: strict mode would demand an enum instance, JSON has strings.
    severity: Annotated[Severity, Field(strict=False)]
    details: BaseModel

    def detail_fields(self) -> dict[str, float | int | bool | str]:
        """The event's details, without the unreported optional ones."""
        return {k: v for k, v in self.details.model_dump().items() if v is not None}


class Status(BaseModel):
    """A device or service birth/will status message."""

    model_config = _FROZEN_STRICT

    ts: Timestamp
    state: Literal["online", "offline"]
    reason: DetailText | None = None

    @property
    def ts_ms(self) -> int:
        """The timestamp in epoch milliseconds."""
        return epoch_ms(self.ts)

    def to_payload(self) -> bytes:
        """Serialise to the compact UTF-8 JSON wire form."""
        return self.model_dump_json(exclude_none=True).encode()


def _annotation(q: Quantity) -> Any:
    if q.type == "float":
        return Annotated[float, Field(ge=q.low, le=q.high, allow_inf_nan=False)]
    if q.type == "int":
        return Annotated[int, Field(ge=q.low, le=q.high)]
    if q.type == "bool":
        return bool
    if q.choices:
        return Literal[q.choices]
    if q.name == "plate_hash":
        return PlateHash
    return DetailText


def _fields(quantities: tuple[Quantity, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for q in quantities:
        annotation = _annotation(q)
        out[q.name] = (annotation, ...) if q.required else (annotation | None, None)
    return out


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


@cache
def values_model(kind: str) -> type[BaseModel]:
    """The strict, frozen values model of a sensor kind (KeyError if unknown)."""
    quantities = catalogue.telemetry_quantities(kind)
    return create_model(f"{_camel(kind)}Values", __config__=_FROZEN_STRICT, **_fields(quantities))


@cache
def reading_model(kind: str) -> type[Reading]:
    """The reading model of a sensor kind, with its values model (KeyError if unknown)."""
    return create_model(
        f"{_camel(kind)}Reading", __base__=Reading, values=(values_model(kind), ...)
    )


@cache
def details_model(event_type: str) -> type[BaseModel]:
    """The strict, frozen details model of an event type (KeyError if unknown)."""
    spec = catalogue.EVENT_TYPES[event_type]
    return create_model(
        f"{_camel(event_type)}Details", __config__=_FROZEN_STRICT, **_fields(spec.details)
    )


@cache
def event_model(event_type: str) -> type[Event]:
    """The event model of an event type (KeyError if unknown)."""
    return create_model(
        f"{_camel(event_type)}Event",
        __base__=Event,
        type=(Literal[event_type], ...),  # type: ignore[arg-type]
        details=(details_model(event_type), ...),
    )


class _NonFiniteError(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _NonFiniteError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteError(f"number {text[:32]} overflows to infinity")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Duplicate keys let two parsers see two different messages.
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def decode_json(payload: bytes) -> Any | Rejection:
    """Decode strict JSON (UTF-8, finite numbers, unique keys) or return a Rejection."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            RejectReason.TOO_LARGE, f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}"
        )
    try:
        text = payload.decode("utf-8")
        return json.loads(
            text,
            parse_constant=_no_constants,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except _NonFiniteError as exc:
        return Rejection(RejectReason.NON_FINITE, str(exc))
    except UnicodeDecodeError as exc:
        return Rejection(RejectReason.BAD_JSON, f"not UTF-8: {exc.reason} at byte {exc.start}")
    except (ValueError, RecursionError) as exc:
        return Rejection(RejectReason.BAD_JSON, f"not JSON: {str(exc)[:200]}")


_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "greater_than", "less_than"})


def _classify(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    kinds = {e["type"] for e in errors}
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5]
    )
    if "finite_number" in kinds:
        return Rejection(RejectReason.NON_FINITE, detail)
    # Only the catalogue's physical limits make `out_of_range`; a bad seq is malformed.
    if kinds <= _RANGE_ERRORS and all(e["loc"][:1] in (("values",), ("details",)) for e in errors):
        return Rejection(RejectReason.OUT_OF_RANGE, detail)
    return Rejection(RejectReason.SCHEMA, detail)


def _window_check(
    ts: datetime, now: datetime | None, past: timedelta, future: timedelta
) -> Rejection | None:
    current = now or datetime.now(UTC)
    if ts < current - past or ts > current + future:
        return Rejection(
            RejectReason.TS_OUT_OF_WINDOW,
            f"ts {format_ts(ts)} outside [now - {past}, now + {future}] (now {format_ts(current)})",
        )
    return None


def parse(
    kind: str,
    payload: bytes,
    *,
    channel: Channel = Channel.TELEMETRY,
    now: datetime | None = None,
    past_window: timedelta | None = DEFAULT_PAST_WINDOW,
    future_window: timedelta | None = DEFAULT_FUTURE_WINDOW,
) -> Reading | Event | Status | Rejection:
    """Validate one device message of `kind` on `channel`; return the model or a Rejection.

    Never raises: arbitrary bytes give a Rejection with a reason code. Pass
    `past_window=None` / `future_window=None` to skip the timestamp window check.
    """
    if kind not in catalogue.KINDS:
        return Rejection(RejectReason.SCHEMA, f"unknown kind {kind!r}")
    obj = decode_json(payload)
    if isinstance(obj, Rejection):
        return obj
    try:
        result = _parse(kind, obj, channel, now, past_window, future_window)
    except Exception as exc:  # the contract is "never raises": last-resort safety net
        result = Rejection(RejectReason.SCHEMA, f"unexpected {type(exc).__name__}: {exc}"[:300])
    if type(result) is Rejection:
        seq = claimed_seq(obj)
        if seq is not None:
            return replace(result, seq=seq)
    return result


def claimed_seq(obj: object) -> int | None:
    """The seq a decoded payload claims, if it is an object with a valid one."""
    if not isinstance(obj, dict):
        return None
    seq = obj.get("seq")
    return seq if type(seq) is int and 0 <= seq <= MAX_SEQ else None


def _parse(
    kind: str,
    obj: Any,
    channel: Channel,
    now: datetime | None,
    past_window: timedelta | None,
    future_window: timedelta | None,
) -> Reading | Event | Status | Rejection:
    if not isinstance(obj, dict):
        return Rejection(
            RejectReason.SCHEMA, f"payload must be a JSON object, not {type(obj).__name__}"
        )
    model: type[Reading] | type[Event] | type[Status]
    if channel is Channel.TELEMETRY:
        model = reading_model(kind)
    elif channel is Channel.EVENT:
        event_type = obj.get("type")
        if not isinstance(event_type, str) or event_type not in catalogue.EVENT_TYPES:
            return Rejection(RejectReason.SCHEMA, f"type: unknown event type {event_type!r}"[:200])
        if event_type not in catalogue.KINDS[kind].emits_events:
            return Rejection(RejectReason.SCHEMA, f"type: kind {kind} does not emit {event_type}")
        model = event_model(event_type)
    else:
        model = Status
    try:
        message = model.model_validate(obj)
    except ValidationError as exc:
        return _classify(exc)
    if past_window is not None and future_window is not None:
        rejected = _window_check(message.ts, now, past_window, future_window)
        if rejected is not None:
            return rejected
    return message
