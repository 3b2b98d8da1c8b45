"""What a simulated device does when an operator commands it, so the effect shows in its
telemetry: a dimmed streetlight reports its new level at once, a new interval changes
its cadence, a rebooted device goes offline and comes back with a birth message.

Command failures are injected like the other faults: `SAFECITY_FAULTS__COMMAND_FAILURE`
is the probability that a device fails a command (its own seeded random stream).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

from edge.agent import DeviceAgent, Envelope
from edge.commands import CommandExecutor, CommandFailed
from safecity.commands import Command
from safecity.topics import result_topic
from simulators.device import DeviceSim
from simulators.outgoing import Outgoing
from simulators.timebase import device_rng

INJECTED = "injected fault: the actuator did not respond"
REBOOT_DOWN_S = 2.0
"""How long a simulated device stays away while it reboots (seconds)."""


class Actuators:
    """The command handler of one simulated device."""

    __slots__ = ("_failure_rate", "_now_ms", "_rng", "_seed", "_submit", "agent", "preset",
                 "sim", "sounding")  # fmt: skip

    def __init__(
        self,
        sim: DeviceSim,
        agent: DeviceAgent,
        submit: Callable[[Outgoing], None],
        now_ms: Callable[[], int],
        failure_rate: float,
        seed: int,
    ) -> None:
        self.sim = sim
        self.agent = agent
        self._submit = submit
        self._now_ms = now_ms
        self._failure_rate = failure_rate
        self._seed = seed
        # Made at the first command that may fail: most devices never get one (2.5 KB each).
        self._rng: random.Random | None = None
        self.preset: int | None = None
        self.sounding: tuple[str, int] | None = None

    def _fault_rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(
                device_rng(self._seed, self.sim.device.id, "command-faults").random()
            )
        return self._rng

    async def __call__(self, command: Command) -> None:
        """Carry out one (already checked) command; CommandFailed for an injected fault."""
        if self._failure_rate and self._fault_rng().random() < self._failure_rate:
            raise CommandFailed(INJECTED)
        params = command.params
        if command.name == "set_level":
            self.sim.level = int(params["level"])
            for message in self.sim.report_now(max(self._now_ms(), self.sim.start_ms)):
                self._submit(message)
        elif command.name == "set_interval":
            self.sim.set_cadence(float(params["interval_s"]))
        elif command.name == "goto_preset":
            self.preset = int(params["preset"])
        elif command.name == "sound":
            self.sounding = (str(params["signal"]), int(params["duration_s"]))
        elif command.name == "reboot":
            await self._reboot()
        else:
            raise CommandFailed(f"{self.sim.kind} devices cannot {command.name}")

    async def _reboot(self) -> None:
        ts = max(self._now_ms(), self.sim.start_ms)
        message = self.sim.status(ts, "offline", "reboot")
        await self.agent.reboot(
            REBOOT_DOWN_S, Envelope(message.topic, message.payload, message, resend=False)
        )


def attach(actuators: Actuators) -> CommandExecutor:
    """The executor of a simulated device's commands (handing them to its actuators)."""
    d = actuators.sim.device
    topic = result_topic(actuators.sim.city_id, d.district, d.kind, d.id)
    return CommandExecutor(d.id, d.kind, topic, actuators.agent.reply, actuators)


class Commands:
    """The command executors of a fleet's devices, found by device id (agents are built
    before the executors that answer through them)."""

    def __init__(self) -> None:
        self.executors: dict[str, CommandExecutor] = {}

    def receiver(self, device_id: str) -> Callable[[bytes], None]:
        """The agent's `on_command` of one device."""
        # A partial, not a closure: a fleet holds one a device.
        return partial(self._receive, device_id)

    def _receive(self, device_id: str, payload: bytes) -> None:
        executor = self.executors.get(device_id)
        if executor is not None:
            executor.receive(payload)

    def attach_all(
        self,
        sims: list[DeviceSim],
        agents: dict[str, DeviceAgent],
        submit: Callable[[Outgoing], None],
        now_ms: Callable[[], int],
        failure_rate: float,
        seed: int,
    ) -> None:
        """An executor for every simulated device that has an agent of its own."""
        for sim in sims:
            agent = agents.get(sim.device.id)
            if agent is not None:
                actuators = Actuators(sim, agent, submit, now_ms, failure_rate, seed)
                self.executors[sim.device.id] = attach(actuators)

    async def close(self) -> None:
        """Let the commands being carried out finish."""
        for executor in self.executors.values():
            await executor.close()
