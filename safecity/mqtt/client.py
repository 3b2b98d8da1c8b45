"""The threaded service client: an asyncio-facing MQTT v5 client over paho-mqtt 2.x.

paho's network thread never blocks here: callbacks only hand results to the event
loop. Received messages go through an `Inbox`, so a high message rate costs one loop
wake-up per burst, not one per message; with the bulk-read fast path (`bulkread`) the
PUBLISH packets of a socket read reach the inbox in one call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from safecity.errors import MqttError
from safecity.mqtt.bulkread import _BulkReadClient, client_class
from safecity.mqtt.messages import (
    NOT_SENT,
    Inbox,
    Incoming,
    PublishResult,
    Will,
    _set_exception,
    _set_result,
)
from safecity.settings import MqttSettings

__all__ = ["MqttClient"]

log = logging.getLogger("safecity.mqtt")


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
        self._client: paho.Client = self._paho(settings, client_id, manual_ack, will)
        self.fast_path = isinstance(self._client, _BulkReadClient)
        """True when received PUBLISHes take the bulk-read path."""

    def _paho(
        self, settings: MqttSettings, client_id: str, manual_ack: bool, will: Will | None
    ) -> paho.Client:
        """The paho client: login, TLS, will, bounds, and this object's callbacks."""
        cls = client_class(settings.fast_path)
        extra: dict[str, Any] = {}
        if issubclass(cls, _BulkReadClient):
            extra["sink"] = self._on_messages
        client: paho.Client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
            **extra,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if settings.tls_ca is not None:
            # Verifies the broker's certificate and host name; cert/key only for mutual TLS.
            client.tls_set(
                ca_certs=str(settings.tls_ca),
                certfile=str(settings.tls_cert) if settings.tls_cert else None,
                keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        # paho's own queue of unsent messages stays unbounded; callers bound it.
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

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
        except asyncio.CancelledError:
            # Stopped while waiting: else paho's thread would go on reconnecting (and
            # logging) after its owner is gone.
            await self.disconnect()
            raise
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
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> PublishResult:
        """Publish and wait for the broker's verdict (PUBACK reason code for QoS 1).

        `expiry_s`: the MQTT v5 Message Expiry Interval; the broker drops the message,
        also from an offline client's session, once it has waited that long."""
        loop = self._require_loop()
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, expiry_s)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
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
        if bulk is not None:
            # The usual batch: all QoS 1 and of this connection, acked in one write.
            mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
            if len(mids) == len(messages):
                bulk(mids)
                return len(messages), 0
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
                extra={
                    "client_id": self.client_id,
                    "session_present": self.session_present,
                    "fast_path": self.fast_path,
                },
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
