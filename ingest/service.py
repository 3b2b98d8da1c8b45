"""Wires the ingest stages: MQTT source -> Validator -> InfluxWriter / spool / dead letters -> acks.

Every message of a batch is acked, in receive order, only after the whole batch is
durable: its valid points written to InfluxDB (or, while InfluxDB is unavailable,
fsync'd into the disk spool) and its rejections fsync'd into the dead-letter store.
While the spool holds anything, new batches go to the spool too, so it drains in
order; a drain task writes it to InfluxDB in the background. When the spool is full
nothing more is acked (back-pressure): the broker keeps the messages.

Besides the messages' points, a worker writes its own: a `security_events` point per
batch and device for the rejections that are attacks (spoofing, unknown devices,
floods, conflicting duplicates; part of the batch, durable before its acks), one per
security-relevant line of the broker's log (`SAFECITY_BROKER_LOG`), and an
`ingest_stats` point every 10 s. They take the same way to InfluxDB (the writer, or the
spool while InfluxDB is away); in the spool they have no source message (empty topic),
so a refused one is logged, not dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ingest import metrics
from ingest.brokerlog import EventClock, LogFollower, parse_line
from ingest.deadletter import DeadLetter, DeadLetterStore, dead_letter
from ingest.settings import IngestSettings
from ingest.spool import Spool, SpoolBatch, SpoolError, SpoolFullError
from ingest.stats import BrokerDropped, Gauges, StatsTracker, Totals
from ingest.validate import (
    Accepted,
    DuplicateDetector,
    RateLimiter,
    Rejected,
    Validator,
    claimed_device_id,
)
from ingest.watermark import Watermarks  # end-to-end acks
from ingest.writer import Backoff, InfluxWriter, WriteDeferredError
from safecity import schema, topics
from safecity.errors import MqttError, StorageError
from safecity.influx import InfluxClient
from safecity.lineprotocol import LineProtocolError, Point, encode
from safecity.mqtt import Incoming, MqttClient, Will
from safecity.observability import HealthServer
from safecity.readings import Rejection, RejectReason, Status
from safecity.registry import City

log = logging.getLogger("safecity.ingest")

CHANNELS = (topics.Channel.TELEMETRY, topics.Channel.EVENT, topics.Channel.STATUS)
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
BROKER_LOG_POLL_S = 0.5


@dataclass
class _Batch:
    messages: list[tuple[Incoming, Accepted | Rejected]] = field(default_factory=list)
    opened: float = 0.0


class IngestService:
    """One ingest worker: its own persistent MQTT session on the shared subscription."""

    def __init__(self, settings: IngestSettings, city: City) -> None:
        self.settings = settings
        self.city = city
        self.validator = Validator(
            city,
            settings.ts_past_window,
            settings.ts_future_window,
            rate_limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
            duplicates=DuplicateDetector(settings.dedup_window),
        )
        self.store = DeadLetterStore(settings.deadletter_dir)
        self.spool = Spool(
            settings.spool_dir / settings.worker_id,
            settings.spool_max_bytes,
            settings.spool_segment_bytes,
        )
        self.influx = InfluxClient(settings.influx)
        self.writer = InfluxWriter(self.influx, Backoff(cap=settings.retry_max_delay))
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
        # $SYS is per broker, not per share: a plain, non-persistent second connection.
        self.sys_mqtt: MqttClient | None = None
        if settings.broker_sys:
            self.sys_mqtt = MqttClient(
                settings.mqtt, client_id=f"safecity-{settings.worker_id}-sys"
            )
        self.health = HealthServer(settings.metrics_host, settings.metrics_port, self.ready)
        self.totals = Totals()
        self.stats = StatsTracker(city.id, settings.worker_id)
        self.broker_dropped = BrokerDropped(
            settings.spool_dir / settings.worker_id / "broker-dropped.json"
        )
        self._lag = 0.0
        self._last_event_ms = 0
        self._batch = _Batch()
        self._started = False
        self._stopped = False
        self._backpressure = False
        self._spool_failed = False
        self._durable_writes = 0
        self._spool_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.watermarks = Watermarks(city, settings.ack_interval)  # end-to-end acks

    def ready(self) -> bool:
        """Ready when connected to the broker and acking: not blocked by a full spool or auth."""
        return (
            self._started
            and self.mqtt.connected.is_set()
            and not self._backpressure
            and not self._spool_failed
            and not self.writer.auth_failing
        )

    async def start(self) -> None:
        """Open the stores, prepare InfluxDB, start /metrics, connect and subscribe."""
        self.store.open()
        recovered = await asyncio.to_thread(self.spool.open)
        self._update_spool_metrics()
        await self.health.start()
        await self._ensure_database()
        self._tasks.append(asyncio.create_task(self._drain_spool(), name="spool-drain"))
        if recovered:
            self._spool_ready.set()
        await self.mqtt.connect()
        group = self.settings.share_group
        filters = [
            (topics.shared(group, f) if group else f, 1)
            for f in (topics.device_filter(c, self.city.id) for c in CHANNELS)
        ]
        await self.mqtt.subscribe(filters)
        await self.mqtt.publish(self.status_topic, _status("online"), qos=1)
        if self.sys_mqtt is not None:
            # Mosquitto publishes a $SYS value only when it changes, as a retained message,
            # and retain is off on our broker: until the next change the last value is
            # unknown here; 0 is right for a broker that never dropped.
            metrics.BROKER_DROPPED.set(0)
            self._tasks.append(asyncio.create_task(self._follow_broker_sys(), name="broker-sys"))
        if self.settings.broker_log is not None:
            self._tasks.append(
                asyncio.create_task(
                    self._follow_broker_log(self.settings.broker_log), name="broker-log"
                )
            )
        self._tasks.append(asyncio.create_task(self._write_stats_every(), name="ingest-stats"))
        # End-to-end acks: per device, the seqs this worker made durable, every interval.
        self._tasks.append(asyncio.create_task(self.watermarks.run(self.mqtt), name="acks"))
        self._started = True
        log.info(
            "ingest started",
            extra={
                "worker": self.settings.worker_id,
                "city": self.city.id,
                "devices": len(self.city.devices),
                "session_present": self.mqtt.session_present,
                "spooled_points": recovered,
                "broker_log": str(self.settings.broker_log or ""),
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

    # --- consume -------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled, flushing by size and by time."""
        inbox = self.mqtt.inbox
        # The broker sends at most Receive Maximum unacked messages: a batch that holds
        # them all cannot grow until it is acked, so waiting for the timer would only idle.
        size = min(self.settings.batch_size, self.settings.receive_maximum)
        while True:
            wait: float | None = None
            if self._batch.messages:
                wait = max(
                    0.0, self._batch.opened + self.settings.flush_interval - time.monotonic()
                )
            room = size - len(self._batch.messages)
            received = await inbox.get_batch(room, wait)
            if received:
                self._take(received)
            if len(self._batch.messages) >= size or (
                self._batch.messages
                and time.monotonic() >= self._batch.opened + self.settings.flush_interval
            ):
                await self.flush()

    def _take(self, received: list[Incoming]) -> None:
        if not self._batch.messages:
            self._batch.opened = time.monotonic()
        validate = self.validator.validate
        append = self._batch.messages.append
        # One clock reading per bulk of messages received together (the window check).
        now = datetime.now(UTC)
        channels: dict[str, int] = {}
        redelivered = 0
        for incoming in received:
            outcome = validate(incoming.topic, incoming.payload, now, redelivery=incoming.duplicate)
            channel = outcome.channel
            channels[channel] = channels.get(channel, 0) + 1
            redelivered += incoming.duplicate
            append((incoming, outcome))
        # Metrics per call, not per message: prometheus-client takes a lock each time.
        for channel, count in channels.items():
            metrics.received(str(channel)).inc(count)
        self.totals.received += len(received)
        if redelivered:
            metrics.REDELIVERED.inc(redelivered)
            self.totals.redelivered += redelivered
        metrics.PENDING.set(len(self._batch.messages))

    async def flush(self) -> None:
        """Make the current batch durable, then ack all of it in receive order."""
        batch, self._batch = self._batch, _Batch()
        if not batch.messages:
            return
        started = time.monotonic()
        accepted: list[tuple[Incoming, Accepted]] = [
            (m, o) for m, o in batch.messages if isinstance(o, Accepted)
        ]
        rejected = [(m, o) for m, o in batch.messages if isinstance(o, Rejected)]
        letters = [
            dead_letter(o.rejection, m.topic, m.payload, self.settings.worker_id)
            for m, o in rejected
        ]
        own = self._rejection_events(rejected) if rejected else []
        refused_lines: list[tuple[int, str]] = []
        spooled = False
        if accepted or own:
            lines = [o.line for _, o in accepted]
            lines += [line for line, _ in own]
            if self.spool.empty:
                try:
                    refused_lines = await self.writer.write(lines, self.settings.spool_after)
                except WriteDeferredError as exc:
                    log.warning(
                        "influxdb unavailable; spooling batches to disk",
                        extra={"error": str(exc), "points": len(lines)},
                    )
                    spooled = True
            else:
                spooled = True
            if spooled:
                await self._spool_append(
                    SpoolBatch(
                        lines,
                        [o.point.time_ms for _, o in accepted] + [t for _, t in own],
                        [m.topic for m, _ in accepted] + [""] * len(own),
                        [m.payload for m, _ in accepted] + [b""] * len(own),
                    )
                )
        for index, message in refused_lines:
            if index >= len(accepted):
                _own_point_refused(lines[index], message)
                continue
            incoming = accepted[index][0]
            rejection = Rejection(RejectReason.SCHEMA, f"InfluxDB refused the point: {message}")
            letters.append(
                dead_letter(rejection, incoming.topic, incoming.payload, self.settings.worker_id)
            )
        await self._dead_letter(letters)
        self.watermarks.add_batch(batch.messages)  # end-to-end acks: the batch is durable
        if accepted and not spooled:
            self._count_written(
                [o for i, (_, o) in enumerate(accepted) if i not in {j for j, _ in refused_lines}]
            )
        self._durable_writes += 1
        crash_after = self.settings.fault_crash_after_write
        if crash_after and self._durable_writes >= crash_after:
            # Fault injection (tests only): die between durability and the acks.
            log.warning("fault injection: SIGKILL after durable write, before ack")
            os.kill(os.getpid(), signal.SIGKILL)
        acked, stale = self.mqtt.ack_many([incoming for incoming, _ in batch.messages])
        metrics.ACKED.inc(acked)
        if stale:
            metrics.STALE_ACKS.inc(stale)
        metrics.PENDING.set(0)
        metrics.BATCH_SIZE.observe(len(batch.messages))
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        await asyncio.to_thread(self.store.append_many, letters)
        for letter in letters:
            metrics.rejected(letter.reason).inc()
            self.totals.rejected[letter.reason] += 1
            self.mqtt.publish_nowait(
                topics.deadletter_topic(self.city.id, letter.reason), letter.to_json(), qos=1
            )

    def _count_written(self, outcomes: list[Accepted]) -> None:
        now_ms = time.time() * 1000
        newest = 0
        written: dict[str, int] = {}
        observe = metrics.E2E_LAG.observe
        telemetry = topics.Channel.TELEMETRY
        for outcome in outcomes:
            point = outcome.point
            written[point.measurement] = written.get(point.measurement, 0) + 1
            if outcome.channel is telemetry:
                newest = max(newest, point.time_ms)
                observe(max(0.0, (now_ms - point.time_ms) / 1000))
        for measurement, count in written.items():
            metrics.written(measurement).inc(count)
        self.totals.written += len(outcomes)
        if newest:
            self._lag = max(0.0, (now_ms - newest) / 1000)
            metrics.LAG.set(self._lag)

    # --- spool ---------------------------------------------------------------------

    async def _spool_append(self, batch: SpoolBatch) -> None:
        """Append to the spool; while it is full, wait (not acking) until it has room."""
        waited = 0.0
        while True:
            try:
                await asyncio.to_thread(self.spool.append, batch)
            except SpoolFullError as exc:
                if not self._backpressure:
                    log.error(
                        "spool full: back-pressure, not acking until it drains",
                        extra={"error": str(exc), "spool_bytes": self.spool.bytes},
                    )
                self._backpressure = True
                metrics.BACKPRESSURE.set(1)
                await asyncio.sleep(0.5)
                waited += 0.5
                continue
            except SpoolError as exc:
                # A broken disk: keep the batch unacked and retry; readiness says so.
                if not self._spool_failed:
                    log.error("spool append failed; not acking", extra={"error": str(exc)})
                self._spool_failed = True
                await asyncio.sleep(1.0)
                continue
            break
        if self._backpressure:
            log.info("spool has room again: acking resumes", extra={"waited_s": waited})
        self._backpressure = False
        self._spool_failed = False
        metrics.BACKPRESSURE.set(0)
        metrics.SPOOLED.inc(len(batch.lines))
        self._update_spool_metrics()
        self._spool_ready.set()

    async def _drain_spool(self) -> None:
        """Write spooled batches to InfluxDB, oldest first, retrying until it is back."""
        while True:
            item = await asyncio.to_thread(self.spool.peek)
            if item is None:
                self._spool_ready.clear()
                if self.spool.empty:
                    await self._spool_ready.wait()
                continue
            position, batch = item
            refused = await self.writer.write(batch.lines)
            letters = []
            for index, message in refused:
                if not batch.topics[index]:
                    _own_point_refused(batch.lines[index], message)
                    continue
                rejection = Rejection(RejectReason.SCHEMA, f"InfluxDB refused the point: {message}")
                letters.append(
                    dead_letter(
                        rejection,
                        batch.topics[index],
                        batch.payloads[index],
                        self.settings.worker_id,
                    )
                )
            await self._dead_letter(letters)
            await asyncio.to_thread(self.spool.consume, position)
            metrics.DRAINED.inc(len(batch.lines))
            now_ms = time.time() * 1000
            bad = {i for i, _ in refused}
            for index, ts in enumerate(batch.ts_ms):
                if index not in bad and batch.topics[index]:
                    self.totals.written += 1
                    metrics.E2E_LAG.observe(max(0.0, (now_ms - ts) / 1000))
            self._update_spool_metrics()
            if self.spool.empty:
                log.info("spool drained; writing directly again")

    def _update_spool_metrics(self) -> None:
        metrics.SPOOL_POINTS.set(self.spool.points)
        metrics.SPOOL_BYTES.set(self.spool.bytes)
        metrics.SPOOL_SEGMENTS.set(self.spool.segments)

    # --- broker $SYS ---------------------------------------------------------------

    async def _follow_broker_sys(self) -> None:
        """Export the broker's dropped-messages counter (published every sys_interval)."""
        assert self.sys_mqtt is not None
        client = self.sys_mqtt
        try:
            await client.connect()
            await client.subscribe([(BROKER_DROPPED_TOPIC, 0)])
        except MqttError as exc:
            log.warning("cannot follow broker $SYS topics", extra={"error": str(exc)})
            return
        while True:
            for message in await client.inbox.get_batch(100, None):
                with contextlib.suppress(ValueError):
                    value = int(message.payload.decode().strip())
                    metrics.BROKER_DROPPED.set(value)
                    self.broker_dropped.observe(value)

    # --- the worker's own points: security events and ingest_stats ------------------

    def _event_ms(self) -> int:
        """Wall-clock ms, strictly increasing within this worker (no two own points of one
        series share a timestamp, which would overwrite one with the other)."""
        now_ms = int(time.time() * 1000)
        self._last_event_ms = max(now_ms, self._last_event_ms + 1)
        return self._last_event_ms

    def _rejection_events(self, rejected: list[tuple[Incoming, Rejected]]) -> list[tuple[str, int]]:
        """One `security_events` line (and its time) per attack type and device of a batch."""
        groups: dict[tuple[str, str | None], list[tuple[str, str]]] = {}
        for incoming, outcome in rejected:
            reason = outcome.rejection.reason.value
            if reason not in schema.INGEST_SECURITY_REASONS:
                continue
            claimed = claimed_device_id(incoming.topic)
            device = self.city.device(claimed)
            key = (reason, device.id if device is not None else None)
            groups.setdefault(key, []).append((claimed, outcome.rejection.detail))
        if not groups:
            return []
        time_ms = self._event_ms()
        out: list[tuple[str, int]] = []
        for (reason, device_id), items in groups.items():
            claimed, detail = items[-1]
            point = schema.security_event_point(
                self.city.id,
                reason,
                time_ms,
                device=self.city.device(device_id) if device_id is not None else None,
                client_id=claimed,
                detail=detail,
                count=len(items),
                worker_id=self.settings.worker_id,
            )
            line = _encode_own(point)
            if line is not None:
                out.append((line, time_ms))
        return out

    async def _write_own(self, points: list[Point]) -> None:
        """Make the worker's own points durable: InfluxDB, or the spool while it is away."""
        encoded = [(line, p.time_ms) for p in points if (line := _encode_own(p)) is not None]
        if not encoded:
            return
        lines = [line for line, _ in encoded]
        if self.spool.empty:
            try:
                refused = await self.writer.write(lines, self.settings.spool_after)
            except WriteDeferredError:
                pass
            else:
                for index, message in refused:
                    _own_point_refused(lines[index], message)
                return
        await self._spool_append(
            SpoolBatch(lines, [t for _, t in encoded], [""] * len(lines), [b""] * len(lines))
        )

    def stats_point(self) -> Point:
        """The next `ingest_stats` point (deltas since the previous one)."""
        gauges = Gauges(
            pending=len(self._batch.messages),
            lag_seconds=self._lag,
            spool_messages=self.spool.points,
            spool_bytes=self.spool.bytes,
            mqtt_connected=self.mqtt.connected.is_set(),
        )
        return self.stats.point(
            self.totals,
            self.writer.write_errors,
            self.broker_dropped.take(),
            gauges,
            int(time.time() * 1000),
        )

    async def _write_stats_every(self) -> None:
        interval = schema.INGEST_STATS_INTERVAL_S
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            try:
                await self._write_own([self.stats_point()])
            except Exception:  # a bug here must not end the statistics for good
                log.exception("cannot write ingest_stats")

    async def _follow_broker_log(self, path: Path) -> None:
        """Broker log lines -> `security_events` points (auth failures, ACL denials)."""
        follower = LogFollower(path)
        clock = EventClock()
        await asyncio.to_thread(follower.read)  # position at the end
        log.info("following the broker log", extra={"path": str(path)})
        while True:
            try:
                lines = await asyncio.to_thread(follower.read)
            except OSError as exc:
                log.warning(
                    "cannot read the broker log", extra={"path": str(path), "error": str(exc)}
                )
                lines = []
            points = []
            for line in lines:
                event = parse_line(line)
                if event is None:
                    continue
                device = self.city.device(event.client_id)
                detail = event.message if event.topic is None else f"topic {event.topic}"
                points.append(
                    schema.security_event_point(
                        self.city.id,
                        event.type,
                        clock.stamp(event.time_s),
                        device=device,
                        client_id=event.client_id,
                        detail=detail,
                    )
                )
            if points:
                try:
                    await self._write_own(points)
                except Exception:  # a bug here must not end the following for good
                    log.exception("cannot write broker security events")
            await asyncio.sleep(BROKER_LOG_POLL_S)

    # --- stop ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Flush what is pending, say goodbye, disconnect and close; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._batch.messages and self.mqtt.connected.is_set():
                await asyncio.wait_for(self.flush(), 10)
            if self._started:
                # The counts since the last point: a clean stop loses none of them.
                await asyncio.wait_for(self._write_own([self.stats_point()]), 5)
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
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.mqtt.disconnect()
            if self.sys_mqtt is not None:
                await self.sys_mqtt.disconnect()
            self.spool.close()
            await self.influx.close()
            await self.health.stop()
            metrics.CONNECTED.set(0)
            log.info(
                "ingest stopped",
                extra={"worker": self.settings.worker_id, "spooled_points": self.spool.points},
            )


def _encode_own(point: Point) -> str | None:
    try:
        return encode(point)
    except LineProtocolError as exc:  # sanitised fields: should be unreachable
        log.error("cannot encode ingest's own point", extra={"error": str(exc)})
        return None


def _own_point_refused(line: str, message: str) -> None:
    log.error("influxdb refused ingest's own point", extra={"line": line[:300], "error": message})


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
