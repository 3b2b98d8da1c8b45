"""Batch-and-ack stage of the alerts service: evaluate in receive order, publish new
alerts and every lifecycle step decided here (openings, auto-resolutions), make the
incidents durable, then ack the batch in receive order.

A crash before the write redelivers the batch and re-derives the same incidents (same
ids, same points): nothing fires twice in storage and nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from datetime import timedelta

from alerts import metrics
from alerts.book import Book
from alerts.engine import Clear, Engine, Signal
from alerts.settings import AlertsSettings
from safecity import incidents as inc
from safecity import schema, topics
from safecity.errors import TopicError
from safecity.lineprotocol import Point, encode_many
from safecity.mqtt import Incoming, MqttClient
from safecity.quarantine import Poisoned, attempt
from safecity.readings import Event, Reading, Rejection, Status, now_ms, parse
from safecity.registry import City
from safecity.retry import count_errors, retry_storage

log = logging.getLogger("safecity.alerts")


class AlertBatcher:
    """Consumes the MQTT inbox in batches; `lock` is held while a batch is decided and written."""

    def __init__(
        self,
        settings: AlertsSettings,
        city: City,
        engine: Engine,
        book: Book,
        store: inc.IncidentStore,
        mqtt: MqttClient,
        lock: asyncio.Lock,
    ) -> None:
        self.settings = settings
        self.city = city
        self.engine = engine
        self.book = book
        self.store = store
        self.mqtt = mqtt
        self._lock = lock
        self._past = timedelta(seconds=settings.ts_past_window)
        self._future = timedelta(seconds=settings.ts_future_window)

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

    def _quarantined(self, message: Incoming, got: Poisoned) -> Point:
        """Count a quarantined message; its `security_events` point (the ingest keeps the
        message itself: it dead-letters its own copy)."""
        metrics.POISON.labels(stage=got.stage).inc()
        claimed = message.topic.split("/")[5] if message.topic.count("/") >= 6 else ""
        return schema.security_event_point(
            self.city.id,
            "alerts_poison",
            now_ms(),
            device=self.city.device(claimed),
            client_id=claimed,
            detail=got.rejection().detail,
            worker_id=self.settings.alerts_id,
        )

    async def _record(self, points: list[Point]) -> None:
        """Write quarantine security events (one millisecond apart: one series each)."""
        spaced = [replace(p, time_ms=p.time_ms + i) for i, p in enumerate(points)]
        policy = schema.retention_policy_of(schema.SECURITY_EVENTS)
        await retry_storage(
            lambda: self.store.influx.write(encode_many(spaced), rp=policy),
            "writing security events",
            on_error=count_errors(metrics.WRITE_ERRORS),
            logger=log,
        )

    def _decide(
        self, changes: list[Signal | Clear]
    ) -> tuple[list[inc.Alert], list[inc.Incident], list[Point]]:
        """The batch's new alerts, its lifecycle steps (openings, auto-resolutions) and
        their points."""
        alerts: list[inc.Alert] = []
        steps: list[inc.Incident] = []
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
                steps.append(opened)
                points += [inc.transition_point(opened, opened.transitions[0]), alert.point()]
            else:
                resolved = self.book.clear(change)
                if resolved is not None:
                    metrics.AUTO_RESOLVED.labels(rule=change.rule.id).inc()
                    steps.append(resolved)
                    points.append(inc.transition_point(resolved, resolved.transitions[-1]))
        return alerts, steps, points

    async def _publish_alerts(self, alerts: list[inc.Alert]) -> None:
        for alert in alerts:
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

    async def process(self, batch: list[Incoming]) -> None:
        """Evaluate, make the outcome durable, then ack the batch in receive order."""
        async with self._lock:
            await self._process(batch)

    async def _process(self, batch: list[Incoming]) -> None:
        changes: list[Signal | Clear] = []
        poisoned: list[Point] = []
        for message in batch:
            got = attempt("evaluate", self._evaluate, message, self.settings.alerts_poison_attempts)
            if isinstance(got, Poisoned):
                poisoned.append(self._quarantined(message, got))
            else:
                changes += got
        if poisoned:
            await self._record(poisoned)
        changes += self.engine.tick()
        metrics.WATERMARK.set(self.engine.watermark_ms / 1000)
        alerts, steps, points = self._decide(changes)
        # Published before the write: after a crash in between, the redelivered batch
        # re-derives the same alerts and steps and publishes them again (at least once).
        await self._publish_alerts(alerts)
        for step in steps:
            announced = inc.change_of(step)
            await self.mqtt.publish(announced.topic, announced.payload(), qos=1)
        if points:
            await retry_storage(
                lambda: self.store.append(points),
                "writing incidents",
                on_error=count_errors(metrics.WRITE_ERRORS),
                logger=log,
            )
        acked = sum(1 for message in batch if self.mqtt.ack(message))
        metrics.ACKED.inc(acked)
