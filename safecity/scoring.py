"""Ground-truth scoring of alert rules: a scenario's expectations and the simulator's
ledger against the alerts that were stored.

- `expected`: each `[expect].alerts` entry (rule, district?, within) is detected
  when an alert of that rule (in that district) started within `within` of the run's
  start; `delay_s` is measured from the scripted incident it belongs to (else the start).
- `missed_critical`: acknowledged event messages from kinds whose every event type
  is critical (panic buttons, gunshot arrays, ...) not covered by an alert of an
  event rule that started within `cover_s` before, or `slack_s` after, the message.
- `false_positives`: event-rule alerts whose devices sent no event near that time
  (per the ledger), and any alert naming a device the ledger never heard from.

Pure functions of plain data; imports no service package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safecity import catalogue, schema, topics
from safecity.ledger import LedgerEntry


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert as read back from the `alerts` measurement."""

    rule_id: str
    rule_type: str
    severity: str
    district: str
    devices: tuple[str, ...]
    started_ms: int
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Truth:
    """A scripted incident of the scenario: its type, district and start (ms)."""

    type: str
    district: str | None
    start_ms: int


@dataclass(frozen=True, slots=True)
class Expectation:
    """One `[expect].alerts` entry."""

    rule: str
    within_s: float
    district: str | None = None


@dataclass
class Detection:
    """Outcome of one expectation."""

    rule: str
    district: str | None
    within_s: float
    detected: bool
    delay_s: float | None


@dataclass
class Score:
    """The scenario's score."""

    detections: list[Detection] = field(default_factory=list)
    missed_critical: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)
    alerts: int = 0
    critical_events: int = 0

    @property
    def ok(self) -> bool:
        """Every expectation met in time, and no critical event missed."""
        return all(d.detected for d in self.detections) and not self.missed_critical

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "ok": self.ok,
            "alerts": self.alerts,
            "critical_events": self.critical_events,
            "detections": [d.__dict__ for d in self.detections],
            "missed_critical": self.missed_critical,
            "false_positives": self.false_positives,
        }


def critical_kinds() -> set[str]:
    """Kinds whose every event type is critical (a missed one is a missed critical event)."""
    return {
        k.name
        for k in catalogue.KINDS.values()
        if k.emits_events
        and all(
            catalogue.EVENT_TYPES[e].default_severity is catalogue.Severity.CRITICAL
            for e in k.emits_events
        )
    }


def score(
    expectations: Sequence[Expectation],
    truths: Sequence[Truth],
    ledger: Iterable[LedgerEntry],
    alerts: Sequence[StoredAlert],
    run_start_ms: int,
    *,
    cover_s: float = 1800.0,
    slack_s: float = 60.0,
) -> Score:
    """Score the stored alerts of one run against its expectations and ledger."""
    out = Score(alerts=len(alerts))
    for exp in expectations:
        hits = sorted(
            a.started_ms
            for a in alerts
            if a.rule_id == exp.rule and (exp.district is None or a.district == exp.district)
        )
        hits = [t for t in hits if t >= run_start_ms]
        detected_at = hits[0] if hits else None
        truth = next(
            (t for t in truths if exp.district is None or t.district == exp.district), None
        )
        reference = truth.start_ms if truth is not None else run_start_ms
        ok = detected_at is not None and detected_at <= run_start_ms + exp.within_s * 1000
        out.detections.append(
            Detection(
                exp.rule,
                exp.district,
                exp.within_s,
                ok,
                None if detected_at is None else (detected_at - reference) / 1000,
            )
        )
    crit = critical_kinds()
    heard: set[str] = set()
    events_by_device: dict[str, list[int]] = {}
    for entry in ledger:
        heard.add(entry.device_id)
        if entry.channel != topics.Channel.EVENT.value or entry.ts_ms is None:
            continue
        if not entry.good or not entry.acknowledged:
            continue
        events_by_device.setdefault(entry.device_id, []).append(entry.ts_ms)
        kind = entry.topic.split("/")[4] if entry.topic.count("/") >= 6 else ""
        if kind not in crit:
            continue
        out.critical_events += 1
        emitted = set(catalogue.KINDS[kind].emits_events)
        covered = any(
            a.rule_type == "event"
            and a.event in emitted
            and entry.ts_ms - cover_s * 1000 <= a.started_ms <= entry.ts_ms + slack_s * 1000
            for a in alerts
        )
        if not covered:
            out.missed_critical.append(f"{entry.device_id} seq {entry.seq} at {entry.ts_ms}")
    for a in alerts:
        strangers = [d for d in a.devices if d not in heard]
        if strangers:
            out.false_positives.append(f"{a.rule_id}: devices never heard {strangers}")
        elif a.rule_type == "event" and not any(
            abs(t - a.started_ms) <= slack_s * 1000
            for d in a.devices
            for t in events_by_device.get(d, ())
        ):
            out.false_positives.append(f"{a.rule_id}: no event sent by {list(a.devices)}")
    return out


def alerts_from_rows(rows: Iterable[dict[str, Any]]) -> list[StoredAlert]:
    """StoredAlerts from `alerts` measurement rows (time in ms)."""
    return [
        StoredAlert(
            rule_id=str(r["rule_id"]),
            rule_type=str(r.get("rule_type") or ""),
            severity=str(r["severity"]),
            district=str(r["district"]),
            devices=tuple(d for d in str(r.get("devices") or "").split(",") if d),
            started_ms=int(r["time"]),
            event=r.get("event") or None,
        )
        for r in rows
    ]


def _expectations(expect: dict[str, Any], seconds: Any) -> list[Expectation]:
    return [
        Expectation(str(e["rule"]), float(seconds(e["within"])), e.get("district"))
        for e in expect.get("alerts", [])
    ]


async def stored_alerts(influx: Any, city: str, start_ms: int, end_ms: int) -> list[StoredAlert]:
    """The alerts of a city started in [start_ms, end_ms], from InfluxDB."""
    # Integers we computed ourselves: safe to inline (InfluxQL has no bound time literal).
    window = f"time >= {int(start_ms) * 1_000_000} AND time <= {int(end_ms) * 1_000_000}"
    # The alerts live in their retention policy (`incidents`); `source` reads it.
    query = f'SELECT * FROM {schema.source(schema.ALERTS)} WHERE "city" = $city AND {window}'  # noqa: S608
    series = await influx.query(query, {"city": city})
    rows: list[dict[str, Any]] = []
    for s in series:
        rows.extend(s.rows())
    return alerts_from_rows(rows)


def run_scenario(
    scenario: Any,
    seconds: Any,
    city: Any,
    influx_settings: Any,
    *,
    start: Any,
    speed: float,
    duration: float,
    ledger_path: Any,
    settle_s: float = 30.0,
    registry: Any = None,
) -> Score:
    """Run a scenario's simulator (a child process), wait for its alerts, and score them.

    `scenario` is a loaded simulators.scenario.Scenario (passed in: this module imports no
    service package); the broker, InfluxDB and a running alerts service come from the
    environment, as for `safecity simulate` and `safecity alerts`.
    """
    import asyncio
    import os
    import subprocess
    import sys
    import time

    from safecity import ledger as ledger_mod
    from safecity.influx import InfluxClient
    from safecity.readings import epoch_ms, format_ts

    command = [
        sys.executable, "-m", "safecity", "simulate",
        "--scenario", str(scenario.path),
        "--ledger", str(ledger_path),
        "--start", format_ts(start),
        "--speed", str(speed),
        "--duration", str(duration),
    ]  # fmt: skip
    if registry is not None:
        command += ["--registry", str(registry)]
    subprocess.run(command, check=True, env=dict(os.environ), timeout=duration + 120)
    start_ms = epoch_ms(start)
    end_ms = start_ms + int(duration * speed * 1000) + 60_000
    expectations = _expectations(scenario.expect, seconds)
    truths = [Truth(i.type, i.district, i.start_ms) for i in scenario.resolve(city, start)]
    entries = list(ledger_mod.read(ledger_path))

    async def collect() -> Score:
        client = InfluxClient(influx_settings)
        try:
            deadline = time.monotonic() + settle_s
            while True:
                alerts = await stored_alerts(client, city.id, start_ms, end_ms)
                result = score(expectations, truths, entries, alerts, start_ms)
                if result.ok or time.monotonic() >= deadline:
                    return result
                await asyncio.sleep(1.0)
        finally:
            await client.close()

    return asyncio.run(collect())
