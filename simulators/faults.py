"""Fault injection: per-device, seeded, each fault labelled for the ground-truth ledger.

Two families:

- *value faults* keep the message well-formed (the platform must store it, and should
  notice it is wrong): ``stuck`` (values frozen), ``drift`` (a growing bias),
  ``clock_skew`` (ts off by minutes), ``flood`` (a burst of extra readings);
- *delivery/contract faults* that the ingest must refuse with a reason: every
  `REJECTS` entry maps a fault to the `RejectReason` value it must get. ``duplicate``
  (the same message twice) and ``dropout`` (a reading never sent, its seq skipped)
  carry their own label as the ledger's intended reason.

Faults draw from their own random stream per device (``device_rng(seed, id, "faults")``),
so turning them on never changes the values of the untouched readings.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

from safecity import catalogue
from safecity.readings import MAX_PAYLOAD_BYTES
from safecity.registry import Device
from simulators.generators import Values
from simulators.settings import FaultSettings
from simulators.timebase import device_rng

EPISODES = ("stuck", "drift", "dropout")
"""Faults that last for a run of readings once started."""

MESSAGE_FAULTS = (
    "clock_skew",
    "duplicate",
    "bad_json",
    "non_finite",
    "out_of_range",
    "bad_schema",
    "too_large",
    "ts_out_of_window",
    "identity_mismatch",
    "unknown_device",
    "flood",
)
"""Faults of a single reading."""

FAULTS = EPISODES + MESSAGE_FAULTS

REJECTS: dict[str, str] = {
    "bad_json": "bad_json",
    "non_finite": "non_finite",
    "out_of_range": "out_of_range",
    "bad_schema": "schema",
    "too_large": "too_large",
    "ts_out_of_window": "ts_out_of_window",
    "identity_mismatch": "identity_mismatch",
    "unknown_device": "unknown_device",
}
"""Fault -> the ingest's reject reason (`RejectReason` value) it must get."""

OUT_OF_WINDOW_TS = "2000-01-01T00:00:00.000Z"
"""Far outside any ingest window, even the ten years a replay stack allows."""


@dataclass(frozen=True, slots=True)
class Draw:
    """The fault drawn for one reading (or None), and the values to send."""

    fault: str | None
    values: Values


class DeviceFaults:
    """The fault state of one device: running episodes and its own random stream."""

    def __init__(self, settings: FaultSettings, seed: int, device: Device) -> None:
        self.settings = settings
        self.device = device
        self.rng = device_rng(seed, device.id, "faults")
        self._episode: str | None = None
        self._left = 0
        self._frozen: Values | None = None
        self._step = 0
        rates = settings.model_dump()
        self._episode_rates = [(name, float(rates[name])) for name in EPISODES if rates[name]]
        self._message_rates = [(name, float(rates[name])) for name in MESSAGE_FAULTS if rates[name]]
        self.enabled = bool(self._episode_rates or self._message_rates)

    def draw(self, values: Values) -> Draw:
        """Decide the fault of the next reading; apply value faults (stuck, drift)."""
        if not self.enabled:
            return Draw(None, values)
        if self._episode is None:
            name = self._pick(self._episode_rates)
            if name is not None:
                self._episode = name
                self._left = self.rng.randint(1, self.settings.episode_readings)
                self._frozen = dict(values)
                self._step = 0
        if self._episode is not None:
            name = self._episode
            self._left -= 1
            self._step += 1
            if self._left <= 0:
                self._episode = None
            if name == "stuck":
                assert self._frozen is not None
                return Draw("stuck", dict(self._frozen))
            if name == "drift":
                return Draw("drift", drift(self.device.kind, values, 0.02 * self._step))
            return Draw("dropout", values)
        return Draw(self._pick(self._message_rates), values)

    def _pick(self, rates: list[tuple[str, float]]) -> str | None:
        if not rates:
            return None
        u = self.rng.random()
        for name, rate in rates:
            if u < rate:
                return name
            u -= rate
        return None


def _limits(kind: str) -> dict[str, catalogue.Quantity]:
    return {q.name: q for q in catalogue.telemetry_quantities(kind)}


def drift(kind: str, values: Values, bias: float) -> Values:
    """Float values scaled by (1 + bias), kept inside the catalogue's limits."""
    limits = _limits(kind)
    out: Values = {}
    for name, value in values.items():
        q = limits.get(name)
        if isinstance(value, float) and q is not None and q.low is not None and q.high is not None:
            out[name] = round(min(max(value * (1.0 + bias), float(q.low)), float(q.high)), 2)
        else:
            out[name] = value
    return out


def _first_float(values: Values) -> str:
    for name, value in values.items():
        if isinstance(value, float):
            return name
    raise ValueError("no float value to corrupt")


def malformed(
    fault: str, kind: str, ts: str, seq: int, values: Values, rng: random.Random
) -> bytes:
    """The payload of a contract fault (bad_json, non_finite, out_of_range, ...)."""
    body: dict[str, object] = {"ts": ts, "seq": seq, "values": dict(values)}
    vals = body["values"]
    assert isinstance(vals, dict)
    if fault == "bad_json":
        text = json.dumps(body, separators=(",", ":"))
        return text[: max(1, len(text) // 2)].encode()
    if fault == "non_finite":
        vals[_first_float(values)] = rng.choice((math.nan, math.inf, -math.inf))
        return json.dumps(body, separators=(",", ":")).encode()
    if fault == "out_of_range":
        name = _first_float(values)
        q = _limits(kind)[name]
        assert q.high is not None
        vals[name] = float(q.high) * 2.0 + 1.0
    elif fault == "bad_schema":
        vals["firmware_note"] = 1.0
    elif fault == "too_large":
        body["note"] = "x" * (MAX_PAYLOAD_BYTES + 512)
    elif fault == "ts_out_of_window":
        body["ts"] = OUT_OF_WINDOW_TS
    else:
        raise ValueError(f"not a payload fault: {fault}")
    return json.dumps(body, separators=(",", ":")).encode()


def rogue_id(device_id: str) -> str:
    """An id no registry knows, derived from a real one (for `unknown_device`)."""
    return f"{device_id[:56]}-rogue"
