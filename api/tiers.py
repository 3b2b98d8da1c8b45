"""Which tier serves a series: the one place where raw and rollups are chosen.

A series of `every_s` buckets over [from, to) is cut at bucket boundaries into pieces;
each piece is served by the coarsest tier whose bucket divides `every_s`, that has rolled
the piece (its watermark) and still keeps it (its retention), else by raw. Only whole
request buckets move to a tier, so every bucket comes from exactly one source and a
tier-served bucket holds exactly the readings the raw one would: sum/count for the mean,
min of mins, max of maxes, sum of counts. `p95` has no rollup: always raw. What raw no
longer keeps is simply absent. The response's `served_by` lists the pieces.
"""

# ruff: noqa: S608 - identifiers are allow-listed (quote_ident); values are bound.

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from fastapi import Request

from api.models import Served
from api.params import TimeRange, bucket, time_range
from api.queries import series_statement
from api.settings import ApiSettings
from safecity.influx import InfluxClient, quote_ident
from safecity.readings import format_epoch_ms, now_ms
from safecity.rollups import (
    Level,
    Rolled,
    Tier,
    measurement,
    parse_tiers,
    read_watermarks,
    stat_field,
)
from safecity.settings import InfluxSettings

RAW = "raw"
ROLLED_AGGS = {
    "mean": 'sum("{f}_sum") / sum("{f}_count")',
    "min": 'min("{f}_min")',
    "max": 'max("{f}_max")',
    "count": 'sum("{f}_count")',
}
# The same aggregates of a bucket that is one point (a tier's own bucket, one series).
POINT_AGGS = {
    "mean": '"{f}_sum" / "{f}_count"',
    "min": '"{f}_min"',
    "max": '"{f}_max"',
    "count": '"{f}_count"',
}
BOARD = "board"
"""What `served_by` names for a window read from the API's board (`safecity.board`)."""
MARGIN_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Piece:
    """A span [start_ms, end_ms) of a series and the tier that serves it (None = raw)."""

    tier: Tier | None
    start_ms: int
    end_ms: int

    @property
    def name(self) -> str:
        """The tier's name, or `raw`."""
        return self.tier.name if self.tier is not None else RAW

    def bound(self, params: Mapping[str, str]) -> dict[str, str]:
        """The bound parameters of this piece's statement: `params` and its [from, to)."""
        span = {"from": format_epoch_ms(self.start_ms), "to": format_epoch_ms(self.end_ms)}
        return {**params, **span}


Stamp = tuple[tuple[str, int, int, int], ...]
"""What tier-served pieces were read from: (tier, from, to, when it last rolled again) each."""


def stamp_of(
    pieces: Iterable[Piece], marks: dict[str, dict[str, Rolled]], kind: str
) -> Stamp | None:
    """The stamp of pieces, or None if raw serves any (raw can change unannounced)."""
    out = []
    for p in pieces:
        if p.tier is None:
            return None
        out.append((p.name, p.start_ms, p.end_ms, marks[p.name][kind].rerolled_ms))
    return tuple(out)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Kept(Generic[K, V]):
    """What the tiers served, kept until they roll it again: a value stands while its
    stamp does (a rolled bucket changes only when the rollup job rolls it again, which
    changes its tier's `rerolled_ms`); at most `size` kept, all dropped when full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: dict[K, tuple[Stamp, V]] = {}

    async def get(self, key: K, stamp: Stamp | None, make: Callable[[], Awaitable[V]]) -> V:
        """The value kept under `key` with this stamp, else `make()`'s (kept unless the
        stamp is None)."""
        hit = self._kept.get(key)
        if hit is not None and stamp is not None and hit[0] == stamp:
            return hit[1]
        value = await make()
        if stamp is not None:
            if len(self._kept) >= self.size:
                self._kept.clear()
            self._kept[key] = (stamp, value)
        return value


Points = list[tuple[int, float]]
"""(bucket start ms, value) pairs of a piece, oldest first."""


class Part(Points):
    """A piece's points as read (`Points`), and their JSON once a writer made it
    (`api.seriesbody`): a tier-served part is one object, kept until its buckets are
    rolled again, so its JSON is made once."""

    __slots__ = ("json",)

    def __init__(self, points: Iterable[tuple[int, float]] = ()) -> None:
        super().__init__(points)
        self.json: bytes | None = None


DIGITS = 4
"""Decimals a series' values are rounded to (as the overview's figures are)."""
PieceKey = tuple[str, str, int, str, tuple[tuple[str, str], ...], int, int]
PIECES_KEPT = 512
REPORTS_KEPT = 256


@dataclass
class TierBook:
    """The tiers of a database and their watermarks (re-read at most every `ttl` s), and
    the tier-served pieces already read (`Kept`)."""

    tiers: tuple[Tier, ...]
    ttl: float = 5.0
    _marks: dict[str, dict[str, Rolled]] = field(default_factory=dict)
    _read_at: float = -1e9
    _reading: asyncio.Future[None] | None = None
    pieces: Kept[PieceKey, Part] = field(default_factory=lambda: Kept(PIECES_KEPT))

    @classmethod
    def of(cls, settings: InfluxSettings) -> TierBook:
        """The book of the tiers configured in the InfluxDB settings."""
        return cls(parse_tiers(settings.rollup_tiers))

    async def marks(self, influx: InfluxClient) -> dict[str, dict[str, Rolled]]:
        """tier name -> kind -> what it has rolled. Requests that find the marks stale
        at once wait for one read of them (each used to read them all again)."""
        if time.monotonic() - self._read_at > self.ttl:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read(influx))
            await asyncio.shield(self._reading)  # a caller gone does not cancel the read
        return self._marks

    async def _read(self, influx: InfluxClient) -> None:
        try:
            read = await asyncio.gather(*(read_watermarks(influx, t) for t in self.tiers))
            self._marks = {t.name: r for t, r in zip(self.tiers, read, strict=True)}
            self._read_at = time.monotonic()
        finally:
            self._reading = None

    def longest_s(self, agg: str, every_s: int) -> float | None:
        """The longest window a tier can serve at this bucket (None = forever), 0 if none."""
        if agg not in ROLLED_AGGS:
            return 0
        keeps = [t.keep_s for t in self.tiers if every_s % t.every_s == 0]
        if not keeps:
            return 0
        return None if None in keeps else float(max(k for k in keeps if k is not None))


def _ceil(ms: int, step: int) -> int:
    return -(-ms // step) * step


def _available(tier: Tier, rolled: Rolled | None, now_ms: int) -> tuple[int, int] | None:
    if rolled is None:
        return None
    start = rolled.since_ms
    if tier.keep_s is not None:  # what its policy may already have dropped, with a margin
        start = max(start, now_ms - tier.keep_s * 1000 + tier.every_s * 1000 + MARGIN_MS)
    return start, rolled.until_ms


def _serve(
    lo: int,
    hi: int,
    candidates: list[Tier],
    held: Callable[[Tier], tuple[int, int] | None],
    step_of: Callable[[Tier], int],
) -> list[Piece]:
    """[lo, hi) cut into pieces: the first candidate holding whole steps of it serves
    those, the rest of the candidates (and raw) the edges."""
    if lo >= hi:
        return []
    for i, tier in enumerate(candidates):
        span = held(tier)
        if span is None:
            continue
        step = step_of(tier)
        a, b = max(_ceil(lo, step), _ceil(span[0], step)), min(hi, span[1]) // step * step
        if a < b:
            rest = candidates[i + 1 :]
            return [
                *_serve(lo, a, rest, held, step_of),
                Piece(tier, a, b),
                *_serve(b, hi, rest, held, step_of),
            ]
    return [Piece(None, lo, hi)]


def _holder(
    marks: dict[str, dict[str, Rolled]], kind: str, now_ms: int
) -> Callable[[Tier], tuple[int, int] | None]:
    return lambda tier: _available(tier, marks.get(tier.name, {}).get(kind), now_ms)


def plan(
    tiers: tuple[Tier, ...],
    marks: dict[str, dict[str, Rolled]],
    kind: str,
    every_s: int,
    span: tuple[int, int],
    now_ms: int,
) -> list[Piece]:
    """The pieces serving [start, end) at `every_s`, oldest first (coarsest tier first)."""
    usable = [t for t in reversed(tiers) if every_s % t.every_s == 0]
    held = _holder(marks, kind, now_ms)
    return _serve(span[0], span[1], usable, held, lambda _: every_s * 1000)


def cover(
    tiers: tuple[Tier, ...],
    marks: dict[str, dict[str, Rolled]],
    kind: str,
    span: tuple[int, int],
    now_ms: int,
) -> list[Piece]:
    """The pieces serving a whole window [start, end) (no buckets asked, as the overview's
    window means): each tier serves the whole buckets of its own it holds, coarsest first,
    finer tiers the edges, raw what is left."""
    held = _holder(marks, kind, now_ms)
    return _serve(span[0], span[1], list(reversed(tiers)), held, lambda t: t.every_s * 1000)


def rolled_statement(
    tier: Tier, kind: str, field_name: str, agg: str, every_s: int, by: str
) -> str:
    """The statement of one tier-served piece (`by`: device_id, district or '' = city)."""
    level: Level = "device" if by == "device_id" else "district"
    source = f"{quote_ident(tier.policy)}.{quote_ident(measurement(kind, level))}"
    quote_ident(stat_field(field_name, "sum"))  # the field name is allow-listed
    where = '"city" = $city AND time >= $from AND time < $to'
    if by:
        where += f" AND {quote_ident(by)} = ${by}"
    if by and every_s == tier.every_s:
        # One district or device at the tier's own bucket: one point per bucket, read as
        # it is (InfluxDB 1.x spends far more on a grouped query's buckets than on points).
        selector = POINT_AGGS[agg].format(f=field_name)
        return f'SELECT {selector} AS "value" FROM {source} WHERE {where}'
    selector = ROLLED_AGGS[agg].format(f=field_name)
    return (
        f'SELECT {selector} AS "value" FROM {source} WHERE {where} '
        f"GROUP BY time({int(every_s)}s) fill(none)"
    )


@dataclass(frozen=True, slots=True)
class SeriesAsk:
    """What a series asks for: kind, field, aggregate, bucket and filter."""

    kind: str
    field: str
    agg: str
    every_s: int
    by: str = ""


async def tiered_series(
    influx: InfluxClient,
    book: TierBook,
    ask: SeriesAsk,
    params: dict[str, str],
    span: tuple[int, int],
) -> tuple[list[Points], list[Piece]]:
    """The points of each piece that served (bucket start ms, unrounded value; oldest
    first; a tier-served piece's list is the one kept, the same object until its buckets
    are rolled again) and the pieces."""
    marks = await book.marks(influx) if ask.agg in ROLLED_AGGS else {}
    pieces = plan(book.tiers, marks, ask.kind, ask.every_s, span, now_ms())
    out: list[Points] = []
    for piece in pieces:
        if piece.tier is None:
            statement = series_statement(ask.kind, ask.field, ask.agg, ask.every_s, by=ask.by)
            out.append(await _piece_points(influx, statement, params, piece))
            continue
        key: PieceKey = (
            ask.kind, ask.field, ask.every_s, ask.agg, tuple(sorted(params.items())),
            piece.start_ms, piece.end_ms,
        )  # fmt: skip
        statement = rolled_statement(piece.tier, ask.kind, ask.field, ask.agg, ask.every_s, ask.by)
        points = await book.pieces.get(
            key,
            stamp_of([piece], marks, ask.kind),
            functools.partial(_piece_points, influx, statement, params, piece),
        )
        out.append(points)
    return out, pieces


async def _piece_points(
    influx: InfluxClient, statement: str, params: dict[str, str], piece: Piece
) -> Part:
    """(bucket start ms, value) of one piece's statement, empty buckets left out."""
    out = Part()
    for s in await influx.query(statement, piece.bound(params)):
        for row in s.rows():
            value = row.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.append((int(row["time"]), float(value)))
    return out


def book_of(request: Request, influx: InfluxClient) -> TierBook:
    """The tier book of a city's database (one per database, kept by the app)."""
    books: dict[str, TierBook] | None = getattr(request.app.state, "tier_books", None)
    if books is None:
        books = request.app.state.tier_books = {}
    database = influx.settings.database
    if database not in books:
        books[database] = TierBook.of(influx.settings)
    return books[database]


@dataclass(frozen=True, slots=True)
class WindowAsk:
    """The window a request asks for: `from`, `to`, `every` and the endpoint's default."""

    start: datetime | None
    end: datetime | None
    every: str | None
    default: timedelta


def series_window(
    settings: ApiSettings, book: TierBook, agg: str, ask: WindowAsk
) -> tuple[TimeRange, int]:
    """The window and bucket of a series. A window is held to what can answer it at its
    bucket: `max_range` for raw, the longest `kept` of the tiers whose bucket divides it
    (forever for an INF tier); the bucket is then chosen in the held window."""
    grid = tuple(t.every_s for t in book.tiers) if agg in ROLLED_AGGS else ()
    longest = math.inf
    for _ in range(4):
        window = time_range(settings, ask.start, ask.end, ask.default, longest)
        every_s = bucket(settings, ask.every, window, grid)
        kept = book.longest_s(agg, every_s)
        allowed = math.inf if kept is None else max(float(kept), settings.max_range)
        if window.seconds <= allowed or allowed == longest:
            break
        longest = allowed
    return window, every_s


def window_longest(settings: ApiSettings, book: TierBook) -> float:
    """The longest whole window (the overview's) the tiers or raw can answer: the longest
    a tier keeps (`inf` for one kept forever), at least `max_range`."""
    keeps = [t.keep_s for t in book.tiers]
    if None in keeps:
        return math.inf
    return max([float(settings.max_range), *(float(k) for k in keeps if k is not None)])


def served(pieces: list[Piece], source: str | None = None) -> list[Served]:
    """The response's `served_by` (`source`: what served every piece, if not their tiers)."""
    return [
        Served(
            tier=source or p.name,
            **{"from": format_epoch_ms(p.start_ms), "to": format_epoch_ms(p.end_ms)},
        )
        for p in pieces
    ]


async def answer(
    request: Request,
    settings: ApiSettings,
    influx: InfluxClient,
    ask: SeriesAsk,
    window_ask: WindowAsk,
    params: dict[str, str],
) -> tuple[TimeRange, int, list[Points], list[Served]]:
    """A series the way every endpoint answers one: its window and bucket, the points of
    each piece (unrounded: round to `DIGITS` where they are written out; see
    `tiered_series`), and what served each piece."""
    book = book_of(request, influx)
    window, every_s = series_window(settings, book, ask.agg, window_ask)
    full = SeriesAsk(ask.kind, ask.field, ask.agg, every_s, ask.by)
    parts, pieces = await tiered_series(
        influx, book, full, params, (window.start_ms, window.end_ms)
    )
    return window, every_s, parts, served(pieces)


DAY_S = 86_400
SumCount = dict[str, tuple[float, int]]


def sums_from(tier: Tier | None, kind: str, fields: tuple[str, ...], level: Level) -> str:
    """`SELECT` the sum and count (`<field>_sum`, `<field>_count`) of fields `FROM` raw or
    a tier's level (sums of its sums and counts)."""
    parts = []
    for name in fields:
        f = quote_ident(name)[1:-1]
        if tier is None:
            parts.append(f'sum("{f}") AS "{f}_sum", count("{f}") AS "{f}_count"')
        else:
            parts.append(f'sum("{f}_sum") AS "{f}_sum", sum("{f}_count") AS "{f}_count"')
    source = (
        quote_ident(kind)
        if tier is None
        else f"{quote_ident(tier.policy)}.{quote_ident(measurement(kind, level))}"
    )
    return f"SELECT {', '.join(parts)} FROM {source}"


def _daily_statement(tier: Tier | None, kind: str, fields: tuple[str, ...]) -> str:
    """Sum and count of fields per UTC day and district, from a tier or raw. A day tier's
    points are already that: read as they are, with no `GROUP BY time` (InfluxDB 1.x
    spends far more on a grouped query's buckets than on reading the points)."""
    if tier is not None and tier.every_s == DAY_S:
        columns = ", ".join(
            f'"{quote_ident(n)[1:-1]}_{stat}"' for n in fields for stat in ("sum", "count")
        )
        source = f"{quote_ident(tier.policy)}.{quote_ident(measurement(kind, 'district'))}"
        return (
            f'SELECT {columns}, "district" FROM {source} '
            'WHERE "city" = $city AND time >= $from AND time < $to'
        )
    return (
        f"{sums_from(tier, kind, fields, 'district')} "
        'WHERE "city" = $city AND time >= $from AND time < $to '
        f'GROUP BY time({DAY_S}s), "district" fill(none)'
    )


async def day_pieces(
    influx: InfluxClient, book: TierBook, kind: str, span: tuple[int, int]
) -> tuple[list[Piece], Stamp | None]:
    """The pieces serving whole UTC days of a span, and their stamp (`stamp_of`)."""
    marks = await book.marks(influx)
    pieces = plan(book.tiers, marks, kind, DAY_S, span, int(time.time() * 1000))
    return pieces, stamp_of(pieces, marks, kind)


def add_sums(cell: SumCount, row: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    """Add a row's `<field>_sum` and `<field>_count` to a cell. A field with a count but
    no sum is left out: InfluxDB 1.x reads each aggregate on its own, so a query racing a
    write can see the reading in one and not yet in the other (the next read sees both)."""
    for name in fields:
        count, total = row.get(f"{name}_count"), row.get(f"{name}_sum")
        if count and total is not None:
            had, n = cell.get(name, (0.0, 0))
            cell[name] = (had + float(total), n + int(count))


async def daily_sums(
    influx: InfluxClient,
    kind: str,
    fields: tuple[str, ...],
    city: str,
    pieces: list[Piece],
) -> dict[tuple[str, int], SumCount]:
    """(district, UTC day ms) -> field -> (sum, count) over the pieces (`day_pieces`),
    from the tiers where they hold whole days and raw elsewhere."""
    out: dict[tuple[str, int], SumCount] = {}
    for piece in pieces:
        statement = _daily_statement(piece.tier, kind, fields)
        for s in await influx.query(statement, piece.bound({"city": city})):
            for row in s.rows():
                add_sums(out.setdefault((str(row["district"]), int(row["time"])), {}), row, fields)
    return out
