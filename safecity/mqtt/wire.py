"""The one MQTT v5 wire codec: variable-length integers, strings and the packets safecity uses.

Used by the device fleet's own client (`safecity.mqtt.link`), the bulk-read fast path
(PUBLISH decoding), the raw-socket readiness probe (`connack_reason`) and the tests that
put hostile bytes on the wire. Pure functions over bytes; no paho.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from safecity.errors import WireError
from safecity.mqtt.messages import Will
from safecity.mqtt.primitives import (
    MAX_VARINT,
    REASONS,
    SERVER_KEEPALIVE,
    SESSION_EXPIRY,
    Property,
    decode_binary,
    decode_properties,
    decode_utf8,
    decode_varint,
    encode_binary,
    encode_properties,
    encode_utf8,
    encode_varint,
)

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "MAX_VARINT",
    "PINGREQ",
    "PINGREQ_PACKET",
    "PINGRESP",
    "PINGRESP_PACKET",
    "PUBACK",
    "PUBLISH",
    "REASONS",
    "SERVER_KEEPALIVE",
    "SESSION_EXPIRY",
    "SUBACK",
    "SUBSCRIBE",
    "Connect",
    "Packet",
    "Property",
    "Publish",
    "WireError",
    "connack",
    "connack_reason",
    "connect",
    "decode_properties",
    "decode_utf8",
    "decode_varint",
    "disconnect",
    "encode_properties",
    "encode_utf8",
    "encode_varint",
    "frame",
    "packet_bounds",
    "parse_connack",
    "parse_connect",
    "parse_puback",
    "parse_publish",
    "parse_suback",
    "parse_subscribe",
    "puback",
    "pubacks",
    "publish",
    "scan_publish",
    "suback",
    "subscribe",
    "take_packet",
]

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
PINGRESP_PACKET = bytes([PINGRESP << 4, 0])


# --- primitives -------------------------------------------------------------------


def _properties(buf: bytes, pos: int) -> int:
    """Position after the v5 property block at pos (properties are skipped, not decoded)."""
    got = decode_varint(buf, pos)
    if got is None or got[0] + got[1] > len(buf):
        raise WireError("truncated properties")
    return got[1] + got[0]


# --- framing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """One MQTT control packet: type (high nibble), flags (low nibble) and body."""

    kind: int
    flags: int
    body: bytes

    @property
    def reason(self) -> int:
        """Reason code of CONNACK/PUBACK/DISCONNECT (0 when omitted)."""
        if self.kind == CONNACK:
            return parse_connack(self.body)[1]
        if self.kind == PUBACK:
            return parse_puback(self.body)[1]
        if self.kind == DISCONNECT:
            return self.body[0] if self.body else 0
        raise WireError(f"packet type {self.kind} has no single reason code")


def frame(kind: int, flags: int, body: bytes) -> bytes:
    """Fixed header (type, flags, remaining length) + body."""
    return bytes([(kind << 4) | (flags & 0x0F)]) + encode_varint(len(body)) + body


def packet_bounds(buf: bytes, pos: int = 0) -> tuple[int, int] | None:
    """(start, end) of the body of the packet whose fixed header is at `pos`; None if buf
    does not hold all of it yet."""
    if len(buf) - pos < 2:
        return None
    got = decode_varint(buf, pos + 1)
    if got is None or got[0] + got[1] > len(buf):
        return None
    return got[1], got[0] + got[1]


def take_packet(buf: bytes) -> tuple[Packet, int] | None:
    """The first complete packet of buf and the bytes it took; None if buf holds less."""
    bounds = packet_bounds(buf)
    if bounds is None:
        return None
    start, end = bounds
    return Packet(buf[0] >> 4, buf[0] & 0x0F, bytes(buf[start:end])), end


# --- CONNECT / CONNACK ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """The fields of a CONNECT that safecity sends (will without properties)."""

    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    clean_start: bool = True
    session_expiry: int = 0
    will: Will | None = None


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    keepalive: int = 30,
    clean_start: bool = True,
    session_expiry: int = 0,
    will: Will | None = None,
) -> bytes:
    """An MQTT v5 CONNECT packet: a session expiry property if not 0, a will if given."""
    if password is not None and username is None:
        raise WireError("a password needs a username")
    flags = 0x02 if clean_start else 0
    payload = encode_utf8(client_id)
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise WireError(f"will QoS {will.qos} is not 0, 1 or 2")
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += b"\x00" + encode_utf8(will.topic) + encode_binary(will.payload)
    if username is not None:
        flags |= 0x80
        payload += encode_utf8(username)
    if password is not None:
        flags |= 0x40
        payload += encode_utf8(password)
    props = encode_properties({SESSION_EXPIRY: session_expiry} if session_expiry else {})
    body = encode_utf8("MQTT") + bytes([5, flags]) + keepalive.to_bytes(2, "big") + props
    return frame(CONNECT, 0, body + payload)


def parse_connect(body: bytes) -> Connect:
    """The fields of a v5 CONNECT body (as `connect` writes them)."""
    name, pos = decode_utf8(body, 0)
    if name != "MQTT" or pos + 4 > len(body) or body[pos] != 5:
        raise WireError("not an MQTT v5 CONNECT")
    flags = body[pos + 1]
    keepalive = int.from_bytes(body[pos + 2 : pos + 4], "big")
    props, pos = decode_properties(body, pos + 4)
    expiry = props.get(SESSION_EXPIRY, 0)
    client_id, pos = decode_utf8(body, pos)
    will = None
    if flags & 0x04:
        pos = _properties(body, pos)
        topic, pos = decode_utf8(body, pos)
        message, pos = decode_binary(body, pos)
        will = Will(topic, message, (flags >> 3) & 0x03, bool(flags & 0x20))
    username = password = None
    if flags & 0x80:
        username, pos = decode_utf8(body, pos)
    if flags & 0x40:
        password, pos = decode_utf8(body, pos)
    clean = bool(flags & 0x02)
    assert isinstance(expiry, int)  # the codec's table: a four-byte integer
    return Connect(client_id, username, password, keepalive, clean, expiry, will)


def connack(reason: int, session_present: bool = False) -> bytes:
    """A CONNACK packet without properties."""
    return frame(CONNACK, 0, bytes([int(session_present), reason, 0]))


def parse_connack(body: bytes) -> tuple[bool, int]:
    """(session present, reason code) of a CONNACK body."""
    if len(body) < 2:
        raise WireError("truncated CONNACK")
    return bool(body[0] & 0x01), body[1]


# --- PUBLISH / PUBACK -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """A decoded PUBLISH (properties skipped)."""

    topic: str
    payload: bytes
    qos: int = 0
    mid: int = 0
    retain: bool = False
    dup: bool = False


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    mid: int = 0,
    retain: bool = False,
    dup: bool = False,
    properties: bytes = b"\x00",
) -> bytes:
    """A v5 PUBLISH packet; `properties` is the encoded property block (default: none)."""
    if not 0 <= qos <= 2:
        raise WireError(f"QoS {qos} is not 0, 1 or 2")
    flags = (0x08 if dup else 0) | (qos << 1) | int(retain)
    body = encode_utf8(topic) + (mid.to_bytes(2, "big") if qos else b"") + properties + payload
    return frame(PUBLISH, flags, body)


def scan_publish(
    buf: bytes, start: int, end: int, flags: int, v5: bool
) -> tuple[int, int, int, int] | None:
    """Where the parts of the PUBLISH body buf[start:end] lie: (topic end, mid, payload start, qos).

    The hot half of `parse_publish`, without copies: None when the body is not a
    well-formed QoS 0/1 PUBLISH with a non-empty topic (topic aliases, QoS 2).
    """
    qos = (flags & 0x06) >> 1
    if qos > 1 or end - start < 2:
        return None
    tlen = (buf[start] << 8) | buf[start + 1]
    j = start + 2 + tlen
    mid = 0
    if qos:
        if j + 2 > end:
            return None
        mid = (buf[j] << 8) | buf[j + 1]
        j += 2
    if v5 and j < end:
        plen = 0
        shift = 0
        while j < end:
            byte = buf[j]
            j += 1
            plen |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        j += plen
    if tlen == 0 or j > end:
        return None
    return start + 2 + tlen, mid, j, qos


def parse_publish(flags: int, body: bytes, v5: bool = True) -> Publish:
    """The PUBLISH of a body and its fixed-header flags (QoS 0/1, topic given)."""
    got = scan_publish(body, 0, len(body), flags, v5)
    if got is None:
        raise WireError("not a QoS 0/1 PUBLISH with a topic")
    topic_end, mid, payload_start, qos = got
    try:
        topic = body[2:topic_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"topic is not UTF-8: {exc}") from exc
    return Publish(
        topic, bytes(body[payload_start:]), qos, mid, bool(flags & 0x01), bool(flags & 0x08)
    )


def puback(mid: int, reason: int = 0) -> bytes:
    """A PUBACK; reason 0 without properties is the two-byte short form."""
    body = mid.to_bytes(2, "big") + (bytes([reason, 0]) if reason else b"")
    return frame(PUBACK, 0, body)


# A short-form success PUBACK is one big-endian word: type, length 2, packet id.
_PUBACK_WORD = (PUBACK << 4) << 24 | 2 << 16


def pubacks(mids: Iterable[int]) -> bytes:
    """Success PUBACKs (short form) of mids, back to back: one write for a run of acks."""
    ids = list(mids)
    if ids and not 0 <= min(ids) <= max(ids) <= 0xFFFF:
        raise WireError("a packet id is 0..65535")
    words = [_PUBACK_WORD | mid for mid in ids]
    return struct.pack(f">{len(words)}I", *words)


def parse_puback(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK body; an omitted reason is 0."""
    if len(body) < 2:
        raise WireError("truncated PUBACK")
    return int.from_bytes(body[:2], "big"), body[2] if len(body) > 2 else 0


# --- SUBSCRIBE / SUBACK -----------------------------------------------------------


def subscribe(mid: int, filters: Sequence[tuple[str, int]]) -> bytes:
    """A v5 SUBSCRIBE of (filter, options) pairs (options: QoS and flags byte)."""
    if not filters:
        raise WireError("SUBSCRIBE needs at least one filter")
    body = mid.to_bytes(2, "big") + b"\x00"
    body += b"".join(encode_utf8(f) + bytes([options]) for f, options in filters)
    return frame(SUBSCRIBE, 0x02, body)


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """(packet id, [(filter, options)]) of a v5 SUBSCRIBE body."""
    if len(body) < 3:
        raise WireError("truncated SUBSCRIBE")
    mid = int.from_bytes(body[:2], "big")
    pos = _properties(body, 2)
    filters = []
    while pos < len(body):
        topic_filter, pos = decode_utf8(body, pos)
        if pos >= len(body):
            raise WireError("SUBSCRIBE filter without options")
        filters.append((topic_filter, body[pos]))
        pos += 1
    return mid, filters


def suback(mid: int, reasons: Sequence[int]) -> bytes:
    """A v5 SUBACK without properties."""
    return frame(SUBACK, 0, mid.to_bytes(2, "big") + b"\x00" + bytes(reasons))


def parse_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, granted reason codes) of a v5 SUBACK body."""
    if len(body) < 3:
        raise WireError("truncated SUBACK")
    return int.from_bytes(body[:2], "big"), list(body[_properties(body, 2) :])


def disconnect(reason: int = 0) -> bytes:
    """A DISCONNECT; reason 0 is the empty short form."""
    return frame(DISCONNECT, 0, bytes([reason]) if reason else b"")


# --- a raw-socket probe -----------------------------------------------------------


def connack_reason(
    host: str,
    port: int,
    timeout: float,
    *,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
) -> int | None:
    """The reason code of the CONNACK an MQTT v5 CONNECT on host:port gets; None if none.

    A refusal (e.g. 0x87 for an anonymous client) still proves the broker is serving.
    """
    cid = client_id if client_id is not None else f"safecity-stack-probe-{secrets.token_hex(4)}"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(connect(cid, username, password, keepalive=10))
        buf = b""
        while (got := take_packet(buf)) is None:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            buf += chunk
        packet = got[0]
        if packet.kind != CONNACK:
            return None
        # A refused client is disconnected by the broker itself; then this may fail.
        with contextlib.suppress(OSError):
            sock.sendall(disconnect())
        return packet.reason
