"""The ingest's read fast path: paho's client with bulk socket reads and own PUBLISH decoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from safecity.mqtt import wire

__all__ = ["bulk_read_supported"]

_PUBLISH = wire.PUBLISH << 4
_PUBACK = wire.PUBACK << 4
# One socket read: many ~200-byte PUBLISH packets per system call instead of three.
_READ_SIZE = 256 * 1024


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
        decode_varint, scan_publish = wire.decode_varint, wire.scan_publish
        while pos + 2 <= size:
            command = buf[pos]
            try:
                header = decode_varint(buf, pos + 1)
            except wire.WireError:
                self._deliver(out, auto_ack)
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            if header is None or header[0] + header[1] > size:
                break  # incomplete: keep the tail for the next read
            length, i = header
            end = i + length
            got = scan_publish(buf, i, end, command, v5) if command & 0xF0 == _PUBLISH else None
            if got is not None:
                topic_end, mid, payload_start, qos = got
                out.append(
                    (
                        bytes(view[i + 2 : topic_end]).decode("utf-8", "replace"),
                        bytes(view[payload_start:end]),
                        qos,
                        mid,
                        bool(command & 0x01),
                        bool(command & 0x08),
                    )
                )
            else:
                # Anything else: paho's own handler, after what came before it.
                self._deliver(out, auto_ack)
                out = []
                rc = self._paho_handle(command, buf[pos + 1 : i], length, view[i:end])
                if rc is None:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS  # paho closed the connection
                if rc:
                    return self._loop_rc_handle(rc)
            pos = end
        self._deliver(out, auto_ack)
        if pos < size:
            self._rbuf = bytes(view[pos:])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _paho_handle(
        self, command: int, remaining: bytes, length: int, body: memoryview
    ) -> MQTTErrorCode | None:
        """Let paho handle one whole packet; None when that closed the connection."""
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": list(remaining),
            "remaining_mult": 128 ** (len(remaining) - 1),
            "remaining_length": length,
            "packet": bytearray(body),
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
        if not rc and self._sock is not sock:
            return None
        return rc

    def _deliver(self, out: list[tuple[Any, ...]], auto_ack: bool) -> None:
        if not out:
            return
        self._sink(out)
        if auto_ack:
            acks = wire.pubacks(m[3] for m in out if m[2] == 1)
            if acks:
                self._packet_queue(_PUBACK, acks, 0, 0)

    def ack_many(self, mids: list[int]) -> None:
        """Queue the PUBACKs (success, no properties) of `mids` as one write, in order."""
        if mids:
            acks = wire.pubacks(mids)
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
