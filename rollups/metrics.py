"""Prometheus metrics of the rollup job."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUCKETS = Counter(
    "safecity_rollup_points_written_total", "Rollup points written", ["tier", "level"]
)
CHUNKS = Counter("safecity_rollup_chunks_total", "Chunks rolled (forward progress)", ["tier"])
REROLLED = Counter(
    "safecity_rollup_rerolled_total",
    "Rollup units rolled again because late readings changed their raw count",
    ["tier"],
)
ERRORS = Counter("safecity_rollup_storage_errors_total", "Failed InfluxDB calls", ["error"])
WATERMARK = Gauge(
    "safecity_rollup_watermark_seconds", "End of the rolled span (epoch s)", ["tier", "kind"]
)
LAG = Gauge("safecity_rollup_lag_seconds", "Wall clock minus the oldest watermark", ["tier"])
PASS = Histogram("safecity_rollup_pass_seconds", "Duration of one pass over every tier")
