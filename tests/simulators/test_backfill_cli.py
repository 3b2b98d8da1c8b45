"""`safecity simulate --backfill`: bad input is refused with a reason before anything is written."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecity.registry import default_city
from simulators import backfill as backfill_module
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


def _lines(plan: BackfillPlan, workers: int) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [body async for _, body in backfill_module._batches(plan, workers)]

    return sorted(line for body in asyncio.run(collect()) for line in body.splitlines())


def test_worker_processes_write_exactly_what_one_process_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    city = default_city()
    devices = tuple(d for d in city.devices if d.kind in ("air_quality", "traffic"))[:12]
    plan = BackfillPlan(city, devices, 0, 2 * 86_400_000, 3600, seed=5)
    parts = backfill_module.groups(plan, 2)
    assert len(parts) == 2
    assert sorted(d.id for p in parts for d in p.devices) == sorted(d.id for d in devices)
    assert all({d.district for d in parts[0].devices}.isdisjoint(d.district for d in p.devices)
               for p in parts[1:])  # fmt: skip
    monkeypatch.setattr(backfill_module, "PARALLEL_FROM", 1)
    alone = _lines(plan, 1)
    assert len(alone) == plan.total
    assert _lines(plan, 2) == alone
