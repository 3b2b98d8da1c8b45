"""Ground-truth scoring of alert rules: a scenario's expectations and the simulator's
ledger against the alerts, points and dead letters the platform produced.

- `expected`: each `[expect].alerts` entry (rule, district?, within) is detected
  when an alert of that rule (in that district) started within `within` of the run's
  start, and not before the scripted incident it belongs to (nor `not_before` after
  it, for a rule that needs that long to fire: earlier alerts are the city's ordinary
  state); `delay_s` is measured from that incident (else the start), and
  `stated_delay_s` is what `within` allows after it.
- fault-driven `alerts` entries (rule, fault, kind?, lasting, within, min?): the ground
  truth is the ledger's fault episodes (`stuck`: the run of frozen readings; `dropout`:
  the silence from the last message before the dropped readings to the first after).
  Every episode of at least `lasting` must be alerted (for its device) within `within` of
  its onset, and there must be at least `min` of them.
- `events` / `readings` entries are checked in InfluxDB (what an operator sees:
  the ingest stored them), `dead_letters` in the ingest's dead-letter store (at least
  `min` of the reason, and every accepted message meant for it is there), `rejected`
  in the ledger and the store (every message of the fault was refused by the broker,
  PUBACK >= 0x80, or dead-lettered with its reason; at least `min` of them).
- `missed_critical`: acknowledged event messages from kinds whose every event type
  is critical (panic buttons, gunshot arrays, ...) not covered by an alert of an
  event rule that started within `cover_s` before, or `slack_s` after, the message.
- `false_positives`: event-rule alerts whose devices sent no event near that time
  (per the ledger), fault-rule alerts with no fault episode of their device, and any
  alert naming a device the ledger never heard from.

Pure functions of plain data; the InfluxDB reads and the run itself are in
`control.scenario`. Imports no service package.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safecity import catalogue, topics
from safecity.ledger import LedgerEntry

NOT_SENT = 0x100
"""The ledger's `puback` of a message that got no PUBACK at all (never sent or lost)."""


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
    """One `[expect].alerts` entry; with `fault`, scored against the ledger's fault episodes."""

    rule: str
    within_s: float
    district: str | None = None
    fault: str | None = None
    kind: str | None = None
    lasting_s: float = 0.0
    min: int = 1
    not_before_s: float = 0.0
    """Alerts earlier than this after the incident's start are not its doing (e.g. an
    hourly rule's, in a city that breached the limit already)."""


@dataclass(frozen=True, slots=True)
class Episode:
    """A fault episode of one device, from the ledger: its onset and how long it lasted."""

    device_id: str
    fault: str
    onset_ms: int
    span_ms: int
    finished: bool = True
    """False for a silence still going on when the ledger ends."""


@dataclass
class Detection:
    """Outcome of one expectation."""

    rule: str
    district: str | None
    within_s: float
    detected: bool
    delay_s: float | None
    stated_delay_s: float | None = None
    fault: str | None = None
    episodes: int = 0
    """Fault episodes long enough that the rule must have seen them (fault expectations)."""
    missed: list[str] = field(default_factory=list)


@dataclass
class Check:
    """Outcome of one `events`, `readings`, `dead_letters` or `rejected` entry."""

    section: str
    what: str
    ok: bool
    found: float | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """The scenario's score."""

    detections: list[Detection] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    missed_critical: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)
    alerts: int = 0
    critical_events: int = 0

    @property
    def ok(self) -> bool:
        """Every expectation met in time, every check passed, no critical event missed."""
        return (
            all(d.detected for d in self.detections)
            and all(c.ok for c in self.checks)
            and not self.missed_critical
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "ok": self.ok,
            "alerts": self.alerts,
            "critical_events": self.critical_events,
            "detections": [d.__dict__ for d in self.detections],
            "checks": [c.__dict__ for c in self.checks],
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


def _kind_of(entry: LedgerEntry) -> str:
    return entry.topic.split("/")[4] if entry.topic.count("/") >= 6 else ""


def fault_episodes(ledger: Iterable[LedgerEntry], fault: str) -> list[Episode]:
    """The episodes of a fault in the ledger, per device (runs of consecutive readings).

    `stuck` (and any value fault): from the first to the last reading of the run.
    `dropout`: the silence it caused, from the device's latest message that got through
    before the run to its first later one after it (the alerts engine's view: a rejected
    or clock-skewed message around it counts as it does there).
    """
    by_device: dict[str, list[LedgerEntry]] = {}
    for entry in ledger:
        telemetry = entry.channel == topics.Channel.TELEMETRY.value
        if telemetry and entry.seq is not None and entry.ts_ms is not None:
            by_device.setdefault(entry.device_id, []).append(entry)
    out: list[Episode] = []
    for device_id, entries in sorted(by_device.items()):
        entries.sort(key=lambda e: e.seq or 0)
        alive = [e.good and e.acknowledged and e.fault != "dropout" for e in entries]
        i = 0
        while i < len(entries):
            if entries[i].fault != fault:
                i += 1
                continue
            j = i
            while j + 1 < len(entries) and entries[j + 1].fault == fault:
                if fault == "stuck" and entries[j + 1].values != entries[i].values:
                    break  # the next episode, frozen at other values
                j += 1
            if fault == "stuck":
                # The values were the same from the reading that had them first.
                while i > 0 and entries[i - 1].values == entries[i].values:
                    i -= 1
            first, last = entries[i].ts_ms or 0, entries[j].ts_ms or 0
            if fault != "dropout":
                out.append(Episode(device_id, fault, first, last - first))
            else:
                before = [e.ts_ms or 0 for e, ok in zip(entries[:i], alive[:i], strict=True) if ok]
                seen = max(before) if before else first
                after = next(
                    (
                        e.ts_ms or 0
                        for e, ok in zip(entries[j + 1 :], alive[j + 1 :], strict=True)
                        if ok and (e.ts_ms or 0) > seen
                    ),
                    None,
                )
                end = after if after is not None else last
                out.append(Episode(device_id, fault, seen, end - seen, after is not None))
            i = j + 1
    return out


def _truth_for(exp: Expectation, truths: Sequence[Truth]) -> Truth | None:
    """The scripted incident an expectation belongs to: same district, else the first."""
    same = [t for t in truths if exp.district is not None and t.district == exp.district]
    return same[0] if same else (truths[0] if truths else None)


def _scripted(exp: Expectation, truths: Sequence[Truth], alerts: Sequence[StoredAlert],
              run_start_ms: int) -> Detection:  # fmt: skip
    truth = _truth_for(exp, truths)
    reference = truth.start_ms if truth is not None else run_start_ms
    # An alert before the incident (the city's ordinary state) is not its detection.
    earliest = reference + exp.not_before_s * 1000
    hits = sorted(
        a.started_ms
        for a in alerts
        if a.rule_id == exp.rule
        and (exp.district is None or a.district == exp.district)
        and a.started_ms >= earliest
    )
    detected_at = hits[0] if hits else None
    deadline = run_start_ms + exp.within_s * 1000
    return Detection(
        exp.rule,
        exp.district,
        exp.within_s,
        detected_at is not None and detected_at <= deadline,
        None if detected_at is None else (detected_at - reference) / 1000,
        (deadline - reference) / 1000,
    )


def _by_fault(exp: Expectation, ledger: Sequence[LedgerEntry],
              alerts: Sequence[StoredAlert]) -> Detection:  # fmt: skip
    assert exp.fault is not None
    kinds = {e.device_id: _kind_of(e) for e in ledger}
    episodes = [
        ep
        for ep in fault_episodes(ledger, exp.fault)
        if ep.finished
        and ep.span_ms >= exp.lasting_s * 1000
        and (exp.kind is None or kinds.get(ep.device_id) == exp.kind)
    ]
    delays: list[float] = []
    missed: list[str] = []
    for ep in episodes:
        hits = sorted(
            a.started_ms
            for a in alerts
            if a.rule_id == exp.rule
            and ep.device_id in a.devices
            and ep.onset_ms <= a.started_ms <= ep.onset_ms + exp.within_s * 1000
        )
        if hits:
            delays.append((hits[0] - ep.onset_ms) / 1000)
        else:
            missed.append(f"{ep.device_id} {exp.fault} from {ep.onset_ms} for {ep.span_ms} ms")
    return Detection(
        exp.rule,
        exp.district,
        exp.within_s,
        len(episodes) >= exp.min and not missed,
        max(delays) if delays else None,
        exp.within_s,
        exp.fault,
        len(episodes),
        missed,
    )


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
    entries = list(ledger)
    out = Score(alerts=len(alerts))
    for exp in expectations:
        if exp.fault is None:
            out.detections.append(_scripted(exp, truths, alerts, run_start_ms))
        else:
            out.detections.append(_by_fault(exp, entries, alerts))
    crit = critical_kinds()
    heard: set[str] = set()
    events_by_device: dict[str, list[int]] = {}
    for entry in entries:
        heard.add(entry.device_id)
        if entry.channel != topics.Channel.EVENT.value or entry.ts_ms is None:
            continue
        if not entry.good or not entry.acknowledged:
            continue
        events_by_device.setdefault(entry.device_id, []).append(entry.ts_ms)
        kind = _kind_of(entry)
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
    fault_rules = {e.rule: e for e in expectations if e.fault is not None}
    episodes = {rule: fault_episodes(entries, exp.fault or "") for rule, exp in fault_rules.items()}
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
        elif a.rule_id in fault_rules and not any(
            ep.device_id in a.devices
            and ep.onset_ms
            <= a.started_ms
            <= ep.onset_ms + max(ep.span_ms, fault_rules[a.rule_id].within_s * 1000)
            for ep in episodes[a.rule_id]
        ):
            out.false_positives.append(
                f"{a.rule_id}: no {fault_rules[a.rule_id].fault} episode of {list(a.devices)}"
                f" at {a.started_ms}"
            )
    return out


# --- checks of the other [expect] sections --------------------------------------------


def _letters_by_hash(letters: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for record in letters:
        out.setdefault(str(record.get("sha256", "")), set()).add(str(record.get("reason", "?")))
    return out


def check_dead_letters(
    items: Iterable[dict[str, Any]],
    ledger: Sequence[LedgerEntry],
    letters: Sequence[dict[str, Any]],
) -> list[Check]:
    """`dead_letters` entries: at least `min` of the reason, and none the ledger owes missing."""
    by_hash = _letters_by_hash(letters)
    counts = Counter(str(r.get("reason", "?")) for r in letters)
    out = []
    for item in items:
        reason, want = str(item["reason"]), int(item.get("min", 1))
        owed = [e for e in ledger if e.acknowledged and e.intended_reason == reason]
        missing = [
            f"{e.device_id} seq {e.seq}" for e in owed if reason not in by_hash.get(e.sha256, ())
        ]
        out.append(
            Check(
                "dead_letters",
                f"{reason} >= {want}",
                counts[reason] >= want and not missing,
                float(counts[reason]),
                {"sent": len(owed), "missing": missing[:5], "missing_count": len(missing)},
            )
        )
    return out


def check_rejected(
    items: Iterable[dict[str, Any]],
    ledger: Sequence[LedgerEntry],
    letters: Sequence[dict[str, Any]],
) -> list[Check]:
    """`rejected` entries: every message of the fault refused by the broker or dead-lettered."""
    by_hash = _letters_by_hash(letters)
    out = []
    for item in items:
        fault, want = str(item["fault"]), int(item.get("min", 1))
        sent = [e for e in ledger if e.fault == fault]
        refused: Counter[str] = Counter()
        dead = 0
        unaccounted: list[str] = []
        for e in sent:
            if 0x80 <= e.puback < NOT_SENT:
                refused[f"0x{e.puback:02x}"] += 1
            elif e.acknowledged and e.intended_reason in by_hash.get(e.sha256, ()):
                dead += 1
            else:
                verdict = "no puback" if e.puback >= NOT_SENT else "accepted, not dead-lettered"
                unaccounted.append(f"{e.device_id} seq {e.seq} on {e.topic}: {verdict}")
        out.append(
            Check(
                "rejected",
                f"{fault} >= {want}",
                len(sent) >= want and not unaccounted,
                float(len(sent)),
                {
                    "refused_by_broker": dict(sorted(refused.items())),
                    "dead_lettered": dead,
                    "unaccounted": unaccounted[:5],
                    "unaccounted_count": len(unaccounted),
                },
            )
        )
    return out


def expectations(expect: dict[str, Any], seconds: Any) -> list[Expectation]:
    """The `[expect].alerts` entries of a scenario."""
    return [
        Expectation(
            str(e["rule"]),
            float(seconds(e["within"])),
            e.get("district"),
            e.get("fault"),
            e.get("kind"),
            float(seconds(e["lasting"])) if "lasting" in e else 0.0,
            int(e.get("min", 1)),
            float(seconds(e["not_before"])) if "not_before" in e else 0.0,
        )
        for e in expect.get("alerts", [])
    ]
