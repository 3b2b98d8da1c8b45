"""The one MQTT boundary: an asyncio-facing MQTT v5 client over paho-mqtt 2.x.

Only this module imports paho. The rest of safecity sees typed async methods and
frozen dataclasses. paho's network thread never blocks here: callbacks only hand
results to the event loop. Received messages go through an `Inbox` (a deque the
network thread appends to, waking the loop only when the consumer is waiting), so a
high message rate costs one loop wake-up per burst, not one per message.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from safecity.errors import MqttError
from safecity.settings import MqttSettings

log = logging.getLogger("safecity.mqtt")

# Pseudo reason code for a publish paho could not even queue (not an MQTT code).
NOT_SENT = 0x100

_PUBLISH = 0x30
_PUBACK = 0x40
# One socket read: many ~200-byte PUBLISH packets per system call instead of three.
_READ_SIZE = 256 * 1024
_PUBACK_OK = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class Will:
    """A last-will message the broker publishes if the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Incoming:
    """A received message; `generation` ties its ack to the connection it came on."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    duplicate: bool
    generation: int


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Outcome of a publish: the broker's reason code (PUBACK for QoS 1, 0 for QoS 0)."""

    reason_code: int
    reason: str

    @property
    def ok(self) -> bool:
        """True when the broker accepted the message (reason < 0x80)."""
        return self.reason_code < 0x80


class Inbox:
    """Thread-safe hand-off of received messages from paho's network thread to one consumer.

    The producer side (`put`) never blocks and schedules a loop callback only when the
    consumer is parked in `get_batch`; the consumer takes everything queued at once.
    Flow control is the broker's: with manual acks, at most Receive Maximum messages
    are unacknowledged, so the deque is bounded by it.
    """

    def __init__(self) -> None:
        self._items: deque[Incoming] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Incoming) -> None:
        """Append one message (any thread); wake the consumer if it is waiting."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.get_loop().is_closed():
            waiter.get_loop().call_soon_threadsafe(_set_result, waiter, None)

    def put_many(self, items: list[Incoming]) -> None:
        """Append messages in order (any thread): one lock and at most one wake-up per call."""
        with self._lock:
            self._items.extend(items)
            waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.get_loop().is_closed():
            waiter.get_loop().call_soon_threadsafe(_set_result, waiter, None)

    def get_nowait(self, max_items: int) -> list[Incoming]:
        """Up to `max_items` queued messages, oldest first (possibly none)."""
        items = self._items
        with self._lock:
            if max_items >= len(items):
                out = list(items)
                items.clear()
                return out
            popleft = items.popleft
            return [popleft() for _ in range(max_items)]

    async def get_batch(self, max_items: int, wait: float | None) -> list[Incoming]:
        """Wait up to `wait` s (None: forever) for messages; return up to `max_items`."""
        out = self.get_nowait(max_items)
        if out or wait == 0:
            return out
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._items:
                self._waiter = loop.create_future()
            waiter = self._waiter
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), wait)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
        return self.get_nowait(max_items)


class _BulkReadClient(paho.Client):
    """paho's client with a bulk receive path for the one hot packet type, PUBLISH QoS 0/1.

    Stock paho 2.x reads a packet with three `recv` calls (command byte, remaining
    length byte by byte, body) after one `select`, then builds Properties and an
    MQTTMessage, matches topic callbacks under two locks and calls `on_message`: about
    half of a high-rate consumer's CPU. Here `loop_read` (still called by paho's own
    network loop) reads up to `_READ_SIZE` bytes at once, decodes every complete QoS 0/1
    PUBLISH of the chunk itself (properties are skipped: none are used) and hands the
    whole run to `sink` in one call, in receive order. Every other packet (CONNACK,
    SUBACK, PUBACK, QoS 2, a topic alias, ...) goes to paho's own `_packet_handle`
    unchanged, after the PUBLISHes received before it. Acks are not touched: with
    `manual_ack` nothing is acked here; without it, QoS 1 PUBACKs are queued after the
    delivery, as paho does.

    Relies on paho 2.x internals (`_sock_recv`, `_in_packet`, `_packet_handle`,
    `_packet_queue`, `_loop_rc_handle`); `bulk_read_supported()` checks them and
    MqttClient falls back to stock paho (and `on_message`) when they are missing.
    """

    def __init__(self, *args: Any, sink: Callable[[list[tuple[Any, ...]]], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sink = sink
        self._rbuf = b""

    def reconnect(self) -> MQTTErrorCode:
        # Bytes of a previous connection must never be parsed as the new one's.
        self._rbuf = b""
        return super().reconnect()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        try:
            data = self._sock_recv(_READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return self.feed(data)

    def feed(self, data: bytes) -> MQTTErrorCode:
        """Decode `data` read from the socket (after any incomplete packet of the last read)."""
        buf = self._rbuf + data if self._rbuf else data
        self._rbuf = b""
        view = memoryview(buf)
        size = len(buf)
        pos = 0
        out: list[tuple[Any, ...]] = []
        v5 = self._protocol == paho.MQTTv5
        auto_ack = not self._manual_ack
        while pos + 2 <= size:
            command = buf[pos]
            # Remaining length: 1-4 bytes, 7 bits each.
            length = 0
            mult = 1
            i = pos + 1
            while True:
                if i >= size:
                    length = -1
                    break
                byte = buf[i]
                length += (byte & 0x7F) * mult
                i += 1
                if not byte & 0x80:
                    break
                mult *= 128
                if i - pos > 4:
                    self._deliver(out, auto_ack)
                    return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            if length < 0 or i + length > size:
                break  # incomplete: keep the tail for the next read
            end = i + length
            qos = (command & 0x06) >> 1
            fast = (command & 0xF0) == _PUBLISH and qos < 2 and length >= 2
            if fast:
                tlen = (buf[i] << 8) | buf[i + 1]
                j = i + 2 + tlen
                mid = 0
                if qos:
                    mid = (buf[j] << 8) | buf[j + 1] if j + 2 <= end else -1
                    j += 2
                if v5 and j < end and mid >= 0:
                    plen = 0
                    pmult = 1
                    while j < end:
                        byte = buf[j]
                        j += 1
                        plen += (byte & 0x7F) * pmult
                        if not byte & 0x80:
                            break
                        pmult *= 128
                    j += plen
                fast = tlen > 0 and mid >= 0 and j <= end
                if fast:
                    out.append(
                        (
                            bytes(view[i + 2 : i + 2 + tlen]).decode("utf-8", "replace"),
                            bytes(view[j:end]),
                            qos,
                            mid,
                            bool(command & 0x01),
                            bool(command & 0x08),
                        )
                    )
            if not fast:
                # Anything else: paho's own handler, after what came before it.
                self._deliver(out, auto_ack)
                out = []
                self._in_packet = {
                    "command": command,
                    "have_remaining": 1,
                    "remaining_count": list(buf[pos + 1 : i]),
                    "remaining_mult": mult,
                    "remaining_length": length,
                    "packet": bytearray(view[i:end]),
                    "to_process": 0,
                    "pos": 0,
                }
                sock = self._sock
                try:
                    rc = self._packet_handle()
                except MalformedPacket as exc:
                    self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                self._in_packet = {
                    "command": 0,
                    "have_remaining": 0,
                    "remaining_count": [],
                    "remaining_mult": 1,
                    "remaining_length": 0,
                    "packet": bytearray(b""),
                    "to_process": 0,
                    "pos": 0,
                }
                if rc:
                    return self._loop_rc_handle(rc)
                if self._sock is not sock:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS  # paho closed the connection
            pos = end
        self._deliver(out, auto_ack)
        if pos < size:
            self._rbuf = bytes(view[pos:])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _deliver(self, out: list[tuple[Any, ...]], auto_ack: bool) -> None:
        if not out:
            return
        self._sink(out)
        if auto_ack:
            acks = b"".join(_PUBACK_OK.pack(_PUBACK, 2, m[3]) for m in out if m[2] == 1)
            if acks:
                self._packet_queue(_PUBACK, acks, 0, 0)

    def ack_many(self, mids: list[int]) -> None:
        """Queue the PUBACKs (success, no properties) of `mids` as one write, in order."""
        if mids:
            acks = b"".join(_PUBACK_OK.pack(_PUBACK, 2, mid) for mid in mids)
            self._packet_queue(_PUBACK, acks, 0, 0)


def bulk_read_supported() -> bool:
    """True when the installed paho has the internals `_BulkReadClient` builds on."""
    return all(
        hasattr(paho.Client, name)
        for name in (
            "_sock_recv",
            "_packet_handle",
            "_packet_queue",
            "_loop_rc_handle",
            "_easy_log",
            "reconnect",
        )
    )


class MqttClient:
    """An MQTT v5 client with awaitable connect/publish/subscribe and manual, ordered acks."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        will: Will | None = None,
        queue_size: int = 0,  # kept for compatibility; receipt is bounded by Receive Maximum
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._manual_ack = manual_ack
        self._receive_maximum = receive_maximum
        self._user_on_connect = on_connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inbox = Inbox()
        self.generation = 0
        self.session_present = False
        self.connected = asyncio.Event()
        self._connect_result: asyncio.Future[int] | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[PublishResult]] = {}
        self._early: dict[int, PublishResult] = {}
        self._unawaited: set[int] = set()
        self._subs: dict[int, asyncio.Future[list[int]]] = {}
        self._filters: list[tuple[str, int]] = []
        self._stopping = False
        self._bulk = bulk_read_supported()
        if self._bulk:
            self._client: paho.Client = _BulkReadClient(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv5,
                manual_ack=manual_ack,
                sink=self._on_messages,
            )
        else:  # pragma: no cover - another paho 2.x whose internals moved
            log.warning("paho internals changed: using its per-message receive path")
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv5,
                manual_ack=manual_ack,
            )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls_ca is not None:
            # Verifies the broker's certificate and host name; cert/key only for mutual TLS.
            self._client.tls_set(
                ca_certs=str(settings.tls_ca),
                certfile=str(settings.tls_cert) if settings.tls_cert else None,
                keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        # paho's own queue of unsent messages stays unbounded; callers bound it.
        self._client.max_inflight_messages_set(1000)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # --- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (and keep reconnecting in the background); raise MqttError if refused."""
        self._loop = asyncio.get_running_loop()
        self._connect_result = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._session_expiry:
            props.SessionExpiryInterval = self._session_expiry
        if self._receive_maximum:
            props.ReceiveMaximum = self._receive_maximum
        try:
            await asyncio.to_thread(
                self._client.connect,
                self._settings.host,
                self._settings.port,
                self._settings.keepalive,
                clean_start=self._clean_start,
                properties=props,
            )
        except OSError as exc:
            raise MqttError(
                f"cannot reach MQTT broker {self._settings.host}:{self._settings.port}: {exc}"
            ) from exc
        self._client.loop_start()
        try:
            code = await asyncio.wait_for(self._connect_result, self._settings.connect_timeout)
        except TimeoutError as exc:
            self._client.loop_stop()
            raise MqttError(
                f"no CONNACK from {self._settings.host}:{self._settings.port} "
                f"within {self._settings.connect_timeout}s"
            ) from exc
        if code >= 0x80:
            await self.disconnect()
            reason = ReasonCode(PacketTypes.CONNACK, identifier=code)
            raise MqttError(f"broker refused connection for {self.client_id!r}: {reason}")

    async def disconnect(self) -> None:
        """Disconnect cleanly and stop the network thread; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._fail_pending(MqttError("client stopped"))

    # --- operations ------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> PublishResult:
        """Publish and wait for the broker's verdict (PUBACK reason code for QoS 1)."""
        loop = self._require_loop()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return PublishResult(NOT_SENT, paho.error_string(info.rc))
        if qos == 0:
            return PublishResult(0, "Success")
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is not None:
                return early
            fut: asyncio.Future[PublishResult] = loop.create_future()
            self._pending[info.mid] = fut
        return await fut

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a publish without waiting for its acknowledgement (fire and forget)."""
        info = self._client.publish(topic, payload, qos=qos)
        if qos and info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            with self._lock:
                if self._early.pop(info.mid, None) is None:
                    self._unawaited.add(info.mid)

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe (and re-subscribe after every reconnect); return the granted codes."""
        self._filters = list(filters)
        return await self._subscribe(self._filters)

    async def _subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        loop = self._require_loop()
        with self._lock:
            result, mid = self._client.subscribe(filters)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise MqttError(f"subscribe failed: {paho.error_string(result)}")
            fut: asyncio.Future[list[int]] = loop.create_future()
            self._subs[mid] = fut
        codes = await asyncio.wait_for(fut, self._settings.connect_timeout)
        refused = [f for (f, _), c in zip(filters, codes, strict=False) if c >= 0x80]
        if refused:
            raise MqttError(f"subscription refused for {refused}: codes {codes}")
        return codes

    def ack(self, message: Incoming) -> bool:
        """Acknowledge a message; a message from an earlier connection is not acked (stale)."""
        if not self._manual_ack or message.qos == 0:
            return True
        if message.generation != self.generation:
            return False
        self._client.ack(message.mid, message.qos)
        return True

    def ack_many(self, messages: list[Incoming]) -> tuple[int, int]:
        """Acknowledge messages in receive order, QoS 1 runs as one write; return (acked, stale).

        Messages from an earlier connection are not acked (stale): the broker redelivers them.
        """
        if not self._manual_ack:
            return len(messages), 0
        generation = self.generation
        client = self._client
        bulk = client.ack_many if isinstance(client, _BulkReadClient) else None
        run: list[int] = []
        stale = 0
        for message in messages:
            if not message.qos:
                continue
            if message.generation != generation:
                stale += 1
            elif message.qos == 1 and bulk is not None:
                run.append(message.mid)
            else:
                if bulk is not None and run:
                    bulk(run)
                    run = []
                client.ack(message.mid, message.qos)
        if run and bulk is not None:
            bulk(run)
        return len(messages) - stale, stale

    # --- paho callbacks (network thread) ---------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise MqttError("not connected: call connect() first")
        return self._loop

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        code = reason_code.value
        if code < 0x80:
            # New connection: packet ids of the old one are void, so acks for its
            # messages must not be sent (they would hit other messages).
            self.generation += 1
            self.session_present = bool(flags.session_present)
            log.info(
                "mqtt connected",
                extra={"client_id": self.client_id, "session_present": self.session_present},
            )
            self._call(self.connected.set)
            if self._filters and self._connect_result is not None and self._connect_result.done():
                # A reconnect: a clean session forgot our subscriptions.
                self._client.subscribe(self._filters)
            if self._user_on_connect is not None:
                self._call(self._user_on_connect)
        self._call(self._resolve_connect, code)

    def _resolve_connect(self, code: int) -> None:
        if self._connect_result is not None and not self._connect_result.done():
            self._connect_result.set_result(code)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call(self.connected.clear)
        if not self._stopping:
            log.warning(
                "mqtt disconnected",
                extra={"client_id": self.client_id, "reason": str(reason_code)},
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        result = PublishResult(reason_code.value, str(reason_code))
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                if mid in self._unawaited:
                    self._unawaited.discard(mid)
                else:
                    self._early[mid] = result
                return
        self._call(_set_result, fut, result)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            fut = self._subs.pop(mid, None)
        if fut is not None:
            self._call(_set_result, fut, [rc.value for rc in reason_codes])

    def _on_messages(self, received: list[tuple[Any, ...]]) -> None:
        generation = self.generation
        self.inbox.put_many(
            [
                Incoming(topic, payload, qos, mid, retain, dup, generation)
                for topic, payload, qos, mid, retain, dup in received
            ]
        )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        incoming = Incoming(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            mid=msg.mid,
            retain=bool(msg.retain),
            duplicate=bool(msg.dup),
            generation=self.generation,
        )
        self.inbox.put(incoming)

    def _fail_pending(self, exc: Exception) -> None:
        with self._lock:
            futures = list(self._pending.values()) + list(self._subs.values())
            self._pending.clear()
            self._subs.clear()
        for fut in futures:
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(_set_exception, fut, exc)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


# --- asyncio-driven clients for device fleets (edge agent) --------------------------
# Code below this line belongs to the edge/simulator work; the client above to ingest.

import contextlib  # noqa: E402
import functools  # noqa: E402
import random  # noqa: E402
from typing import cast  # noqa: E402


class FleetClient:
    """An MQTT v5 publisher driven by the running asyncio loop: no thread, many per process.

    One instance is one device identity (client id, username). It connects in the
    background and reconnects with capped, jittered exponential backoff; every
    connection gets a fresh paho client, so nothing of a lost connection (packet ids,
    half-sent packets) leaks into the next one: the owner learns which publishes got
    no PUBACK (`on_connection_lost`) and decides what to resend, in its own order.
    `publish` never blocks and never waits (it refuses beyond `max_inflight`
    unacknowledged publishes); the broker's verdict arrives through
    `on_puback(mid, reason_code)` on the event loop.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        will: Callable[[], Will] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_connection_lost: Callable[[str], None] | None = None,
        on_puback: Callable[[int, int], None] | None = None,
        max_inflight: int = 1000,
        backoff_min: float = 0.2,
        backoff_max: float = 30.0,
        seed: int | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[str, bytes], None] | None = None,
    ) -> None:
        if not client_id:
            # Mosquitto is configured with allow_zero_length_clientid false.
            raise MqttError("a fleet client needs a non-empty client id")
        self._settings = settings
        self.client_id = client_id
        self._username = username
        self._password = password
        self._will = will
        self._on_connect = on_connect
        self._on_lost = on_connection_lost
        self._on_puback = on_puback
        self._subscriptions = list(subscriptions)
        self._on_message_cb = on_message
        self._max_inflight = max_inflight
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._rng = random.Random(seed)
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._task: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[int] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._up = asyncio.Event()
        self._stopping = False
        self._inflight = 0
        self.connected = False
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.failures = 0
        """Failed connection attempts so far."""
        self.last_error = ""

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._thread_id = threading.get_ident()
            self._task = self._loop.create_task(self._run(), name=f"mqtt-{self.client_id}")

    async def wait_connected(self, wait_s: float) -> bool:
        """Wait up to `wait_s` seconds for a connection; True if connected."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), wait_s)
        return self.connected

    async def stop(self, grace_s: float = 5.0) -> None:
        """Disconnect cleanly (no will) and stop reconnecting; idempotent."""
        self._stopping = True
        client, lost = self._client, self._lost
        if client is not None and lost is not None and not lost.done():
            client.disconnect()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(lost), grace_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._teardown("client stopped")

    # --- operations ------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int | None:
        """Queue a publish on the current connection; its mid, or None if not connected."""
        client = self._client
        if client is None or not self.connected or self._inflight >= self._max_inflight:
            return None
        info = client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        if qos:
            self._inflight += 1
        return info.mid

    # --- connection loop -------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._open()
            except (OSError, MqttError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                self._teardown(str(exc))
                # Full jitter: a fleet that lost its broker does not come back in lockstep.
                cap = min(self._backoff_max, self._backoff_min * 2.0**attempt)
                attempt += 1
                delay = self._rng.uniform(self._backoff_min / 2, max(cap, self._backoff_min))
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "mqtt connect failed; retrying",
                        extra={
                            "client_id": self.client_id,
                            "error": str(exc)[:200],
                            "attempt": attempt,
                            "retry_in_s": round(delay, 2),
                        },
                    )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.connects += 1
            self.connected = True
            self._up.set()
            if self._on_connect is not None:
                self._on_connect()
            assert self._lost is not None
            reason = await self._lost
            self._teardown(reason)
            if self._stopping:
                return
            await asyncio.sleep(self._rng.uniform(0.0, self._backoff_min))

    async def _open(self) -> None:
        loop = self._loop
        assert loop is not None
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._will is not None:
            will = self._will()
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        # paho's own window walks every queued message on each PUBACK (O(window));
        # this client bounds the window itself (`publish` refuses beyond it).
        client.max_inflight_messages_set(0)
        self._inflight = 0
        client.connect_timeout = self._settings.connect_timeout
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_socket_open = self._cb_socket_open
        client.on_socket_close = self._cb_socket_close
        client.on_socket_register_write = self._cb_register_write
        client.on_socket_unregister_write = self._cb_unregister_write
        self._client = client
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        # The TCP connect blocks (up to connect_timeout): keep it off the event loop.
        await loop.run_in_executor(
            None,
            functools.partial(
                client.connect,
                self._settings.host,
                self._settings.port,
                self._settings.keepalive,
                clean_start=True,
            ),
        )
        try:
            code = await asyncio.wait_for(
                asyncio.shield(self._connack), self._settings.connect_timeout
            )
        except TimeoutError as exc:
            raise MqttError(f"no CONNACK within {self._settings.connect_timeout}s") from exc
        if code >= 0x80:
            reason = ReasonCode(PacketTypes.CONNACK, identifier=code)
            raise MqttError(f"broker refused {self.client_id!r}: {reason}")
        if self._subscriptions:
            # Clean start: subscribe on every connection, before the owner's first publish,
            # so whatever answers those publishes finds the subscription in place.
            client.on_message = self._cb_message
            client.on_subscribe = self._cb_subscribe
            client.subscribe(self._subscriptions)
        self._misc = loop.create_task(self._misc_loop(client))

    def _teardown(self, reason: str) -> None:
        """Forget the current connection; report it lost if it was up."""
        was_up = self.connected
        self.connected = False
        self._up.clear()
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        client, self._client = self._client, None
        if client is not None:
            sock: Any = client.socket()
            if sock is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
                with contextlib.suppress(OSError):
                    sock.close()
        if was_up and self._on_lost is not None and not self._stopping:
            self._on_lost(reason)

    async def _misc_loop(self, client: paho.Client) -> None:
        # Keep-alive pings and timeouts; paho expects loop_misc about once a second.
        while True:
            await asyncio.sleep(1.0)
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._set_lost(client, "keepalive timeout")
                return

    # --- paho callbacks (all on the event loop, except socket open during connect) --

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._thread_id:
            fn(*args)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _cb_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, client, sock)

    def _watch(self, client: paho.Client, sock: Any) -> None:
        if client is self._client and self._loop is not None and client.socket() is sock:
            self._loop.add_reader(cast(Any, sock), self._readable, client)

    def _readable(self, client: paho.Client) -> None:
        client.loop_read()

    def _cb_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._on_loop(self._unwatch, sock)
        self._on_loop(self._set_lost, client, "connection closed")

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _cb_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, client, sock)

    def _want_write(self, client: paho.Client, sock: Any) -> None:
        if client is self._client and self._loop is not None and client.socket() is sock:
            self._loop.add_writer(cast(Any, sock), client.loop_write)

    def _cb_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._on_loop(self._no_write, sock)

    def _no_write(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)

    def _set_lost(self, client: paho.Client, reason: str) -> None:
        if client is self._client:
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(MqttError(f"connection lost: {reason}"))
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(reason)

    def _cb_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is self._client and self._connack is not None and not self._connack.done():
            self._connack.set_result(reason_code.value)

    def _cb_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._on_loop(self._set_lost, client, f"disconnected: {reason_code}")

    def _cb_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if client is self._client and self._on_message_cb is not None:
            self._on_message_cb(msg.topic, bytes(msg.payload))

    def _cb_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(code) for code in reason_codes if code.value >= 0x80]
        if refused:
            log.error(
                "subscription refused by the broker",
                extra={"client_id": self.client_id, "reasons": refused},
            )

    def _cb_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is self._client:
            self._inflight -= 1
            if self._on_puback is not None:
                self._on_puback(mid, reason_code.value)
