"""`safecity simulate --backfill`: bad input is refused with a reason before anything is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecity.registry import default_city
from simulators.backfill import BackfillPlan, parse_span


def test_a_backfill_longer_than_raw_keeps_is_refused_by_the_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env["SAFECITY_HOME"] = os.environ.get("SAFECITY_HOME", "")
    # An unreachable InfluxDB: the refusal comes before any connection.
    env["SAFECITY_INFLUX__URL"] = "http://127.0.0.1:9"
    done = subprocess.run(
        [sys.executable, "-m", "control", "simulate", "--backfill", "365d"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "raw telemetry is kept 30d" in done.stderr
    assert "SAFECITY_INFLUX__RETENTION_DURATION=INF" in done.stderr


@given(st.text(max_size=12))
def test_a_span_parses_or_names_the_bad_value(text: str) -> None:
    if re.fullmatch(r"[1-9][0-9]{0,4}[mhd]", text.strip()):
        assert parse_span(text, "--backfill") > 0
        return
    with pytest.raises(ValueError, match=re.escape(f"--backfill {text!r}")):
        parse_span(text, "--backfill")


def test_a_step_must_divide_a_day_and_a_span_must_not_be_empty() -> None:
    city = default_city()
    with pytest.raises(ValueError, match="must divide a day"):
        BackfillPlan(city, city.devices[:1], 0, 86_400_000, 7 * 60)
    with pytest.raises(ValueError, match="must not be empty"):
        BackfillPlan(city, city.devices[:1], 5, 5, 3600)
    plan = BackfillPlan(city, tuple(city.devices[:3]), 0, 2 * 86_400_000, 3600)
    assert plan.total == 3 * 48
