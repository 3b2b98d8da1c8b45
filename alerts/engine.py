"""The rule engine: pure, in event time (device ts), edge-triggered.

`observe_*` take validated messages and return what changed: a `Signal` when a
rule's condition becomes true (or an event matches), a `Clear` when a condition
that had fired ends. Time is the devices' own `ts`, never the wall clock, so a
replay at any speed gives the same signals. Deduplication into incidents is the
caller's (`alerts.book`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from alerts.rules import (
    AbsenceRule,
    AnyRule,
    CompositeRule,
    EventRule,
    RateRule,
    RuleSet,
    StuckRule,
    ThresholdRule,
)
from safecity.citygen import contains
from safecity.registry import City, Device

Location = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Signal:
    """A rule's condition became true (or an event matched) at `at_ms`."""

    rule: AnyRule
    place: str
    district: str
    devices: tuple[str, ...]
    at_ms: int
    value: float | None
    location: Location
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Clear:
    """A fired condition ended at `at_ms` for this place."""

    rule: AnyRule
    place: str
    at_ms: int


def distance_m(a: Location, b: Location) -> float:
    """Great-circle distance in metres between two (lon, lat) points."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6_371_000 * math.asin(math.sqrt(min(1.0, h)))


@dataclass
class _Series:
    """Per (rule, device) memory of a reading rule."""

    since_ms: int | None = None
    last: float | None = None
    window: deque[tuple[int, float]] = field(default_factory=deque)


class Engine:
    """Evaluates a rule set over a stream of readings, events and statuses."""

    def __init__(self, rules: RuleSet, city: City) -> None:
        self.rules = rules
        self.city = city
        self._series: dict[tuple[str, str], _Series] = {}
        # Which devices currently breach each (rule, place): a place clears when none do.
        self.firing: dict[tuple[str, str], set[str]] = {}
        self._last_seen: dict[str, int] = {}
        self._silent: set[tuple[str, str]] = set()
        self._recent: dict[str, deque[Signal]] = {}
        self.watermark_ms = 0
        self._composites = [r for r in rules.rules if isinstance(r, CompositeRule)]
        self._components = {ref for r in self._composites for ref in r.all_of}

    # --- helpers ---------------------------------------------------------------

    def _place(self, rule: AnyRule, device: Device | None, district: str) -> str:
        if rule.group_by == "device" and device is not None:
            return device.id
        if rule.group_by == "district":
            return district
        return self.city.id

    def _signal(
        self,
        rule: AnyRule,
        device: Device,
        at_ms: int,
        value: float | None,
        *,
        location: Location | None = None,
        district: str | None = None,
        event: str | None = None,
    ) -> list[Signal]:
        where = district or device.district
        sig = Signal(
            rule,
            self._place(rule, device, where),
            where,
            (device.id,),
            at_ms,
            value,
            location or device.location,
            event,
        )
        return [sig, *self._compose(sig)]

    def _rise(
        self, rule: AnyRule, device: Device, at_ms: int, value: float | None
    ) -> list[Signal | Clear]:
        """Mark the device firing; signal only when it was not firing (edge trigger)."""
        key = (rule.id, self._place(rule, device, device.district))
        devices = self.firing.setdefault(key, set())
        if device.id in devices:
            return []
        devices.add(device.id)
        return list(self._signal(rule, device, at_ms, value))

    def _fall(self, rule: AnyRule, device: Device, at_ms: int) -> list[Signal | Clear]:
        """Unmark the device; clear the place when no device of it breaches any more."""
        place = self._place(rule, device, device.district)
        devices = self.firing.get((rule.id, place))
        if not devices or device.id not in devices:
            return []
        devices.discard(device.id)
        if devices:
            return []
        del self.firing[(rule.id, place)]
        return [Clear(rule, place, at_ms)]

    def seed_firing(self, rule_id: str, place: str, devices: tuple[str, ...]) -> None:
        """Rebuild a firing condition from an unresolved stored incident (after a restart)."""
        self.firing.setdefault((rule_id, place), set()).update(devices)

    def _advance(self, at_ms: int) -> None:
        self.watermark_ms = max(self.watermark_ms, at_ms)

    # --- readings --------------------------------------------------------------

    def observe_reading(
        self, device: Device, at_ms: int, values: dict[str, float | int | bool | str]
    ) -> list[Signal | Clear]:
        """Evaluate the reading rules of the device's kind."""
        out: list[Signal | Clear] = self._seen(device, at_ms)
        self._advance(at_ms)
        for rule in self.rules.rules:
            if not isinstance(rule, ThresholdRule | RateRule | StuckRule):
                continue
            if rule.kind != device.kind or not rule.scope.matches(device.district, device.id):
                continue
            raw = values.get(rule.field)
            if raw is None or isinstance(raw, bool | str):
                continue
            value = float(raw)
            state = self._series.setdefault((rule.id, device.id), _Series())
            if isinstance(rule, ThresholdRule):
                out += self._threshold(rule, state, device, at_ms, value)
            elif isinstance(rule, RateRule):
                out += self._rate(rule, state, device, at_ms, value)
            else:
                out += self._stuck(rule, state, device, at_ms, value)
        return out

    def _threshold(
        self, rule: ThresholdRule, state: _Series, device: Device, at_ms: int, value: float
    ) -> list[Signal | Clear]:
        need_ms = rule.for_ * 1000
        if rule.stat == "mean":
            state.window.append((at_ms, value))
            while state.window and state.window[0][0] < at_ms - need_ms:
                state.window.popleft()
            covered = at_ms - state.window[0][0] >= need_ms * 0.9 if state.window else False
            mean = sum(v for _, v in state.window) / len(state.window)
            if covered and rule.holds(mean):
                return self._rise(rule, device, at_ms, round(mean, 3))
            return self._fall(rule, device, at_ms) if not rule.holds(mean) else []
        if not rule.holds(value):
            state.since_ms = None
            return self._fall(rule, device, at_ms)
        if state.since_ms is None:
            state.since_ms = at_ms
        if at_ms - state.since_ms >= need_ms:
            return self._rise(rule, device, at_ms, value)
        return []

    def _rate(
        self, rule: RateRule, state: _Series, device: Device, at_ms: int, value: float
    ) -> list[Signal | Clear]:
        state.window.append((at_ms, value))
        while state.window and state.window[0][0] < at_ms - rule.window * 1000:
            state.window.popleft()
        values = [v for _, v in state.window]
        if rule.rise is not None:
            change = value - min(values)
            hit = change >= rule.rise
        else:
            change = max(values) - value
            hit = change >= float(rule.fall or 0)
        if hit:
            return self._rise(rule, device, at_ms, round(change, 3))
        return self._fall(rule, device, at_ms)

    def _stuck(
        self, rule: StuckRule, state: _Series, device: Device, at_ms: int, value: float
    ) -> list[Signal | Clear]:
        if state.last != value:
            state.last, state.since_ms = value, at_ms
            return self._fall(rule, device, at_ms)
        assert state.since_ms is not None
        if at_ms - state.since_ms >= rule.for_ * 1000:
            return self._rise(rule, device, at_ms, value)
        return []

    # --- events ----------------------------------------------------------------

    def observe_event(
        self,
        device: Device,
        at_ms: int,
        event_type: str,
        details: dict[str, float | int | bool | str],
    ) -> list[Signal | Clear]:
        """Evaluate the event rules; a located event (lat/lon) counts where it happened."""
        out: list[Signal | Clear] = self._seen(device, at_ms)
        self._advance(at_ms)
        location: Location | None = None
        district: str | None = None
        lat, lon = details.get("lat"), details.get("lon")
        if isinstance(lat, float | int) and isinstance(lon, float | int):
            location = (float(lon), float(lat))
            district = next(
                (d.id for d in self.city.districts if contains(d.polygon, *location)), None
            )
        for rule in self.rules.rules:
            if not isinstance(rule, EventRule) or rule.event != event_type:
                continue
            if not rule.scope.matches(district or device.district, device.id):
                continue
            confidence = details.get("confidence")
            if (
                rule.min_confidence is not None
                and isinstance(confidence, float | int)
                and confidence < rule.min_confidence
            ):
                continue
            value = _detail_value(details)
            out += self._signal(
                rule, device, at_ms, value, location=location, district=district, event=event_type
            )
        return out

    # --- absence ---------------------------------------------------------------

    def observe_status(self, device: Device, at_ms: int, online: bool) -> list[Signal | Clear]:
        """A birth/will status: online counts as a sign of life; offline does not."""
        self._advance(at_ms)
        return self._seen(device, at_ms) if online else []

    def _seen(self, device: Device, at_ms: int) -> list[Signal | Clear]:
        previous = self._last_seen.get(device.id)
        if previous is not None and at_ms <= previous:
            return []
        self._last_seen[device.id] = at_ms
        out: list[Signal | Clear] = []
        for rule in self.rules.rules:
            if not isinstance(rule, AbsenceRule):
                continue
            if (rule.id, device.id) in self._silent:
                self._silent.discard((rule.id, device.id))
                out += self._fall(rule, device, at_ms)
            elif (
                previous is not None
                and at_ms - previous >= rule.silent_for * 1000
                and (not rule.kinds or device.kind in rule.kinds)
                and rule.scope.matches(device.district, device.id)
            ):
                # The device was silent for longer than allowed, though no `tick` saw it:
                # the message that ends the silence came in the same batch as the ones that
                # moved the watermark past the limit. It happened all the same (event time,
                # not batch boundaries, decides): signal it where `tick` would have, and
                # clear it now.
                out += self._rise(rule, device, previous + int(rule.silent_for * 1000), None)
                out += self._fall(rule, device, at_ms)
        return out

    def tick(self) -> list[Signal | Clear]:
        """Devices silent for longer than an absence rule allows, as of the watermark."""
        out: list[Signal | Clear] = []
        for rule in self.rules.rules:
            if not isinstance(rule, AbsenceRule):
                continue
            limit_ms = rule.silent_for * 1000
            for device_id, last in self._last_seen.items():
                if self.watermark_ms - last < limit_ms or (rule.id, device_id) in self._silent:
                    continue
                device = self.city.device(device_id)
                if device is None or (rule.kinds and device.kind not in rule.kinds):
                    continue
                if not rule.scope.matches(device.district, device.id):
                    continue
                self._silent.add((rule.id, device_id))
                out += self._rise(rule, device, last + int(limit_ms), None)
        return out

    # --- composites ------------------------------------------------------------

    def _compose(self, sig: Signal) -> list[Signal]:
        """Composite signals that this component signal completes."""
        if sig.rule.id not in self._components:
            return []
        out: list[Signal] = []
        recent = self._recent.setdefault(sig.rule.id, deque())
        recent.append(sig)
        for comp in self._composites:
            if sig.rule.id not in comp.all_of:
                continue
            horizon = sig.at_ms - comp.within * 1000
            for q in self._recent.values():
                while q and q[0].at_ms < horizon - comp.within * 1000:
                    q.popleft()
            partners: list[Signal] = []
            for other in comp.all_of:
                if other == sig.rule.id:
                    continue
                match = next(
                    (
                        s
                        for s in reversed(self._recent.get(other, ()))
                        if abs(s.at_ms - sig.at_ms) <= comp.within * 1000
                        and distance_m(s.location, sig.location) <= comp.radius_m
                    ),
                    None,
                )
                if match is None:
                    break
                partners.append(match)
            else:
                devices = tuple(dict.fromkeys(d for s in (sig, *partners) for d in s.devices))
                place = {"device": devices[0], "district": sig.district, "city": self.city.id}
                out.append(
                    Signal(
                        comp,
                        place[comp.group_by],
                        sig.district,
                        devices,
                        max(s.at_ms for s in (sig, *partners)),
                        sig.value,
                        sig.location,
                        sig.event or next((p.event for p in partners if p.event), None),
                    )
                )
        return out


def _detail_value(details: dict[str, float | int | bool | str]) -> float | None:
    """The headline number of an event's details (value, count, rounds, ...), if any."""
    for key in ("value", "count", "rounds", "casualties", "speed"):
        raw = details.get(key)
        if isinstance(raw, float | int) and not isinstance(raw, bool):
            return float(raw)
    return None
