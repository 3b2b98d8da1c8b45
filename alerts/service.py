"""The alerts service: MQTT (own shared group) -> validate -> rules -> incidents -> acks.

Each batch is evaluated in receive order; new incidents' alerts are published
(QoS 1, ids derived from the incident so a repeat is recognisable), then the
openings, alerts and auto-resolutions are written to InfluxDB, and only then is
the batch acked in receive order. A crash before the write redelivers the batch
and re-derives the same incidents (same ids, same points): nothing fires twice in
storage and nothing is lost. At start the book is rebuilt from the stored log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from alerts import metrics
from alerts.book import Book
from alerts.engine import Clear, Engine, Signal
from alerts.rules import AnyRule, RuleSet
from alerts.settings import AlertsSettings
from safecity import incidents as inc
from safecity import topics
from safecity.errors import StorageError, TopicError
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point
from safecity.mqtt import Incoming, MqttClient
from safecity.observability import HealthServer
from safecity.readings import Event, Reading, Rejection, Status, parse
from safecity.registry import City

log = logging.getLogger("safecity.alerts")
CHANNELS = (topics.Channel.TELEMETRY, topics.Channel.EVENT, topics.Channel.STATUS)


class AlertsService:
    """One alerts worker on the `$share/<group>/...` subscription, persistent session."""

    def __init__(self, settings: AlertsSettings, city: City, rules: RuleSet) -> None:
        self.settings = settings
        self.city = city
        self.rules = rules
        self.engine = Engine(rules, city)
        self.book = Book(city.id)
        self.influx = InfluxClient(settings.influx)
        self.store = inc.IncidentStore(self.influx)
        self.mqtt = MqttClient(
            settings.mqtt,
            client_id=f"safecity-{settings.alerts_id}",
            clean_start=False,
            session_expiry=settings.alerts_session_expiry,
            manual_ack=True,
            receive_maximum=settings.alerts_receive_maximum,
            on_connect=lambda: metrics.CONNECTED.set(1),
        )
        self.health = HealthServer(
            settings.alerts_metrics_host, settings.alerts_metrics_port, self.ready
        )
        self._past = timedelta(seconds=settings.ts_past_window)
        self._future = timedelta(seconds=settings.ts_future_window)
        self._started = False
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    def ready(self) -> bool:
        """Ready once the book is rebuilt and the broker connection is up."""
        return self._started and self.mqtt.connected.is_set()

    async def start(self) -> None:
        """Prepare InfluxDB, rebuild the book from storage, connect and subscribe."""
        await self.health.start()
        await self._retry(self.influx.ensure_database, "prepare influxdb")
        await self.refresh()
        for incident in self.book.active.values():
            rule = self._rule(incident.rule_id)
            if rule is not None and rule.auto_resolve:
                self.engine.seed_firing(incident.rule_id, incident.place, incident.devices)
        await self.mqtt.connect()
        group = self.settings.alerts_share_group
        filters = (topics.device_filter(c, self.city.id) for c in CHANNELS)
        await self.mqtt.subscribe([(topics.shared(group, f) if group else f, 1) for f in filters])
        self._tasks.append(asyncio.create_task(self._refresher(), name="refresh"))
        self._started = True
        log.info(
            "alerts started",
            extra={
                "alerts_id": self.settings.alerts_id,
                "city": self.city.id,
                "rules": len(self.rules.rules),
                "open_incidents": len(self.book.active),
                "session_present": self.mqtt.session_present,
                "metrics": f"http://{self.settings.alerts_metrics_host}:{self.health.port}/metrics",
            },
        )

    def _rule(self, rule_id: str) -> AnyRule | None:
        try:
            return self.rules.rule(rule_id)
        except KeyError:
            return None

    async def _retry(self, action: Callable[[], Awaitable[None]], what: str) -> None:
        attempt = 0
        while True:
            try:
                await action()
                return
            except StorageError as exc:
                attempt += 1
                metrics.WRITE_ERRORS.labels(error=type(exc).__name__).inc()
                log.warning(
                    what + " failed; retrying", extra={"error": str(exc), "attempt": attempt}
                )
                await asyncio.sleep(min(5.0, 0.2 * attempt))

    async def refresh(self) -> None:
        """Re-read the stored incidents: the book and the response-time figures."""
        # Under the lock: a batch's openings are decided and written under it too, so
        # the store read here can never miss an incident the book already holds.
        async with self._lock:
            stored = await self._load()
            self.book.load(stored.values())
        counts = dict.fromkeys((s.value for s in inc.State), 0)
        for incident in stored.values():
            counts[incident.state.value] += 1
        for state, count in counts.items():
            metrics.INCIDENTS.labels(state=state).set(count)
        for fig in inc.figures(stored.values()):
            for stat, tta, ttr in (
                ("mean", fig.tta_mean, fig.ttr_mean),
                ("median", fig.tta_median, fig.ttr_median),
                ("max", fig.tta_max, fig.ttr_max),
            ):
                if tta is not None:
                    metrics.TTA.labels(fig.rule_id, fig.district, stat).set(tta)
                if ttr is not None:
                    metrics.TTR.labels(fig.rule_id, fig.district, stat).set(ttr)

    async def _load(self) -> dict[str, inc.Incident]:
        attempt = 0
        while True:
            try:
                return await self.store.load(self.city.id)
            except StorageError as exc:
                attempt += 1
                log.warning("loading incidents failed", extra={"error": str(exc)})
                await asyncio.sleep(min(5.0, 0.2 * attempt))

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alerts_refresh_interval)
            with contextlib.suppress(StorageError):
                await self.refresh()

    # --- consume -------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled: batches by size and time."""
        while True:
            batch = await self.mqtt.inbox.get_batch(self.settings.alerts_batch_size, None)
            deadline = time.monotonic() + self.settings.alerts_flush_interval
            while len(batch) < self.settings.alerts_batch_size:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                more = await self.mqtt.inbox.get_batch(
                    self.settings.alerts_batch_size - len(batch), wait
                )
                if not more:
                    break
                batch += more
            await self.process(batch)

    def _evaluate(self, message: Incoming) -> list[Signal | Clear]:
        try:
            topic = topics.parse_device_topic(message.topic)
        except TopicError:
            metrics.SKIPPED.labels(reason="topic").inc()
            return []
        metrics.RECEIVED.labels(channel=topic.channel.value).inc()
        device = self.city.device(topic.device_id)
        if device is None:
            metrics.SKIPPED.labels(reason="unknown_device").inc()
            return []
        if (topic.city, topic.district, topic.kind) != (self.city.id, device.district, device.kind):
            metrics.SKIPPED.labels(reason="identity_mismatch").inc()
            return []
        parsed = parse(
            device.kind,
            message.payload,
            channel=topic.channel,
            past_window=self._past,
            future_window=self._future,
        )
        if isinstance(parsed, Rejection):
            metrics.SKIPPED.labels(reason=parsed.reason.value).inc()
            return []
        if isinstance(parsed, Reading):
            return self.engine.observe_reading(device, parsed.ts_ms, parsed.fields())
        if isinstance(parsed, Event):
            return self.engine.observe_event(
                device, parsed.ts_ms, parsed.type, parsed.detail_fields()
            )
        assert isinstance(parsed, Status)
        return self.engine.observe_status(device, parsed.ts_ms, parsed.state == "online")

    async def process(self, batch: list[Incoming]) -> None:
        """Evaluate, make the outcome durable, then ack the batch in receive order."""
        async with self._lock:
            await self._process(batch)

    async def _process(self, batch: list[Incoming]) -> None:
        changes: list[Signal | Clear] = []
        for message in batch:
            changes += self._evaluate(message)
        changes += self.engine.tick()
        metrics.WATERMARK.set(self.engine.watermark_ms / 1000)
        alerts: list[inc.Alert] = []
        points: list[Point] = []
        for change in changes:
            if isinstance(change, Signal):
                metrics.SIGNALS.labels(rule=change.rule.id).inc()
                opened = self.book.decide(change)
                if opened is None:
                    metrics.DEDUPLICATED.labels(rule=change.rule.id).inc()
                    continue
                alert = inc.alert_for(opened)
                alerts.append(alert)
                points += [inc.transition_point(opened, opened.transitions[0]), alert.point()]
            else:
                resolved = self.book.clear(change)
                if resolved is not None:
                    metrics.AUTO_RESOLVED.labels(rule=change.rule.id).inc()
                    points.append(inc.transition_point(resolved, resolved.transitions[-1]))
        for alert in alerts:
            # Published before the write: after a crash in between, the redelivered batch
            # re-derives the same alert id and publishes it again (at least once).
            body = json.dumps(alert.payload(), separators=(",", ":")).encode()
            topic = topics.alert_topic(self.city.id, alert.incident.severity.value)
            await self.mqtt.publish(topic, body, qos=1)
            metrics.FIRED.labels(
                rule=alert.incident.rule_id, severity=alert.incident.severity.value
            ).inc()
            log.info(
                "alert",
                extra={
                    "alert_id": alert.alert_id,
                    "incident_id": alert.incident.id,
                    "rule": alert.incident.rule_id,
                    "severity": alert.incident.severity.value,
                    "district": alert.incident.district,
                    "devices": list(alert.incident.devices),
                },
            )
        if points:
            await self._retry(lambda: self.store.append(points), "writing incidents")
        acked = sum(1 for message in batch if self.mqtt.ack(message))
        metrics.ACKED.inc(acked)

    # --- stop ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Disconnect and close; unacked messages stay with the broker; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.mqtt.disconnect()
        await self.influx.close()
        await self.health.stop()
        metrics.CONNECTED.set(0)
        log.info("alerts stopped", extra={"alerts_id": self.settings.alerts_id})


async def run(settings: AlertsSettings, city: City, rules: RuleSet) -> None:
    """Run the alerts service until cancelled; always stops cleanly."""
    service = AlertsService(settings, city, rules)
    try:
        await service.start()
        await service.run()
    finally:
        await asyncio.shield(service.stop())
