"""Folding per-piece sums and counts (`api.tiers.add_sums`): rows as InfluxDB answers them."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from api.tiers import SumCount, add_sums

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
