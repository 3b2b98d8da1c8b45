"""End-to-end acknowledgements: tell each device which of its seqs this worker made durable.

After a batch is durable (points in InfluxDB or fsync'd in the spool, rejections
fsync'd in the dead-letter store) the worker notes, per device and channel, the seqs
of the batch; every `interval` it publishes them as one `safecity.acks.Ack` per device
on the device's own ack topic, QoS 1, and forgets them. The device's edge agent holds
each reading in its spool until an ack names it, and re-sends what no ack named.

Why seq sets and not one high-water mark: with several workers on a shared
subscription one device's readings are split across workers, so no worker can say
"everything up to N"; and redelivery after a crash brings seqs back out of order. A
set per worker is correct without coordination: the device takes the union of what
every worker acked. Ranges keep it small (one range per device and second in the usual
case). A dead-lettered message with a readable seq is acked too: it is durably
accounted for, and sending it again would only dead-letter it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from prometheus_client import Counter

from ingest.validate import Accepted, Rejected, claimed_device_id
from safecity import acks, topics
from safecity.errors import TopicError
from safecity.mqtt import Incoming, MqttClient
from safecity.registry import Cities, City, as_cities

log = logging.getLogger("safecity.ingest.acks")

ACK_MESSAGES = Counter(
    "safecity_ingest_ack_messages_total", "End-to-end ack messages published to devices"
)
ACKED_SEQS = Counter("safecity_ingest_acked_seqs_total", "Device seqs acknowledged as durable")

_NUMBERED = (topics.Channel.TELEMETRY.value, topics.Channel.EVENT.value)


class Watermarks:
    """Durable seqs per device and channel since the last publication."""

    def __init__(self, city: City | Cities, interval: float = 1.0) -> None:
        self.cities = as_cities(city)
        self.interval = interval
        self._pending: dict[str, tuple[set[int], set[int]]] = {}
        self._topics: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, device_id: str, channel: str, seq: int) -> None:
        """Note one durable seq of a device."""
        sets = self._pending.get(device_id)
        if sets is None:
            sets = self._pending[device_id] = (set(), set())
        sets[0 if channel == "telemetry" else 1].add(seq)

    def add_batch(self, messages: Iterable[tuple[Incoming, Accepted | Rejected]]) -> None:
        """Note the seqs of a batch that is durable now (accepted and dead-lettered alike)."""
        pending = self._pending
        telemetry = topics.Channel.TELEMETRY
        channel: str
        for incoming, outcome in messages:
            if type(outcome) is Accepted:
                seq = outcome.seq
                if seq is None:  # a status: nothing to acknowledge
                    continue
                device_id = outcome.device_id
                channel = outcome.channel
            else:
                channel = outcome.channel
                if channel not in _NUMBERED:
                    continue
                # A refused message is acked to the device that owns the id, whatever city
                # the topic named, with the seq validation read (never a second decode).
                found = outcome.seq
                if found is None:
                    continue
                device_id = claimed_device_id(incoming.topic)
                if self.cities.owner(device_id) is None:
                    continue
                seq = found
            sets = pending.get(device_id)
            if sets is None:
                sets = pending[device_id] = (set(), set())
            sets[0 if channel == telemetry else 1].add(seq)

    def drain(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of every ack message due; forgets what they cover."""
        out: list[tuple[str, bytes]] = []
        pending, self._pending = self._pending, {}
        for device_id, (telemetry, event) in pending.items():
            topic = self._ack_topic(device_id)
            if topic is None:
                continue
            for ack in acks.split(acks.to_ranges(telemetry), acks.to_ranges(event)):
                out.append((topic, ack.to_payload()))
            ACKED_SEQS.inc(len(telemetry) + len(event))
        ACK_MESSAGES.inc(len(out))
        return out

    async def run(self, mqtt: MqttClient) -> None:
        """Publish the acks due every `interval` seconds while connected (0: never)."""
        if not self.interval:
            await asyncio.Event().wait()  # off, yet a supervised task that stays up
        while True:
            await asyncio.sleep(self.interval)
            if not self._pending or not mqtt.connected.is_set():
                # While disconnected nothing new becomes durable from the broker; what is
                # pending waits (a device that misses an ack re-sends: harmless).
                continue
            for topic, payload in self.drain():
                mqtt.publish_nowait(topic, payload, qos=1)

    def _ack_topic(self, device_id: str) -> str | None:
        topic = self._topics.get(device_id)
        if topic is None:
            # The ack goes to the device's own topic in its own city, whatever city the
            # message named (a refused one is acked too).
            city = self.cities.owner(device_id)
            device = None if city is None else city.device(device_id)
            if city is None or device is None:
                return None
            try:
                topic = topics.ack_topic(city.id, device.district, device.kind, device.id)
            except TopicError:
                return None
            self._topics[device_id] = topic
        return topic
