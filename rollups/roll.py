"""The roll stage: one tier's span of one kind, from raw to rollup points, written."""

# Statements are built only from allow-listed identifiers (quote_ident) and ints we
# computed; values travel as bound $parameters, which S608 cannot see.
# ruff: noqa: S608

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

from rollups.plan import Span
from safecity.influx import InfluxClient, quote_ident
from safecity.lineprotocol import FieldValue, Point, encode_many
from safecity.readings import format_epoch_ms
from safecity.rollups import (
    LEVEL_TAGS,
    LEVELS,
    READINGS,
    STATS,
    Level,
    Tier,
    measurement,
    numeric_fields,
    stat_field,
    state_fields,
)
from safecity.schema import measurement_of

WRITE_BATCH = 5000
_COMBINE: dict[str, Callable[[Any, Any], Any]] = {
    "sum": operator.add, "count": operator.add, "min": min, "max": max,
}  # fmt: skip


def roll_statement(kind: str, every_s: int) -> str:
    """The InfluxQL that rolls a span of a kind's raw readings into buckets per device."""
    selectors = [f'count("seq") AS {quote_ident(READINGS)}']
    for name in numeric_fields(kind):
        for stat in STATS:
            alias = quote_ident(stat_field(name, stat))
            # Each stat is named after its InfluxQL function.
            selectors.append(f"{stat}({quote_ident(name)}) AS {alias}")
    for name in state_fields(kind):
        selectors.append(f"last({quote_ident(name)}) AS {quote_ident(stat_field(name, 'last'))}")
    group = ", ".join(quote_ident(t) for t in LEVEL_TAGS["device"] if t != "city")
    return (
        f"SELECT {', '.join(selectors)} FROM {quote_ident(measurement_of(kind))} "
        """WHERE "city" = $city AND time >= $from AND time < $to """
        f"GROUP BY time({int(every_s)}s), {group} fill(none)"
    )


def _value(stat: str, value: Any) -> FieldValue:
    if stat in ("count",) or stat == READINGS:
        return int(value)
    if stat == "last":
        return value  # type: ignore[no-any-return]
    return float(value)


def row_point(kind: str, level: Level, city: str, row: dict[str, Any]) -> Point | None:
    """The rollup point of one result row (None for a bucket without readings)."""
    fields: dict[str, FieldValue] = {}
    for key, value in row.items():
        if key == "time" or key in LEVEL_TAGS[level] or value is None:
            continue
        fields[key] = _value(key if key == READINGS else key.rsplit("_", 1)[1], value)
    if not fields.get(READINGS):
        return None
    tags = {"city": city, **{t: str(row[t]) for t in LEVEL_TAGS[level] if t != "city"}}
    return Point(measurement(kind, level), tags, fields, int(row["time"]))


def _batches(points: list[Point]) -> Iterator[list[Point]]:
    for i in range(0, len(points), WRITE_BATCH):
        yield points[i : i + WRITE_BATCH]


async def roll(influx: InfluxClient, city: str, tier: Tier, kind: str, span: Span) -> int:
    """Roll one span of a kind into a tier at every level; return the points written.

    Each bucket's point has the bucket's start as its time and the same tags every time,
    so rolling a span again overwrites it with the same (or, after late data, newer)
    figures: never a second copy. The raw readings are read once, per device; a
    district's figures are its devices' combined (InfluxDB pays per series it reads, and
    a second statement grouped by district read every series again)."""
    params = {
        "city": city,
        "from": format_epoch_ms(span.start_ms),
        "to": format_epoch_ms(span.end_ms),
    }
    statement = roll_statement(kind, tier.every_s)
    rows = [row for s in await influx.query(statement, params) for row in s.rows()]
    by_level: dict[Level, list[dict[str, Any]]] = {
        "device": rows,
        "district": district_rows(kind, rows),
    }
    points = [
        p
        for level in LEVELS
        for row in by_level[level]
        if (p := row_point(kind, level, city, row)) is not None
    ]
    for batch in _batches(points):
        await influx.write(encode_many(batch), rp=tier.policy)
    return len(points)


def district_rows(kind: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each bucket's district row made from its devices' rows: readings, sums and counts
    add up, the least minimum and the greatest maximum (exact but for float rounding)."""
    combined: dict[tuple[Any, Any], dict[str, Any]] = {}
    stats = [(stat_field(name, stat), stat) for name in numeric_fields(kind) for stat in STATS]
    for row in rows:
        if not row.get(READINGS):
            continue
        into = combined.setdefault(
            (row["time"], row["district"]),
            {"time": row["time"], "district": row["district"], READINGS: 0},
        )
        into[READINGS] += row[READINGS]
        for name, stat in stats:
            value, had = row.get(name), into.get(name)
            if value is not None:
                into[name] = value if had is None else _COMBINE[stat](had, value)
    return list(combined.values())
