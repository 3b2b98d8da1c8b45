"""The ingest's read fast path: paho's client with bulk socket reads and own PUBLISH decoding."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt as paho_mqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from safecity.mqtt import wire

__all__ = ["bulk_read_supported", "client_class", "missing_internals"]

log = logging.getLogger("safecity.mqtt")

_PUBLISH = wire.PUBLISH << 4
_PUBACK = wire.PUBACK << 4
# The fixed-header byte of a QoS 1 PUBLISH with the DUP and RETAIN bits masked off (0xF6).
_PUBLISH_QOS1 = _PUBLISH | 0x02
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
    `_packet_queue`, `_loop_rc_handle`, ...); `client_class()` checks every one of them
    at start-up and falls back to stock paho (and `on_message`) when one is missing.
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
        if type(buf) is not bytes:
            buf = bytes(buf)  # slices of it become payloads: immutable bytes
        self._rbuf = b""
        pos, rc = self._scan(buf)
        if rc is not None:
            return rc
        if pos < len(buf):
            self._rbuf = buf[pos:]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _scan(self, buf: bytes) -> tuple[int, MQTTErrorCode | None]:
        """Decode and deliver the whole packets at the start of `buf`: (where the
        incomplete tail starts, None) or (-, the code `feed` returns at once)."""
        size = len(buf)
        pos = 0
        out: list[tuple[Any, ...]] = []
        v5 = self._protocol == paho.MQTTv5
        auto_ack = not self._manual_ack
        decode_varint, scan_publish = wire.decode_varint, wire.scan_publish
        append = out.append
        while pos + 2 <= size:
            command = buf[pos]
            length = buf[pos + 1]
            if length < 0x80:  # the usual small packet: a one-byte remaining length
                i = pos + 2
            else:
                try:
                    header = decode_varint(buf, pos + 1)
                except wire.WireError:
                    self._deliver(out, auto_ack)
                    return pos, self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
                if header is None:
                    break  # incomplete: keep the tail for the next read
                length, i = header
            end = i + length
            if end > size:
                break
            if command & 0xF6 == _PUBLISH_QOS1 and v5 and length > 5:
                # The hot packet, decoded inline: QoS 1, MQTT v5, no properties.
                j = i + 2 + ((buf[i] << 8) | buf[i + 1])
                if i + 2 < j and j + 3 <= end and buf[j + 2] == 0:
                    append(
                        (
                            buf[i + 2 : j].decode("utf-8", "replace"),
                            buf[j + 3 : end],
                            1,
                            (buf[j] << 8) | buf[j + 1],
                            command & 0x01 == 0x01,
                            command & 0x08 == 0x08,
                        )
                    )
                    pos = end
                    continue
            got = scan_publish(buf, i, end, command, v5) if command & 0xF0 == _PUBLISH else None
            if got is not None:
                append(_scanned(buf, i, end, command, got))
            else:
                # Anything else: paho's own handler, after what came before it.
                rc = self._paho_packet(out, auto_ack, buf, pos, i, end)
                out = []
                append = out.append
                if rc is not None:
                    return pos, rc
            pos = end
        self._deliver(out, auto_ack)
        return pos, None

    def _paho_packet(
        self, out: list[tuple[Any, ...]], auto_ack: bool, buf: bytes, pos: int, i: int, end: int
    ) -> MQTTErrorCode | None:
        """Deliver `out`, then `_paho_handle` the packet buf[pos:end] (its body from `i`):
        None to go on, else the code `feed` returns."""
        self._deliver(out, auto_ack)
        rc = self._paho_handle(buf[pos], buf[pos + 1 : i], end - i, memoryview(buf)[i:end])
        if rc is None:
            return MQTTErrorCode.MQTT_ERR_SUCCESS  # paho closed the connection
        if rc:
            return self._loop_rc_handle(rc)
        return None

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


# What `_BulkReadClient` calls or overrides on paho's client class (with the parameters
# it passes), the instance attributes it reads or writes, and the keys of `_in_packet`
# it fills for `_packet_handle`. paho does not promise any of them.
_METHODS: dict[str, tuple[str, ...]] = {
    "_sock_recv": ("bufsize",),
    "_packet_handle": (),
    "_packet_queue": ("command", "packet", "mid", "qos"),
    "_loop_rc_handle": ("rc",),
    "_easy_log": ("level", "fmt"),
    "reconnect": (),
    "loop_read": ("max_packets",),
}
_ATTRIBUTES = (
    "_sock",
    "_in_packet",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_protocol",
    "_manual_ack",
)
_IN_PACKET_KEYS = frozenset(
    (
        "command",
        "have_remaining",
        "remaining_count",
        "remaining_mult",
        "remaining_length",
        "packet",
        "to_process",
        "pos",
    )
)


_checked: dict[type[paho.Client], tuple[str, ...]] = {}


def missing_internals(base: type[paho.Client] = paho.Client) -> tuple[str, ...]:
    """The paho internals the bulk-read client needs that `base` lacks (empty: all there)."""
    if base not in _checked:
        _checked[base] = _missing(base)
    return _checked[base]


def _missing(base: type[paho.Client]) -> tuple[str, ...]:
    missing: list[str] = []
    for name, params in _METHODS.items():
        method = getattr(base, name, None)
        if not callable(method):
            missing.append(name)
            continue
        try:
            have = inspect.signature(method).parameters
        except (TypeError, ValueError):
            missing.append(f"{name}()")
            continue
        missing.extend(f"{name}({p})" for p in params if p not in have)
    for name in ("time_func", "MQTT_LOG_ERR", "MQTT_LOG_DEBUG", "MQTTv5"):
        if not hasattr(paho, name):
            missing.append(f"paho.mqtt.client.{name}")
    try:
        probe = base(CallbackAPIVersion.VERSION2, client_id="safecity-probe", protocol=paho.MQTTv5)
    except Exception as exc:  # any failure means: do not build on this class
        return (*missing, f"constructor ({exc})")
    missing.extend(name for name in _ATTRIBUTES if not hasattr(probe, name))
    in_packet = getattr(probe, "_in_packet", None)
    if isinstance(in_packet, dict):
        missing.extend(f"_in_packet[{k!r}]" for k in sorted(_IN_PACKET_KEYS - in_packet.keys()))
    elif "_in_packet" not in missing:
        missing.append("_in_packet (not a dict)")
    return tuple(missing)


def bulk_read_supported(base: type[paho.Client] = paho.Client) -> bool:
    """True when `base` (the installed paho's client) has every internal the fast path uses."""
    return not missing_internals(base)


def client_class(fast_path: bool, base: type[paho.Client] = paho.Client) -> type[paho.Client]:
    """The paho client class to use: the bulk-read one when asked for and safe, else `base`.

    Checked once per class at start-up: when the installed paho lacks an internal the
    fast path touches, the stock receive path is used and a warning says why.
    """
    if not fast_path:
        return base
    missing = missing_internals(base)
    if missing:
        log.warning(
            "paho-mqtt %s lacks internals the bulk-read fast path uses (%s): "
            "using its stock per-message receive path",
            getattr(paho_mqtt, "__version__", "?"),
            ", ".join(missing),
        )
        return base
    if base is paho.Client:
        return _BulkReadClient
    return cast(type[paho.Client], type("_BulkReadClient", (_BulkReadClient, base), {}))


def _scanned(
    buf: bytes, i: int, end: int, command: int, got: tuple[int, int, int, int]
) -> tuple[Any, ...]:
    """The message of a PUBLISH body buf[i:end] that `wire.scan_publish` found as `got`."""
    topic_end, mid, payload_start, qos = got
    return (
        buf[i + 2 : topic_end].decode("utf-8", "replace"),
        buf[payload_start:end],
        qos,
        mid,
        bool(command & 0x01),
        bool(command & 0x08),
    )
