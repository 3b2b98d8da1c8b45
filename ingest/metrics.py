"""Prometheus metrics of the ingest service (one registry per process, the default)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter(
    "safecity_ingest_received_total", "Messages received from the broker", ["channel"]
)
WRITTEN = Counter(
    "safecity_ingest_points_written_total", "Points written to InfluxDB", ["measurement"]
)
REJECTED = Counter(
    "safecity_ingest_rejected_total", "Messages rejected and dead-lettered", ["reason"]
)
ACKED = Counter("safecity_ingest_acked_total", "Messages acknowledged to the broker")
STALE_ACKS = Counter(
    "safecity_ingest_stale_acks_total",
    "Acks dropped because the connection they belonged to is gone (the broker redelivers)",
)
REDELIVERED = Counter(
    "safecity_ingest_redelivered_total", "Messages received with the MQTT DUP flag set"
)
WRITE_ERRORS = Counter(
    "safecity_ingest_write_errors_total", "Failed InfluxDB write attempts", ["error"]
)
BATCH_SECONDS = Histogram(
    "safecity_ingest_batch_seconds",
    "Time to make a batch durable (dead letters + InfluxDB write)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "safecity_ingest_batch_messages",
    "Messages per flushed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000),
)
PENDING = Gauge("safecity_ingest_pending_messages", "Received, not yet durable and acked")
LAG = Gauge(
    "safecity_ingest_lag_seconds", "Wall clock minus device timestamp of the last written reading"
)
CONNECTED = Gauge("safecity_ingest_mqtt_connected", "1 while connected to the broker")
