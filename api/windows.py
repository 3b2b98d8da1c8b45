"""The overview's window means: each device's mean of each field over a whole window.

The window is cut into pieces as every read of the tiers is (`api.tiers.cover`). A window
served by raw alone (the default window of the last minutes is shorter than any tier's
bucket) asks InfluxDB for `mean()` of each field, one aggregate a field; a window that
tiers serve in part adds up the pieces' sums and counts (`sum`/`count` of raw, sums of a
tier's sums and counts) and divides. InfluxDB 1.x reads every series once for each
aggregate of a statement, and at a city's scale that is the statement's cost: `sum` and
`count` read each device's series twice a field, `mean` once (`benchmarks/overview.py`).
Both are the same figure: InfluxDB's `mean` is its sum over its count.
"""

# ruff: noqa: S608 - identifiers are allow-listed (quote_ident); values are bound.

from __future__ import annotations

import asyncio
import time

from api.queries import CHUNK_ROWS, flat
from api.tiers import Piece, TierBook, add_sums, cover, sums_from
from safecity.influx import InfluxClient, Series, quote_ident
from safecity.rollups import Tier

WHERE = 'WHERE "city" = $city AND time >= $from AND time < $to GROUP BY "device_id"'
WindowMeans = dict[str, dict[str, float]]
"""device id -> field -> its mean over the window (fields with no value left out)."""


def window_grouped(tier: Tier | None, kind: str, fields: tuple[str, ...]) -> str:
    """Sum and count of fields per device over a piece, from a tier's device level or raw
    (one series a device)."""
    return f"{sums_from(tier, kind, fields, 'device')} {WHERE}"


def window_statement(tier: Tier | None, kind: str, fields: tuple[str, ...]) -> str:
    """`window_grouped` as one row a device (`flat`)."""
    columns = tuple(f"{name}_{stat}" for name in fields for stat in ("sum", "count"))
    return flat(window_grouped(tier, kind, fields), columns, ("device_id",))


def mean_statement(kind: str, fields: tuple[str, ...]) -> str:
    """The raw mean of fields per device over [$from, $to), one row a device."""
    names = [quote_ident(f) for f in fields]
    means = ", ".join(f"mean({n}) AS {n}" for n in names)
    grouped = f"SELECT {means} FROM {quote_ident(kind)} {WHERE}"
    return flat(grouped, fields, ("device_id",))


def _means_of(answer: list[Series], fields: tuple[str, ...]) -> WindowMeans:
    out: WindowMeans = {}
    for s in answer:
        for row in s.rows():
            cells = {f: float(row[f]) for f in fields if row.get(f) is not None}
            if cells:
                out[str(row["device_id"])] = cells
    return out


async def window_means(
    influx: InfluxClient,
    book: TierBook,
    kind: str,
    fields: tuple[str, ...],
    city: str,
    span: tuple[int, int],
) -> tuple[WindowMeans, list[Piece]]:
    """device -> field -> mean over [start, end), each piece from the coarsest tier holding
    it and raw elsewhere (the pieces queried at once), and the pieces."""
    marks = await book.marks(influx)
    pieces = cover(book.tiers, marks, kind, span, int(time.time() * 1000))
    if len(pieces) == 1 and pieces[0].tier is None:
        answer = await influx.query(
            mean_statement(kind, fields), pieces[0].bound({"city": city}), chunk_rows=CHUNK_ROWS
        )
        return await asyncio.to_thread(_means_of, answer, fields), pieces
    answers = await asyncio.gather(
        *(
            influx.query(
                window_statement(p.tier, kind, fields),
                p.bound({"city": city}),
                chunk_rows=CHUNK_ROWS,
            )
            for p in pieces
        )
    )
    return await asyncio.to_thread(_sums_to_means, answers, fields), pieces


def _sums_to_means(answers: list[list[Series]], fields: tuple[str, ...]) -> WindowMeans:
    """The pieces' sums and counts added per device and field, and divided."""
    sums: dict[str, dict[str, tuple[float, int]]] = {}
    for series in answers:
        for s in series:
            for row in s.rows():
                add_sums(sums.setdefault(str(row["device_id"]), {}), row, fields)
    return {
        device: {f: total / n for f, (total, n) in cells.items()}
        for device, cells in sums.items()
        if cells
    }
