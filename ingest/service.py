"""Wires the ingest stages: MQTT source -> batch (validate, durable, ack) -> sink / dead letters.

The stages (see ingest/README.md): `batch.Batcher` (batch-and-ack), `sink.Sink`
(InfluxDB or the disk spool), `drain.SpoolDrain`, `deadletter.DeadLetterOutput`, and
the watchers of `watch` (broker `$SYS`, broker log, `ingest_stats` timer). Every
long-running task but the consumer runs under a `safecity.retry.Supervisor`: one that
dies is restarted with backoff, and readiness is false while it is down.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import UTC, datetime

from ingest import metrics
from ingest.announce import Announcer
from ingest.batch import Batcher
from ingest.deadletter import DeadLetterOutput, DeadLetterStore
from ingest.drain import SpoolDrain
from ingest.redact import Redactor
from ingest.settings import IngestSettings
from ingest.sink import Sink
from ingest.spool import Spool
from ingest.stats import BrokerDropped, Gauges, StatsTracker, Totals
from ingest.validate import DeviceRateLimiter, DuplicateDetector, Validator
from ingest.watch import BrokerLogWatch, StatsTimer, SysWatch
from ingest.watermark import Watermarks  # end-to-end acks
from ingest.writer import InfluxWriter
from safecity import topics
from safecity.errors import StorageError
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point
from safecity.mqtt import MqttClient, Will
from safecity.observability import HealthServer
from safecity.readings import Status, now_ms
from safecity.registry import Cities, City, as_cities
from safecity.retry import Backoff, Supervisor, retry_storage

log = logging.getLogger("safecity.ingest")

CHANNELS = (topics.Channel.TELEMETRY, topics.Channel.EVENT, topics.Channel.STATUS)


class IngestService:
    """One ingest worker: its own persistent MQTT session on the shared subscription."""

    def __init__(self, settings: IngestSettings, city: City | Cities) -> None:
        self.settings = settings
        # Every city of the deployment: each message is checked against its own city's
        # registry and written into that city's database; the first is the home city
        # (the worker's status topic, its ingest_stats).
        self.cities = as_cities(city)
        self.city = city = self.cities.first
        worker = settings.worker_id
        self.status_topic = topics.service_status_topic(city.id, worker)
        self.mqtt = MqttClient(
            settings.mqtt,
            client_id=f"safecity-{worker}",
            clean_start=False,
            session_expiry=settings.session_expiry,
            manual_ack=True,
            receive_maximum=settings.receive_maximum,
            will=Will(self.status_topic, _status("offline", "lost")),
            on_connect=lambda: metrics.CONNECTED.set(1),
        )
        self.influx = InfluxClient(settings.influx)
        self.writer = InfluxWriter(
            self.influx, Backoff(cap=settings.retry_max_delay), cities=self.cities.ids
        )
        if settings.announce:
            self.writer.on_written = Announcer(
                lambda topic, body: self.mqtt.publish_nowait(topic, body, qos=1),
                self.cities.ids,
                worker,
                settings.deadletter_max_packet,
            )
        self.spool = Spool(
            settings.spool_dir / worker, settings.spool_max_bytes, settings.spool_segment_bytes
        )
        self.sink = Sink(self.writer, self.spool, settings.spool_after)
        self.totals = Totals()
        self.store = DeadLetterStore(settings.deadletter_dir)
        self.redactor = Redactor.for_directory(settings.deadletter_dir)
        self.deadletters = DeadLetterOutput(
            self.store,
            lambda topic, body: self.mqtt.publish_nowait(topic, body, qos=1),
            city.id,
            settings.deadletter_max_packet,
            self.totals,
            self.cities.ids,
        )
        validator = Validator(
            self.cities,
            settings.ts_past_window,
            settings.ts_future_window,
            rate_limiter=DeviceRateLimiter(settings.rate_limit, settings.rate_burst),
            duplicates=DuplicateDetector(settings.dedup_window),
        )
        self.batcher = Batcher(
            settings,
            self.cities,
            validator,
            self.mqtt,
            self.sink,
            self.deadletters,
            self.redactor,
            self.totals,
        )
        # End-to-end acks: the batcher notes durable seqs, a task publishes them per device.
        self.watermarks = self.batcher.watermarks = Watermarks(self.cities, settings.ack_interval)
        self.drain = SpoolDrain(self.sink, self.deadletters, self.totals, worker, self.redactor)
        self.broker_dropped = BrokerDropped(settings.spool_dir / worker / "broker-dropped.json")
        self.stats = StatsTracker(city.id, worker)
        self.tasks = Supervisor()
        self.health = HealthServer(settings.metrics_host, settings.metrics_port, self.ready)
        self._started = False
        self._stopped = False

    def ready(self) -> bool:
        """Ready when connected and acking (no full spool, no auth failure) and every
        background task is running."""
        return (
            self._started
            and self.mqtt.connected.is_set()
            and not self.sink.backpressure
            and not self.sink.spool_failed
            and not self.writer.auth_failing
            and self.tasks.healthy
        )

    async def start(self) -> None:
        """Open the stores, prepare InfluxDB, start /metrics, connect and subscribe."""
        settings = self.settings
        self.store.open()
        recovered = await asyncio.to_thread(self.spool.open)
        self.sink.update_spool_metrics()
        await self.health.start()
        for city_id in self.cities:
            # Each city's own database and retention policies, created at start-up.
            database = self.influx.for_city(city_id, self.cities.ids)
            await retry_storage(database.ensure_database, "preparing influxdb", logger=log)
        self.tasks.start("spool-drain", self.drain.run)
        if recovered:
            self.sink.spool_ready.set()
        await self.mqtt.connect()
        group = settings.share_group
        # Every city's device topics, not only ours: a device publishing into another
        # city is an identity mismatch to record, not a message that nobody sees (unless
        # the broker account is scoped to the served cities).
        served: list[str | None] = (
            [None] if settings.subscribe_cities == "all" else list(self.cities.ids)
        )
        filters = [
            (topics.shared(group, f) if group else f, 1)
            for f in (topics.device_filter(c, city) for city in served for c in CHANNELS)
        ]
        await self.mqtt.subscribe(filters)
        await self.mqtt.publish(self.status_topic, _status("online"), qos=1)
        if settings.broker_sys:
            # Mosquitto publishes a $SYS value only when it changes, as a retained message,
            # and retain is off on our broker: until the next change the last value is
            # unknown here; 0 is right for a broker that never dropped.
            metrics.BROKER_DROPPED.set(0)
            watch = SysWatch(
                lambda: MqttClient(settings.mqtt, client_id=f"safecity-{settings.worker_id}-sys"),
                self.broker_dropped,
            )
            self.tasks.start("broker-sys", watch.run)
        if settings.broker_log is not None:
            self.tasks.start(
                "broker-log", BrokerLogWatch(settings.broker_log, self.cities, self.sink).run
            )
        self.tasks.start("ingest-stats", StatsTimer(self.stats_point, self.sink).run)
        self.tasks.start("acks", lambda: self.watermarks.run(self.mqtt))  # end-to-end acks
        self._started = True
        log.info(
            "ingest started",
            extra={
                "worker": settings.worker_id,
                "cities": list(self.cities.ids),
                "devices": sum(len(c.devices) for c in self.cities.values()),
                "session_present": self.mqtt.session_present,
                "spooled_points": recovered,
                "broker_log": str(settings.broker_log or ""),
                "metrics": f"http://{settings.metrics_host}:{self.health.port}/metrics",
            },
        )

    async def run(self) -> None:
        """Consume until cancelled."""
        await self.batcher.run()

    def stats_point(self) -> Point:
        """The next `ingest_stats` point (deltas since the previous one)."""
        gauges = Gauges(
            pending=self.batcher.pending,
            lag_seconds=self.batcher.lag,
            spool_messages=self.spool.points,
            spool_bytes=self.spool.bytes,
            mqtt_connected=self.mqtt.connected.is_set(),
        )
        return self.stats.point(
            self.totals,
            self.writer.write_errors,
            self.broker_dropped.take(),
            gauges,
            now_ms(),
        )

    async def stop(self) -> None:
        """Flush what is pending, say goodbye, disconnect and close; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.batcher.pending and self.mqtt.connected.is_set():
                await asyncio.wait_for(self.batcher.flush(), 10)
            if self._started:
                # The counts since the last point: a clean stop loses none of them.
                await asyncio.wait_for(self.sink.store_own([self.stats_point()]), 5)
            if self.mqtt.connected.is_set():
                await asyncio.wait_for(
                    self.mqtt.publish(self.status_topic, _status("offline", "stopped"), qos=1), 5
                )
        except (TimeoutError, StorageError) as exc:
            log.warning(
                "ingest stopped with unflushed messages (the broker redelivers them)",
                extra={"error": str(exc)},
            )
        finally:
            await self.tasks.stop()
            await self.mqtt.disconnect()
            self.spool.close()
            await self.influx.close()
            await self.health.stop()
            metrics.CONNECTED.set(0)
            log.info(
                "ingest stopped",
                extra={"worker": self.settings.worker_id, "spooled_points": self.spool.points},
            )


def _status(state: str, reason: str | None = None) -> bytes:
    return Status.model_validate(
        {"ts": datetime.now(UTC).replace(microsecond=0), "state": state, "reason": reason}
    ).to_payload()


async def run(settings: IngestSettings, city: City | Cities) -> None:
    """Run one ingest worker until cancelled; always stops cleanly."""
    service = IngestService(settings, city)
    try:
        await service.start()
        # The start-up objects (modules, registry, models) live for ever: out of the
        # collector's sight. A batch keeps ~10^4 messages alive at once, and with the
        # default threshold (700) the young generations were re-walked hundreds of times
        # per batch; the hot path makes no cycles, so collections can be rarer.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        await service.run()
    finally:
        await asyncio.shield(service.stop())
