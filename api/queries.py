"""The InfluxQL query layer: statements from allow-listed identifiers and bound values only.

Identifiers (measurements) are checked by `quote_ident` against the identifier
pattern and come from the catalogue; every value from a request travels as a
bound parameter (`$name`, sent in the `params` JSON of `/query`), never spliced
into the statement text.
"""

# Statements are built only from allow-listed identifiers (quote_ident) and ints we
# computed; request values travel as bound $parameters, which S608 cannot see.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from safecity import catalogue
from safecity.influx import InfluxClient, quote_ident
from safecity.readings import format_epoch_ms
from safecity.registry import Device
from safecity.schema import EVENTS, READING_TAGS, measurement_of, source

FieldValue = float | int | bool | str
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
        return format_epoch_ms(self.ts_ms)


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


# --- time series, events, delivery ---------------------------------------------------

AGGREGATES = {
    "mean": "mean({field})",
    "min": "min({field})",
    "max": "max({field})",
    "p95": "percentile({field}, 95)",
    "count": "count({field})",
}


CHUNK_ROWS = 5000
"""Rows a chunk of a city-sized answer is parsed by (`InfluxClient.query(chunk_rows=...)`):
a few hundred KB, at most tens of ms of the event loop each."""


def flat(statement: str, columns: tuple[str, ...], tags: tuple[str, ...]) -> str:
    """A grouped statement's rows as rows of one series per measurement, its group-by tags
    as columns. The same rows and times (InfluxDB answers a subquery's rows as they are),
    but a city's thousands of devices become one JSON table instead of thousands of
    series objects: several times less for InfluxDB to encode and the API to parse."""
    names = ", ".join(quote_ident(c) for c in (*columns, *tags))
    return f"SELECT {names} FROM ({statement})"


def numeric_fields(kind: str) -> tuple[str, ...]:
    """The fields of a kind a series can aggregate (floats and ints of the catalogue)."""
    return tuple(q.name for q in catalogue.telemetry_quantities(kind) if q.type in ("float", "int"))


def series_statement(kind: str, field: str, agg: str, every_s: int, *, by: str) -> str:
    """An aggregate of one field per bucket, filtered by city and `by` (district/device_id)."""
    if field not in numeric_fields(kind) or agg not in AGGREGATES or every_s < 1:
        raise ValueError(f"not an allowed series: {kind}.{field} {agg} {every_s}s")
    selector = AGGREGATES[agg].format(field=quote_ident(field))
    where = '"city" = $city AND time >= $from AND time < $to'
    if by:
        where += f" AND {quote_ident(by)} = ${by}"
    # every_s is an int we computed (not text from the request), so it can be spliced.
    return (
        f'SELECT {selector} AS "value" FROM {quote_ident(measurement_of(kind))} '
        f"WHERE {where} GROUP BY time({int(every_s)}s) fill(none)"
    )


async def series(
    influx: InfluxClient,
    kind: str,
    field: str,
    agg: str,
    every_s: int,
    params: dict[str, str],
    by: str = "",
) -> list[tuple[int, float]]:
    """(bucket start ms, value) pairs, oldest first; empty buckets left out."""
    out: list[tuple[int, float]] = []
    for s in await influx.query(series_statement(kind, field, agg, every_s, by=by), params):
        for row in s.rows():
            value = row.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                # Rounded as the overview's figures are: no false precision.
                out.append((int(row["time"]), round(float(value), 4)))
    return out


EVENT_FILTERS = ("district", "device_id", "type", "severity")
_EVENT_NOT_DETAILS = frozenset({"time", "seq", "kind", "city", *EVENT_FILTERS})


def events_statement(filters: tuple[str, ...], limit: int) -> str:
    """Events of a city and window, newest first, with equality filters on allowed tags."""
    where = '"city" = $city AND time >= $from AND time < $to'
    for name in filters:
        if name not in EVENT_FILTERS:
            raise ValueError(f"not an event filter: {name}")
        where += f" AND {quote_ident(name)} = ${name}"
    return f"SELECT * FROM {source(EVENTS)} WHERE {where} ORDER BY time DESC LIMIT {int(limit)}"


async def events(
    influx: InfluxClient, params: dict[str, str], filters: tuple[str, ...], limit: int
) -> list[dict[str, Any]]:
    """Event rows (tags and fields), newest first, at most `limit`."""
    rows: list[dict[str, Any]] = []
    for s in await influx.query(events_statement(filters, limit), params):
        rows.extend(s.rows())
    return rows


async def count_events(
    influx: InfluxClient, params: dict[str, str], filters: tuple[str, ...]
) -> int:
    """How many events of a city and window pass the filters."""
    where = '"city" = $city AND time >= $from AND time < $to'
    for name in filters:
        if name not in EVENT_FILTERS:
            raise ValueError(f"not an event filter: {name}")
        where += f" AND {quote_ident(name)} = ${name}"
    statement = f'SELECT count("seq") AS "n" FROM {source(EVENTS)} WHERE {where}'
    return sum(
        int(r.get("n") or 0) for s in await influx.query(statement, params) for r in s.rows()
    )


def event_details(row: dict[str, Any]) -> dict[str, FieldValue]:
    """The event's detail fields (everything but identity, time and seq)."""
    return {k: v for k, v in row.items() if k not in _EVENT_NOT_DETAILS and v is not None}


async def stored_counts(
    influx: InfluxClient, device: Device, params: dict[str, str]
) -> tuple[dict[str, int], int | None]:
    """Points stored for a device in a window, by channel, and its newest reading (ms)."""
    telemetry = (
        f'SELECT count("seq") AS "n" FROM '
        f"{quote_ident(measurement_of(device.kind))} "
        'WHERE "device_id" = $device_id AND time >= $from AND time < $to'
    )
    newest = (
        f'SELECT last("seq") FROM {quote_ident(measurement_of(device.kind))} '
        'WHERE "device_id" = $device_id AND time >= $from AND time < $to'
    )
    event = (
        f'SELECT count("seq") AS "n" FROM {source(EVENTS)} '
        'WHERE "device_id" = $device_id AND time >= $from AND time < $to'
    )
    status = (
        'SELECT count("state") AS "n" FROM "device_status" '
        'WHERE "device_id" = $device_id AND time >= $from AND time < $to'
    )
    bound = {**params, "device_id": device.id}
    results = await asyncio.gather(
        *(influx.query(q, bound) for q in (telemetry, event, status, newest))
    )
    counts: dict[str, int] = {}
    for channel, series_list in zip(("telemetry", "event", "status"), results[:3], strict=True):
        counts[channel] = sum(int(r.get("n") or 0) for s in series_list for r in s.rows())
    last_ms = next((int(r["time"]) for s in results[3] for r in s.rows()), None)
    return counts, last_ms
