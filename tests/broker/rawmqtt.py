"""A minimal MQTT v5 packet client for hostile cases that real client libraries refuse to send.

libmosquitto silently clears the retain flag when the broker says retain is unavailable,
and client libraries may refuse oversized or QoS 2 publishes themselves; to test what the
*broker* does, these bytes go on the wire unchanged. Packets are built and read by
`safecity.mqtt.wire`, the platform's one codec.
"""

from __future__ import annotations

import socket

from safecity.mqtt import wire
from safecity.mqtt.wire import CONNACK, DISCONNECT, PUBACK, PUBLISH, SUBACK, Packet

__all__ = ["CONNACK", "DISCONNECT", "PUBACK", "PUBLISH", "SUBACK", "Packet", "RawClient"]


class RawClient:
    """A blocking MQTT v5 connection that sends exactly the bytes asked for."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def read(self) -> Packet | None:
        """The next packet, or None when the broker closed the connection."""
        while (got := wire.take_packet(self._buf)) is None:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self._buf += chunk
        packet, used = got
        self._buf = self._buf[used:]
        return packet

    def connect(
        self, client_id: str, username: str | None = None, password: str | None = None
    ) -> Packet:
        """Send CONNECT (v5, clean start, keep-alive 30 s) and return the CONNACK."""
        self.sock.sendall(wire.connect(client_id, username, password, keepalive=30))
        packet = self.read()
        assert packet is not None and packet.kind == CONNACK, packet
        return packet

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, mid: int = 1
    ) -> Packet | None:
        """Publish and return the broker's answer (PUBACK or DISCONNECT), None if it hung up."""
        self.sock.sendall(wire.publish(topic, payload, qos=qos, mid=mid, retain=retain))
        return self.read()
