"""Devices as real edge agents (one MQTT identity each) for end-to-end fault tests.

Runs `edge.agent.DeviceAgent`s in an asyncio loop of a background thread, so a sync
test can kill, pause and restart processes while they publish. Every reading's final
verdict goes into a ground-truth ledger (NOT_SENT for a reading that got none).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ledgerpub import Background, Outgoing, paced

from control.stack import LocalStack
from edge.agent import AgentStats, DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity import topics
from safecity.ledger import LedgerWriter
from safecity.mqtt import NOT_SENT


def edge_settings(spool_dir: Path, **overrides: Any) -> EdgeSettings:
    """Quick reconnects and a short ack bound: a test's re-sends come within seconds."""
    values: dict[str, Any] = {
        "spool_dir": spool_dir,
        "backoff_min": 0.1,
        "backoff_max": 1.0,
        "ack_timeout": 3.0,
        "ack_timeout_max": 6.0,
        "drain_timeout": 90.0,
    }
    values.update(overrides)
    return EdgeSettings(**values)


class EdgeFleet(Background):
    """One agent per device of `messages`; `start` publishes at `rate`, `join` drains."""

    def __init__(self, stack: LocalStack, tmp: Path, settings: EdgeSettings | None = None):
        super().__init__()
        self.stack = stack
        self.settings = settings or edge_settings(tmp / "edge-spool")
        self.ledger_path = tmp / "edge-ledger.jsonl"
        self.verdicts: dict[tuple[str, int], list[int]] = {}
        self.stats = AgentStats()
        self.agents: list[DeviceAgent] = []
        self.submitted = 0
        self._messages: Sequence[Outgoing] = ()

    def start(self, messages: Sequence[Outgoing], rate: float) -> None:
        """Connect every device, then publish `messages` at `rate` per second (background)."""
        self._messages = messages
        self._start("edge-fleet", lambda: self._run(messages, rate))

    def join(self, timeout: float = 150) -> None:
        """Wait until every reading is settled (or the agents' drain bound passed)."""
        self._join(timeout, "edge fleet")
        writer = LedgerWriter(self.ledger_path)
        for message in self._messages:
            assert message.seq is not None
            codes = self.verdicts.get((message.device.id, message.seq), [NOT_SENT])
            writer.write(message.ledger_entry(codes[0]))
        writer.close()

    async def _run(self, messages: Sequence[Outgoing], rate: float) -> None:
        city = self.stack.city
        devices = {m.device.id: m.device for m in messages}
        by_id: dict[str, DeviceAgent] = {}

        def result(envelope: Envelope, code: int) -> None:
            key = (envelope.meta["d"], envelope.meta["s"])
            self.verdicts.setdefault(key, []).append(code)

        for device in devices.values():
            by_id[device.id] = DeviceAgent(
                device.id,
                self.stack.mosquitto.mqtt_settings(device.id),
                self.settings,
                result,
                password=self.stack.secret(device.id),
                ack_topic=topics.ack_topic(city.id, device.district, device.kind, device.id),
            )
        self.agents = list(by_id.values())
        for agent in self.agents:
            agent.start()
        connected = await asyncio.gather(*(a.client.wait_connected(10) for a in self.agents))
        assert all(connected), "not every device connected"
        async for message in paced(messages, rate):
            meta = {"d": message.device.id, "s": message.seq}
            by_id[message.device.id].submit(
                Envelope(message.topic, message.payload, meta, seq=message.seq)
            )
            self.submitted += 1
        await asyncio.gather(*(agent.close() for agent in self.agents))
        for agent in self.agents:
            self.stats.add(agent.stats)
