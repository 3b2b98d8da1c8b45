"""Devices as real edge agents (one MQTT identity each) for end-to-end fault tests.

Runs `edge.agent.DeviceAgent`s in an asyncio loop of a background thread, so a sync
test can kill, pause and restart processes while they publish. Every reading's final
verdict goes into a ground-truth ledger (NOT_SENT for a reading that got none).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ledgerpub import Outgoing

from control.stack import LocalStack
from edge.agent import AgentStats, DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity import topics
from safecity.ledger import LedgerEntry, LedgerWriter
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


class EdgeFleet:
    """One agent per device of `messages`; `start` publishes at `rate`, `join` drains."""

    def __init__(self, stack: LocalStack, tmp: Path, settings: EdgeSettings | None = None):
        self.stack = stack
        self.settings = settings or edge_settings(tmp / "edge-spool")
        self.ledger_path = tmp / "edge-ledger.jsonl"
        self.verdicts: dict[tuple[str, int], list[int]] = {}
        self.stats = AgentStats()
        self.agents: list[DeviceAgent] = []
        self.submitted = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._messages: Sequence[Outgoing] = ()

    def start(self, messages: Sequence[Outgoing], rate: float) -> None:
        """Connect every device, then publish `messages` at `rate` per second (background)."""
        self._messages = messages

        def body() -> None:
            try:
                asyncio.run(self._run(messages, rate))
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=body, name="edge-fleet", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 150) -> None:
        """Wait until every reading is settled (or the agents' drain bound passed)."""
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "edge fleet did not finish in time"
        if self._error is not None:
            raise self._error
        writer = LedgerWriter(self.ledger_path)
        for message in self._messages:
            assert message.seq is not None
            codes = self.verdicts.get((message.device.id, message.seq), [NOT_SENT])
            writer.write(
                LedgerEntry(
                    device_id=message.device.id,
                    channel="telemetry",
                    topic=message.topic,
                    seq=message.seq,
                    ts_ms=message.ts_ms,
                    sha256=hashlib.sha256(message.payload).hexdigest(),
                    intended_reason=message.intended_reason,
                    puback=codes[0],
                    values=message.values,
                )
            )
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
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index, message in enumerate(messages):
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            meta = {"d": message.device.id, "s": message.seq}
            by_id[message.device.id].submit(
                Envelope(message.topic, message.payload, meta, seq=message.seq)
            )
            self.submitted += 1
        await asyncio.gather(*(agent.close() for agent in self.agents))
        for agent in self.agents:
            self.stats.add(agent.stats)
