"""The one MQTT boundary: the only package that imports paho-mqtt.

- `wire`: the MQTT v5 wire codec (no paho), used by the fast path, probes and tests;
- `messages`: Will, Incoming, PublishResult and the Inbox received messages wait in;
- `bulkread`: the ingest's read fast path over paho's internals (verified at start-up);
- `client`: `MqttClient`, the threaded service client (ingest, alerts, api);
- `fleet`: `FleetClient`, the asyncio device-fleet client (edge agent, simulator);
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
