"""The device-fleet client: MQTT v5 publishers driven by the running asyncio loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from safecity.errors import ConnectRefusedError, MqttError
from safecity.mqtt.messages import Will
from safecity.mqtt.pacing import ConnectTally, Jitter, backoff_cap
from safecity.settings import MqttSettings

# CONNACK "Bad user name or password" and "Not authorized" (what Mosquitto answers).
_BAD_CREDENTIALS = frozenset({0x86, 0x87})

__all__ = [
    "CONNECTS_IN_FLIGHT",
    "ConnectRefusedError",
    "ConnectTally",
    "FleetClient",
    "Jitter",
    "backoff_cap",
    "connect_window",
    "share_connect_window",
    "tls_context",
]

log = logging.getLogger("safecity.mqtt")


CONNECTS_IN_FLIGHT = 64
"""Connection attempts of one fleet awaiting their CONNACK at once (`share_connect_window`
splits them between the processes of a fleet spread over several).

A fleet starting, or coming back after a broker restart, queues here rather than at
the broker: a broker that hashes each CONNECT's password (a millisecond or two) and got
thousands at once would answer the last ones after their connect timeout, and each of
those would come back with another CONNECT to hash. 64 keep one broker busy; more
only lengthen its queue. And a fleet's attempts together must stay below the broker's
listen backlog (Mosquitto's is 100, fixed in its code): while the broker is busy the
kernel drops the SYNs beyond it, and each of those clients waits for its SYN to be sent
again (1 s, then 3, 7, 15 s), holding one of the few threads that open connections.
"""

_windows: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


@functools.cache
def _connector() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that open TCP connections: one per attempt of the window, so a SYN
    the kernel dropped (its retransmit a second later) holds up only its own attempt (the
    loop's default executor has cores + 4 threads, and every attempt queued behind it)."""
    return concurrent.futures.ThreadPoolExecutor(CONNECTS_IN_FLIGHT, "mqtt-connect")


def share_connect_window(processes: int) -> None:
    """Give the running loop its share of the fleet's window: the fleet runs in `processes`
    processes of one event loop each (call before any client of the loop starts)."""
    share = max(1, CONNECTS_IN_FLIGHT // max(1, processes))
    _windows[asyncio.get_running_loop()] = asyncio.Semaphore(share)


def connect_window() -> asyncio.Semaphore:
    """The running loop's window of connection attempts (`CONNECTS_IN_FLIGHT`)."""
    loop = asyncio.get_running_loop()
    window = _windows.get(loop)
    if window is None:
        window = _windows[loop] = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    return window


_contexts: dict[tuple[Path | None, ...], tuple[tuple[int, ...], ssl.SSLContext]] = {}


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The shared TLS context of these settings: broker and host name verified, client cert.

    The broker is verified against tls_ca with its host name checked; for mutual TLS the
    client certificate is presented. One context per set of files (a fleet of thousands
    loads the CA once), rebuilt when a file changes (a rotated device certificate).
    """
    if settings.tls_ca is None:
        raise MqttError("TLS needs tls_ca, the CA that signed the broker's certificate")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise MqttError("mutual TLS needs both tls_cert and tls_key")
    paths = (settings.tls_ca, settings.tls_cert, settings.tls_key)
    stamp = tuple(p.stat().st_mtime_ns for p in paths if p is not None)
    cached = _contexts.get(paths)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert is not None and settings.tls_key is not None:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    _contexts[paths] = (stamp, context)
    return context


@functools.cache
def _session_properties(expiry: int) -> Properties:
    """CONNECT properties asking for a session of `expiry` seconds, one object for the
    whole fleet: paho keeps each client's, and a `Properties` weighs about 5 KiB."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry
    return props


class FleetClient:
    """An MQTT v5 publisher driven by the running asyncio loop: no thread, many per process.

    One instance is one device identity (client id, username). It connects in the
    background and reconnects with capped, jittered exponential backoff; every
    connection gets a fresh paho client, so nothing of a lost connection (packet ids,
    half-sent packets) leaks into the next one: the owner learns which publishes got
    no PUBACK (`on_connection_lost`) and decides what to resend, in its own order.
    `publish` never blocks and never waits (it refuses beyond `max_inflight`
    unacknowledged publishes); the broker's verdict arrives through
    `on_puback(mid, reason_code)` on the event loop. With `settings.tls_ca` it connects
    over TLS (broker certificate and host name verified), with `tls_cert`/`tls_key` also
    presenting a client certificate (mutual TLS).
    """

    # Thousands per process: no instance dict.
    __slots__ = (
        "_ask_password", "_backoff_max", "_backoff_min", "_client", "_connack", "_held",
        "_inflight", "_jitter", "_loop", "_lost", "_max_inflight", "_misc", "_on_connect",
        "_on_lost", "_on_message_cb", "_on_puback", "_password", "_password_source", "_pause",
        "_session_expiry", "_settings", "_sleep", "_stopping", "_subscriptions", "_tally",
        "_task", "_thread_id", "_username", "_waiters", "_will", "client_id", "connected",
        "connects", "failures", "last_error", "refused",
    )  # fmt: skip
    _held: list[tuple[str, bytes]] | None
    _tally: ConnectTally | None

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        username: str | None = None,
        password: str | Callable[[], str | None] | None = None,
        will: Callable[[], Will] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_connection_lost: Callable[[str], None] | None = None,
        on_puback: Callable[[int, int], None] | None = None,
        max_inflight: int = 1000,
        backoff_min: float = 0.2,
        backoff_max: float = 30.0,
        seed: int | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[str, bytes], None] | None = None,
        session_expiry: int = 0,
    ) -> None:
        if not client_id:
            # Mosquitto is configured with allow_zero_length_clientid false.
            raise MqttError("a fleet client needs a non-empty client id")
        self._settings = settings
        self.client_id = client_id
        self._username = username
        # A callable is asked at the first connect and again after every refusal of the
        # credentials (0x86/0x87): a secret rotated while running is picked up.
        self._password_source = password if callable(password) else None
        self._password = None if callable(password) else password
        self._ask_password = self._password_source is not None
        self._will = will
        self._on_connect = on_connect
        self._on_lost = on_connection_lost
        self._on_puback = on_puback
        self._subscriptions = list(subscriptions)
        self._on_message_cb = on_message
        # Messages paho acknowledged before there was a handler (`set_on_message`):
        # held, never dropped. None until the first one (a list per device costs 56 bytes).
        # The tally counting this connection in its fleet's (`count_in`), if any.
        self._held = self._tally = None
        # > 0: a persistent session (what the device subscribed to, e.g. its commands,
        # is queued by the broker while it is away, up to this many seconds).
        self._session_expiry = session_expiry
        self._pause = 0.0
        self._max_inflight = max_inflight
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._jitter = Jitter(seed, client_id)
        # Injectable so a test can drive thousands of retries without waiting.
        self._sleep = sleep
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._task: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[int] | None = None
        self._lost: asyncio.Future[str] | None = None
        # Who waits for the next connection (`wait_connected`); an asyncio.Event would
        # hold a 600-byte deque per device for the whole run.
        self._waiters: list[asyncio.Future[None]] = []
        self._stopping = False
        self._inflight = 0
        self.connected = False
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.failures = 0
        """Failed connection attempts so far."""
        self.last_error = ""
        self.refused = False
        """The last connection attempt was refused (`_is_refusal`): until one succeeds."""

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._thread_id = threading.get_ident()
            self._task = self._loop.create_task(self._run(), name=f"mqtt-{self.client_id}")

    def count_in(self, tally: ConnectTally) -> None:
        """Count this client's connection, from now on, in `tally` (its fleet's)."""
        self._tally = tally
        tally.add(int(self.connected))

    async def wait_connected(self, wait_s: float) -> bool:
        """Wait up to `wait_s` seconds for a connection; True if connected."""
        if self.connected:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, wait_s)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
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

    def set_on_message(self, handler: Callable[[str, bytes], None]) -> None:
        """Hand every message to `handler`, first those held while there was none."""
        self._on_message_cb = handler
        held, self._held = self._held, None
        for topic, payload in held or ():
            handler(topic, payload)

    def bounce(self, down_s: float) -> None:
        """Disconnect cleanly (no will) and stay away `down_s` seconds, then reconnect."""
        self._pause = max(0.0, down_s)
        if self._client is not None and self.connected:
            self._client.disconnect()

    # --- connection loop -------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                # The connect timeout counts from the attempt, not from the queue.
                async with connect_window():
                    await self._open()
            except (OSError, MqttError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                self.refused = self._is_refusal(exc)
                self._teardown(str(exc))
                # Full jitter: a fleet that lost its broker does not come back in lockstep.
                cap = backoff_cap(attempt, self._backoff_min, self._backoff_max)
                attempt += 1
                delay = self._jitter.uniform(self._backoff_min / 2, cap)
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
                await self._sleep(delay)
                continue
            attempt = 0
            self.refused = False
            self.connects += 1
            self.connected = True
            if self._tally is not None:
                self._tally.add(1)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._on_connect is not None:
                self._on_connect()
            assert self._lost is not None
            reason = await self._lost
            self._teardown(reason)
            if self._stopping:
                return
            pause, self._pause = self._pause, 0.0
            await self._sleep(pause or self._jitter.uniform(0.0, self._backoff_min))

    def _is_refusal(self, exc: Exception) -> bool:
        """Whether a failed attempt means this identity is refused, not that the broker is
        away: a CONNACK refusal, a refused TLS handshake, or no client certificate (revoked
        and deleted) to present."""
        if isinstance(exc, ConnectRefusedError | ssl.SSLError):
            return True
        return self._settings.tls_cert is not None and isinstance(exc, FileNotFoundError)

    async def _open(self) -> None:
        loop = self._loop
        assert loop is not None
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        if self._username is not None:
            if self._ask_password and self._password_source is not None:
                self._password = self._password_source()
                self._ask_password = False
            client.username_pw_set(self._username, self._password)
        if self._settings.tls_ca is not None:
            # Server verification and host name check always on; a missing or unreadable
            # file is an OSError like a refused connection: logged and retried.
            client.tls_set_context(tls_context(self._settings))
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
        # Before CONNACK: a persistent session's queued messages follow it at once.
        client.on_message = self._cb_message
        client.on_socket_close = self._cb_socket_close
        client.on_socket_register_write = self._cb_register_write
        client.on_socket_unregister_write = self._cb_unregister_write
        self._client = client
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        # The TCP connect blocks (up to connect_timeout): keep it off the event loop.
        await loop.run_in_executor(
            _connector(),
            functools.partial(
                client.connect,
                self._settings.host,
                self._settings.port,
                self._settings.keepalive,
                clean_start=self._session_expiry == 0,
                properties=self._connect_properties(),
            ),
        )
        try:
            code = await asyncio.wait_for(
                asyncio.shield(self._connack), self._settings.connect_timeout
            )
        except TimeoutError as exc:
            raise MqttError(f"no CONNACK within {self._settings.connect_timeout}s") from exc
        if code >= 0x80:
            self._ask_password = code in _BAD_CREDENTIALS
            reason = ReasonCode(PacketTypes.CONNACK, identifier=code)
            raise ConnectRefusedError(f"broker refused {self.client_id!r}: {reason}")
        if self._subscriptions:
            # Clean start: subscribe on every connection, before the owner's first publish,
            # so whatever answers those publishes finds the subscription in place.
            client.on_subscribe = self._cb_subscribe
            client.subscribe(self._subscriptions)
        self._misc = loop.create_task(self._misc_loop(client))

    def _connect_properties(self) -> Properties | None:
        if not self._session_expiry:
            return None
        return _session_properties(self._session_expiry)

    def _teardown(self, reason: str) -> None:
        """Forget the current connection; report it lost if it was up."""
        was_up = self.connected
        self.connected = False
        if was_up and self._tally is not None:
            self._tally.add(-1)
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
        # Keep-alive pings and timeouts. paho asks for loop_misc about once a second; a
        # tenth of the keep-alive is precise enough (the broker allows 1.5 keep-alives)
        # and a fleet of 18,000 devices wakes 6,000 times a second less (30 s keep-alive).
        every = max(1.0, self._settings.keepalive / 10)
        while True:
            await asyncio.sleep(every)
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
        # TLS: decrypted bytes can wait inside the SSL object, where the selector does
        # not see them; read them now or they wait for the next packet to arrive.
        for _ in range(1000):
            sock: Any = client.socket()
            if client is not self._client or sock is None or not hasattr(sock, "pending"):
                return
            if not sock.pending():
                return
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
        # paho acknowledges a QoS 1/2 message when this returns, whichever connection it
        # came on and whether or not anyone listens: the broker will not send it again.
        if self._on_message_cb is not None:
            self._on_message_cb(msg.topic, bytes(msg.payload))
            return
        if self._held is None:
            self._held = []
        self._held.append((msg.topic, bytes(msg.payload)))

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
