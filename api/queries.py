"""The InfluxQL query layer: statements from allow-listed identifiers and bound values only.

Identifiers (measurements) are checked by `quote_ident` against the identifier
pattern and come from the catalogue; every value from a request travels as a
bound parameter (`$name`, sent in the `params` JSON of `/query`), never spliced
into the statement text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from safecity import catalogue
from safecity.influx import InfluxClient, quote_ident
from safecity.readings import format_ts
from safecity.registry import Device
from safecity.schema import READING_TAGS, measurement_of

FieldValue = float | int | bool | str
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NOT_VALUES = frozenset({"time", "seq", *READING_TAGS})

LATEST_READING = (
    'SELECT * FROM {measurement} WHERE "device_id" = $device_id ORDER BY time DESC LIMIT 1'
)


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as stored: its device, timestamp (epoch ms), sequence number and values."""

    device: Device
    ts_ms: int
    seq: int
    values: dict[str, FieldValue]

    @property
    def ts(self) -> str:
        """The timestamp as RFC 3339 UTC with milliseconds."""
        return format_ts(_EPOCH + timedelta(milliseconds=self.ts_ms))


def _coerce(kind: str, name: str, value: Any) -> FieldValue:
    """Give a field its catalogue type back (InfluxDB's JSON writes 55.0 as 55)."""
    try:
        quantity = next(q for q in catalogue.telemetry_quantities(kind) if q.name == name)
    except (KeyError, StopIteration):
        return value  # type: ignore[no-any-return]
    if quantity.type == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if quantity.type == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # type: ignore[no-any-return]


def reading_from_row(device: Device, row: dict[str, Any]) -> StoredReading:
    """Build a StoredReading from one `SELECT *` row (tags, time and seq taken out)."""
    values = {
        name: _coerce(device.kind, name, value)
        for name, value in row.items()
        if name not in _NOT_VALUES and value is not None
    }
    return StoredReading(device=device, ts_ms=int(row["time"]), seq=int(row["seq"]), values=values)


async def latest_reading(influx: InfluxClient, device: Device) -> StoredReading | None:
    """The newest stored reading of a device, or None if it has none yet."""
    statement = LATEST_READING.format(measurement=quote_ident(measurement_of(device.kind)))
    series = await influx.query(statement, {"device_id": device.id})
    for s in series:
        for row in s.rows():
            if row.get("time") is not None and row.get("seq") is not None:
                return reading_from_row(device, row)
    return None
