"""Prometheus metrics of the ingest service (one registry per process, the default)."""

from __future__ import annotations

from functools import cache

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
WRITE_SECONDS = Histogram(
    "safecity_ingest_write_seconds",
    "Latency of one successful InfluxDB /write request",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WRITE_RETRIES = Counter(
    "safecity_ingest_write_retries_total", "InfluxDB write attempts that will be retried"
)
E2E_LAG = Histogram(
    "safecity_ingest_e2e_lag_seconds",
    "Device timestamp -> durable in InfluxDB (written directly or drained from the spool)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
SPOOLED = Counter(
    "safecity_ingest_spooled_points_total", "Points made durable in the disk spool (then acked)"
)
DRAINED = Counter(
    "safecity_ingest_spool_drained_points_total", "Points drained from the spool into InfluxDB"
)
SPOOL_POINTS = Gauge("safecity_ingest_spool_points", "Points waiting in the disk spool")
SPOOL_BYTES = Gauge("safecity_ingest_spool_bytes", "Bytes of the disk spool's segment files")
SPOOL_SEGMENTS = Gauge("safecity_ingest_spool_segments", "Segment files in the disk spool")
BACKPRESSURE = Gauge(
    "safecity_ingest_backpressure",
    "1 while the spool is full and ingest stops acking (the broker holds the messages)",
)
BROKER_DROPPED = Gauge(
    "safecity_broker_dropped_messages",
    "Broker's $SYS/broker/publish/messages/dropped (messages it discarded, e.g. full queues)",
)

DEADLETTER_UNPUBLISHED = Counter(
    "safecity_ingest_deadletter_unpublished_total",
    "Dead letters stored but not republished: too large for the broker's packet limit",
)


# Labelled children, looked up once per label value: `.labels()` builds a key, takes a
# lock and hashes on every call.
@cache
def received(channel: str) -> Counter:
    """The RECEIVED child of a channel."""
    return RECEIVED.labels(channel=channel)


@cache
def written(measurement: str) -> Counter:
    """The WRITTEN child of a measurement."""
    return WRITTEN.labels(measurement=measurement)


@cache
def rejected(reason: str) -> Counter:
    """The REJECTED child of a reject reason."""
    return REJECTED.labels(reason=reason)
