"""One device connection on the asyncio loop: MQTT v5 bytes in and out, and keep-alive.

The fleet client's lean transport (`safecity.mqtt.fleet.FleetClient` owns one `Link` per
connection): an `asyncio.Protocol` over the `wire` codec. What a fleet of tens of
thousands of connections per process needs small: a link is a dozen slots, and
keep-alive is one sweep per event loop over every link (no task, timer or future per
connection): it pings links idle for half their keep-alive and aborts those that heard
nothing from the broker in one and a half.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Protocol

from safecity.errors import MqttError, WireError
from safecity.mqtt import wire

__all__ = ["Link", "LinkOwner", "reason_name"]

log = logging.getLogger("safecity.mqtt")

SWEEP_MAX_S = 5.0
"""The longest pause between two keep-alive sweeps (a quarter keep-alive if shorter)."""


def reason_name(code: int) -> str:
    """A v5 reason code as the specification names it, with its number."""
    return f"{wire.REASONS.get(code, 'Reason')} (0x{code:02x})"


class LinkOwner(Protocol):
    """What a link reports to (its `FleetClient`)."""

    def link_message(self, topic: str, payload: bytes) -> None:
        """A PUBLISH arrived (acknowledged when this returns, for QoS 1)."""

    def link_puback(self, link: Link, mid: int, reason: int) -> None:
        """The broker's verdict on an own QoS 1 publish."""

    def link_suback(self, reasons: list[int]) -> None:
        """The broker's answer to the subscriptions."""

    def link_lost(self, link: Link, reason: str) -> None:
        """The connection is gone (closed, aborted, refused or timed out)."""


class Link(asyncio.Protocol):
    """One MQTT connection: sends CONNECT when the transport is up, parses what comes back."""

    __slots__ = (
        "_buf", "_closed", "_hello", "_mid", "_owner", "connack", "keepalive", "last_in",
        "last_out", "lost", "transport",
    )  # fmt: skip

    def __init__(self, owner: LinkOwner, hello: bytes, keepalive: float) -> None:
        self._owner = owner
        self._hello = hello
        self._buf = b""
        self._mid = 0
        self._closed: asyncio.Future[None] | None = None
        # The CONNACK's body, awaited by the attempt; None once it is read (a connected
        # device holds no future).
        self.connack: asyncio.Future[bytes] | None = asyncio.get_running_loop().create_future()
        self.keepalive = keepalive
        self.last_in = self.last_out = time.monotonic()
        self.lost: str | None = None
        self.transport: asyncio.Transport | None = None

    # --- what the owner does ------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write one or more packets."""
        if self.transport is not None and self.lost is None:
            self.transport.write(data)
            self.last_out = time.monotonic()

    def next_mid(self) -> int:
        """The next packet id (1..65535, wrapping).

        Reusing an id is safe once its PUBACK came, and PUBACKs come in the order of their
        PUBLISHes (MQTT 4.6): with fewer than 65,535 in flight the id wrapped to is free.
        """
        self._mid = self._mid % 0xFFFF + 1
        return self._mid

    def close(self, reason: int | None = None) -> None:
        """End the connection: DISCONNECT first (no will) when reason is given, else abort."""
        if self.transport is None or self.lost is not None:
            return
        if reason is None:
            self.transport.abort()
            return
        self.send(wire.disconnect(reason))
        self.transport.close()

    async def wait_closed(self) -> None:
        """Until the connection is gone."""
        if self.lost is None:
            if self._closed is None:
                self._closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._closed)

    def tick(self, now: float) -> None:
        """Keep-alive: ping when idle for half the keep-alive, abort after 1.5 silent."""
        half = self.keepalive / 2
        if now - self.last_in > 3 * half:
            log.warning("mqtt keep-alive timeout: no answer from the broker",
                        extra={"silent_s": round(now - self.last_in, 1)})  # fmt: skip
            self.lost = "keepalive timeout"
            if self.transport is not None:
                self.transport.abort()
        elif now - self.last_out >= half or (
            now - self.last_in >= half and self.last_out <= self.last_in
        ):
            self.send(wire.PINGREQ_PACKET)

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The TCP (and TLS) connection is up: say CONNECT."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        hello, self._hello = self._hello, b""
        self.send(hello)

    def data_received(self, data: bytes) -> None:
        """Parse every complete packet; keep the rest for the next read."""
        self.last_in = time.monotonic()
        buf = self._buf + data if self._buf else data
        pos = 0
        try:
            while (bounds := wire.packet_bounds(buf, pos)) is not None:
                self._packet(buf[pos], buf, *bounds)
                pos = bounds[1]
        except WireError as exc:
            self._protocol_error(str(exc))
            return
        self._buf = buf[pos:] if pos < len(buf) else b""

    def connection_lost(self, exc: Exception | None) -> None:
        """Report the loss once, with the most telling reason."""
        if self.lost is None:
            self.lost = str(exc) if exc is not None else "connection closed"
        _sweep_of(asyncio.get_running_loop()).links.discard(self)
        if self.connack is not None and not self.connack.done():
            self.connack.set_exception(MqttError(f"connection lost: {self.lost}"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._owner.link_lost(self, self.lost)

    # --- packets ------------------------------------------------------------------

    def _packet(self, first: int, buf: bytes, start: int, end: int) -> None:
        kind = first >> 4
        if kind == wire.PUBACK:
            self._owner.link_puback(self, *wire.parse_puback(buf[start:end]))
        elif kind == wire.PUBLISH:
            self._publish(first & 0x0F, buf, start, end)
        elif kind == wire.CONNACK:
            if self.connack is None or self.connack.done():
                raise WireError("a second CONNACK")
            self.connack.set_result(bytes(buf[start:end]))
        elif kind == wire.SUBACK:
            self._owner.link_suback(wire.parse_suback(bytes(buf[start:end]))[1])
        elif kind == wire.DISCONNECT:
            reason = buf[start] if end > start else 0
            self.lost = f"disconnected by the broker: {reason_name(reason)}"
            if self.transport is not None:
                self.transport.close()
        elif kind != wire.PINGRESP:
            raise WireError(f"unexpected packet type {kind} from the broker")

    def _publish(self, flags: int, buf: bytes, start: int, end: int) -> None:
        got = wire.scan_publish(buf, start, end, flags, True)
        if got is None:
            raise WireError("not a QoS 0/1 PUBLISH with a topic")
        topic_end, mid, payload_start, qos = got
        try:
            topic = bytes(buf[start + 2 : topic_end]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"topic is not UTF-8: {exc}") from exc
        try:
            self._owner.link_message(topic, bytes(buf[payload_start:end]))
        except Exception:
            # The handler's failure is its own: the message was handed over, and the
            # broker must not send it again and again.
            log.exception("message handler failed", extra={"topic": topic})
        if qos:
            self.send(wire.puback(mid))

    def _protocol_error(self, why: str) -> None:
        log.error("mqtt protocol error from the broker", extra={"error": why})
        self.lost = f"protocol error: {why}"
        if self.transport is not None:
            self.transport.abort()

    def watch(self) -> None:
        """From now on, keep this connection alive (after its CONNACK)."""
        _sweep_of(asyncio.get_running_loop()).add(self)


class _Sweep:
    """The keep-alive of every link of one event loop: one timer, a walk over them all."""

    __slots__ = ("handle", "links", "loop", "period")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.links: set[Link] = set()
        self.period = SWEEP_MAX_S
        self.handle: asyncio.TimerHandle | None = None

    def add(self, link: Link) -> None:
        self.links.add(link)
        self.period = min(self.period, link.keepalive / 4)
        if self.handle is None:
            self.handle = self.loop.call_later(self.period, self.run)

    def run(self) -> None:
        now = time.monotonic()
        for link in list(self.links):
            link.tick(now)
        self.handle = self.loop.call_later(self.period, self.run) if self.links else None


_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweep] = weakref.WeakKeyDictionary()


def _sweep_of(loop: asyncio.AbstractEventLoop) -> _Sweep:
    sweep = _sweeps.get(loop)
    if sweep is None:
        sweep = _sweeps[loop] = _Sweep(loop)
    return sweep
