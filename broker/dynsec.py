"""Mosquitto's dynamic-security plugin: config rendered from the store, changes via $CONTROL.

The plugin reads its JSON file only at broker start (a SIGHUP does not reload plugins),
so a running broker is changed through its `$CONTROL/dynamic-security/v1` topic by the
`_admin` account; the same changes are written to the file for the next start.
"""

from __future__ import annotations

import asyncio
import glob
import json
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from safecity.errors import ConfigError, MqttError
from safecity.mqtt import MqttClient
from safecity.settings import MqttSettings
from safecity.topics import (
    CMD,
    DEADLETTER,
    INCIDENTS,
    PREFIX,
    RESULT,
    SERVICES,
    STORED,
    federation_filter,
)

__all__ = [
    "CONTROL_TOPIC",
    "DYNSEC_FILE",
    "PLUGIN_CANDIDATES",
    "DynsecAdmin",
    "device_acls",
    "device_commands",
    "find_plugin",
    "render_dynsec",
    "service_acls",
]

DYNSEC_FILE = "dynamic-security.json"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Debian/Ubuntu's package, then the eclipse-mosquitto image (docker compose).
PLUGIN_CANDIDATES = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
CONTAINER_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"

# Everything not granted below is refused, subscriptions included (the acl_file of
# 2.0.11 never checks a SUBSCRIBE: a device could join a share group and eat messages).
DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}

_CHANNELS = ("telemetry", "event", "status")


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def _reads(*filters: str, share: bool) -> list[dict[str, Any]]:
    """Receive + subscribe rights for filters (and their `$share/<any group>/` forms)."""
    out: list[dict[str, Any]] = []
    for f in filters:
        out.append(_acl("publishClientReceive", f))
        out.append(_acl("subscribePattern", f))
        if share:
            out.append(_acl("subscribePattern", f"$share/+/{f}"))
    return out


def _writes(*topics: str) -> list[dict[str, Any]]:
    return [_acl("publishClientSend", t) for t in topics]


# Role name -> ACLs of the service roles (names as broker.identity.Role values).
SERVICE_ACLS: dict[str, list[dict[str, Any]]] = {
    "ingest": [
        *_reads(f"{PREFIX}/#", share=True),
        *_reads("$SYS/broker/#", share=False),
        *_writes(f"{PREFIX}/+/{DEADLETTER}/#", f"{PREFIX}/+/{SERVICES}/#"),
        *_writes(f"{PREFIX}/+/+/+/+/ack"),  # end-to-end acks to every device
        *_writes(f"{PREFIX}/+/{STORED}/#"),  # the points it wrote, for the API's board
    ],
    "alerts": [
        *_reads(f"{PREFIX}/#", share=True),
        *_writes(f"{PREFIX}/+/_alerts/#", f"{PREFIX}/+/{INCIDENTS}/#", f"{PREFIX}/+/{SERVICES}/#"),
    ],
    # The notifiers: the incident lifecycle steps of their city, on a shared group.
    "notify": [
        *_reads(f"{PREFIX}/+/{INCIDENTS}/#", share=True),
        *_writes(f"{PREFIX}/+/{SERVICES}/#"),
    ],
    # The API's live stream and the console read, never as part of a share group; the
    # API announces the lifecycle steps its users take.
    "api": [*_reads(f"{PREFIX}/#", share=False), *_writes(f"{PREFIX}/+/{INCIDENTS}/#")],
    "console": _reads(f"{PREFIX}/#", "$SYS/#", share=False),
    # A single-connection simulated fleet speaks for every device: local development only.
    "simulator": _writes(*(f"{PREFIX}/+/+/+/+/{c}" for c in _CHANNELS), f"{PREFIX}/+/{SERVICES}/#"),
    # The API's command role: the only account that may publish a command to a device;
    # it reads the devices' results (no share group: one command service per deployment).
    "command": [
        *_writes(f"{PREFIX}/+/+/+/+/{CMD}", f"{PREFIX}/+/{SERVICES}/#"),
        *_reads(f"{PREFIX}/+/+/+/+/{RESULT}", share=False),
    ],
    # A city's federation publisher (the API's task): its indicators, on its own broker.
    "federation": _writes(federation_filter()),
    # The regional ingest: the federated indicators of every city, nothing else.
    "region": [
        *_reads(federation_filter(), share=True),
        *_writes(f"{PREFIX}/+/{DEADLETTER}/#", f"{PREFIX}/+/{SERVICES}/#"),
    ],
    # A city's bridge on the regional broker; its account is always scoped to its city
    # (`_bridge.<city>`), so it may write only safecity/v1/<city>/_federation/#.
    "bridge": _writes(federation_filter()),
    "admin": [
        _acl("publishClientSend", f"{CONTROL_TOPIC}"),
        *_reads(RESPONSE_TOPIC, share=False),
    ],
}


def _scoped_topic(topic: str, city: str) -> str:
    """A service ACL topic narrowed to one city: `safecity/v1/+/...` and `safecity/v1/#`
    become `safecity/v1/<city>/...`; anything else (`$SYS`, `$CONTROL`) stays."""
    if topic.startswith("$share/+/"):
        return "$share/+/" + _scoped_topic(topic[len("$share/+/") :], city)
    if topic == f"{PREFIX}/#":
        return f"{PREFIX}/{city}/#"
    if topic.startswith(f"{PREFIX}/+/"):
        return f"{PREFIX}/{city}/" + topic[len(PREFIX) + 3 :]
    return topic


def service_acls(role: str, city: str | None = None) -> list[dict[str, Any]]:
    """The ACLs of a service role; with `city`, narrowed to that city's topics."""
    acls = SERVICE_ACLS[role]
    if city is None:
        return acls
    return [{**acl, "topic": _scoped_topic(str(acl["topic"]), city)} for acl in acls]


def service_role(role: str, city: str | None) -> str:
    """The dynsec role name of a service account: its role, or `<role>:<city>` when scoped."""
    return role if city is None else f"{role}:{city}"


def device_role(username: str) -> str:
    """The role of one device (2.0.11's plugin has no %u in ACL topics: one role each)."""
    return f"device:{username}"


def device_acls(username: str, city: str | None) -> list[dict[str, Any]]:
    """Rights of a device: publish its own channels and command results (own id); read its
    own acks and its own commands (never another device's: the subscribe is refused).

    The city is not pinned here on purpose: Mosquitto 2.0.11 logs an ACL denial only at
    debug level, so a device refused for writing into another city would leave no trace.
    Accepted by the broker, the ingest (subscribed across cities) dead-letters it as
    `identity_mismatch` and records a security event; nothing reaches another city's data.
    """
    own = f"{PREFIX}/{city or '+'}/+/+/{username}"
    return [
        *_writes(*(f"{PREFIX}/+/+/+/{username}/{c}" for c in (*_CHANNELS, RESULT))),
        # The end-to-end acks and the commands of this device alone (no share group).
        *_reads(f"{own}/ack", f"{own}/{CMD}", share=False),
    ]


@dataclass(frozen=True, slots=True)
class DynsecClient:
    """What the plugin needs of one active account."""

    username: str
    role: str
    password_hash: str
    city: str | None = None

    @property
    def is_device(self) -> bool:
        """Devices are pinned to their own client id; services choose theirs."""
        return self.role == "device"

    def role_name(self) -> str:
        """The dynsec role granted to this account."""
        return device_role(self.username) if self.is_device else service_role(self.role, self.city)


def _hash_fields(encoded: str) -> dict[str, Any]:
    # `$7$<iterations>$<salt b64>$<hash b64>`: the plugin's own PBKDF2-SHA512 fields.
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7":
        raise ConfigError("password hash is not in Mosquitto's $7$ format")
    return {"iterations": int(parts[2]), "salt": parts[3], "password": parts[4]}


def render_dynsec(clients: Iterable[DynsecClient]) -> str:
    """The plugin's JSON config: every active account, its role, devices' pinned client ids."""
    roles = [{"rolename": name, "acls": acls} for name, acls in sorted(SERVICE_ACLS.items())]
    out_clients: list[dict[str, Any]] = []
    for c in sorted(clients, key=lambda c: c.username):
        record: dict[str, Any] = {
            "username": c.username,
            "roles": [{"rolename": c.role_name()}],
            **_hash_fields(c.password_hash),
        }
        if c.is_device:
            record["clientid"] = c.username
            roles.append({"rolename": c.role_name(), "acls": device_acls(c.username, c.city)})
        elif c.city is not None:
            roles.append({"rolename": c.role_name(), "acls": service_acls(c.role, c.city)})
        out_clients.append(record)
    config = {
        "defaultACLAccess": DEFAULT_ACCESS,
        "clients": out_clients,
        "groups": [],
        "roles": roles,
    }
    # Compact: indenting made json use its pure-Python encoder, 3 s at 18,000 devices at
    # every start (the plugin reads either; what it writes back itself is indented).
    return json.dumps(config, separators=(",", ":")) + "\n"


def device_commands(
    username: str, role: str, secret: str | None, city: str | None
) -> list[dict[str, Any]]:
    """$CONTROL commands that make the broker's view of one account match the store.

    The account is deleted first (which disconnects its live sessions: a rotated or
    revoked secret stops working at once) and, with a secret, created again.
    """
    is_device = role == "device"
    name = device_role(username) if is_device else service_role(role, city)
    cmds: list[dict[str, Any]] = [{"command": "deleteClient", "username": username}]
    if is_device:
        cmds.append({"command": "deleteRole", "rolename": name})
    if secret is None:
        return cmds
    if is_device:
        cmds.append({"command": "createRole", "rolename": name})
        for acl in device_acls(username, city):
            cmds.append({"command": "addRoleACL", "rolename": name, **acl})
    else:
        cmds.append({"command": "createRole", "rolename": name})
        for acl in service_acls(role, city):
            cmds.append({"command": "addRoleACL", "rolename": name, **acl})
    client: dict[str, Any] = {
        "command": "createClient",
        "username": username,
        "password": secret,
        "roles": [{"rolename": name}],
    }
    if is_device:
        client["clientid"] = username
    cmds.append(client)
    return cmds


# Answers that mean "already as wanted" for the idempotent steps above.
_HARMLESS = {
    "deleteClient": ("not found",),
    "deleteRole": ("not found",),
    "createRole": ("already exists",),
    "addRoleACL": ("already exists",),
}


class DynsecAdmin:
    """Sends dynamic-security commands to a running broker as the `_admin` account."""

    def __init__(self, settings: MqttSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout

    def apply(self, commands: Sequence[dict[str, Any]]) -> None:
        """Send the commands in one message; raise ConfigError on any real failure."""
        if commands:
            # Its own thread and loop: callable from sync code and from inside a loop.
            with ThreadPoolExecutor(1, thread_name_prefix="dynsec") as pool:
                pool.submit(asyncio.run, self._apply(list(commands))).result()

    async def _apply(self, commands: list[dict[str, Any]]) -> None:
        client = MqttClient(self.settings, f"safecity-admin-{secrets.token_hex(4)}")
        try:
            await client.connect()
            await client.subscribe([(RESPONSE_TOPIC, 1)])
            result = await client.publish(
                CONTROL_TOPIC, json.dumps({"commands": commands}).encode()
            )
            if not result.ok:
                raise ConfigError(f"broker refused the $CONTROL command: {result}")
            batch = await client.inbox.get_batch(1, self.timeout)
        except MqttError as exc:
            raise ConfigError(f"cannot reach the broker's $CONTROL topic: {exc}") from exc
        finally:
            await client.disconnect()
        if not batch:
            raise ConfigError(f"no $CONTROL answer within {self.timeout}s")
        _check_responses(batch[0].payload)


def _check_responses(payload: bytes) -> None:
    try:
        responses = json.loads(payload)["responses"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable $CONTROL answer: {exc}") from exc
    failures = []
    for r in responses:
        error = r.get("error")
        if not error:
            continue
        if any(h in error.lower() for h in _HARMLESS.get(r.get("command", ""), ())):
            continue
        failures.append(f"{r.get('command')}: {error}")
    if failures:
        raise ConfigError("the broker refused: " + "; ".join(failures))


def find_plugin(candidates: Sequence[str] = PLUGIN_CANDIDATES) -> str:
    """Path of mosquitto_dynamic_security.so on this host (ConfigError if none)."""
    for pattern in candidates:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise ConfigError(
        "mosquitto_dynamic_security.so not found (looked in "
        + ", ".join(candidates)
        + "): install Mosquitto 2.0's package with its plugins"
    )
