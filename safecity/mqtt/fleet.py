"""The device-fleet client: MQTT v5 publishers driven by the running asyncio loop.

Its own lean client over `safecity.mqtt.wire` (`safecity.mqtt.link`), not paho: a fleet
holds tens of thousands of connections per process, and a paho client per device cost
~9 KiB, ~20 us of CPU per device-second (a housekeeping wake-up per device every few
seconds) and ~1.7 ms per connect; this one ~2.6 KiB, ~4 us and ~0.7 ms
(`benchmarks/fleetcost.py`, 2,000 and 6,000 devices a process; benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from safecity.errors import ConnectRefusedError, MqttError
from safecity.mqtt import wire
from safecity.mqtt.link import Link, reason_name
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
again (1 s, then 3, 7, 15 s) while holding its place in the window.
"""

_windows: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


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


class FleetClient:
    """An MQTT v5 publisher driven by the running asyncio loop: no thread, many per process.

    One instance is one device identity (client id, username). It connects in the
    background and reconnects with capped, jittered exponential backoff; every
    connection is a fresh `Link`, so nothing of a lost connection (packet ids,
    half-sent packets) leaks into the next one: the owner learns which publishes got
    no PUBACK (`on_connection_lost`) and decides what to resend, in its own order.
    `publish` never blocks and never waits (it refuses beyond `max_inflight`
    unacknowledged publishes); the broker's verdict arrives through
    `on_puback(mid, reason_code)` on the event loop. With `settings.tls_ca` it connects
    over TLS (broker certificate and host name verified), with `tls_cert`/`tls_key` also
    presenting a client certificate (mutual TLS). While connected it holds no task,
    timer or future: the link's bytes and the loop's one keep-alive sweep.
    """

    # Tens of thousands per process: no instance dict.
    __slots__ = (
        "_ask_password", "_backoff_max", "_backoff_min", "_held", "_inflight", "_jitter",
        "_link", "_loop", "_max_inflight", "_on_connect", "_on_lost", "_on_message_cb",
        "_on_puback", "_password", "_password_source", "_pause", "_session_expiry",
        "_settings", "_sleep", "_stopping", "_subscriptions", "_tally", "_task", "_username",
        "_waiters", "_will", "client_id", "connected", "connects", "failures", "last_error",
        "refused",
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
        if not 0 < max_inflight < 0xFFFF:
            raise MqttError(f"max_inflight must be 1..65534 (packet ids), not {max_inflight}")
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
        self._subscriptions = tuple(subscriptions)
        self._on_message_cb = on_message
        # Messages acknowledged before there was a handler (`set_on_message`): held,
        # never dropped. None until the first one (a list per device costs 56 bytes).
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
        self._link: Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Only while connecting (or waiting to): none while connected.
        self._task: asyncio.Task[None] | None = None
        # Who waits for the next connection (`wait_connected`); None when nobody.
        self._waiters: list[asyncio.Future[None]] | None = None
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
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._reconnect(0.0)

    def count_in(self, tally: ConnectTally) -> None:
        """Count this client's connection, from now on, in `tally` (its fleet's)."""
        self._tally = tally
        tally.add(int(self.connected))

    async def wait_connected(self, wait_s: float) -> bool:
        """Wait up to `wait_s` seconds for a connection; True if connected."""
        if self.connected:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, wait_s)
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return self.connected

    async def stop(self, grace_s: float = 5.0) -> None:
        """Disconnect cleanly (no will) and stop reconnecting; idempotent."""
        self._stopping = True
        link = self._link
        if link is not None and self.connected:
            link.close(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.wait_closed(), grace_s)
        if link is not None:
            link.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._link = None
        self._down()

    # --- operations ------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int | None:
        """Queue a publish on the current connection; its packet id (0 for QoS 0), or
        None if not connected or `max_inflight` publishes await their PUBACK."""
        link = self._link
        if link is None or not self.connected or self._inflight >= self._max_inflight:
            return None
        if qos not in (0, 1) or not topic or "+" in topic or "#" in topic:
            raise MqttError(f"cannot publish QoS {qos} on {topic!r} (QoS 0/1, no wildcards)")
        mid = 0
        if qos:
            mid = link.next_mid()
            self._inflight += 1
        link.send(wire.publish(topic, payload, qos=qos, mid=mid))
        return mid

    def set_on_message(self, handler: Callable[[str, bytes], None]) -> None:
        """Hand every message to `handler`, first those held while there was none."""
        self._on_message_cb = handler
        held, self._held = self._held, None
        for topic, payload in held or ():
            handler(topic, payload)

    def bounce(self, down_s: float) -> None:
        """Disconnect cleanly (no will) and stay away `down_s` seconds, then reconnect."""
        self._pause = max(0.0, down_s)
        if self._link is not None and self.connected:
            self._link.close(0)

    # --- connection ------------------------------------------------------------

    def _reconnect(self, pause: float) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._connect(pause), name=f"mqtt-{self.client_id}")

    async def _connect(self, pause: float) -> None:
        """Attempt until connected (or stopped); the task ends with the connection up."""
        if pause:
            await self._sleep(pause)
        attempt = 0
        while not self._stopping:
            try:
                # The connect timeout counts from the attempt, not from the queue.
                async with connect_window():
                    link = await self._open()
            except (OSError, MqttError) as exc:
                self._link = None
                self.failures += 1
                self.last_error = _describe(exc)
                self.refused = self._is_refusal(exc)
                # Full jitter: a fleet that lost its broker does not come back in lockstep.
                cap = backoff_cap(attempt, self._backoff_min, self._backoff_max)
                attempt += 1
                delay = self._jitter.uniform(self._backoff_min / 2, cap)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "mqtt connect failed; retrying",
                        extra={"client_id": self.client_id, "error": self.last_error[:200],
                               "attempt": attempt, "retry_in_s": round(delay, 2)},
                    )  # fmt: skip
                await self._sleep(delay)
                continue
            self._task = None
            self._up(link)
            return

    def _up(self, link: Link) -> None:
        self.refused = False
        self.connects += 1
        self.connected = True
        if self._tally is not None:
            self._tally.add(1)
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)
        if self._on_connect is not None:
            self._on_connect()

    def _down(self) -> None:
        if self.connected:
            self.connected = False
            if self._tally is not None:
                self._tally.add(-1)

    def _is_refusal(self, exc: Exception) -> bool:
        """Whether a failed attempt means this identity is refused, not that the broker is
        away: a CONNACK refusal, a refused TLS handshake, or no client certificate (revoked
        and deleted) to present."""
        if isinstance(exc, ConnectRefusedError | ssl.SSLError):
            return True
        return self._settings.tls_cert is not None and isinstance(exc, FileNotFoundError)

    async def _open(self) -> Link:
        """One attempt: TCP (and TLS), CONNECT, CONNACK within the connect timeout."""
        settings, loop = self._settings, asyncio.get_running_loop()
        # Server verification and host name check always on; a missing or unreadable
        # file is an OSError like a refused connection: logged and retried.
        context = tls_context(settings) if settings.tls_ca is not None else None
        link = self._link = Link(self, self._hello(), settings.keepalive)
        try:
            async with asyncio.timeout(settings.connect_timeout):
                await loop.create_connection(
                    lambda: link, settings.host, settings.port, ssl=context,
                    server_hostname=settings.host if context is not None else None,
                )  # fmt: skip
                assert link.connack is not None
                body = await link.connack
                link.connack = None
        except TimeoutError as exc:
            link.close()
            what = "CONNACK" if link.transport is not None else "connection"
            raise MqttError(f"no {what} within {settings.connect_timeout}s") from exc
        except BaseException:
            link.close()
            raise
        _, code = wire.parse_connack(body)
        if code >= 0x80:
            link.close()
            self._ask_password = code in _BAD_CREDENTIALS
            raise ConnectRefusedError(f"broker refused {self.client_id!r}: {reason_name(code)}")
        if link.lost is not None:
            raise MqttError(f"connection lost: {link.lost}")
        props = wire.decode_properties(body, 2)[0] if len(body) > 2 else {}
        server_keepalive = props.get(wire.SERVER_KEEPALIVE)
        if isinstance(server_keepalive, int) and server_keepalive:
            link.keepalive = server_keepalive
        link.watch()
        self._inflight = 0
        if self._subscriptions:
            # Clean start: subscribe on every connection, before the owner's first publish,
            # so whatever answers those publishes finds the subscription in place.
            link.send(wire.subscribe(link.next_mid(), self._subscriptions))
        return link

    def _hello(self) -> bytes:
        """This attempt's CONNECT (a callable password asked again after a refusal)."""
        if self._ask_password and self._password_source is not None:
            self._password = self._password_source()
            self._ask_password = False
        return wire.connect(
            self.client_id,
            self._username,
            self._password if self._username is not None else None,
            keepalive=self._settings.keepalive,
            clean_start=self._session_expiry == 0,
            session_expiry=self._session_expiry,
            will=self._will() if self._will is not None else None,
        )

    # --- what the link reports (on the event loop) -----------------------------------

    def link_message(self, topic: str, payload: bytes) -> None:
        """Hand a message over (or hold it); the link acknowledges it when this returns,
        whichever connection it came on: the broker will not send it again."""
        if self._on_message_cb is not None:
            self._on_message_cb(topic, payload)
            return
        if self._held is None:
            self._held = []
        self._held.append((topic, payload))

    def link_puback(self, link: Link, mid: int, reason: int) -> None:
        """The broker's verdict on a publish of the current connection."""
        if link is self._link:
            self._inflight -= 1
            if self._on_puback is not None:
                self._on_puback(mid, reason)

    def link_suback(self, reasons: list[int]) -> None:
        """Log the subscriptions the broker refused."""
        refused = [reason_name(code) for code in reasons if code >= 0x80]
        if refused:
            log.error(
                "subscription refused by the broker",
                extra={"client_id": self.client_id, "reasons": refused},
            )

    def link_lost(self, link: Link, reason: str) -> None:
        """The current connection is gone: report it and come back (unless stopping)."""
        if link is not self._link or not self.connected:
            return  # an attempt's loss: its CONNACK wait fails and the attempt retries
        self._link = None
        self._down()
        if self._stopping:
            return
        if self._on_lost is not None:
            self._on_lost(reason)
        pause, self._pause = self._pause, 0.0
        self._reconnect(pause or self._jitter.uniform(0.0, self._backoff_min))


def _describe(exc: Exception) -> str:
    """A failed attempt in words: asyncio's "Connect call failed" with the errno's name."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return f"{os.strerror(exc.errno)}: {exc}"
    return str(exc)
