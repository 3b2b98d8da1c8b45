"""The edge agent: one device's MQTT v5 identity, birth/will, store-and-forward to durability.

Many agents share one process and one asyncio event loop (`safecity.mqtt.FleetClient`
is a lean MQTT client on the loop; no thread per device). Delivery per device:

- every message that may be resent goes into the device's crash-safe spool
  (`edge.spool`) before it is sent, and leaves it only when it is settled;
- QoS 1, at most `max_inflight` publishes awaiting their PUBACK, sent in spool order;
- end-to-end acknowledgement (`confirm`, with an `ack_topic` and a `seq`): a PUBACK
  only means "in the broker's memory" (a broker crash loses what it had not yet
  snapshotted; 0x10 "no matching subscribers" is a success code and means nobody took
  it), so a reading stays in the spool until the platform's ack on the device's own
  ack topic lists its seq as durable. Unconfirmed readings are sent again after a
  reconnect, and after `ack_timeout` without their ack (the bound doubles while no
  ack arrives at all). At most `ack_window` readings are sent and unconfirmed at once;
- without confirmation (no ack topic, no seq, or `confirm` off) the PUBACK settles it;
- every message gets at most one verdict through `on_result(message, code)`: 0x00
  confirmed durable; the PUBACK code (< 0x80) when a PUBACK settles it; >= 0x80 a
  refusal (recorded, not retried); `NOT_SENT` (0x100) when it never got one (spool
  full; a status message in flight at shutdown). Messages still unsettled at `close`
  get none: they stay in the spool and go out on the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from edge.flag import Flag
from edge.settings import EdgeSettings
from edge.spool import DeviceSpool, SpoolItem
from safecity.acks import Ack
from safecity.errors import AckError
from safecity.mqtt import NOT_SENT, FleetClient, Will
from safecity.settings import MqttSettings

log = logging.getLogger("edge.agent")

CONFIRMED = 0x00
"""The verdict of a reading the platform confirmed durable."""
REPLY = "reply"
"""The meta of a command result (`DeviceAgent.reply`): its verdict stays in the agent."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message to deliver; `meta` comes back with the verdict (JSON-able if it may be spooled)."""

    topic: str
    payload: bytes
    meta: Any = None
    resend: bool = True
    """Spool and resend after a lost connection (False for status messages: a stale birth
    is noise)."""
    seq: int | None = None
    """The device's seq in the payload: with it (and an ack topic) the platform's ack settles
    the message, not the PUBACK."""


@dataclass(slots=True)
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
    confirmed: int = 0
    acks: int = 0
    no_subscribers: int = 0
    ack_timeouts: int = 0

    def add(self, other: AgentStats) -> None:
        """Add another agent's counters to these."""
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))


Result = Callable[[Envelope, int], None]


def _channel(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


class DeviceAgent:
    """One device identity (client id = username = `client_id`) delivering its messages in order.

    `password` is the device's own secret; without one, `settings.password` or the MQTT
    settings' password is used (a single-connection fleet logs in as a service account).
    `ack_topic` is the device's own acknowledgement topic (`safecity.topics.ack_topic`).
    """

    # A fleet holds thousands: no instance dict.
    __slots__ = (
        "_ack_bound", "_ack_timer", "_acked_early", "_acked_since_resend", "_awaiting",
        "_birth", "_closing", "_command_topic", "_confirm", "_farewell", "_idle", "_inflight",
        "_memory", "_on_command", "_on_result", "_queue", "_rebuild", "_sent_once",
        "_settings", "_spool", "_statuses_inflight", "_to_settle", "_window", "client",
        "client_id", "stats",
    )  # fmt: skip

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
        ack_topic: str | None = None,
        command_topic: str | None = None,
        on_command: Callable[[bytes], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self._command_topic = command_topic
        self._on_command = on_command
        self._closing = False
        self._settings = settings
        self._on_result = on_result
        self._birth = birth
        self._farewell = farewell
        self._window = max_inflight or settings.max_inflight
        self._memory = settings.memory_queue
        self._confirm = settings.confirm and ack_topic is not None
        # mid -> (spool id or None, the message)
        self._inflight: dict[int, tuple[int | None, Envelope]] = {}
        self._statuses_inflight = 0
        # Status messages (never spooled) waiting for a connection.
        # A list, not a deque: it is short, and an empty deque weighs 600+ bytes a device.
        self._queue: list[Envelope] = []
        # Spool id -> (message, monotonic time of its PUBACK): sent, awaiting the ack.
        self._awaiting: dict[int, tuple[Envelope, float]] = {}
        # Dicts used as sets (keys only): an empty set weighs 216 bytes, a dict 64.
        self._acked_early: dict[int, None] = {}
        # Spool ids sent at least once in this run: an ack may settle only what it can be
        # about (a never-sent message under an acked seq is another message, e.g. a resend
        # with other content, and must still go out).
        self._sent_once: dict[int, None] = {}
        self._to_settle: list[int] = []
        self._ack_bound = settings.ack_timeout
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acked_since_resend = True
        spool_kwargs: dict[str, Callable[[Any], Any]] = {}
        if encode_meta is not None:
            spool_kwargs["encode_meta"] = encode_meta
        if decode_meta is not None:
            spool_kwargs["decode_meta"] = decode_meta
        self._spool = DeviceSpool(
            settings.spool_dir / f"{client_id}.spool",
            settings.spool_max_bytes,
            cache=self._memory,
            **spool_kwargs,
        )
        self._rebuild: Callable[[str, bytes, Any], Any] | None = None
        self._idle = Flag()
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
            subscriptions=[
                *([(ack_topic, 1)] if self._confirm and ack_topic else []),
                *([(command_topic, 1)] if command_topic else []),
            ],
            on_message=self._message,
            # Commands sent while the device is away wait in its session at the broker.
            session_expiry=settings.command_session_expiry if command_topic else 0,
        )

    # --- public ----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting; messages submitted before the connection wait in the spool."""
        self.client.start()

    @property
    def backlog(self) -> int:
        """Messages not yet settled: spooled (sent or not), status messages in flight or queued."""
        spooled = self._spool.pending - len(self._to_settle)
        return spooled + self._statuses_inflight + len(self._queue)

    @property
    def unconfirmed(self) -> int:
        """Readings PUBACKed and waiting for the platform's acknowledgement."""
        return len(self._awaiting)

    def set_meta_decoder(self, rebuild: Callable[[str, bytes, Any], Any]) -> None:
        """Rebuild a spooled message's meta from (topic, payload, decoded meta)."""
        self._rebuild = rebuild

    def submit(self, message: Envelope) -> None:
        """Hand over a message; never blocks. Its verdict comes through `on_result`."""
        self.stats.submitted += 1
        self._idle.clear()
        if not message.resend:
            self._send_or_queue(message)
            return
        seq = message.seq if self._confirm else None
        ident = self._spool.append(
            message.topic, message.payload, message.meta, seq, _channel(message.topic)
        )
        if ident is None:
            self.stats.dropped_full += 1
            self._verdict(message, NOT_SENT)
            return
        self.stats.spooled += 1
        self._pump()

    def reply(self, topic: str, payload: bytes) -> None:
        """Send a command result: kept in memory and sent again after a lost connection
        until the broker acknowledges it."""
        self._idle.clear()
        self._send_or_queue(Envelope(topic, payload, REPLY, resend=False))

    def _send_or_queue(self, message: Envelope) -> None:
        if not self.client.connected or self._queue or not self._send(None, message):
            if len(self._queue) < self._memory:
                self._queue.append(message)
            else:
                self._verdict(message, NOT_SENT)

    async def reboot(self, down_s: float, farewell: Envelope | None = None) -> None:
        """Say goodbye (`farewell`), drop the connection and come back after `down_s`
        seconds with a birth message, as a restarted device does."""
        if farewell is not None and self.client.connected:
            self._idle.clear()
            self._send_or_queue(farewell)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
        self.client.bounce(down_s)

    async def close(self, drain_s: float | None = None) -> None:
        """Wait up to `drain_s` for the backlog to be settled, say goodbye, disconnect.

        Status messages still in flight afterwards: verdict NOT_SENT. Unsettled spooled
        messages stay in the spool file for the next run (store-and-forward across
        restarts), without a verdict.
        """
        wait = self._settings.drain_timeout if drain_s is None else drain_s
        if self.backlog:
            # Includes waiting for a reconnect: the broker may be back any moment.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), wait)
        if self._farewell is not None and self.client.connected and not self.backlog:
            self._idle.clear()
            self._send(None, self._farewell())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(wait, 2.0) or 0.01)
        self._closing = True
        await self.client.stop(grace_s=1.0)
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        for ident, message in self._inflight.values():
            if ident is None:
                self._verdict(message, NOT_SENT)
        self._inflight.clear()
        self._statuses_inflight = 0
        for message in self._queue:
            self._verdict(message, NOT_SENT)
        self._queue.clear()
        self._flush_settled()
        self.stats.left_buffered = self._spool.pending
        self._spool.close()
        self.stats.connects = self.client.connects

    # --- delivery --------------------------------------------------------------

    def _send(self, ident: int | None, message: Envelope) -> bool:
        mid = self.client.publish(message.topic, message.payload, 1)
        if mid is None:
            return False
        self._inflight[mid] = (ident, message)
        if ident is None:
            self._statuses_inflight += 1
        else:
            self._sent_once[ident] = None
        return True

    def _envelope(self, item: SpoolItem) -> Envelope:
        meta = item.meta
        if item.from_disk and self._rebuild is not None:
            meta = self._rebuild(item.topic, item.payload, meta)
        return Envelope(item.topic, item.payload, meta, True, item.seq)

    def _pump(self) -> None:
        while self._queue and self.client.connected and len(self._inflight) < self._window:
            if not self._send(None, self._queue[0]):
                break
            self._queue.pop(0)
        room = min(
            self._window - len(self._inflight),
            self._settings.ack_window - len(self._awaiting) - len(self._inflight),
        )
        if self.client.connected and room > 0 and self._spool.unsent:
            items = self._spool.take(room)
            for index, item in enumerate(items):
                if not self._send(item.id, self._envelope(item)):
                    self._spool.rewind(i.id for i in items[index:])
                    break
        if not self.backlog:
            self._idle.set()

    def _verdict(self, message: Envelope, code: int) -> None:
        if message.meta is REPLY:
            # A command result lost with the connection goes out again after the next one.
            if code == NOT_SENT and not self._closing and len(self._queue) < self._memory:
                self._queue.append(message)
            return
        if code < 0x80:
            self.stats.accepted += 1
        elif code < NOT_SENT:
            self.stats.refused += 1
        else:
            self.stats.failed += 1
        self._on_result(message, code)

    def _settle(self, ident: int, message: Envelope, code: int) -> None:
        # One done record per burst of PUBACKs (one read hands over many), not per
        # message; a crash before it is written only means those are sent once more.
        if not self._to_settle:
            asyncio.get_running_loop().call_soon(self._flush_settled)
        self._to_settle.append(ident)
        self._sent_once.pop(ident, None)
        self._verdict(message, code)

    def _flush_settled(self) -> None:
        if self._to_settle:
            self._spool.settle(self._to_settle)
            self._to_settle = []
        if not self.backlog:
            self._idle.set()

    # --- FleetClient callbacks -------------------------------------------------

    def _puback(self, mid: int, code: int) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return
        ident, message = sent
        self._statuses_inflight -= ident is None
        if code == 0x10:
            self.stats.no_subscribers += 1
        if ident is None:
            self._verdict(message, code)
        elif code >= 0x80 or message.seq is None or not self._confirm:
            self._settle(ident, message, code)
        elif ident in self._acked_early:
            del self._acked_early[ident]
            self._settle(ident, message, CONFIRMED)
            self.stats.confirmed += 1
        else:
            # Accepted by the broker (0x00) or by nobody (0x10): the ack decides.
            loop = asyncio.get_running_loop()
            self._awaiting[ident] = (message, loop.time())
            if self._ack_timer is None:
                self._ack_timer = loop.call_later(self._ack_bound, self._ack_check)
        self._pump()

    def _message(self, topic: str, payload: bytes) -> None:
        if topic == self._command_topic and self._on_command is not None:
            self._on_command(payload)
        else:
            self._ack_message(topic, payload)

    def _ack_message(self, topic: str, payload: bytes) -> None:
        try:
            ack = Ack.from_payload(payload)
        except AckError as exc:
            log.warning("ignoring a malformed ack", extra={"client_id": self.client_id,
                                                           "error": str(exc)})  # fmt: skip
            return
        self.stats.acks += 1
        done: list[int] = []
        verdicts: list[Envelope] = []
        inflight_ids = {ident for ident, _ in self._inflight.values() if ident is not None}
        for channel in ("telemetry", "event"):
            for first, last in ack.ranges(channel):
                for ident in self._spool.lookup(channel, first, last):
                    awaiting = self._awaiting.pop(ident, None)
                    if awaiting is not None:
                        done.append(ident)
                        verdicts.append(awaiting[0])
                    elif ident in inflight_ids:
                        # The ack overtook the PUBACK: settle when the PUBACK comes.
                        self._acked_early[ident] = None
                    elif ident in self._sent_once:
                        # Rewound for a re-send: no need now.
                        item = self._spool.item(ident)
                        if item is not None:
                            done.append(ident)
                            verdicts.append(self._envelope(item))
        if done:
            self._spool.settle(done)
            for ident in done:
                self._sent_once.pop(ident, None)
            self.stats.confirmed += len(done)
            for message in verdicts:
                self._verdict(message, CONFIRMED)
            self._ack_bound = self._settings.ack_timeout
            self._acked_since_resend = True
        self._pump()

    def _ack_check(self) -> None:
        """Send again what waited longer than the bound for its ack."""
        self._ack_timer = None
        if not self._awaiting:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        stale: list[int] = []
        for ident, (_, acked_at) in self._awaiting.items():
            if now - acked_at < self._ack_bound:
                break
            stale.append(ident)
        if stale:
            for ident in stale:
                del self._awaiting[ident]
            self.stats.resent += self._spool.rewind(stale)
            self.stats.ack_timeouts += 1
            log.info(
                "no ack in time: sending again",
                extra={"client_id": self.client_id, "messages": len(stale),
                       "bound_s": self._ack_bound},
            )  # fmt: skip
            if not self._acked_since_resend:
                self._ack_bound = min(self._ack_bound * 2, self._settings.ack_timeout_max)
            self._acked_since_resend = False
            self._pump()
        if self._awaiting:
            oldest = next(iter(self._awaiting.values()))[1]
            delay = max(0.05, oldest + self._ack_bound - now)
            self._ack_timer = loop.call_later(delay, self._ack_check)

    def _connected(self) -> None:
        if self._birth is not None:
            self._send(None, self._birth())
        # Whatever the broker acknowledged but the platform did not confirm may have died
        # with the broker: send it again.
        if self._awaiting:
            self.stats.resent += self._spool.rewind(list(self._awaiting))
            self._awaiting.clear()
        if self._spool.unsent or self._queue:
            log.info(
                "replaying buffered messages",
                extra={
                    "client_id": self.client_id,
                    "queued": len(self._queue),
                    "spooled": self._spool.unsent,
                },
            )
        self._pump()

    def _lost(self, reason: str) -> None:
        log.warning("connection lost", extra={"client_id": self.client_id, "reason": reason})
        lost = list(self._inflight.values())
        self._inflight.clear()
        self._statuses_inflight = 0
        again = []
        for ident, message in lost:
            if ident is None:
                self._verdict(message, NOT_SENT)
            elif ident in self._acked_early:
                self._settle(ident, message, CONFIRMED)  # durable, whatever the PUBACK
                self.stats.confirmed += 1
            else:
                again.append(ident)
        self._acked_early.clear()
        # Unacknowledged publishes are older than anything unsent: they go first.
        self.stats.resent += self._spool.rewind(again)
