"""The simulated city fleet: every device of a city publishing over one MQTT connection.

Scheduling happens in *simulated* time: device ``d`` publishes its k-th reading at
``start + offset_d + (k - 1) * cadence`` (its first reading at ``start`` when
`first_burst` is on, so a fresh stack has data for every device at once; the seeded
``offset_d`` in (0, cadence] spreads the rest uniformly, no thundering herd). A
message goes out when the wall clock reaches ``wall0 + (ts - start) / speed``, so
with ``speed=60`` an hour passes per minute. The timestamp is the scheduled simulated
instant, not a measured one: the payload sequence of a device depends only on the
seed, the start and the device, never on the machine's load. If the broker cannot
keep up, the scheduler lags behind the wall clock (reported as ``lag_s``) rather
than skipping or bunching readings.

Sequence numbers: each device has one counter shared by its readings and events,
starting at ``epoch_ms(start) * 1000``. A restart (with the default start, now)
therefore never goes backwards as long as a run publishes fewer than 1000 messages
per device per millisecond of wall time, and the start of a run can be read off its
seq. Values stay below 2**53 (exact in JSON doubles) until the year 2255.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from pydantic import ValidationError

from safecity import catalogue
from safecity.errors import MqttError
from safecity.mqtt import NOT_SENT, MqttClient
from safecity.readings import Status, epoch_ms, event_model, format_ts, reading_model
from safecity.registry import City, Device
from safecity.settings import SimulatorSettings
from safecity.topics import Channel, event_topic, status_topic, telemetry_topic
from simulators.generators import device_rng, generate, maybe_event

log = logging.getLogger("simulators.fleet")

PUBLISHED = Counter(
    "safecity_sim_published",
    "Messages published by the simulator, by sensor kind and broker verdict "
    "(accepted: PUBACK < 0x80, refused: PUBACK >= 0x80, failed: not sent or no PUBACK).",
    ["kind", "result"],
)

MAX_IN_FLIGHT = 500
"""Publishes awaiting their PUBACK at once."""
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
    """One message the simulator publishes; `seq` is None for status messages."""

    device_id: str
    kind: str
    channel: Channel
    topic: str
    ts_ms: int
    seq: int | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class Sent:
    """A published message and the broker's verdict (for ledgers and tests)."""

    message: Outgoing
    result: str
    """accepted, refused or failed."""
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
    invalid: int = 0
    """Generated messages the models refused (a generator bug); never published."""
    sim_start: datetime | None = None
    sim_last: datetime | None = None
    """Simulated timestamp of the last reading scheduled."""
    wall_seconds: float = 0.0
    max_lag_s: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    """Messages published (any verdict) per kind."""

    @property
    def published(self) -> int:
        """Messages with a verdict: accepted + refused + failed."""
        return self.accepted + self.refused + self.failed


class DeviceSim:
    """One simulated device: its schedule, seq counter, random stream and payloads."""

    def __init__(
        self, city_id: str, device: Device, seed: int, start: datetime, *, first_burst: bool = True
    ) -> None:
        spec = catalogue.KINDS[device.kind]
        self.device = device
        self.kind = device.kind
        self.cadence_s = spec.cadence_s
        self.cadence_ms = max(1, round(spec.cadence_s * 1000))
        self.start_ms = epoch_ms(start)
        self.seq = seq_base(start)
        self._rng = device_rng(seed, device.id)
        # Own stream for the schedule, so it never shifts the values' noise.
        self._offset_ms = 1 + device_rng(seed, device.id, "phase").randrange(self.cadence_ms)
        self._burst = first_burst
        self.next_ms = self.start_ms if first_burst else self.start_ms + self._offset_ms
        self._model = reading_model(device.kind)
        args = (city_id, device.district, device.kind, device.id)
        self.telemetry_topic = telemetry_topic(*args)
        self.event_topic = event_topic(*args)
        self.status_topic = status_topic(*args)

    def birth(self) -> Outgoing:
        """The device's online status, stamped at the start of the run."""
        status = Status.model_validate({"ts": format_ts(from_ms(self.start_ms)), "state": "online"})
        return Outgoing(
            self.device.id,
            self.kind,
            Channel.STATUS,
            self.status_topic,
            self.start_ms,
            None,
            status.to_payload(),
        )

    def step(self) -> list[Outgoing]:
        """The reading (and rarely an event) due at `next_ms`; advances the schedule.

        Raises pydantic's ValidationError if a generator produced something the
        models refuse (a bug): the simulator never sends what the validator refuses.
        """
        ts_ms = self.next_ms
        if self._burst:
            self._burst = False
            self.next_ms = self.start_ms + self._offset_ms
        else:
            self.next_ms = ts_ms + self.cadence_ms
        t = from_ms(ts_ms)
        ts = format_ts(t)
        values = generate(self.device, self._rng, t)
        draft = maybe_event(self.device, self._rng, t, self.cadence_s)
        reading = self._model.model_validate({"ts": ts, "seq": self.seq, "values": values})
        out = [
            Outgoing(
                self.device.id,
                self.kind,
                Channel.TELEMETRY,
                self.telemetry_topic,
                ts_ms,
                self.seq,
                reading.to_payload(),
            )
        ]
        self.seq += 1
        if draft is not None:
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


def device_messages(
    city_id: str,
    device: Device,
    seed: int,
    start: datetime,
    steps: int,
    *,
    first_burst: bool = True,
) -> list[Outgoing]:
    """The birth and the first `steps` readings (plus events) a device would publish.

    Pure and deterministic: exactly what `run` sends for this device, without a broker.
    """
    sim = DeviceSim(city_id, device, seed, _check_start(start), first_burst=first_burst)
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


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))


class _Publisher:
    """QoS 1 publishes with bounded concurrency; verdicts into stats, metrics, `on_sent`."""

    def __init__(
        self,
        client: MqttClient,
        stats: FleetStats,
        max_in_flight: int,
        on_sent: Callable[[Sent], None] | None,
    ) -> None:
        self._client = client
        self._stats = stats
        self._sem = asyncio.Semaphore(max_in_flight)
        self._on_sent = on_sent
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, message: Outgoing, halt: asyncio.Event) -> bool:
        """Wait for a free slot (or `halt`), then publish in the background.

        Returns False, without publishing, if `halt` was set while waiting: a stalled
        broker must not keep the simulator from stopping.
        """
        if self._sem.locked():
            acquire = asyncio.ensure_future(self._sem.acquire())
            halted = asyncio.ensure_future(halt.wait())
            await asyncio.wait({acquire, halted}, return_when=asyncio.FIRST_COMPLETED)
            halted.cancel()
            if not acquire.done():
                acquire.cancel()
                return False
        else:
            await self._sem.acquire()
        task = asyncio.create_task(self._publish(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _publish(self, message: Outgoing) -> None:
        code = NOT_SENT
        try:
            result = await self._client.publish(message.topic, message.payload, qos=1)
            code = result.reason_code
        except MqttError:
            pass
        finally:
            # Also on cancellation at shutdown: the message is then "failed".
            self._sem.release()
            self._record(message, code)

    def _record(self, message: Outgoing, code: int) -> None:
        outcome = _outcome(code)
        stats = self._stats
        if outcome == "accepted":
            stats.accepted += 1
        elif outcome == "refused":
            stats.refused += 1
        else:
            stats.failed += 1
        stats.by_kind[message.kind] = stats.by_kind.get(message.kind, 0) + 1
        PUBLISHED.labels(message.kind, outcome).inc()
        if self._on_sent is not None:
            self._on_sent(Sent(message, outcome, code))

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for the outstanding PUBACKs."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=seconds)

    async def cancel(self) -> None:
        """Cancel what is still outstanding (counted as failed) and wait for it."""
        pending = set(self.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def run(
    settings: SimulatorSettings,
    city: City,
    *,
    stop: asyncio.Event | None = None,
    start: datetime | None = None,
    on_sent: Callable[[Sent], None] | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    progress_interval: float = PROGRESS_INTERVAL,
    drain_timeout: float = DRAIN_TIMEOUT,
) -> FleetStats:
    """Run the fleet until `stop` is set or `settings.duration` wall seconds have passed.

    Every device (or the first `settings.max_devices`) publishes its online status,
    then a reading per catalogue cadence in simulated time ``start + elapsed * speed``
    (`start` defaults to now; pass another one to replay a season: readings outside
    the ingest's timestamp window are then the caller's concern). QoS 1, with at
    most `max_in_flight` publishes awaiting their PUBACK. `on_sent` is called with
    every message and its verdict. Raises MqttError if the broker cannot be reached.
    """
    sim_start = _check_start(start if start is not None else datetime.now(UTC))
    devices = city.devices if settings.max_devices is None else city.devices[: settings.max_devices]
    sims = [
        DeviceSim(city.id, d, settings.seed, sim_start, first_burst=settings.first_burst)
        for d in devices
    ]
    stats = FleetStats(devices=len(sims), sim_start=sim_start)
    client = MqttClient(settings.mqtt, settings.client_id)
    await client.connect()
    loop = asyncio.get_running_loop()
    publisher = _Publisher(client, stats, max_in_flight, on_sent)
    speed = settings.speed
    start_ms = epoch_ms(sim_start)
    wall0 = loop.time()
    # One event for both ways of stopping: the caller's `stop` and the duration.
    halt = asyncio.Event()
    watcher = asyncio.create_task(_relay(stop, halt)) if stop is not None else None
    timer = None if settings.duration is None else loop.call_later(settings.duration, halt.set)
    log.info(
        "simulator started",
        extra={
            "city": city.id,
            "devices": len(sims),
            "speed": speed,
            "seed": settings.seed,
            "sim_start": format_ts(sim_start),
            "client_id": settings.client_id,
        },
    )
    progress = asyncio.create_task(
        _progress(stats, publisher, loop, wall0, sim_start, speed, progress_interval)
    )
    try:
        for n, sim in enumerate(sims):
            if halt.is_set() or not await publisher.send(sim.birth(), halt):
                break
            stats.statuses += 1
            if n % 100 == 99:
                await asyncio.sleep(0)
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
                if not await publisher.send(message, halt):
                    break
                if message.channel is Channel.EVENT:
                    stats.events += 1
                else:
                    stats.readings += 1
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
        await publisher.drain(drain_timeout)
        await client.disconnect()
        await publisher.cancel()
        stats.wall_seconds = loop.time() - wall0
        log.info("simulator stopped", extra=_summary(stats, publisher))
    return stats


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


def _summary(stats: FleetStats, publisher: _Publisher) -> dict[str, object]:
    return {
        "published": stats.published,
        "accepted": stats.accepted,
        "refused": stats.refused,
        "failed": stats.failed,
        "invalid": stats.invalid,
        "readings": stats.readings,
        "events": stats.events,
        "statuses": stats.statuses,
        "in_flight": len(publisher.tasks),
        "sim_time": format_ts(stats.sim_last) if stats.sim_last else None,
        "lag_s": round(stats.max_lag_s, 3),
        "wall_s": round(stats.wall_seconds, 3),
    }


async def _progress(
    stats: FleetStats,
    publisher: _Publisher,
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
        extra = _summary(stats, publisher)
        extra["rate"] = round((n - last_n) / max(now - last_t, 1e-9), 1)
        extra["wall_s"] = round(now - wall0, 1)
        extra["clock"] = format_ts(sim_start + timedelta(seconds=(now - wall0) * speed))
        log.info("simulator progress", extra=extra)
        last_n, last_t = n, now
