"""Ground-truth scoring: `safecity verify --scenario` for every shipped scenario, against a
running ingest and alerts service, and the scorer's own arithmetic.

Each scenario runs as written (its start, incidents, faults, `[fleet]` and `[expect]`),
only faster: a higher `--speed` and a shorter `--duration` that still reach every
`within` that the run has to show. Detection delays are in simulated time, so the
speed changes nothing the rules see (they run in event time). The scenarios run one
after another: they share the broker's topic tree, so two at once would feed each
other's alerts service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import account_env

from control import scoring
from control.stack import LocalStack
from safecity import ledger
from safecity.readings import epoch_ms, format_ts
from simulators import scenario as scenarios


@dataclass(frozen=True)
class Run:
    """How a scenario is run in the test: compressed time, which transport."""

    scenario: str
    speed: float
    duration: float
    """Wall seconds: speed * duration simulated seconds."""
    transport: str = "single"


RUNS = [
    # Each run covers what its `within`s need to show, with some simulated time to spare
    # for a loaded machine (a lagging simulator covers less of the scenario in its
    # wall-clock duration). The fleets are small (30-90 devices): at these speeds the
    # simulator keeps its schedule (lag ~0.01 s at 360x), so the wall time is what the
    # scenario needs and no more.
    # Shot at minute 10 (11m allowed): 16 simulated minutes.
    Run("gunshot-yunusabad", 240, 4),
    # Crash at minute 10; congestion events by minute 20: 22 simulated minutes.
    Run("rush-hour-accident-chilanzar", 240, 5.5),
    # Inversion at 1 h, pm25_who by 2.5 h: 3 h 10 min.
    Run("winter-inversion", 1200, 9.5),
    # Match at 2 h, crowd_congestion by 2.5 h: 3 h.
    Run("stadium-event", 1000, 10.8),
    # Faults only: 20 simulated minutes, per-device accounts (the broker refuses; the
    # devices' connections take a moment of the duration) ...
    Run("spoofed-device", 240, 6, "edge"),
    # ... and the single `_simulator` connection (the ingest dead-letters).
    Run("spoofed-device", 240, 5, "single"),
    # Stuck and silent sensors: 90 simulated minutes.
    Run("sensor-fleet-degradation", 720, 7.5),
]


def replay_start(scenario: scenarios.Scenario, span_s: float, now: datetime) -> datetime:
    """The scenario's start, moved by whole 52-week steps to the latest one whose run is
    over by `now` (same weekday, hour and, to a day a year, season); without a start of
    its own, just before now."""
    span = timedelta(seconds=span_s)
    if scenario.start is None:
        return (now - span - timedelta(minutes=10)).replace(microsecond=0)
    step = timedelta(weeks=52)
    start = scenario.start
    while start + span > now:
        start -= step
    while start + step + span <= now:
        start += step
    return start


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r.scenario}-{r.transport}")
def test_shipped_scenario_is_detected_in_time_and_meets_its_expectations(
    stack: LocalStack,
    influx_db: str,
    start_ingest: Callable[..., Any],
    start_alerts: Callable[..., Any],
    tmp_path: Path,
    run: Run,
) -> None:
    sc = scenarios.load(run.scenario)
    now = datetime.now(UTC)
    start = replay_start(sc, run.speed * run.duration, now)
    replay = {
        # A past season: the services must admit its timestamps, and InfluxDB keep them.
        "SAFECITY_TS_PAST_WINDOW": str(int((now - start).total_seconds()) + 2 * 86_400),
        "SAFECITY_TS_FUTURE_WINDOW": "600",
        "SAFECITY_INFLUX__RETENTION_DURATION": "INF",
    }
    start_ingest(influx_db, **replay)
    service = start_alerts(influx_db, **replay)
    env = {
        **service.env,
        **account_env(stack, "simulator"),  # single: the `_simulator` account; edge: each device
        "SAFECITY_TRANSPORT": run.transport,
        "SAFECITY_LOG_LEVEL": "WARNING",
    }
    ledger_path = tmp_path / "ledger.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "control", "verify", "--scenario", run.scenario, "--json",
         "--speed", str(run.speed), "--duration", str(run.duration), "--start", format_ts(start),
         "--ledger", str(ledger_path), "--deadletters", str(tmp_path / "deadletter"),
         "--settle", "20"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.stdout.strip(), result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(run.scenario, run.transport, json.dumps(summary, indent=1))  # the README's figures
    entries = list(ledger.read(ledger_path))
    assert entries
    expected = scoring.expectations(sc.expect, scenarios.seconds)
    detections = summary["detections"]
    # Every [expect] entry was scored, and each one passed.
    assert [d["rule"] for d in detections] == [e.rule for e in expected]
    sections = ("events", "readings", "dead_letters", "rejected")
    assert [c["section"] for c in summary["checks"]] == [
        s for s in sections for _ in sc.expect.get(s, [])
    ]
    assert summary["missed_critical"] == []
    for d in detections:
        assert d["detected"] is True, d
        assert d["delay_s"] is not None and 0 <= d["delay_s"] <= d["stated_delay_s"], d
    for c in summary["checks"]:
        assert c["ok"] is True, c
    assert summary["false_positives"] == []
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert summary["ok"] is True
    _scenario_specifics(run, sc, start, entries, summary)


def _scenario_specifics(
    run: Run,
    sc: scenarios.Scenario,
    start: datetime,
    entries: list[ledger.LedgerEntry],
    summary: dict[str, Any],
) -> None:
    """What each scenario is about, beyond its [expect] entries."""
    by_rule = {d["rule"]: d for d in summary["detections"]}
    if run.scenario in ("gunshot-yunusabad", "rush-hour-accident-chilanzar"):
        _detected_at_the_incident(run, sc, start, entries, by_rule)
    if run.scenario == "gunshot-yunusabad":
        shots = [e for e in entries if e.channel == "event" and "/gunshot/" in e.topic]
        # Every shot report is critical: each one is covered by the gunshot incident.
        assert summary["critical_events"] >= len(shots) > 0
        assert {e.topic.split("/")[4] for e in entries} == {"gunshot", "noise"}
    if run.scenario == "rush-hour-accident-chilanzar":
        assert {e.topic.split("/")[3] for e in entries} == {"chilanzar"}
    if run.scenario == "winter-inversion":
        assert {e.topic.split("/")[4] for e in entries} == {"air_quality"}
        # pm25_who needs its full hour of PM2.5 > 75 after the inversion sets in.
        assert 3600 <= by_rule["pm25_who"]["delay_s"] <= 5400
    if run.scenario == "stadium-event":
        assert by_rule["crowd_congestion"]["delay_s"] >= 300  # its 5 min above 0.7
    if run.scenario == "spoofed-device":
        _spoofed_messages_refused(run, entries, summary)
    if run.scenario == "sensor-fleet-degradation":
        for rule, fault in (("device_stuck", "stuck"), ("device_silent", "dropout")):
            detection = by_rule[rule]
            assert detection["episodes"] >= 1 and detection["missed"] == []
            # Event time: the alert comes exactly when the rule's duration is reached.
            assert detection["delay_s"] == detection["within_s"], (rule, fault)


def _detected_at_the_incident(
    run: Run,
    sc: scenarios.Scenario,
    start: datetime,
    entries: list[ledger.LedgerEntry],
    by_rule: dict[str, dict[str, Any]],
) -> None:
    """The first report of the scenario's one incident is at its instant, and so is the alert."""
    kind, rule = ("gunshot", "gunshot") if run.scenario[0] == "g" else ("traffic", "road_accident")
    (incident,) = sc.incidents
    incident_ms = epoch_ms(start) + round(incident.at_s * 1000)
    sent = [e for e in entries if e.channel == "event" and f"/{kind}/" in e.topic]
    first_sent = min(e.ts_ms or 0 for e in sent if (e.ts_ms or 0) >= incident_ms)
    # Detectors report at the instant of the incident; the rule fires on that report.
    assert first_sent == incident_ms
    assert by_rule[rule]["delay_s"] == 0.0


def _spoofed_messages_refused(
    run: Run, entries: list[ledger.LedgerEntry], summary: dict[str, Any]
) -> None:
    """Each spoofed message refused where its transport refuses it; the honest ones flow."""
    checks = {c["what"].split()[0]: c for c in summary["checks"]}
    for fault in ("identity_mismatch", "unknown_device"):
        check = checks[fault]
        spoofed = [e for e in entries if e.fault == fault]
        assert check["found"] == len(spoofed) > 0
        if run.transport == "edge":
            # Per-device accounts: the broker refuses each one, not authorized (0x87).
            assert {e.puback for e in spoofed} == {0x87}
            assert check["detail"]["refused_by_broker"] == {"0x87": len(spoofed)}
            assert check["detail"]["dead_lettered"] == 0
        else:
            # The `_simulator` account may write any device topic: the ingest refuses.
            assert all(e.puback < 0x80 for e in spoofed)
            assert check["detail"]["refused_by_broker"] == {}
            assert check["detail"]["dead_lettered"] == len(spoofed)
    # The honest messages still flow, from the district's devices only.
    assert sum(1 for e in entries if e.good and e.acknowledged) > 100
    assert {e.topic.split("/")[3] for e in entries} == {"mirobod"}


def test_score_counts_misses_late_detections_and_false_positives() -> None:
    t0 = 1_800_000_000_000
    entry = ledger.LedgerEntry(
        "gunshot-yunusabad-001", "event",
        "safecity/v1/tashkent/yunusabad/gunshot/gunshot-yunusabad-001/event",
        5, t0 + 600_000, "h", None, 0,
    )  # fmt: skip
    late = scoring.StoredAlert(
        "gunshot", "event", "critical", "yunusabad", ("gunshot-yunusabad-001",),
        t0 + 640_000, "gunshot",
    )  # fmt: skip
    ghost = scoring.StoredAlert(
        "panic", "event", "critical", "mirobod", ("panicbutton-mirobod-001",), t0, "panic"
    )
    expect = [scoring.Expectation("gunshot", 620.0)]
    truth = [scoring.Truth("gunshot", "yunusabad", t0 + 600_000)]
    none = scoring.score(expect, truth, [entry], [], t0)
    assert not none.ok and none.missed_critical and not none.detections[0].detected
    slow = scoring.score(expect, truth, [entry], [late, ghost], t0)
    assert not slow.detections[0].detected and slow.detections[0].delay_s == 40.0
    assert slow.detections[0].stated_delay_s == 20.0
    assert slow.missed_critical == []  # covered, though too late for the expectation
    assert slow.false_positives == ["panic: devices never heard ['panicbutton-mirobod-001']"]
    # An alert from before the incident (the city's ordinary state) is not its detection.
    early = scoring.StoredAlert(
        "gunshot", "event", "critical", "yunusabad", ("gunshot-yunusabad-001",), t0, "gunshot"
    )
    assert not scoring.score(expect, truth, [entry], [early], t0).detections[0].detected


def _reading(device: str, seq: int, minute: int, fault: str | None = None, **kw: Any) -> Any:
    t0 = 1_800_000_000_000
    topic = f"safecity/v1/tashkent/chilanzar/air_quality/{device}/telemetry"
    reason = "dropout" if fault == "dropout" else kw.pop("reason", None)
    puback = 0x100 if fault == "dropout" else kw.pop("puback", 0)
    values = {"pm25": kw.pop("pm25", float(seq))}
    return ledger.LedgerEntry(
        device, "telemetry", topic, seq, t0 + minute * 60_000, f"h{device}{seq}", reason, puback,
        values, fault,
    )  # fmt: skip


def test_fault_episodes_ground_the_stuck_and_silence_rules() -> None:
    t0 = 1_800_000_000_000
    dev = "airquality-chilanzar-001"
    entries = [_reading(dev, 0, 0)]
    entries += [_reading(dev, 1 + m, 1 + m, "stuck", pm25=42.0) for m in range(31)]  # 1..31
    # The next episode right after, frozen at other values: an episode of its own.
    entries += [_reading(dev, 32 + m, 32 + m, "stuck", pm25=7.0) for m in range(3)]  # 32..34
    entries += [_reading(dev, 40, 40)]
    entries += [_reading(dev, 41 + m, 41 + m, "dropout") for m in range(20)]  # 41..60
    entries += [_reading(dev, 61, 61, pm25=62.0), _reading(dev, 62, 62, "stuck", pm25=62.0)]
    entries += [_reading(dev, 63, 63)]
    stuck = scoring.fault_episodes(entries, "stuck")
    assert [(e.onset_ms - t0, e.span_ms) for e in stuck] == [
        (60_000, 1_800_000),
        (1_920_000, 120_000),
        # The reading before had the same values already: the value is stuck from there.
        (3_660_000, 60_000),
    ]
    (silence,) = scoring.fault_episodes(entries, "dropout")
    assert (silence.onset_ms - t0, silence.span_ms, silence.finished) == (
        2_400_000,
        1_260_000,
        True,
    )
    expect = [
        scoring.Expectation("device_stuck", 1800.0, fault="stuck", lasting_s=1800.0),
        scoring.Expectation("device_silent", 1200.0, fault="dropout", lasting_s=1200.0),
    ]
    alert = scoring.StoredAlert("device_stuck", "stuck", "low", "chilanzar", (dev,), t0 + 1_860_000)
    silent = scoring.StoredAlert(
        "device_silent", "absence", "medium", "chilanzar", (dev,), t0 + 3_600_000
    )
    good = scoring.score(expect, [], entries, [alert, silent], t0)
    assert [(d.detected, d.episodes, d.delay_s) for d in good.detections] == [
        (True, 1, 1800.0),
        (True, 1, 1200.0),
    ]
    assert good.ok and good.false_positives == []
    missed = scoring.score(expect, [], entries, [silent], t0)
    assert not missed.ok and missed.detections[0].missed
    stray = scoring.StoredAlert("device_stuck", "stuck", "low", "chilanzar", (dev,), t0)
    assert scoring.score(expect, [], entries, [alert, silent, stray], t0).false_positives


def test_rejected_and_dead_letter_checks_account_for_every_message() -> None:
    dev = "airquality-chilanzar-001"
    refused = _reading(dev, 1, 1, "identity_mismatch", reason="identity_mismatch", puback=0x87)
    passed = _reading(dev, 2, 2, "identity_mismatch", reason="identity_mismatch")
    lost = _reading(dev, 3, 3, "unknown_device", reason="unknown_device")
    letters = [{"reason": "identity_mismatch", "sha256": passed.sha256}]
    items: list[dict[str, Any]] = [
        {"fault": "identity_mismatch", "min": 2},
        {"fault": "unknown_device"},
    ]
    ok, missing = scoring.check_rejected(items, [refused, passed, lost], letters)
    assert ok.ok and ok.detail["refused_by_broker"] == {"0x87": 1}
    assert ok.detail["dead_lettered"] == 1
    assert not missing.ok and missing.detail["unaccounted_count"] == 1
    bad = _reading(dev, 4, 4, "bad_json", reason="bad_json")
    (check,) = scoring.check_dead_letters([{"reason": "bad_json"}], [bad], letters)
    assert not check.ok and check.detail["missing_count"] == 1
    (check,) = scoring.check_dead_letters(
        [{"reason": "bad_json"}], [bad], [{"reason": "bad_json", "sha256": bad.sha256}]
    )
    assert check.ok and check.found == 1.0
