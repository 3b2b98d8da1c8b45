"""The edge agent: one device's MQTT v5 identity, birth/will, ordered QoS 1 delivery.

Many agents share one process and one asyncio event loop (`safecity.mqtt.FleetClient`
drives paho from the loop; no thread per device). Delivery guarantees per device:

- QoS 1, at most `max_inflight` publishes awaiting their PUBACK;
- messages leave in the order they were submitted: in flight < memory queue < spool;
- while the broker is unreachable (or the queue is full) messages go to a bounded
  on-disk spool and are replayed, in order, after the reconnect; publishes that were
  in flight when the connection dropped go out again first (at-least-once: the
  broker may see them twice, never out of order);
- every message gets exactly one verdict through `on_result(message, code)`: the
  PUBACK reason code (>= 0x80 is a refusal, recorded, not retried), or `NOT_SENT`
  (0x100) when it never got one (spool full, or still in flight at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.settings import EdgeSettings
from edge.spool import Spool
from safecity.mqtt import NOT_SENT, FleetClient, Will
from safecity.settings import MqttSettings

log = logging.getLogger("edge.agent")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message to deliver; `meta` comes back with the verdict (JSON-able if it may be spooled)."""

    topic: str
    payload: bytes
    meta: Any = None
    resend: bool = True
    """Resend after a lost connection (False for status messages: a stale birth is noise)."""


@dataclass
class AgentStats:
    """Counters of one agent (or, summed, of a fleet of agents)."""

    submitted: int = 0
    accepted: int = 0
    refused: int = 0
    failed: int = 0
    spooled: int = 0
    resent: int = 0
    dropped_full: int = 0
    connects: int = 0
    left_buffered: int = 0

    def add(self, other: AgentStats) -> None:
        """Add another agent's counters to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


Result = Callable[[Envelope, int], None]


class DeviceAgent:
    """One device identity (client id = username = `client_id`) delivering its messages in order.

    `password` is the device's own secret; without one, `settings.password` or the MQTT
    settings' password is used (a single-connection fleet logs in as a service account).
    """

    def __init__(
        self,
        client_id: str,
        mqtt: MqttSettings,
        settings: EdgeSettings,
        on_result: Result,
        *,
        username: str | None = None,
        password: str | Callable[[], str | None] | None = None,
        birth: Callable[[], Envelope] | None = None,
        will: Callable[[], Will] | None = None,
        farewell: Callable[[], Envelope] | None = None,
        max_inflight: int | None = None,
        encode_meta: Callable[[Any], Any] | None = None,
        decode_meta: Callable[[Any], Any] | None = None,
        seed: int | None = None,
    ) -> None:
        self.client_id = client_id
        self._settings = settings
        self._on_result = on_result
        self._birth = birth
        self._farewell = farewell
        self._window = max_inflight or settings.max_inflight
        self._memory = settings.memory_queue
        self._inflight: dict[int, Envelope] = {}
        self._queue: deque[Envelope] = deque()
        spool_kwargs: dict[str, Callable[[Any], Any]] = {}
        if encode_meta is not None:
            spool_kwargs["encode_meta"] = encode_meta
        if decode_meta is not None:
            spool_kwargs["decode_meta"] = decode_meta
        self._spool = Spool(
            settings.spool_dir / f"{client_id}.spool",
            settings.spool_max_bytes,
            **spool_kwargs,
        )
        self._rebuild: Callable[[str, bytes, Any], Any] | None = None
        self._idle = asyncio.Event()
        self.stats = AgentStats()
        # The device's own secret (per-device accounts); else a shared one from settings.
        if password is None:
            shared = settings.password or mqtt.password
            password = shared.get_secret_value() if shared is not None else None
        if settings.tls_client_dir is not None:
            # Mutual TLS: this device's own certificate, named after its identity.
            name = username if username is not None else client_id
            mqtt = mqtt.model_copy(
                update={
                    "tls_cert": settings.tls_client_dir / f"{name}.crt",
                    "tls_key": settings.tls_client_dir / f"{name}.key",
                }
            )
        self.client = FleetClient(
            mqtt,
            client_id,
            username=username if username is not None else client_id,
            password=password,
            will=will,
            on_connect=self._connected,
            on_connection_lost=self._lost,
            on_puback=self._puback,
            max_inflight=self._window + 1,
            backoff_min=settings.backoff_min,
            backoff_max=settings.backoff_max,
            seed=seed,
        )

    # --- public ----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting; messages submitted before the connection wait in the spool."""
        self.client.start()

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged: in flight, queued in memory, spooled."""
        return len(self._inflight) + len(self._queue) + self._spool.pending

    def set_meta_decoder(self, rebuild: Callable[[str, bytes, Any], Any]) -> None:
        """Rebuild a spooled message's meta from (topic, payload, decoded meta)."""
        self._rebuild = rebuild

    def submit(self, message: Envelope) -> None:
        """Hand over a message; never blocks. Its verdict comes through `on_result`."""
        self.stats.submitted += 1
        self._idle.clear()
        if self._spool.pending or not self.client.connected or len(self._queue) >= self._memory:
            self._to_spool(message)
        elif self._queue or len(self._inflight) >= self._window or not self._send(message):
            self._queue.append(message)

    async def close(self, drain_s: float | None = None) -> None:
        """Wait up to `drain_s` for the backlog to be acknowledged, say goodbye, disconnect.

        Still in flight afterwards: verdict NOT_SENT. Still queued or spooled: kept in
        the spool file for the next run (store-and-forward across restarts).
        """
        wait = self._settings.drain_timeout if drain_s is None else drain_s
        if self.backlog:
            # Includes waiting for a reconnect: the broker may be back any moment.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), wait)
        if self._farewell is not None and self.client.connected and not self.backlog:
            self._idle.clear()
            self._send(self._farewell())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(wait, 2.0) or 0.01)
        await self.client.stop(grace_s=1.0)
        for message in self._take_inflight():
            self._verdict(message, NOT_SENT)
        # Unsent messages stay on disk, ahead of what was already spooled.
        self._spool.push_front([(m.topic, m.payload, m.meta) for m in self._queue])
        self._queue.clear()
        self.stats.left_buffered = self._spool.pending
        self._spool.close()
        self.stats.connects = self.client.connects

    # --- delivery --------------------------------------------------------------

    def _to_spool(self, message: Envelope) -> None:
        if self._spool.append(message.topic, message.payload, message.meta):
            self.stats.spooled += 1
        else:
            self.stats.dropped_full += 1
            self._verdict(message, NOT_SENT)

    def _send(self, message: Envelope) -> bool:
        mid = self.client.publish(message.topic, message.payload, 1)
        if mid is None:
            return False
        self._inflight[mid] = message
        return True

    def _pump(self) -> None:
        while self.client.connected and len(self._inflight) < self._window:
            if not self._queue:
                if not self._spool.pending:
                    break
                for topic, payload, meta in self._spool.read(self._window):
                    if self._rebuild is not None:
                        meta = self._rebuild(topic, payload, meta)
                    self._queue.append(Envelope(topic, payload, meta))
                continue
            message = self._queue.popleft()
            if not self._send(message):
                self._queue.appendleft(message)
                break
        if not self.backlog:
            self._idle.set()

    def _verdict(self, message: Envelope, code: int) -> None:
        if code < 0x80:
            self.stats.accepted += 1
        elif code < NOT_SENT:
            self.stats.refused += 1
        else:
            self.stats.failed += 1
        self._on_result(message, code)

    def _take_inflight(self) -> list[Envelope]:
        lost = list(self._inflight.values())
        self._inflight.clear()
        return lost

    # --- FleetClient callbacks -------------------------------------------------

    def _puback(self, mid: int, code: int) -> None:
        message = self._inflight.pop(mid, None)
        if message is None:
            return
        self._verdict(message, code)
        if self._queue or self._spool.pending:
            self._pump()
        elif not self._inflight:
            self._idle.set()

    def _connected(self) -> None:
        if self._birth is not None:
            self._send(self._birth())
        if self._spool.pending or self._queue:
            log.info(
                "replaying buffered messages",
                extra={
                    "client_id": self.client_id,
                    "queued": len(self._queue),
                    "spooled": self._spool.pending,
                },
            )
        self._pump()

    def _lost(self, reason: str) -> None:
        log.warning("connection lost", extra={"client_id": self.client_id, "reason": reason})
        lost = self._take_inflight()
        again = [m for m in lost if m.resend]
        for message in lost:
            if not message.resend:
                self._verdict(message, NOT_SENT)
        # Unacknowledged publishes are older than anything queued: they go first.
        self.stats.resent += len(again)
        self._queue.extendleft(reversed(again))
