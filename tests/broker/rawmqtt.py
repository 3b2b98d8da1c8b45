"""A minimal MQTT v5 packet client for hostile cases that real client libraries refuse to send.

libmosquitto silently clears the retain flag when the broker says retain is unavailable,
and client libraries may refuse oversized or QoS 2 publishes themselves; to test what the
*broker* does, these bytes go on the wire unchanged.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

CONNACK, PUBLISH, PUBACK, SUBACK, DISCONNECT = 2, 3, 4, 9, 14


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    data = s.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


@dataclass(frozen=True)
class Packet:
    """One received MQTT control packet."""

    kind: int
    flags: int
    body: bytes

    @property
    def reason(self) -> int:
        """Reason code of CONNACK/PUBACK/DISCONNECT (0 when omitted)."""
        if self.kind == CONNACK:
            return self.body[1]
        if self.kind == PUBACK:
            return self.body[2] if len(self.body) > 2 else 0
        if self.kind == DISCONNECT:
            return self.body[0] if self.body else 0
        raise ValueError(f"packet type {self.kind} has no single reason code")


class RawClient:
    """A blocking MQTT v5 connection that sends exactly the bytes asked for."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _send(self, kind: int, flags: int, body: bytes) -> None:
        self.sock.sendall(bytes([(kind << 4) | flags]) + _varint(len(body)) + body)

    def _read(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read(self) -> Packet | None:
        """The next packet, or None when the broker closed the connection."""
        head = self._read(1)
        if head is None:
            return None
        length, shift = 0, 0
        while True:
            b = self._read(1)
            if b is None:
                return None
            length |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        body = self._read(length) if length else b""
        if body is None:
            return None
        return Packet(head[0] >> 4, head[0] & 0x0F, body)

    def connect(
        self, client_id: str, username: str | None = None, password: str | None = None
    ) -> Packet:
        """Send CONNECT (v5, clean start, keep-alive 30 s) and return the CONNACK."""
        flags = 0x02
        payload = _str(client_id)
        if username is not None:
            flags |= 0x80
            payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
        body = _str("MQTT") + bytes([5, flags]) + (30).to_bytes(2, "big") + b"\x00" + payload
        self._send(1, 0, body)
        packet = self.read()
        assert packet is not None and packet.kind == CONNACK, packet
        return packet

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, mid: int = 1
    ) -> Packet | None:
        """Publish and return the broker's answer (PUBACK or DISCONNECT), None if it hung up."""
        flags = (qos << 1) | int(retain)
        body = _str(topic) + (mid.to_bytes(2, "big") if qos else b"") + b"\x00" + payload
        self._send(PUBLISH, flags, body)
        return self.read()
