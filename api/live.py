"""The live stream's hub: one MQTT subscription, fanned out to SSE clients by bounded queues.

The hub subscribes (non-shared, QoS 0, no manual acks: a live view needs no
redelivery) to the city's telemetry, events and alerts when the first client
arrives. Each message is validated like ingest does (topic identity against the
registry, payload against the contract) before anyone sees it. Each client has
its own bounded queue; a client whose queue is full is dropped, so a slow
reader never holds up the hub or the other clients.

Every item gets an id, `<epoch>-<n>` (the epoch names this hub's life, n counts up),
and the newest `replay` items are kept: a client that reconnects with the id it saw
last (`Last-Event-ID`) is first sent what it missed, each item once, or, when what it
missed is no longer kept (or the id is not this hub's), told so by a gap notice.
Each API key may hold at most `max_per_key` live streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from safecity import topics
from safecity.errors import MqttError, TooManyStreamsError, TopicError
from safecity.mqtt import Incoming, MqttClient
from safecity.readings import Event, Reading, format_ts, parse
from safecity.registry import City
from safecity.settings import MqttSettings

log = logging.getLogger("safecity.api.live")
MAX_ALERT_BYTES = 8 * 1024


Numbered = tuple[str, dict[str, Any]]


@dataclass(eq=False)  # identity: each client is its own set member
class Subscriber:
    """One SSE client: its filters, what it missed, its bounded queue, whether it was dropped."""

    district: str | None
    kind: str | None
    queue: asyncio.Queue[Numbered]
    key_id: str = ""
    backlog: list[Numbered] = field(default_factory=list)
    gap: str | None = None
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, item: dict[str, Any]) -> bool:
        """True when the item passes the client's district and kind filters."""
        if self.district is not None and item.get("district") != self.district:
            return False
        return self.kind is None or item.get("kind") == self.kind


class Hub:
    """Fan-out of live items to subscribers; never blocks on a subscriber."""

    def __init__(
        self,
        city: City,
        mqtt: MqttSettings,
        queue_size: int,
        replay: int = 1000,
        max_per_key: int = 5,
    ) -> None:
        self.city = city
        self.mqtt_settings = mqtt
        self.queue_size = queue_size
        self.max_per_key = max_per_key
        self.subscribers: set[Subscriber] = set()
        self.dropped_total = 0
        self.epoch = secrets.token_hex(4)
        self._count = 0
        self._replay: deque[tuple[int, dict[str, Any]]] = deque(maxlen=replay)
        self._streams: Counter[str] = Counter()
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def subscribe(
        self,
        district: str | None,
        kind: str | None,
        key_id: str = "",
        last_event_id: str | None = None,
    ) -> Subscriber:
        """Register a client with its own bounded queue and what it missed since
        `last_event_id`; TooManyStreamsError if its key holds `max_per_key` streams."""
        if key_id and self._streams[key_id] >= self.max_per_key:
            raise TooManyStreamsError(
                f"API key {key_id} already holds {self.max_per_key} live streams "
                "(stream_max_per_key): close one first"
            )
        sub = Subscriber(district, kind, asyncio.Queue(self.queue_size), key_id)
        if last_event_id is not None:
            self._resume(sub, last_event_id)
        # No await since the backlog was taken: nothing is published in between, so
        # the backlog and the queue neither overlap nor leave a hole.
        self.subscribers.add(sub)
        if key_id:
            self._streams[key_id] += 1
        return sub

    def _resume(self, sub: Subscriber, last_event_id: str) -> None:
        epoch, _, number = last_event_id.partition("-")
        if epoch != self.epoch or not number.isdigit() or int(number) > self._count:
            sub.gap = "Last-Event-ID is not from this stream (the API restarted?)"
            return
        seen = int(number)
        oldest = self._replay[0][0] if self._replay else self._count + 1
        if oldest > seen + 1:
            sub.gap = (
                f"{oldest - seen - 1} items since Last-Event-ID are no longer kept "
                f"(the replay buffer holds the newest {self._replay.maxlen})"
            )
        sub.backlog = [
            (self.item_id(n), item) for n, item in self._replay if n > seen and sub.wants(item)
        ]

    def item_id(self, number: int) -> str:
        """The SSE id of the item numbered `number` in this hub's life."""
        return f"{self.epoch}-{number}"

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a client (it left or was dropped); idempotent."""
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            if sub.key_id:
                self._streams[sub.key_id] -= 1
                if self._streams[sub.key_id] <= 0:
                    del self._streams[sub.key_id]

    def streams_of(self, key_id: str) -> int:
        """Live streams the key holds now."""
        return self._streams[key_id]

    def publish(self, item: dict[str, Any]) -> None:
        """Number and keep the item, offer it to every interested client; drop those
        whose queue is full."""
        self._count += 1
        self._replay.append((self._count, item))
        numbered = (self.item_id(self._count), item)
        for sub in list(self.subscribers):
            if not sub.wants(item):
                continue
            try:
                sub.queue.put_nowait(numbered)
            except asyncio.QueueFull:
                self.unsubscribe(sub)
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
