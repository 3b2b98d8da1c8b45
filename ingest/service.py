"""Wires the ingest stages: MQTT source -> Validator -> InfluxWriter / dead letters -> ordered acks.

Every message of a batch is acked, in receive order, only after the whole batch is
durable: its valid points written to InfluxDB and its rejections fsync'd into the
dead-letter store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest import metrics
from ingest.deadletter import DeadLetter, DeadLetterStore, dead_letter
from ingest.validate import Accepted, Rejected, Validator
from ingest.writer import InfluxWriter
from safecity import topics
from safecity.errors import StorageError
from safecity.influx import InfluxClient
from safecity.mqtt import Incoming, MqttClient, Will
from safecity.observability import HealthServer
from safecity.readings import Rejection, RejectReason, Status
from safecity.registry import City
from safecity.settings import IngestSettings

log = logging.getLogger("safecity.ingest")

CHANNELS = (topics.Channel.TELEMETRY, topics.Channel.EVENT, topics.Channel.STATUS)


@dataclass
class _Batch:
    messages: list[tuple[Incoming, Accepted | Rejected]] = field(default_factory=list)
    opened: float = 0.0


class IngestService:
    """One ingest worker: its own persistent MQTT session on the shared subscription."""

    def __init__(self, settings: IngestSettings, city: City) -> None:
        self.settings = settings
        self.city = city
        self.validator = Validator(city, settings.ts_past_window, settings.ts_future_window)
        self.store = DeadLetterStore(settings.deadletter_dir)
        self.influx = InfluxClient(settings.influx)
        self.writer = InfluxWriter(self.influx)
        self.status_topic = topics.service_status_topic(city.id, settings.worker_id)
        self.mqtt = MqttClient(
            settings.mqtt,
            client_id=f"safecity-{settings.worker_id}",
            clean_start=False,
            session_expiry=settings.session_expiry,
            manual_ack=True,
            receive_maximum=settings.receive_maximum,
            will=Will(self.status_topic, _status("offline", "lost")),
            on_connect=lambda: metrics.CONNECTED.set(1),
        )
        self.health = HealthServer(settings.metrics_host, settings.metrics_port, self.ready)
        self._batch = _Batch()
        self._started = False
        self._stopped = False

    def ready(self) -> bool:
        """Ready when connected to the broker and InfluxDB writes are going through."""
        return self._started and self.mqtt.connected.is_set() and self.writer.healthy

    async def start(self) -> None:
        """Open the store, prepare InfluxDB, start /metrics, connect and subscribe."""
        self.store.open()
        await self.health.start()
        await self._ensure_database()
        await self.mqtt.connect()
        filters = [
            (topics.shared(self.settings.share_group, topics.device_filter(c, self.city.id)), 1)
            for c in CHANNELS
        ]
        await self.mqtt.subscribe(filters)
        await self.mqtt.publish(self.status_topic, _status("online"), qos=1)
        self._started = True
        log.info(
            "ingest started",
            extra={
                "worker": self.settings.worker_id,
                "city": self.city.id,
                "devices": len(self.city.devices),
                "session_present": self.mqtt.session_present,
                "metrics": f"http://{self.settings.metrics_host}:{self.health.port}/metrics",
            },
        )

    async def _ensure_database(self) -> None:
        attempt = 0
        while True:
            try:
                await self.influx.ensure_database()
                return
            except StorageError as exc:
                attempt += 1
                log.warning(
                    "waiting for influxdb",
                    extra={"url": self.settings.influx.url, "error": str(exc), "attempt": attempt},
                )
                await asyncio.sleep(min(5.0, 0.2 * attempt))

    async def run(self) -> None:
        """Consume until cancelled, flushing by size and by time."""
        queue = self.mqtt.messages
        while True:
            timeout: float | None = None
            if self._batch.messages:
                timeout = max(
                    0.0, self._batch.opened + self.settings.flush_interval - time.monotonic()
                )
            try:
                incoming = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                await self.flush()
                continue
            self._take(incoming)
            # Drain what is already queued without yielding per message.
            while not queue.empty() and len(self._batch.messages) < self.settings.batch_size:
                self._take(queue.get_nowait())
            if len(self._batch.messages) >= self.settings.batch_size:
                await self.flush()

    def _take(self, incoming: Incoming) -> None:
        outcome = self.validator.validate(incoming.topic, incoming.payload)
        metrics.RECEIVED.labels(channel=str(outcome.channel)).inc()
        if incoming.duplicate:
            metrics.REDELIVERED.inc()
        if not self._batch.messages:
            self._batch.opened = time.monotonic()
        self._batch.messages.append((incoming, outcome))
        metrics.PENDING.set(len(self._batch.messages))

    async def flush(self) -> None:
        """Make the current batch durable, then ack all of it in receive order."""
        batch, self._batch = self._batch, _Batch()
        if not batch.messages:
            return
        started = time.monotonic()
        accepted = [(m, o) for m, o in batch.messages if isinstance(o, Accepted)]
        refused_lines = await self.writer.write([o.line for _, o in accepted])
        now = datetime.now(UTC)
        letters: list[DeadLetter] = []
        for incoming, outcome in batch.messages:
            if isinstance(outcome, Rejected):
                letters.append(
                    dead_letter(
                        outcome.rejection,
                        incoming.topic,
                        incoming.payload,
                        self.settings.worker_id,
                        now,
                    )
                )
        for index, message in refused_lines:
            incoming = accepted[index][0]
            rejection = Rejection(RejectReason.SCHEMA, f"InfluxDB refused the point: {message}")
            letters.append(
                dead_letter(
                    rejection, incoming.topic, incoming.payload, self.settings.worker_id, now
                )
            )
        if letters:
            await asyncio.to_thread(self.store.append_many, letters)
            for letter in letters:
                metrics.REJECTED.labels(reason=letter.reason).inc()
                self.mqtt.publish_nowait(
                    topics.deadletter_topic(self.city.id, letter.reason), letter.to_json(), qos=1
                )
        self._count_written(accepted, {i for i, _ in refused_lines})
        for incoming, _ in batch.messages:
            if self.mqtt.ack(incoming):
                metrics.ACKED.inc()
            else:
                metrics.STALE_ACKS.inc()
        metrics.PENDING.set(0)
        metrics.BATCH_SIZE.observe(len(batch.messages))
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)

    def _count_written(self, accepted: list[tuple[Incoming, Accepted]], refused: set[int]) -> None:
        newest = 0
        for index, (_, outcome) in enumerate(accepted):
            if index in refused:
                continue
            metrics.WRITTEN.labels(measurement=outcome.point.measurement).inc()
            if outcome.channel is topics.Channel.TELEMETRY:
                newest = max(newest, outcome.point.time_ms)
        if newest:
            metrics.LAG.set(max(0.0, time.time() - newest / 1000))

    async def stop(self) -> None:
        """Flush what is pending, say goodbye, disconnect and close; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._batch.messages and self.mqtt.connected.is_set():
                await asyncio.wait_for(self.flush(), 10)
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
            await self.mqtt.disconnect()
            await self.influx.close()
            await self.health.stop()
            metrics.CONNECTED.set(0)
            log.info("ingest stopped", extra={"worker": self.settings.worker_id})


def _status(state: str, reason: str | None = None) -> bytes:
    return Status.model_validate(
        {"ts": datetime.now(UTC).replace(microsecond=0), "state": state, "reason": reason}
    ).to_payload()


async def run(settings: IngestSettings, city: City) -> None:
    """Run one ingest worker until cancelled; always stops cleanly."""
    service = IngestService(settings, city)
    try:
        await service.start()
        await service.run()
    finally:
        await asyncio.shield(service.stop())
