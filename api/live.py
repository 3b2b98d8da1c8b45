"""The live stream's hub: one MQTT subscription, fanned out to SSE clients by bounded queues.

The hub subscribes (non-shared, QoS 0, no manual acks: a live view needs no
redelivery) to the city's telemetry, events and alerts when the first client
arrives. Each message is validated like ingest does (topic identity against the
registry, payload against the contract) before anyone sees it. Each client has
its own bounded queue; a client whose queue is full is dropped, so a slow
reader never holds up the hub or the other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from safecity import topics
from safecity.errors import MqttError, TopicError
from safecity.mqtt import Incoming, MqttClient
from safecity.readings import Event, Reading, format_ts, parse
from safecity.registry import City
from safecity.settings import MqttSettings

log = logging.getLogger("safecity.api.live")
MAX_ALERT_BYTES = 8 * 1024


@dataclass(eq=False)  # identity: each client is its own set member
class Subscriber:
    """One SSE client: its filters, its bounded queue and whether it was dropped."""

    district: str | None
    kind: str | None
    queue: asyncio.Queue[dict[str, Any]]
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, item: dict[str, Any]) -> bool:
        """True when the item passes the client's district and kind filters."""
        if self.district is not None and item.get("district") != self.district:
            return False
        return self.kind is None or item.get("kind") == self.kind


class Hub:
    """Fan-out of live items to subscribers; never blocks on a subscriber."""

    def __init__(self, city: City, mqtt: MqttSettings, queue_size: int) -> None:
        self.city = city
        self.mqtt_settings = mqtt
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.dropped_total = 0
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def subscribe(self, district: str | None, kind: str | None) -> Subscriber:
        """Register a client with its own bounded queue."""
        sub = Subscriber(district, kind, asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a client (it left or was dropped)."""
        self.subscribers.discard(sub)

    def publish(self, item: dict[str, Any]) -> None:
        """Offer an item to every interested client; drop those whose queue is full."""
        for sub in list(self.subscribers):
            if not sub.wants(item):
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.subscribers.discard(sub)
                sub.dropped.set()
                self.dropped_total += 1
                log.warning("live client dropped: queue full", extra={"size": self.queue_size})

    async def start(self) -> None:
        """Connect and subscribe once (idempotent); MqttError if the broker is unreachable."""
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            client = MqttClient(self.mqtt_settings, f"safecity-api-live-{secrets.token_hex(4)}")
            await client.connect()
            city = self.city.id
            try:
                await client.subscribe(
                    [
                        (topics.device_filter(topics.Channel.TELEMETRY, city), 0),
                        (topics.device_filter(topics.Channel.EVENT, city), 0),
                        (topics.alert_filter(city), 0),
                    ]
                )
            except MqttError:
                await client.disconnect()
                raise
            self._client = client
            self._task = asyncio.create_task(self._pump(client), name="safecity-api-live")

    async def stop(self) -> None:
        """Stop the pump and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.disconnect()
        self._task = self._client = None

    async def _pump(self, client: MqttClient) -> None:
        while True:
            for message in await client.inbox.get_batch(500, None):
                item = self.summarise(message)
                if item is not None:
                    self.publish(item)

    def summarise(self, message: Incoming) -> dict[str, Any] | None:
        """The client-facing item of a message, or None if it is not valid."""
        try:
            parsed = topics.parse(message.topic)
        except TopicError:
            return None
        if isinstance(parsed, topics.PlatformTopic):
            if parsed.section != topics.ALERTS or len(message.payload) > MAX_ALERT_BYTES:
                return None
            try:
                body = json.loads(message.payload)
            except ValueError:
                return None
            if not isinstance(body, dict):
                return None
            return {
                "type": "alert",
                "severity": parsed.name,
                "district": body.get("district"),
                "kind": body.get("kind"),
                "alert": body,
            }
        device = self.city.device(parsed.device_id)
        if device is None or device.district != parsed.district or device.kind != parsed.kind:
            return None
        msg = parse(
            parsed.kind,
            message.payload,
            past_window=None,
            future_window=None,
            channel=parsed.channel,
        )
        base = {"device_id": device.id, "district": device.district, "kind": device.kind}
        if isinstance(msg, Reading):
            return {
                "type": "reading",
                **base,
                "ts": format_ts(msg.ts),
                "seq": msg.seq,
                "values": msg.fields(),
            }
        if isinstance(msg, Event):
            return {
                "type": "event",
                **base,
                "ts": format_ts(msg.ts),
                "seq": msg.seq,
                "event": msg.type,
                "severity": msg.severity.value,
                "details": msg.detail_fields(),
            }
        return None
