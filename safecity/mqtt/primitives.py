"""MQTT v5 primitives: variable byte integers, strings, binary data, properties, reason names.

The layer under `safecity.mqtt.wire` (which re-exports it); pure functions over bytes.
"""

from __future__ import annotations

from safecity.errors import WireError

__all__ = [
    "MAX_VARINT",
    "REASONS",
    "SERVER_KEEPALIVE",
    "SESSION_EXPIRY",
    "Property",
    "decode_binary",
    "decode_properties",
    "decode_utf8",
    "decode_varint",
    "encode_binary",
    "encode_properties",
    "encode_utf8",
    "encode_varint",
]

MAX_VARINT = 268_435_455  # four 7-bit groups
SESSION_EXPIRY, SERVER_KEEPALIVE = 0x11, 0x13

# The v5 reason codes a client meets, named as the specification names them.
REASONS = {
    0x00: "Success", 0x04: "Disconnect with will message", 0x10: "No matching subscribers",
    0x80: "Unspecified error", 0x81: "Malformed packet", 0x82: "Protocol error",
    0x83: "Implementation specific error", 0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid", 0x86: "Bad user name or password",
    0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned",
    0x8B: "Server shutting down", 0x8C: "Bad authentication method",
    0x8D: "Keep alive timeout", 0x8E: "Session taken over", 0x8F: "Topic filter invalid",
    0x90: "Topic name invalid", 0x93: "Receive maximum exceeded", 0x94: "Topic alias invalid",
    0x95: "Packet too large", 0x96: "Message rate too high", 0x97: "Quota exceeded",
    0x98: "Administrative action", 0x99: "Payload format invalid",
    0x9A: "Retain not supported", 0x9B: "QoS not supported", 0x9C: "Use another server",
    0x9D: "Server moved", 0x9F: "Connection rate exceeded",
}  # fmt: skip


def encode_varint(n: int) -> bytes:
    """The variable byte integer of n (1-4 bytes, 7 bits each, low group first)."""
    if not 0 <= n <= MAX_VARINT:
        raise WireError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it) of the variable byte integer at pos; None if incomplete."""
    value = 0
    shift = 0
    end = len(buf)
    i = pos
    while True:
        if i >= end:
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 28:
            raise WireError("variable byte integer longer than four bytes")


def encode_utf8(text: str) -> bytes:
    """A UTF-8 string with its two-byte length prefix."""
    return _prefixed(text.encode("utf-8"), "string")


def decode_utf8(buf: bytes, pos: int) -> tuple[str, int]:
    """(string, position after it) of the length-prefixed UTF-8 string at pos."""
    data, end = _take(buf, pos, "string")
    try:
        return data.decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise WireError(f"string is not UTF-8: {exc}") from exc


# Property identifier -> its type: 1/2/4-byte integer, "v" varint, "s" string,
# "b" binary data, "p" string pair (user property).
_PROPERTY_TYPES: dict[int, int | str] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "b", 0x0B: "v", 0x11: 4, 0x12: "s",
    0x13: 2, 0x15: "s", 0x16: "b", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1,
    0x29: 1, 0x2A: 1,
}  # fmt: skip
Property = int | str | bytes


def encode_properties(props: dict[int, Property]) -> bytes:
    """The v5 property block (length first) of integer, string and binary properties."""
    out = b""
    for ident, value in props.items():
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None or kind == "p":
            raise WireError(f"property 0x{ident:02x} is not one this codec writes")
        if isinstance(kind, int) and isinstance(value, int):
            if not 0 <= value < 1 << (8 * kind):
                raise WireError(f"property 0x{ident:02x} out of range: {value}")
            data = value.to_bytes(kind, "big")
        elif kind == "v" and isinstance(value, int):
            data = encode_varint(value)
        elif kind == "s" and isinstance(value, str):
            data = encode_utf8(value)
        elif kind == "b" and isinstance(value, bytes):
            data = encode_binary(value)
        else:
            raise WireError(f"property 0x{ident:02x} has the wrong type: {value!r}")
        out += bytes([ident]) + data
    return encode_varint(len(out)) + out


def decode_properties(buf: bytes, pos: int) -> tuple[dict[int, Property], int]:
    """(properties, position after the block) of the v5 property block at pos; user
    properties are skipped."""
    got = decode_varint(buf, pos)
    if got is None or got[0] + got[1] > len(buf):
        raise WireError("truncated properties")
    i, end = got[1], got[1] + got[0]
    props: dict[int, Property] = {}
    while i < end:
        ident = buf[i]
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise WireError(f"unknown property 0x{ident:02x}")
        value, i = _property(buf[:end], i + 1, kind)
        if ident != 0x26:
            props[ident] = value
    return props, end


def _property(buf: bytes, i: int, kind: int | str) -> tuple[Property, int]:
    if isinstance(kind, int):
        if i + kind > len(buf):
            raise WireError("truncated property")
        return int.from_bytes(buf[i : i + kind], "big"), i + kind
    if kind == "v":
        got = decode_varint(buf, i)
        if got is None:
            raise WireError("truncated property")
        return got
    if kind == "b":
        return decode_binary(buf, i)
    text, i = decode_utf8(buf, i)
    if kind == "p":
        text, i = decode_utf8(buf, i)
    return text, i


def encode_binary(data: bytes) -> bytes:
    """Binary data with its two-byte length prefix."""
    return _prefixed(data, "binary data")


def decode_binary(buf: bytes, pos: int) -> tuple[bytes, int]:
    """(data, position after it) of the length-prefixed binary data at pos."""
    return _take(buf, pos, "binary data")


def _prefixed(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise WireError(f"{what} of {len(data)} bytes exceeds 65535")
    return len(data).to_bytes(2, "big") + data


def _take(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > len(buf):
        raise WireError(f"truncated {what} length")
    end = pos + 2 + int.from_bytes(buf[pos : pos + 2], "big")
    if end > len(buf):
        raise WireError(f"truncated {what}")
    return bytes(buf[pos + 2 : end]), end
