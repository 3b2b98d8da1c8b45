"""One simulated device: its schedule, seq counter, random streams and payloads.

Scheduling happens in *simulated* time: device ``d`` publishes its k-th reading at
``start + offset_d + (k - 1) * cadence`` (its first reading at ``start`` when
`first_burst` is on, so a fresh stack has data for every device at once; the seeded
``offset_d`` in (0, cadence] spreads the rest uniformly, no thundering herd). The
timestamp is the scheduled simulated instant, not a measured one: the payload
sequence of a device depends only on the seed, the start, the incidents and the
fault rates, never on the machine's load.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from safecity import catalogue
from safecity.readings import (
    Status,
    epoch_ms,
    event_model,
    format_epoch_ms,
    format_ts,
    from_epoch_ms,
    reading_model,
)
from safecity.registry import Device
from safecity.topics import Channel, event_topic, status_topic, telemetry_topic
from simulators.events import EventDraft, maybe_event
from simulators.faults import REJECTS, DeviceFaults, malformed, rogue_id
from simulators.generators import Values, generate, profile_of, rated_power
from simulators.incidents import Scene
from simulators.outgoing import Outgoing, seq_base
from simulators.sites import Profile
from simulators.timebase import device_rng, stable_int, step_rng

# Incident types whose detectors report at once (see DeviceSim._wakes).
IMMEDIATE = frozenset({"gunshot", "road_accident"})
# The wakes of every device without any (most): shared, never mutated (only a non-empty
# list is popped from).
_NO_WAKES: list[int] = []


class DeviceSim:
    """One simulated device: its schedule, seq counter, random streams and payloads."""

    # A fleet holds thousands: no instance dict.
    __slots__ = (
        "_burst", "_command_rng", "_faults", "_model", "_offset_ms", "_others", "_prev_ms",
        "_reading_ms", "_rng_key", "_scene", "_seed", "_wakes", "cadence_ms", "cadence_s",
        "city_id", "device", "kind", "level", "profile", "seq", "start_ms", "telemetry_topic",
    )  # fmt: skip

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
        profile: Profile | None = None,
    ) -> None:
        spec = catalogue.KINDS[device.kind]
        self.device = device
        self.profile = profile if profile is not None else profile_of(device)
        self.kind = device.kind
        self.city_id = city_id
        self.cadence_s = spec.cadence_s
        self.cadence_ms = max(1, round(spec.cadence_s * 1000))
        self.start_ms = epoch_ms(start)
        self.seq = seq_base(start)
        # The key of its values' stream: each step draws from `step_rng(key, ts)`.
        self._rng_key = stable_int("rng", seed, device.id, "values")
        # Own stream for the schedule, so it never shifts the values' noise.
        self._offset_ms = 1 + device_rng(seed, device.id, "phase").randrange(self.cadence_ms)
        self._burst = first_burst
        self._reading_ms = self.start_ms if first_burst else self.start_ms + self._offset_ms
        # Detectors (acoustic nodes, traffic cameras) report a scripted incident the
        # moment it happens, not at their next health reading minutes later.
        self._wakes = (
            sorted(
                i.start_ms
                for i in (scene.scripted if scene is not None else ())
                if i.type in IMMEDIATE and i.start_ms >= self.start_ms and i.reach(device) > 0
            )
            or _NO_WAKES
        )
        self._model = reading_model(device.kind)
        self._scene = scene
        self._prev_ms: int | None = None
        self._faults = faults if faults is not None and faults.enabled else None
        # Shared by the whole fleet (one list, not one per device): filtered when used.
        self._others = others or []
        # What operators commanded (`simulators.actuators`): a streetlight's dimming level.
        self.level: int | None = None
        self._seed = seed
        self._command_rng: random.Random | None = None
        # Sent every reading; the event and status topics are made when needed.
        self.telemetry_topic = telemetry_topic(city_id, device.district, device.kind, device.id)

    @property
    def event_topic(self) -> str:
        """The device's event topic."""
        d = self.device
        return event_topic(self.city_id, d.district, d.kind, d.id)

    @property
    def status_topic(self) -> str:
        """The device's status topic."""
        d = self.device
        return status_topic(self.city_id, d.district, d.kind, d.id)

    def status(self, ts_ms: int, state: str, reason: str | None = None) -> Outgoing:
        """A status message (birth: online; will/farewell: offline)."""
        body: dict[str, Any] = {"ts": format_epoch_ms(ts_ms), "state": state}
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

    def warm(self) -> None:
        """Compute the values of the next reading once, for nothing: its device's processes
        are stepped from their anchors (a hundred knots or more each, most of a first
        reading's cost) into the cache, so `step` then costs what a later reading does.
        Changes nothing `step` sends (the values are a pure function of the instant)."""
        ts_ms = self._reading_ms
        generate(self.profile, step_rng(self._rng_key, ts_ms), from_epoch_ms(ts_ms))

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
        t = from_epoch_ms(ts_ms)
        rng = step_rng(self._rng_key, ts_ms)
        values = generate(self.profile, rng, t)
        drafts: list[EventDraft] = []
        draft = maybe_event(self.profile, rng, t, self.cadence_s)
        if draft is not None:
            drafts.append(draft)
        if self._scene is not None:
            values = self._scene.apply(self.device, values, ts_ms)
            # Since the previous reading (the first burst breaks the regular spacing).
            since = ts_ms - self._prev_ms if self._prev_ms is not None else self.cadence_ms
            drafts.extend(self._scene.events(self.device, ts_ms, since))
        self._prev_ms = ts_ms
        return self._reading(ts_ms, self._commanded(values)) + self._events(ts_ms, drafts)

    def set_cadence(self, seconds: float) -> None:
        """Report every `seconds` from the next reading on (a `set_interval` command)."""
        self.cadence_s = seconds
        self.cadence_ms = max(1, round(seconds * 1000))

    def report_now(self, ts_ms: int) -> list[Outgoing]:
        """A reading out of schedule, at `ts_ms` (what a device sends when its state changed)."""
        ts_ms = max(ts_ms, (self._prev_ms or 0) + 1)
        if self._command_rng is None:
            # Made at the first command: most devices never get one (2.5 KB each).
            self._command_rng = device_rng(self._seed, self.device.id, "commands")
        values = generate(self.profile, self._command_rng, from_epoch_ms(ts_ms))
        return [self._good(ts_ms, self._commanded(values))]

    def _commanded(self, values: Values) -> Values:
        if self.level is None or self.kind != "streetlight":
            return values
        rated = rated_power(self.profile)
        if self.level == 0:
            state, power = "off", 0.5
        else:
            state = "on" if self.level == 100 else "dimmed"
            power = rated * self.level / 100 if values.get("status") == "ok" else 1.0
        return {**values, "power_state": state, "power": round(power, 1), "level": self.level}

    def _detect(self, ts_ms: int) -> list[Outgoing]:
        """Events only, at the instant of a scripted incident."""
        assert self._scene is not None
        since = ts_ms - self._prev_ms if self._prev_ms is not None else 1
        self._prev_ms = ts_ms
        return self._events(ts_ms, self._scene.events(self.device, ts_ms, max(1, since)))

    def _events(self, ts_ms: int, drafts: list[EventDraft]) -> list[Outgoing]:
        out: list[Outgoing] = []
        t = from_epoch_ms(ts_ms)
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
            {"ts": format_epoch_ms(ts_ms), "seq": self.seq, "values": values}
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
            elif others := [d for d in self._others if d.kind != self.kind]:
                # Another device's id under this device's district and kind.
                other = rng.choice(others)
                topic = telemetry_topic(self.city_id, self.device.district, self.kind, other.id)
            else:
                return [good]
            return [replace(good, topic=topic, values=None, intended_reason=REJECTS[fault])]
        ts = format_epoch_ms(ts_ms)
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
        city_id, device, seed, check_start(start), first_burst=first_burst, scene=scene,
        faults=faults, others=others,
    )  # fmt: skip
    out = [sim.birth()]
    for _ in range(steps):
        out.extend(sim.step())
    return out


def check_start(start: datetime) -> datetime:
    """An aware start, truncated to milliseconds as on the wire (ValueError if naive)."""
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be a timezone-aware datetime")
    # Millisecond precision, as on the wire.
    return from_epoch_ms(epoch_ms(start.astimezone(UTC)))
