"""The simulated city fleet: every device of a city publishing through its edge agent.

A message goes out when the wall clock reaches ``wall0 + (ts - start) / speed``, so
with ``speed=60`` an hour passes per minute (the schedule itself is `DeviceSim`'s).

Transport: by default every device is its own MQTT v5 identity (`edge.agent`, client
id = username = device id) with birth/will status, QoS 1, an in-order window and an
on-disk store-and-forward spool; all agents share this process's event loop.
``transport="single"`` sends every device's messages over one connection (the same
agent machinery, one identity), for load tests. ``processes=N`` splits the devices
over N processes (`simulators.shards`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.agent import DeviceAgent, Envelope
from safecity.errors import ConfigError
from safecity.ledger import LedgerWriter
from safecity.mqtt import NOT_SENT, Will
from safecity.mqtt.fleet import ConnectTally, share_connect_window
from safecity.readings import epoch_ms, format_ts, from_epoch_ms
from safecity.registry import City
from safecity.secrets import read_secrets
from safecity.topics import Channel, ack_topic, command_topic
from simulators.actuators import Commands
from simulators.device import IMMEDIATE, DeviceSim, check_start, device_messages
from simulators.faults import DeviceFaults
from simulators.incidents import Scene, SimulatedIncident
from simulators.outgoing import (
    DEVICES_REFUSED,
    PUBLISHED,
    SEQ_PER_MS,
    FleetStats,
    Outgoing,
    Recorder,
    Sent,
    ledger_entry,
    seq_base,
    summary,
)
from simulators.settings import SimulatorSettings
from simulators.sites import World

__all__ = [
    "IMMEDIATE",
    "PUBLISHED",
    "SEQ_PER_MS",
    "DeviceSim",
    "FleetStats",
    "Outgoing",
    "Recorder",
    "Sent",
    "device_messages",
    "ledger_entry",
    "run",
    "seq_base",
]

log = logging.getLogger("simulators.fleet")

MAX_IN_FLIGHT = 1000
"""Publishes awaiting their PUBACK at once on the single connection (`transport=single`)."""
DRAIN_TIMEOUT = 10.0
"""Seconds to wait for outstanding PUBACKs when stopping."""


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))


def _decode_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return meta


async def run(
    settings: SimulatorSettings,
    city: City,
    *,
    stop: asyncio.Event | None = None,
    start: datetime | None = None,
    incidents: list[SimulatedIncident] | None = None,
    on_sent: Callable[[Sent], None] | None = None,
    max_in_flight: int | None = None,
    drain_timeout: float | None = None,
    shard: tuple[int, int] = (0, 1),
    ledger: LedgerWriter | None = None,
) -> FleetStats:
    """Run the fleet until `stop` is set or `settings.duration` wall seconds have passed.

    Every device (or the first `settings.max_devices`; of those, every `shard[1]`-th
    from `shard[0]`) connects, publishes its online status, then a reading per
    catalogue cadence in simulated time ``start + elapsed * speed`` (`start` defaults
    to `settings.start`, else now; a replay of a past season needs an ingest whose
    timestamp window admits it). `incidents` and `settings.faults` shape the stream;
    every message and its verdict goes to `on_sent` and, if `settings.ledger` is set,
    to the ledger (or to `ledger`, a writer shared with other cities' fleets, which the
    caller closes). Never raises for an unreachable broker: the agents keep retrying
    and spool meanwhile.
    """
    sim_start = _sim_start(settings, start)
    own_ledger = ledger is None and settings.ledger is not None
    if own_ledger and settings.ledger is not None:
        ledger = LedgerWriter(settings.ledger)  # shared by the processes
    recorder = Recorder(FleetStats(sim_start=sim_start), ledger, on_sent)
    if shard[1] > 1:
        # The fleet's processes share one window of connection attempts at the broker.
        share_connect_window(shard[1])
    fleet = _Fleet.build(settings, city, sim_start, incidents or [], shard, recorder, max_in_flight)
    halt = asyncio.Event()
    watcher = asyncio.create_task(_relay(stop, halt)) if stop is not None else None
    loop = asyncio.get_running_loop()
    timer = None if settings.duration is None else loop.call_later(settings.duration, halt.set)
    progress: asyncio.Task[None] | None = None
    try:
        if settings.device_commands:
            # Before any device connects: a persistent session hands its queued commands
            # over at once, and a device without its executor would drop them.
            failure = settings.faults.command_failure
            fleet.commands.attach_all(
                fleet.sims, fleet.agents, fleet.submit, fleet.clock.now_ms, failure, settings.seed
            )
        await fleet.start(settings, halt)
        _log_started(settings, city, fleet, shard, len(incidents or []))
        progress = asyncio.create_task(
            _progress(fleet, sim_start, settings.speed, settings.progress_interval)
        )
        if fleet.single is not None:
            for sim in fleet.sims:
                fleet.submit(sim.birth())
        await _pump(fleet.sims, fleet.clock, fleet.stats, halt, fleet.submit)
    finally:
        if timer is not None:
            timer.cancel()
        await _cancel(progress, watcher)
        drain = settings.edge.drain_timeout if drain_timeout is None else drain_timeout
        await fleet.close(drain)
        if ledger is not None and own_ledger:
            ledger.close()
        log.info("simulator stopped", extra=summary(fleet.stats))
    return fleet.stats


def _sim_start(settings: SimulatorSettings, start: datetime | None) -> datetime:
    """The run's first simulated instant: `start`, else the settings', else now (naive = UTC)."""
    begin = start if start is not None else settings.start
    if begin is not None and begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)  # `--start 2026-01-15T06:00` means UTC
    return check_start(begin if begin is not None else datetime.now(UTC))


async def _cancel(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel the tasks that exist and wait for them to end."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _log_started(
    settings: SimulatorSettings,
    city: City,
    fleet: _Fleet,
    shard: tuple[int, int],
    incidents: int,
) -> None:
    log.info(
        "simulator started",
        extra={
            "city": city.id,
            "devices": len(fleet.sims),
            "speed": settings.speed,
            "seed": settings.seed,
            "sim_start": format_ts(fleet.stats.sim_start or datetime.now(UTC)),
            "transport": settings.transport,
            "shard": f"{shard[0]}/{shard[1]}",
            "connected": fleet.tally.connected,
            "incidents": incidents,
        },
    )


class _Fleet:
    """One run's devices, their agents (or the single connection), clock and counters."""

    def __init__(
        self,
        sims: list[DeviceSim],
        recorder: Recorder,
        clock: _Clock,
        agents: dict[str, DeviceAgent],
        single: DeviceAgent | None,
        commands: Commands,
    ) -> None:
        self.sims = sims
        self.recorder = recorder
        self.stats = recorder.stats
        self.clock = clock
        self.agents = agents
        self.single = single
        self.commands = commands
        self.everyone = [*agents.values(), *([single] if single else [])]
        self.tally = ConnectTally()

    @classmethod
    def build(
        cls,
        settings: SimulatorSettings,
        city: City,
        sim_start: datetime,
        incidents: list[SimulatedIncident],
        shard: tuple[int, int],
        recorder: Recorder,
        max_in_flight: int | None,
    ) -> _Fleet:
        """The shard's devices and an agent for each (not connecting yet)."""
        sims = _device_sims(settings, city, sim_start, incidents, shard)
        recorder.stats.devices = len(sims)
        clock = _Clock(asyncio.get_running_loop(), epoch_ms(sim_start), settings.speed)
        commands = Commands()
        agents, single = _agents(
            settings, sims, recorder, clock.now_ms, shard, max_in_flight, commands
        )
        return cls(sims, recorder, clock, agents, single, commands)

    async def start(self, settings: SimulatorSettings, halt: asyncio.Event) -> None:
        """Start every agent; give them the connect timeout to connect (computing the first
        readings' values meanwhile); start the clock."""
        spool_decode = _spool_decoder()
        for agent in self.everyone:
            agent.set_meta_decoder(spool_decode)
            agent.client.count_in(self.tally)
            agent.start()
        warming = asyncio.create_task(_warm(self.sims))
        try:
            await _wait_connected(
                self.tally, len(self.everyone), settings.mqtt.connect_timeout, halt
            )
        finally:
            await _cancel(warming)
        self.clock.wall0 = self.clock.loop.time()

    def submit(self, message: Outgoing) -> None:
        """Hand a message to its device's agent (a withheld one straight to the record)."""
        if not message.publish:
            self.recorder.record(Sent(message, "dropped", NOT_SENT))
            return
        target = self.single if self.single is not None else self.agents[message.device_id]
        resend = message.channel is not Channel.STATUS
        target.submit(Envelope(message.topic, message.payload, message, resend, message.seq))

    async def close(self, drain: float) -> None:
        """Close the commands and every agent (draining up to `drain` s); final counts."""
        await self.commands.close()
        await asyncio.gather(*(agent.close(drain) for agent in self.everyone))
        self.stats.devices_refused = _refused(self.everyone)
        for agent in self.everyone:
            self.stats.edge.add(agent.stats)
            self.stats.buffered += agent.stats.left_buffered
        self.stats.wall_seconds = self.clock.loop.time() - self.clock.wall0


class _Clock:
    """Simulated time against the event loop's clock: ``start + (wall - wall0) * speed``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start_ms: int, speed: float) -> None:
        self.loop = loop
        self.start_ms = start_ms
        self.speed = speed
        self.wall0 = loop.time()

    def now_ms(self) -> int:
        return self.start_ms + int((self.loop.time() - self.wall0) * self.speed * 1000)

    def wall_of(self, ts_ms: int) -> float:
        return self.wall0 + (ts_ms - self.start_ms) / 1000.0 / self.speed


def _device_sims(
    settings: SimulatorSettings,
    city: City,
    sim_start: datetime,
    incidents: list[SimulatedIncident],
    shard: tuple[int, int],
) -> list[DeviceSim]:
    """The shard's devices (of the first `max_devices`), each with the run's scene and faults."""
    chosen = city.devices if settings.max_devices is None else city.devices[: settings.max_devices]
    index, count = shard
    scene = Scene(city, incidents, settings.seed)
    world = World(city)
    others = list(city.devices)  # one list for the fleet: each device filters it when needed
    return [
        DeviceSim(
            city.id,
            d,
            settings.seed,
            sim_start,
            first_burst=settings.first_burst,
            scene=scene,
            faults=DeviceFaults(settings.faults, settings.seed, d),
            others=others,
            profile=world.profile(d),
        )
        for d in chosen[index::count]
    ]


def _agents(
    settings: SimulatorSettings,
    sims: list[DeviceSim],
    recorder: Recorder,
    now_ms: Callable[[], int],
    shard: tuple[int, int],
    max_in_flight: int | None,
    commands: Commands,
) -> tuple[dict[str, DeviceAgent], DeviceAgent | None]:
    """One agent per device (`transport=edge`), or the single shared connection."""
    index, count = shard

    def encode(meta: Outgoing) -> dict[str, Any]:
        return meta.to_json()

    agents: dict[str, DeviceAgent] = {}
    if settings.transport == "edge":
        device_secrets = _device_secrets(settings, [sim.device.id for sim in sims])
        for sim in sims:
            agents[sim.device.id] = _device_agent(
                settings,
                sim,
                recorder,
                now_ms,
                encode,
                _secret_source(settings, sim, device_secrets),
                sim.city_id,
                commands.receiver(sim.device.id) if settings.device_commands else None,
            )
        return agents, None
    single = DeviceAgent(
        f"{settings.client_id}-p{index}" if count > 1 else settings.client_id,
        settings.mqtt,
        settings.edge,
        recorder.result,
        username=settings.mqtt.username,
        max_inflight=max_in_flight or MAX_IN_FLIGHT,
        encode_meta=encode,
        decode_meta=_decode_meta,
    )
    return agents, single


async def _pump(
    sims: list[DeviceSim],
    clock: _Clock,
    stats: FleetStats,
    halt: asyncio.Event,
    submit: Callable[[Outgoing], None],
) -> None:
    """Step the devices in simulated-time order, each when the wall clock reaches it."""
    loop = clock.loop
    heap = [(sim.next_ms, i) for i, sim in enumerate(sims)]
    heapq.heapify(heap)
    since_yield = 0
    while heap and not halt.is_set():
        now = loop.time()
        due_ms, i = heap[0]
        due_wall = clock.wall_of(due_ms)
        if due_wall > now:
            await _sleep_unless(halt, due_wall - now)
            since_yield = 0
            continue
        stats.max_lag_s = max(stats.max_lag_s, now - due_wall)
        sim = sims[i]
        try:
            messages = sim.step()
        except ValidationError as exc:
            stats.invalid += 1
            log.error(
                "generated message refused by the models; skipped",
                extra={"device_id": sim.device.id, "kind": sim.kind, "error": str(exc)[:500]},
            )
            messages = []
        heapq.heapreplace(heap, (sim.next_ms, i))
        stats.sim_last = from_epoch_ms(due_ms)
        for message in messages:
            submit(message)
        since_yield += 1
        if since_yield >= 100:
            # A burst due at once must not starve the network callbacks.
            await asyncio.sleep(0)
            since_yield = 0


WARM_CHUNK = 10
"""Devices warmed between two turns of the event loop (~5-10 ms: the connects go on)."""


async def _warm(sims: list[DeviceSim]) -> None:
    """Warm every device's next reading while the fleet connects: a whole city's first
    readings, due at once when the clock starts, then leave at the rate of later ones
    (they cost ~1 ms each cold, most of it stepping each device's processes from their
    anchors: 6,000 of them held one process's first burst for seconds)."""
    for i, sim in enumerate(sims):
        sim.warm()
        if i % WARM_CHUNK == WARM_CHUNK - 1:
            await asyncio.sleep(0)


def _spool_decoder() -> Callable[[str, bytes, Any], Any]:
    def decode(topic: str, payload: bytes, meta: Any) -> Outgoing:
        return Outgoing.from_json(topic, payload, meta)

    return decode


def _device_secrets(settings: SimulatorSettings, device_ids: list[str]) -> dict[str, str]:
    """Each device's own secret from `settings.edge.secrets_file` (read once); {} without one."""
    path = settings.edge.secrets_file
    if path is None:
        return {}
    secrets = read_secrets(path)
    missing = [d for d in device_ids if d not in secrets]
    if missing:
        # Never the secrets themselves; a device without one will be refused by the broker.
        log.warning(
            "devices without a secret in the secrets file: the broker will refuse them",
            extra={"secrets_file": str(path), "missing": len(missing), "first": missing[:5]},
        )
    return {d: secrets[d] for d in device_ids if d in secrets}


def _secret_source(
    settings: SimulatorSettings, sim: DeviceSim, first: dict[str, str]
) -> Callable[[], str | None]:
    """The device's secret: first as read at start, then re-read from the secrets file
    each time the broker refuses it (rotated while the fleet runs)."""
    return _Secret(settings.edge.secrets_file, sim.device.id, first.get(sim.device.id))


class _Secret:
    """A device's secret, as `_secret_source` gives it (a slotted object: a fleet holds
    one a device, and a closure with its cells weighs several times more)."""

    __slots__ = ("_asked", "_device_id", "_first", "_path")

    def __init__(self, path: Path | None, device_id: str, first: str | None) -> None:
        self._path, self._device_id, self._first, self._asked = path, device_id, first, False

    def __call__(self) -> str | None:
        if not self._asked or self._path is None:
            self._asked = True
            return self._first
        try:
            return read_secrets(self._path).get(self._device_id)
        except ConfigError:
            return None  # a file being rewritten: try again at the next refusal


class _Statuses:
    """A simulated device's birth, will and farewell, stamped when asked for."""

    __slots__ = ("_now_ms", "_sim")

    def __init__(self, sim: DeviceSim, now_ms: Callable[[], int]) -> None:
        self._sim, self._now_ms = sim, now_ms

    def _status(self, state: str, reason: str | None = None) -> Outgoing:
        return self._sim.status(max(self._now_ms(), self._sim.start_ms), state, reason)

    def birth(self) -> Envelope:
        message = self._status("online")
        return Envelope(message.topic, message.payload, message, resend=False)

    def farewell(self) -> Envelope:
        message = self._status("offline", "shutdown")
        return Envelope(message.topic, message.payload, message, resend=False)

    def will(self) -> Will:
        # Stamped when the connection opens: the broker sends it as is, later.
        message = self._status("offline", "connection lost")
        return Will(message.topic, message.payload, qos=1, retain=False)


def _device_agent(
    settings: SimulatorSettings,
    sim: DeviceSim,
    recorder: Recorder,
    now_ms: Callable[[], int],
    encode: Callable[[Outgoing], dict[str, Any]],
    password: str | Callable[[], str | None] | None = None,
    city_id: str | None = None,
    on_command: Callable[[bytes], None] | None = None,
) -> DeviceAgent:
    statuses = _Statuses(sim, now_ms)
    address = (sim.device.district, sim.device.kind, sim.device.id)
    return DeviceAgent(
        sim.device.id,
        settings.mqtt,
        settings.edge,
        recorder.result,
        password=password,
        birth=statuses.birth,
        will=statuses.will,
        farewell=statuses.farewell,
        encode_meta=encode,
        decode_meta=_decode_meta,
        seed=settings.seed,
        # The platform confirms each reading durable on the device's own ack topic.
        ack_topic=None if city_id is None else ack_topic(city_id, *address),
        # Its own commands (a persistent session keeps them while it is away).
        command_topic=None
        if city_id is None or on_command is None
        else command_topic(city_id, *address),
        on_command=on_command,
    )


async def _wait_connected(
    tally: ConnectTally, total: int, wait_s: float, halt: asyncio.Event
) -> None:
    """Hold the clock while the fleet connects: until all `total` devices are up, or none
    came up for `wait_s` (a broker away: the rest keep trying, and spooling, after that). The
    first readings of a whole city at once would otherwise take the event loop from the
    devices still connecting (a city of thousands came up at a fifth of the rate)."""
    loop = asyncio.get_running_loop()
    halted = loop.create_task(halt.wait())
    up, since = tally.connected, loop.time()
    try:
        while not halt.is_set() and tally.connected < total:
            left = since + wait_s - loop.time()
            if left <= 0:
                break
            changed = (tally.changed(), halted)
            await asyncio.wait(changed, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if tally.connected > up:
                up, since = tally.connected, loop.time()
    finally:
        halted.cancel()
    down = total - tally.connected
    if down and not halt.is_set():
        log.warning("devices not connected yet; spooling", extra={"devices": down})


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


def _refused(agents: list[DeviceAgent]) -> int:
    """Devices the broker refused at their last attempt (counted as failed devices)."""
    return sum(1 for a in agents if a.client.refused and not a.client.connected)


async def _progress(fleet: _Fleet, sim_start: datetime, speed: float, interval: float) -> None:
    stats, agents = fleet.stats, fleet.everyone
    loop, wall0 = fleet.clock.loop, fleet.clock.wall0
    last_n, last_t = 0, wall0
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        n = stats.published
        stats.devices_refused = _refused(agents)
        DEVICES_REFUSED.set(stats.devices_refused)
        extra = summary(stats)
        extra["rate"] = round((n - last_n) / max(now - last_t, 1e-9), 1)
        extra["wall_s"] = round(now - wall0, 1)
        extra["clock"] = format_ts(sim_start + timedelta(seconds=(now - wall0) * speed))
        log.info("simulator progress", extra=extra)
        last_n, last_t = n, now
