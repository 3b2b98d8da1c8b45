"""Folding per-piece sums and counts (`api.tiers.add_sums`): rows as InfluxDB answers them;
what the tiers served kept until they roll it again (`api.tiers.Kept`, `stamp_of`)."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given
from hypothesis import strategies as st

from api.tiers import Kept, Piece, SumCount, add_sums, stamp_of
from safecity.rollups import Rolled, parse_tiers

FIELDS = ("pm25", "no2")
cells = st.one_of(st.none(), st.integers(0, 50))
sums = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))
rows = st.lists(
    st.fixed_dictionaries(
        {"pm25_count": cells, "pm25_sum": sums, "no2_count": cells, "no2_sum": sums}
    ),
    max_size=8,
)


@given(rows)
def test_a_row_adds_a_field_only_with_both_its_count_and_its_sum(answer: list[dict]) -> None:
    """A query racing a write may see a reading in `count` and not yet in `sum` (InfluxDB
    1.x reads each aggregate on its own): such a field is left out of that read, never a
    TypeError (an overview used to answer 500) and never a count without its sum."""
    cell: SumCount = {}
    for row in answer:
        add_sums(cell, row, FIELDS)
    for name in FIELDS:
        whole = [r for r in answer if r[f"{name}_count"] and r[f"{name}_sum"] is not None]
        if not whole:
            assert name not in cell
            continue
        total, n = cell[name]
        assert n == sum(r[f"{name}_count"] for r in whole)
        assert math.isclose(total, sum(r[f"{name}_sum"] for r in whole), abs_tol=1e-6)


def test_a_kept_value_stands_until_its_tier_rolls_again_and_raw_is_never_kept() -> None:
    (tier,) = parse_tiers("1h:INF")
    rolled = Piece(tier, 0, 7_200_000)
    raw = Piece(None, 7_200_000, 7_300_000)
    made: list[int] = []
    kept: Kept[str, int] = Kept(size=2)

    async def get(key: str, rerolled_ms: int, pieces: list[Piece]) -> int:
        marks = {"1h": {"air_quality": Rolled(0, 7_200_000, rerolled_ms)}}

        async def make() -> int:
            made.append(1)
            return len(made)

        return await kept.get(key, stamp_of(pieces, marks, "air_quality"), make)

    async def check() -> None:
        assert await get("a", 5, [rolled]) == 1
        assert await get("a", 5, [rolled]) == 1  # kept
        assert await get("a", 6, [rolled]) == 2  # rolled again: read again
        assert await get("a", 6, [rolled]) == 2
        assert await get("b", 6, [rolled, raw]) == 3  # raw can change: never kept
        assert await get("b", 6, [rolled, raw]) == 4
        assert await get("c", 6, [rolled]) == 5
        assert await get("d", 6, [rolled]) == 6  # full: all dropped, then kept
        assert await get("a", 6, [rolled]) == 7

    asyncio.run(check())
