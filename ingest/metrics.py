"""Prometheus metrics of the ingest service (one registry per process, the default)."""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LagHistogram(Collector):
    """A histogram of ages, observed a batch at a time.

    prometheus-client's `Histogram.observe` takes a lock and walks the buckets once per
    value: per reading, a visible share of the ingest's CPU. Here a batch's ages are
    sorted once and each bucket's count is one bisection.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(buckets)
        self._bounds_ms = tuple(b * 1000 for b in self._bounds)
        self._labels = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._cumulative = [0] * len(self._bounds)
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_ages(self, now_ms: float, times_ms: Sequence[float]) -> None:
        """Observe `now_ms - t` in seconds (0 at least: a clock ahead of ours) for each t."""
        if not times_ms:
            return
        ages = sorted([now_ms - t for t in times_ms])
        ahead = bisect_left(ages, 0)
        total = sum(ages) - sum(ages[:ahead]) if ahead else sum(ages)
        counts = [bisect_right(ages, bound) for bound in self._bounds_ms]
        with self._lock:
            for i, count in enumerate(counts):
                self._cumulative[i] += count
            self._count += len(ages)
            self._sum += total / 1000

    def observe(self, seconds: float) -> None:
        """Observe one value."""
        self.observe_ages(seconds * 1000, [0])

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The metric's name and type (no samples)."""
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The cumulative buckets, count and sum."""
        with self._lock:
            cumulative, count, total = list(self._cumulative), self._count, self._sum
        buckets = [(le, float(c)) for le, c in zip(self._labels, cumulative, strict=True)]
        buckets.append(("+Inf", float(count)))
        yield HistogramMetricFamily(self._name, self._documentation, buckets, total)


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
POISON = Counter(
    "safecity_ingest_poison_total",
    "Messages quarantined as poison (a stage raised on every retry), by stage",
    ["stage"],
)
STAGE_RETRIES = Counter(
    "safecity_ingest_stage_retries_total",
    "Retries of a stage that raised (a whole batch or one message), by stage",
    ["stage"],
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
E2E_LAG = LagHistogram(
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

ANNOUNCED = Counter(
    "safecity_ingest_announced_points_total",
    "Written readings and statuses announced on the city's _stored topic",
)
ANNOUNCE_SKIPPED = Counter(
    "safecity_ingest_announce_skipped_total",
    "Written lines too long for one announcement within the broker's max_packet_size",
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
