"""The one MQTT boundary: the only package that imports paho-mqtt.

- `primitives`, `wire`: the MQTT v5 wire codec (no paho), used by the fleet client,
  the fast path, probes and tests;
- `messages`: Will, Incoming, PublishResult and the Inbox received messages wait in;
- `bulkread`: the ingest's read fast path over paho's internals (verified at start-up);
- `client`: `MqttClient`, the threaded service client (ingest, alerts, api);
- `fleet`: `FleetClient`, the asyncio device-fleet client (edge agent, simulator), and
  `link`, its connection: an `asyncio.Protocol` over `wire`, not paho. A fleet holds
  tens of thousands of connections per process, each device its own: a paho client per
  device cost ~9 KiB, ~20 us of CPU per device-second and ~1.7 ms per connect (its
  dicts, locks, deques and a housekeeping wake-up per client every few seconds); the
  lean client ~2.6 KiB, ~4 us and ~0.7 ms (`benchmarks/fleetcost.py`,
  benchmarks/README.md);
- `pacing`: the fleet's jittered backoff and `ConnectTally` (who of a fleet is up);
- `outboxpublisher`: `OutboxPublisher`, a durable outbox drained to the broker (the one
  way a service sends what must not be lost: incident steps, device commands).
"""

from __future__ import annotations

from paho.mqtt.enums import MQTTErrorCode

from safecity.mqtt.bulkread import bulk_read_supported
from safecity.mqtt.client import MqttClient
from safecity.mqtt.fleet import FleetClient
from safecity.mqtt.messages import NOT_SENT, Inbox, Incoming, PublishResult, Will
from safecity.mqtt.outboxpublisher import Connection, OutboxPublisher

__all__ = [
    "NOT_SENT",
    "Connection",
    "FleetClient",
    "Inbox",
    "Incoming",
    "MQTTErrorCode",
    "MqttClient",
    "OutboxPublisher",
    "PublishResult",
    "Will",
    "bulk_read_supported",
]
