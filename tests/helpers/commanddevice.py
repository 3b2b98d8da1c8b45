"""Test kit: real edge agents that take commands, on an event loop in a thread of their own.

Each device logs in as itself (its own secret, its own client id), subscribes to its own
command topic with a persistent session, executes through `edge.commands.CommandExecutor`
and records every command it received and every one it carried out.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from control.stack import LocalStack
from edge.agent import DeviceAgent, Envelope
from edge.commands import CommandExecutor
from edge.settings import EdgeSettings
from safecity.commands import Command, parse_command
from safecity.registry import Device
from safecity.settings import MqttSettings
from safecity.topics import command_topic, result_topic


class CommandDevices:
    """Devices of a city that take commands; `start`/`stop` each one (a device going away)."""

    def __init__(self, stack: LocalStack, city_id: str, spool_dir: Path) -> None:
        self.stack = stack
        self.city_id = city_id
        self.spool_dir = spool_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agents: dict[str, DeviceAgent] = {}
        self.received: Counter[tuple[str, str]] = Counter()
        self.executed: Counter[tuple[str, str]] = Counter()

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, device: Device) -> None:
        """Connect the device (it keeps its session at the broker while stopped)."""
        self._call(self._start(device))

    async def _start(self, device: Device) -> None:
        address = (self.city_id, device.district, device.kind, device.id)
        mqtt = MqttSettings(host=self.stack.mqtt_host, port=self.stack.mqtt_port)

        async def execute(command: Command) -> None:
            self.executed[(command.id, device.id)] += 1

        def nothing(envelope: Envelope, code: int) -> None:
            return None

        def receive(payload: bytes) -> None:
            self.received[(parse_command(payload).id, device.id)] += 1
            executor.receive(payload)

        agent = DeviceAgent(
            device.id,
            mqtt,
            EdgeSettings(spool_dir=self.spool_dir, backoff_max=1.0),
            nothing,
            password=self.stack.secret(device.id),
            command_topic=command_topic(*address),
            on_command=receive,
        )
        executor = CommandExecutor(
            device.id, device.kind, result_topic(*address), agent.reply, execute
        )
        agent.start()
        assert await agent.client.wait_connected(10), f"{device.id} did not connect"
        # The subscription is in place once the broker answered a publish after it.
        await asyncio.sleep(0.3)
        self.agents[device.id] = agent

    def stop(self, device: Device) -> None:
        """Disconnect the device cleanly; its session (and its commands) stay at the broker."""
        agent = self.agents.pop(device.id)
        self._call(agent.close(1.0))

    def close(self) -> None:
        """Stop every device and the loop."""
        for device_id in list(self.agents):
            self._call(self.agents.pop(device_id).close(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
