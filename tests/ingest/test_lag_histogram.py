"""The batch-observed lag histogram exposes what prometheus-client's own would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ingest.metrics import LagHistogram

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


def test_batches_of_ages_expose_the_stock_histograms_samples() -> None:
    ours, stock = CollectorRegistry(), CollectorRegistry()
    lag = LagHistogram("lag_seconds", "Lag", BUCKETS, registry=ours)
    reference = Histogram("lag_seconds", "Lag", buckets=BUCKETS, registry=stock)
    rng = random.Random(3)
    now_ms = 1_780_000_000_000
    for _ in range(20):
        # Ages from "ahead of our clock" (counted as 0) to hours, bucket bounds included.
        ages = [-500, 0, 10, 1000, 2500, 3_600_000, 7_200_000]
        times = [
            now_ms - rng.choice(ages) - rng.randrange(0, 3) for _ in range(rng.randrange(0, 50))
        ]
        lag.observe_ages(now_ms, times)
        for t in times:
            reference.observe(max(0.0, (now_ms - t) / 1000))
    lag.observe(0.3)
    reference.observe(0.3)

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        text = generate_latest(registry).decode()
        pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("lag_"))
        return {name: float(value) for name, value in pairs if "_created" not in name}

    got, want = samples(ours), samples(stock)
    assert got.keys() == want.keys() and 'lag_seconds_bucket{le="+Inf"}' in got
    for name, value in want.items():
        # The sum is added up per batch here, per value there: equal but for rounding.
        assert got[name] == (pytest.approx(value) if name == "lag_seconds_sum" else value)
