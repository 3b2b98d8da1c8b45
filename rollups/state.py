"""The durable state of the job, kept in InfluxDB beside the rollups: a watermark per tier
and kind (the end of the rolled span), and the counts a late-data recheck compares."""

# ruff: noqa: S608 - identifiers are allow-listed (quote_ident); values are bound.

from __future__ import annotations

from rollups.plan import Span
from safecity.influx import InfluxClient, quote_ident
from safecity.lineprotocol import FieldValue, Point, encode_many
from safecity.readings import format_epoch_ms
from safecity.rollups import (
    READINGS,
    REROLLED_FIELD,
    SINCE_FIELD,
    WATERMARK,
    WATERMARK_FIELD,
    Rolled,
    Tier,
    measurement,
    read_watermarks,
)
from safecity.schema import measurement_of


async def watermarks(influx: InfluxClient, tier: Tier) -> dict[str, Rolled]:
    """kind -> the span of that kind the tier has rolled."""
    return await read_watermarks(influx, tier)


async def advance(influx: InfluxClient, tier: Tier, kind: str, rolled: Rolled) -> None:
    """Record that a tier has rolled a kind over `rolled` (after its points are durable)."""
    fields: dict[str, FieldValue] = {WATERMARK_FIELD: rolled.until_ms, SINCE_FIELD: rolled.since_ms}
    point = Point(WATERMARK, {"tier": tier.name, "kind": kind}, fields, rolled.until_ms)
    await influx.write(encode_many([point]), rp=tier.policy)


async def rerolled(influx: InfluxClient, tier: Tier, kind: str, at_ms: int) -> None:
    """Record that a tier rolled buckets of a kind again (late data): readers that keep
    what they computed from the tier (the API's annual reports) know to compute again."""
    fields: dict[str, FieldValue] = {REROLLED_FIELD: at_ms}
    point = Point(WATERMARK, {"tier": tier.name, "kind": kind}, fields, at_ms)
    await influx.write(encode_many([point]), rp=tier.policy)


async def first_raw_ms(influx: InfluxClient, city: str, kind: str) -> int | None:
    """The time of a kind's oldest raw reading, or None without any."""
    statement = f'SELECT first("seq") FROM {quote_ident(measurement_of(kind))} WHERE "city" = $city'
    for s in await influx.query(statement, {"city": city}):
        for row in s.rows():
            return int(row["time"])
    return None


async def _counts(influx: InfluxClient, statement: str, city: str, span: Span) -> dict[int, int]:
    params = {
        "city": city,
        "from": format_epoch_ms(span.start_ms),
        "to": format_epoch_ms(span.end_ms),
    }
    return {
        int(row["time"]): int(row["n"])
        for s in await influx.query(statement, params)
        for row in s.rows()
        if row.get("n")
    }


async def raw_counts(
    influx: InfluxClient, city: str, kind: str, span: Span, unit_ms: int
) -> dict[int, int]:
    """Raw readings of a kind per unit of the span (unit start ms -> count)."""
    statement = (
        f'SELECT count("seq") AS "n" FROM {quote_ident(measurement_of(kind))} '
        'WHERE "city" = $city AND time >= $from AND time < $to '
        f"GROUP BY time({unit_ms // 1000}s) fill(none)"
    )
    return await _counts(influx, statement, city, span)


async def rolled_counts(
    influx: InfluxClient, city: str, tier: Tier, kind: str, span: Span, unit_ms: int
) -> dict[int, int]:
    """The readings a tier's district rollups of a kind recorded, per unit of the span."""
    source = f"{quote_ident(tier.policy)}.{quote_ident(measurement(kind, 'district'))}"
    statement = (
        f'SELECT sum({quote_ident(READINGS)}) AS "n" FROM {source} '
        'WHERE "city" = $city AND time >= $from AND time < $to '
        f"GROUP BY time({unit_ms // 1000}s) fill(none)"
    )
    return await _counts(influx, statement, city, span)
