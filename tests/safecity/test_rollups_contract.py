"""The rollup contract: tier specs parse or fail with a reason; the tier table is generated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecity.rollups import DEFAULT_TIERS, keep_seconds, markdown_table, parse_tiers
from safecity.settings import InfluxSettings

README = Path(__file__).parents[2] / "rollups" / "README.md"


def test_the_readme_tier_table_is_generated() -> None:
    text = README.read_text()
    block = re.search(r"<!-- generated: tiers -->\n(.*?)<!-- end generated -->", text, re.S)
    assert block is not None
    assert block.group(1) == markdown_table(DEFAULT_TIERS)
    assert InfluxSettings().rollup_tiers == DEFAULT_TIERS


def test_default_tiers() -> None:
    tiers = parse_tiers(DEFAULT_TIERS)
    assert [(t.name, t.every_s, t.keep_s, t.policy) for t in tiers] == [
        ("1m", 60, 90 * 86_400, "rollup_1m"),
        ("1h", 3600, 1825 * 86_400, "rollup_1h"),
        ("1d", 86_400, None, "rollup_1d"),
    ]
    assert [t.shard_duration for t in tiers] == ["7d", "420d", "10080d"]
    assert parse_tiers("") == ()


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("1h", "want <bucket>:<keep>"),
        ("7m:90d", "must divide a day"),
        ("1h:1h", "fewer than two buckets"),
        ("1h:5y", "keep must be INF"),
        ("1h:90d,60m:30d", "same bucket"),
    ],
)
def test_bad_tiers_name_the_reason(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_tiers(spec)
    with pytest.raises(ValueError, match=reason):
        InfluxSettings(rollup_tiers=spec)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        tiers = parse_tiers(text)
    except ValueError:
        return
    for tier in tiers:
        assert tier.every_s > 0 and (86_400 % tier.every_s == 0 or tier.every_s % 86_400 == 0)


@given(st.sampled_from(["s", "m", "h", "d"]), st.integers(1, 999), st.integers(1, 9999))
def test_valid_specs_round_trip(unit: str, n: int, days: int) -> None:
    spec = f"{n}{unit}:{days}d"
    try:
        (tier,) = parse_tiers(spec)
    except ValueError:
        return  # a bucket not dividing a day, or keeping fewer than two buckets
    assert tier.name == f"{n}{unit}" and tier.keep_s == keep_seconds(f"{days}d") == days * 86_400
