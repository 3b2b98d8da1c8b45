"""The simulated city fleet: every device of a city publishing through its edge agent.

Scheduling happens in *simulated* time: device ``d`` publishes its k-th reading at
``start + offset_d + (k - 1) * cadence`` (its first reading at ``start`` when
`first_burst` is on, so a fresh stack has data for every device at once; the seeded
``offset_d`` in (0, cadence] spreads the rest uniformly, no thundering herd). A
message goes out when the wall clock reaches ``wall0 + (ts - start) / speed``, so
with ``speed=60`` an hour passes per minute. The timestamp is the scheduled simulated
instant, not a measured one: the payload sequence of a device depends only on the
seed, the start, the incidents and the fault rates, never on the machine's load.

Transport: by default every device is its own MQTT v5 identity (`edge.agent`, client
id = username = device id) with birth/will status, QoS 1, an in-order window and an
on-disk store-and-forward spool; all agents share this process's event loop.
``transport="single"`` sends every device's messages over one connection (the same
agent machinery, one identity), for load tests. ``processes=N`` splits the devices
over N processes (`run_processes`).

Sequence numbers: each device has one counter shared by its readings and events,
starting at ``epoch_ms(start) * 1000``. A restart (with the default start, now)
therefore never goes backwards as long as a run publishes fewer than 1000 messages
per device per millisecond of wall time. Values stay below 2**53 until the year 2255.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError

from edge.agent import AgentStats, DeviceAgent, Envelope
from safecity import catalogue, registry
from safecity.errors import ConfigError
from safecity.ledger import LedgerEntry, LedgerWriter
from safecity.mqtt import NOT_SENT, Will
from safecity.readings import Status, epoch_ms, event_model, format_ts, reading_model
from safecity.registry import City, Device
from safecity.secrets import read_secrets
from safecity.topics import Channel, event_topic, status_topic, telemetry_topic
from simulators.faults import REJECTS, DeviceFaults, malformed, rogue_id
from simulators.generators import EventDraft, Values, device_rng, generate, maybe_event
from simulators.incidents import Incident, Scene
from simulators.settings import SimulatorSettings

# Incident types whose detectors report at once (see DeviceSim._wakes).
IMMEDIATE = frozenset({"gunshot", "road_accident"})

log = logging.getLogger("simulators.fleet")

PUBLISHED = Counter(
    "safecity_sim_published",
    "Messages published by the simulator, by sensor kind and broker verdict "
    "(accepted: PUBACK < 0x80, refused: PUBACK >= 0x80, failed: not sent or no PUBACK).",
    ["kind", "result"],
)

MAX_IN_FLIGHT = 1000
"""Publishes awaiting their PUBACK at once on the single connection (`transport=single`)."""
PROGRESS_INTERVAL = 10.0
"""Seconds between progress log lines."""
DRAIN_TIMEOUT = 10.0
"""Seconds to wait for outstanding PUBACKs when stopping."""
SEQ_PER_MS = 1000
"""A device's seq starts at epoch_ms(start) * SEQ_PER_MS."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_ms(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return _EPOCH + timedelta(milliseconds=ms)


def seq_base(start: datetime) -> int:
    """The first seq of every device in a run that starts (simulated) at `start`."""
    return epoch_ms(start) * SEQ_PER_MS


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message the simulator sends; `seq` is None for status messages.

    `intended_reason` is None for a message the platform must accept, else the reject
    reason it must get (or ``duplicate`` / ``dropout``); `fault` labels any injected
    fault (also value faults that stay valid, like ``stuck``). `values` are the
    telemetry values of a well-formed reading (for the ledger's value check).
    """

    device_id: str
    kind: str
    channel: Channel
    topic: str
    ts_ms: int
    seq: int | None
    payload: bytes
    values: dict[str, Any] | None = None
    intended_reason: str | None = None
    fault: str | None = None

    @property
    def publish(self) -> bool:
        """False for a dropout: the reading is recorded in the ledger, never sent."""
        return self.fault != "dropout"

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (for the edge spool)."""
        return {
            "d": self.device_id,
            "k": self.kind,
            "c": self.channel.value,
            "t": self.ts_ms,
            "s": self.seq,
            "v": self.values,
            "r": self.intended_reason,
            "f": self.fault,
        }

    @classmethod
    def from_json(cls, topic: str, payload: bytes, meta: dict[str, Any]) -> Outgoing:
        """Rebuild from the spool's record."""
        return cls(
            meta["d"], meta["k"], Channel(meta["c"]), topic, meta["t"], meta["s"], payload,
            meta["v"], meta["r"], meta["f"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sent:
    """A published message and the broker's verdict (for ledgers and tests)."""

    message: Outgoing
    result: str
    """accepted, refused, failed (no PUBACK) or dropped (a dropout fault, never sent)."""
    reason_code: int


@dataclass
class FleetStats:
    """What a fleet run did: messages by channel, broker verdicts, timing."""

    devices: int = 0
    readings: int = 0
    events: int = 0
    statuses: int = 0
    accepted: int = 0
    refused: int = 0
    failed: int = 0
    dropped: int = 0
    """Readings withheld by the dropout fault (in the ledger, never sent)."""
    buffered: int = 0
    """Messages still in the edge spool at exit (sent by the next run)."""
    invalid: int = 0
    """Generated messages the models refused (a generator bug); never published."""
    faults: dict[str, int] = field(default_factory=dict)
    sim_start: datetime | None = None
    sim_last: datetime | None = None
    """Simulated timestamp of the last reading scheduled."""
    wall_seconds: float = 0.0
    max_lag_s: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    """Messages published (any verdict) per kind."""
    edge: AgentStats = field(default_factory=AgentStats)

    @property
    def published(self) -> int:
        """Messages with a verdict: accepted + refused + failed."""
        return self.accepted + self.refused + self.failed

    def merge(self, other: FleetStats) -> None:
        """Add another process's stats to these."""
        for name in ("devices", "readings", "events", "statuses", "accepted", "refused",
                     "failed", "dropped", "buffered", "invalid"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.faults.items():
            self.faults[key] = self.faults.get(key, 0) + value
        for key, value in other.by_kind.items():
            self.by_kind[key] = self.by_kind.get(key, 0) + value
        self.max_lag_s = max(self.max_lag_s, other.max_lag_s)
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        if other.sim_last is not None and (self.sim_last is None or other.sim_last > self.sim_last):
            self.sim_last = other.sim_last
        self.edge.add(other.edge)


class DeviceSim:
    """One simulated device: its schedule, seq counter, random streams and payloads."""

    def __init__(
        self,
        city_id: str,
        device: Device,
        seed: int,
        start: datetime,
        *,
        first_burst: bool = True,
        scene: Scene | None = None,
        faults: DeviceFaults | None = None,
        others: list[Device] | None = None,
    ) -> None:
        spec = catalogue.KINDS[device.kind]
        self.device = device
        self.kind = device.kind
        self.city_id = city_id
        self.cadence_s = spec.cadence_s
        self.cadence_ms = max(1, round(spec.cadence_s * 1000))
        self.start_ms = epoch_ms(start)
        self.seq = seq_base(start)
        self._rng = device_rng(seed, device.id)
        # Own stream for the schedule, so it never shifts the values' noise.
        self._offset_ms = 1 + device_rng(seed, device.id, "phase").randrange(self.cadence_ms)
        self._burst = first_burst
        self._reading_ms = self.start_ms if first_burst else self.start_ms + self._offset_ms
        # Detectors (acoustic nodes, traffic cameras) report a scripted incident the
        # moment it happens, not at their next health reading minutes later.
        self._wakes = sorted(
            i.start_ms
            for i in (scene.scripted if scene is not None else ())
            if i.type in IMMEDIATE and i.start_ms >= self.start_ms and i.reach(device) > 0
        )
        self._model = reading_model(device.kind)
        self._scene = scene
        self._prev_ms: int | None = None
        self._faults = faults if faults is not None and faults.enabled else None
        self._others = [d for d in (others or []) if d.kind != device.kind]
        args = (city_id, device.district, device.kind, device.id)
        self.telemetry_topic = telemetry_topic(*args)
        self.event_topic = event_topic(*args)
        self.status_topic = status_topic(*args)

    def status(self, ts_ms: int, state: str, reason: str | None = None) -> Outgoing:
        """A status message (birth: online; will/farewell: offline)."""
        body: dict[str, Any] = {"ts": format_ts(from_ms(ts_ms)), "state": state}
        if reason is not None:
            body["reason"] = reason
        payload = Status.model_validate(body).to_payload()
        return Outgoing(
            self.device.id, self.kind, Channel.STATUS, self.status_topic, ts_ms, None, payload
        )

    def birth(self) -> Outgoing:
        """The device's online status, stamped at the start of the run."""
        return self.status(self.start_ms, "online")

    @property
    def next_ms(self) -> int:
        """When this device sends next: its next reading or an immediate detection."""
        if self._wakes and self._wakes[0] < self._reading_ms:
            return self._wakes[0]
        return self._reading_ms

    def step(self) -> list[Outgoing]:
        """The reading (and any events) due at `next_ms`; advances the schedule.

        Raises pydantic's ValidationError if a generator produced something the
        models refuse (a bug): the simulator never sends what it did not mean to.
        """
        if self._wakes and self._wakes[0] < self._reading_ms:
            return self._detect(self._wakes.pop(0))
        ts_ms = self._reading_ms
        if self._burst:
            self._burst = False
            self._reading_ms = self.start_ms + self._offset_ms
        else:
            self._reading_ms = ts_ms + self.cadence_ms
        t = from_ms(ts_ms)
        values = generate(self.device, self._rng, t)
        drafts: list[EventDraft] = []
        draft = maybe_event(self.device, self._rng, t, self.cadence_s)
        if draft is not None:
            drafts.append(draft)
        if self._scene is not None:
            values = self._scene.apply(self.device, values, ts_ms)
            # Since the previous reading (the first burst breaks the regular spacing).
            since = ts_ms - self._prev_ms if self._prev_ms is not None else self.cadence_ms
            drafts.extend(self._scene.events(self.device, ts_ms, since))
        self._prev_ms = ts_ms
        return self._reading(ts_ms, values) + self._events(ts_ms, drafts)

    def _detect(self, ts_ms: int) -> list[Outgoing]:
        """Events only, at the instant of a scripted incident."""
        assert self._scene is not None
        since = ts_ms - self._prev_ms if self._prev_ms is not None else 1
        self._prev_ms = ts_ms
        return self._events(ts_ms, self._scene.events(self.device, ts_ms, max(1, since)))

    def _events(self, ts_ms: int, drafts: list[EventDraft]) -> list[Outgoing]:
        out: list[Outgoing] = []
        t = from_ms(ts_ms)
        for draft in drafts:
            ts = format_ts(t)
            event = event_model(draft.type).model_validate(
                {
                    "ts": ts,
                    "seq": self.seq,
                    "type": draft.type,
                    "severity": draft.severity,
                    "details": draft.details,
                }
            )
            out.append(
                Outgoing(
                    self.device.id,
                    self.kind,
                    Channel.EVENT,
                    self.event_topic,
                    ts_ms,
                    self.seq,
                    event.to_payload(),
                )
            )
            self.seq += 1
        return out

    def _good(self, ts_ms: int, values: Values, fault: str | None = None) -> Outgoing:
        reading = self._model.model_validate(
            {"ts": format_ts(from_ms(ts_ms)), "seq": self.seq, "values": values}
        )
        message = Outgoing(
            self.device.id, self.kind, Channel.TELEMETRY, self.telemetry_topic, ts_ms, self.seq,
            reading.to_payload(), reading.fields(), None, fault,
        )  # fmt: skip
        self.seq += 1
        return message

    def _reading(self, ts_ms: int, values: Values) -> list[Outgoing]:
        if self._faults is None:
            return [self._good(ts_ms, values)]
        drawn = self._faults.draw(values)
        fault, values = drawn.fault, drawn.values
        if fault is None or fault in ("stuck", "drift"):
            return [self._good(ts_ms, values, fault)]
        rng = self._faults.rng
        if fault == "dropout":
            return [replace(self._good(ts_ms, values, "dropout"), intended_reason="dropout")]
        if fault == "clock_skew":
            skew = rng.choice((-1, 1)) * rng.randint(30_000, 240_000)
            return [self._good(ts_ms + skew, values, "clock_skew")]
        if fault == "duplicate":
            first = self._good(ts_ms, values)
            return [first, replace(first, intended_reason="duplicate", fault="duplicate")]
        if fault == "flood":
            size = self._faults.settings.flood_size
            return [self._good(ts_ms + i, values, "flood" if i else None) for i in range(size)]
        if fault in ("identity_mismatch", "unknown_device"):
            good = self._good(ts_ms, values, fault)
            if fault == "unknown_device":
                topic = telemetry_topic(
                    self.city_id, self.device.district, self.kind, rogue_id(self.device.id)
                )
            elif self._others:
                # Another device's id under this device's district and kind.
                other = rng.choice(self._others)
                topic = telemetry_topic(self.city_id, self.device.district, self.kind, other.id)
            else:
                return [good]
            return [replace(good, topic=topic, values=None, intended_reason=REJECTS[fault])]
        ts = format_ts(from_ms(ts_ms))
        payload = malformed(fault, self.kind, ts, self.seq, values, rng)
        message = Outgoing(
            self.device.id, self.kind, Channel.TELEMETRY, self.telemetry_topic, ts_ms, self.seq,
            payload, None, REJECTS[fault], fault,
        )  # fmt: skip
        self.seq += 1
        return [message]


def device_messages(
    city_id: str,
    device: Device,
    seed: int,
    start: datetime,
    steps: int,
    *,
    first_burst: bool = True,
    scene: Scene | None = None,
    faults: DeviceFaults | None = None,
    others: list[Device] | None = None,
) -> list[Outgoing]:
    """The birth and the first `steps` readings (plus events) a device would publish.

    Pure and deterministic: exactly what `run` sends for this device, without a broker.
    """
    sim = DeviceSim(
        city_id, device, seed, _check_start(start), first_burst=first_burst, scene=scene,
        faults=faults, others=others,
    )  # fmt: skip
    out = [sim.birth()]
    for _ in range(steps):
        out.extend(sim.step())
    return out


def _check_start(start: datetime) -> datetime:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be a timezone-aware datetime")
    # Millisecond precision, as on the wire.
    return from_ms(epoch_ms(start.astimezone(UTC)))


def _outcome(code: int) -> str:
    if code < 0x80:
        return "accepted"
    return "refused" if code < NOT_SENT else "failed"


def ledger_entry(sent: Sent) -> LedgerEntry:
    """The ledger line of a sent (or dropped) message."""
    m = sent.message
    return LedgerEntry(
        device_id=m.device_id,
        channel=m.channel.value,
        topic=m.topic,
        seq=m.seq,
        ts_ms=m.ts_ms,
        sha256=hashlib.sha256(m.payload).hexdigest(),
        intended_reason=m.intended_reason,
        puback=sent.reason_code,
        values=m.values if m.intended_reason is None else None,
        fault=m.fault,
    )


def ledger_path(path: Path, index: int, processes: int) -> Path:
    """The ledger file of process `index` of `processes` (the path itself for one)."""
    if processes == 1:
        return path
    return path.with_name(f"{path.stem}.p{index}{path.suffix}")


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))


class Recorder:
    """Verdicts into stats, metrics, the ledger and `on_sent`."""

    def __init__(
        self, stats: FleetStats, ledger: LedgerWriter | None, on_sent: Callable[[Sent], None] | None
    ) -> None:
        self.stats = stats
        self.ledger = ledger
        self.on_sent = on_sent
        self._counters: dict[tuple[str, str], Any] = {}

    def result(self, envelope: Envelope, code: int) -> None:
        message: Outgoing = envelope.meta
        self.record(Sent(message, _outcome(code), code))

    def record(self, sent: Sent) -> None:
        stats, message = self.stats, sent.message
        outcome = sent.result
        if outcome == "dropped":
            stats.dropped += 1
        else:
            if outcome == "accepted":
                stats.accepted += 1
            elif outcome == "refused":
                stats.refused += 1
            else:
                stats.failed += 1
            if message.channel is Channel.TELEMETRY:
                stats.readings += 1
            elif message.channel is Channel.EVENT:
                stats.events += 1
            else:
                stats.statuses += 1
            stats.by_kind[message.kind] = stats.by_kind.get(message.kind, 0) + 1
            key = (message.kind, outcome)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = PUBLISHED.labels(message.kind, outcome)
            counter.inc()
        if message.fault is not None:
            stats.faults[message.fault] = stats.faults.get(message.fault, 0) + 1
        if self.ledger is not None:
            self.ledger.write(ledger_entry(sent))
        if self.on_sent is not None:
            self.on_sent(sent)


def _decode_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return meta


async def run(
    settings: SimulatorSettings,
    city: City,
    *,
    stop: asyncio.Event | None = None,
    start: datetime | None = None,
    incidents: list[Incident] | None = None,
    on_sent: Callable[[Sent], None] | None = None,
    max_in_flight: int | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    drain_timeout: float | None = None,
    shard: tuple[int, int] = (0, 1),
) -> FleetStats:
    """Run the fleet until `stop` is set or `settings.duration` wall seconds have passed.

    Every device (or the first `settings.max_devices`; of those, every `shard[1]`-th
    from `shard[0]`) connects, publishes its online status, then a reading per
    catalogue cadence in simulated time ``start + elapsed * speed`` (`start` defaults
    to `settings.start`, else now; a replay of a past season needs an ingest whose
    timestamp window admits it). `incidents` and `settings.faults` shape the stream;
    every message and its verdict goes to `on_sent` and, if `settings.ledger` is set,
    to the ledger. Never raises for an unreachable broker: the agents keep retrying
    and spool meanwhile.
    """
    begin = start if start is not None else settings.start
    if begin is not None and begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)  # `--start 2026-01-15T06:00` means UTC
    sim_start = _check_start(begin if begin is not None else datetime.now(UTC))
    chosen = city.devices if settings.max_devices is None else city.devices[: settings.max_devices]
    index, count = shard
    devices = chosen[index::count]
    scene = Scene(city, incidents or [], settings.seed)
    others = list(city.devices)
    sims = [
        DeviceSim(
            city.id,
            d,
            settings.seed,
            sim_start,
            first_burst=settings.first_burst,
            scene=scene,
            faults=DeviceFaults(settings.faults, settings.seed, d),
            others=others,
        )
        for d in devices
    ]
    stats = FleetStats(devices=len(sims), sim_start=sim_start)
    ledger = None
    if settings.ledger is not None:
        ledger = LedgerWriter(ledger_path(settings.ledger, index, count))
    recorder = Recorder(stats, ledger, on_sent)
    loop = asyncio.get_running_loop()
    speed = settings.speed
    start_ms = epoch_ms(sim_start)
    wall0 = loop.time()
    drain = settings.edge.drain_timeout if drain_timeout is None else drain_timeout

    def now_ms() -> int:
        return start_ms + int((loop.time() - wall0) * speed * 1000)

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
            )
        single = None
    else:
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
    spool_decode = _spool_decoder()
    for agent in [*agents.values(), *([single] if single else [])]:
        agent.set_meta_decoder(spool_decode)
        agent.start()
    halt = asyncio.Event()
    watcher = asyncio.create_task(_relay(stop, halt)) if stop is not None else None
    timer = None if settings.duration is None else loop.call_later(settings.duration, halt.set)
    everyone = [*agents.values(), *([single] if single else [])]
    await _wait_connected(everyone, settings.mqtt.connect_timeout, halt)
    wall0 = loop.time()
    log.info(
        "simulator started",
        extra={
            "city": city.id,
            "devices": len(sims),
            "speed": speed,
            "seed": settings.seed,
            "sim_start": format_ts(sim_start),
            "transport": settings.transport,
            "shard": f"{index}/{count}",
            "connected": sum(1 for a in everyone if a.client.connected),
            "incidents": len(incidents or []),
        },
    )
    progress = asyncio.create_task(
        _progress(stats, loop, wall0, sim_start, speed, progress_interval)
    )

    def submit(message: Outgoing) -> None:
        if not message.publish:
            recorder.record(Sent(message, "dropped", NOT_SENT))
            return
        target = single if single is not None else agents[message.device_id]
        resend = message.channel is not Channel.STATUS
        target.submit(Envelope(message.topic, message.payload, message, resend))

    try:
        if single is not None:
            for sim in sims:
                submit(sim.birth())
        heap = [(sim.next_ms, i) for i, sim in enumerate(sims)]
        heapq.heapify(heap)
        since_yield = 0
        while heap and not halt.is_set():
            now = loop.time()
            due_ms, i = heap[0]
            due_wall = wall0 + (due_ms - start_ms) / 1000.0 / speed
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
            stats.sim_last = from_ms(due_ms)
            for message in messages:
                submit(message)
            since_yield += 1
            if since_yield >= 100:
                # A burst due at once must not starve the network callbacks.
                await asyncio.sleep(0)
                since_yield = 0
    finally:
        if timer is not None:
            timer.cancel()
        for task in (progress, watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(agent.close(drain) for agent in everyone))
        for agent in everyone:
            stats.edge.add(agent.stats)
            stats.buffered += agent.stats.left_buffered
        if ledger is not None:
            ledger.close()
        stats.wall_seconds = loop.time() - wall0
        log.info("simulator stopped", extra=_summary(stats))
    return stats


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
    path, device_id = settings.edge.secrets_file, sim.device.id
    asked = False

    def secret() -> str | None:
        nonlocal asked
        if not asked or path is None:
            asked = True
            return first.get(device_id)
        try:
            return read_secrets(path).get(device_id)
        except ConfigError:
            return None  # a file being rewritten: try again at the next refusal

    return secret


def _device_agent(
    settings: SimulatorSettings,
    sim: DeviceSim,
    recorder: Recorder,
    now_ms: Callable[[], int],
    encode: Callable[[Outgoing], dict[str, Any]],
    password: str | Callable[[], str | None] | None = None,
) -> DeviceAgent:
    def birth() -> Envelope:
        message = sim.status(max(now_ms(), sim.start_ms), "online")
        return Envelope(message.topic, message.payload, message, resend=False)

    def farewell() -> Envelope:
        message = sim.status(max(now_ms(), sim.start_ms), "offline", "shutdown")
        return Envelope(message.topic, message.payload, message, resend=False)

    def will() -> Will:
        # Stamped when the connection opens: the broker sends it as is, later.
        message = sim.status(max(now_ms(), sim.start_ms), "offline", "connection lost")
        return Will(message.topic, message.payload, qos=1, retain=False)

    return DeviceAgent(
        sim.device.id,
        settings.mqtt,
        settings.edge,
        recorder.result,
        password=password,
        birth=birth,
        will=will,
        farewell=farewell,
        encode_meta=encode,
        decode_meta=_decode_meta,
        seed=settings.seed,
    )


async def _wait_connected(agents: list[DeviceAgent], wait_s: float, halt: asyncio.Event) -> None:
    """Give the fleet up to `wait_s` to connect (it keeps trying, and spooling, after that)."""
    waits: asyncio.Future[list[bool]] = asyncio.gather(
        *(a.client.wait_connected(wait_s) for a in agents)
    )
    halted: asyncio.Future[Any] = asyncio.ensure_future(halt.wait())
    await asyncio.wait([waits, halted], return_when=asyncio.FIRST_COMPLETED)
    halted.cancel()
    if not waits.done():
        waits.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waits
        return
    down = sum(1 for ok in waits.result() if not ok)
    if down:
        log.warning("devices not connected yet; spooling", extra={"devices": down})


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


def _summary(stats: FleetStats) -> dict[str, object]:
    return {
        "published": stats.published,
        "accepted": stats.accepted,
        "refused": stats.refused,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "invalid": stats.invalid,
        "readings": stats.readings,
        "events": stats.events,
        "statuses": stats.statuses,
        "spooled": stats.edge.spooled,
        "resent": stats.edge.resent,
        "buffered": stats.buffered,
        "faults": dict(stats.faults),
        "sim_time": format_ts(stats.sim_last) if stats.sim_last else None,
        "lag_s": round(stats.max_lag_s, 3),
        "wall_s": round(stats.wall_seconds, 3),
    }


async def _progress(
    stats: FleetStats,
    loop: asyncio.AbstractEventLoop,
    wall0: float,
    sim_start: datetime,
    speed: float,
    interval: float,
) -> None:
    last_n, last_t = 0, wall0
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        n = stats.published
        extra = _summary(stats)
        extra["rate"] = round((n - last_n) / max(now - last_t, 1e-9), 1)
        extra["wall_s"] = round(now - wall0, 1)
        extra["clock"] = format_ts(sim_start + timedelta(seconds=(now - wall0) * speed))
        log.info("simulator progress", extra=extra)
        last_n, last_t = n, now


# --- several processes ------------------------------------------------------------------


def _child(
    settings: SimulatorSettings, incidents: list[Incident], index: int, count: int
) -> FleetStats:
    """One process of `run_processes`: its shard of the fleet until stopped."""
    from safecity.observability import configure_logging

    configure_logging("simulator", settings.log_level)
    city = registry.load_or_default(settings.registry)

    async def main() -> FleetStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run(settings, city, stop=stop, incidents=incidents, shard=(index, count))

    return asyncio.run(main())


def run_processes(settings: SimulatorSettings, incidents: list[Incident]) -> FleetStats:
    """Run the fleet split over `settings.processes` processes; their stats merged.

    Each process takes every N-th device and writes its own ledger
    (``ledger.p{i}.jsonl``). The city comes from `settings.registry` in each process.
    """
    count = settings.processes
    total = FleetStats()
    # Ctrl-C reaches the children through the process group; the parent just waits.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ProcessPoolExecutor(count, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_child, settings, incidents, i, count) for i in range(count)]
            signal.signal(signal.SIGINT, previous)
            for future in futures:
                with contextlib.suppress(KeyboardInterrupt):
                    stats = future.result()
                    if total.sim_start is None:
                        total.sim_start = stats.sim_start
                    total.merge(stats)
    finally:
        signal.signal(signal.SIGINT, previous)
    log.info("simulator processes stopped", extra={**_summary(total), "processes": count})
    return total
