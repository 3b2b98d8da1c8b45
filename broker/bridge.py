"""The federation bridge: a standard Mosquitto bridge section that carries only `_federation`.

Appended to a city broker's mosquitto.conf by `safecity broker config --bridge ...`.
It connects over TLS (the regional CA verifies the regional broker and its host name)
with the city's own account on the regional broker (`_bridge.<city>`, whose only right
there is to write `safecity/v1/<city>/_federation/#`), and forwards out, at QoS 1,
exactly the federation topics of the named cities: no device topic, alert, dead
letter or status ever matches. With `cleansession false` both sessions persist, so
while the regional broker is away the city broker queues the indicators for the
bridge (within max_queued_messages / max_queued_bytes, and in its persistence file
across its own restarts) and delivers them when the bridge is back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from broker.identity import Role, service_username
from safecity.errors import ConfigError
from safecity.topics import IDENTIFIER, federation_filter

__all__ = ["bridge_username", "render_bridge"]

_ADDRESS = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
# A value on a mosquitto.conf line: no whitespace or comment that would change its meaning.
_VALUE = re.compile(r"^[^\s#]+$")


def bridge_username(city: str) -> str:
    """The regional broker account of a city's bridge, e.g. `_bridge.tashkent`."""
    return service_username(Role.BRIDGE, city)


def _value(text: str, what: str) -> str:
    if _VALUE.fullmatch(text) is None:
        raise ConfigError(f"{what} must be one word without spaces or '#'")
    return text


def render_bridge(
    *,
    address: str,
    cities: Sequence[str],
    cafile: Path,
    username: str,
    password: str,
    name: str | None = None,
    restart: tuple[int, int] = (2, 30),
) -> list[str]:
    """The bridge section (config lines) forwarding the cities' federation topics out."""
    if _ADDRESS.fullmatch(address) is None:
        raise ConfigError(f"bridge address {address!r} must be HOST:PORT")
    if not cities:
        raise ConfigError("a bridge needs at least one city whose indicators it carries")
    for city in cities:
        if IDENTIFIER.fullmatch(city) is None:
            raise ConfigError(f"invalid city {city!r} for the bridge")
    connection = name or f"federation-{cities[0]}"
    if IDENTIFIER.fullmatch(connection) is None:
        raise ConfigError(f"invalid bridge name {connection!r}")
    lines = [
        "",
        "# --- federation bridge (safecity broker config --bridge): only _federation goes out ---",
        f"connection {connection}",
        f"address {address}",
        f"remote_clientid safecity-bridge-{connection}",
        f"local_clientid safecity-bridge-local-{connection}",
        f"remote_username {_value(username, 'bridge username')}",
        f"remote_password {_value(password, 'bridge password')}",
        "bridge_protocol_version mqttv311",
        f"bridge_cafile {_value(str(cafile), 'bridge CA file')}",
        "bridge_tls_version tlsv1.2",
        "bridge_insecure false",
        # Persistent sessions on both sides: queued while the region is away, not dropped.
        "cleansession false",
        "local_cleansession false",
        "start_type automatic",
        f"restart_timeout {restart[0]} {restart[1]}",
        "keepalive_interval 30",
        "try_private true",
        # Bridge state notices stay local: the bridge account may write nothing else there.
        "notifications true",
        "notifications_local_only true",
        "bridge_outgoing_retain false",
        "bridge_attempt_unsubscribe false",
    ]
    lines += [f"topic {federation_filter(city)} out 1" for city in cities]
    return lines
