"""The rule engine in event time: each rule type, scopes, edge triggering and the book's dedup."""

from __future__ import annotations

from alerts import rules
from alerts.book import Book
from alerts.engine import Clear, Engine, Signal
from safecity import registry

CITY = registry.default_city()
HEAD = "city: tashkent\nrules:\n"
MIN = 60_000
T0 = 1_800_000_000_000


def engine(body: str) -> Engine:
    return Engine(rules.loads(HEAD + body), CITY)


def signals(changes: list[Signal | Clear]) -> list[Signal]:
    return [c for c in changes if isinstance(c, Signal)]


AQ = CITY.select(kind="air_quality")[0]
AQ2 = CITY.select(kind="air_quality")[1]
CROWD = CITY.select(kind="crowd")[0]
PANIC = CITY.select(kind="panic_button")[0]


def test_threshold_needs_its_duration_then_fires_once_and_clears() -> None:
    eng = engine(
        "  - id: pm\n    type: threshold\n    kind: air_quality\n    field: pm25\n"
        "    above: 75\n    for: 60m\n    severity: medium\n    message: m\n"
    )
    fired: list[Signal] = []
    for minute in range(0, 61, 5):
        fired += signals(eng.observe_reading(AQ, T0 + minute * MIN, {"pm25": 90.0}))
    assert [(s.rule.id, s.at_ms, s.value) for s in fired] == [("pm", T0 + 60 * MIN, 90.0)]
    # Still breaching: no second signal (edge-triggered).
    assert signals(eng.observe_reading(AQ, T0 + 65 * MIN, {"pm25": 95.0})) == []
    cleared = eng.observe_reading(AQ, T0 + 70 * MIN, {"pm25": 20.0})
    assert [(type(c).__name__, c.at_ms) for c in cleared] == [("Clear", T0 + 70 * MIN)]
    # A dip resets the duration.
    eng.observe_reading(AQ2, T0, {"pm25": 90.0})
    eng.observe_reading(AQ2, T0 + 30 * MIN, {"pm25": 10.0})
    assert signals(eng.observe_reading(AQ2, T0 + 61 * MIN, {"pm25": 90.0})) == []


def test_mean_threshold_over_a_window() -> None:
    eng = engine(
        "  - id: pm24\n    type: threshold\n    kind: air_quality\n    field: pm25\n"
        "    above: 15\n    for: 2h\n    stat: mean\n    severity: low\n    message: m\n"
    )
    out: list[Signal] = []
    for step, value in enumerate([10.0, 10.0, 30.0, 30.0, 30.0]):
        out += signals(eng.observe_reading(AQ, T0 + step * 30 * MIN, {"pm25": value}))
    assert [s.value for s in out] == [22.0]


def test_rate_of_change_and_stuck() -> None:
    eng = engine(
        "  - id: surge\n    type: rate\n    kind: crowd\n    field: people_count\n"
        "    rise: 300\n    window: 10m\n    severity: medium\n    message: m\n"
        "  - id: stuck\n    type: stuck\n    kind: air_quality\n    field: pm25\n"
        "    for: 30m\n    severity: low\n    message: m\n"
    )
    base = {"occupancy": 0.2, "avg_speed": 1.0, "congested": False}
    assert signals(eng.observe_reading(CROWD, T0, {**base, "people_count": 100})) == []
    assert signals(eng.observe_reading(CROWD, T0 + 5 * MIN, {**base, "people_count": 300})) == []
    hit = signals(eng.observe_reading(CROWD, T0 + 8 * MIN, {**base, "people_count": 450}))
    assert [(s.rule.id, s.value) for s in hit] == [("surge", 350.0)]
    # Slow growth over more than the window is no surge.
    eng2 = engine(
        "  - id: surge\n    type: rate\n    kind: crowd\n    field: people_count\n"
        "    rise: 300\n    window: 10m\n    severity: medium\n    message: m\n"
    )
    slow = []
    for step in range(10):
        slow += signals(
            eng2.observe_reading(CROWD, T0 + step * 10 * MIN, {**base, "people_count": 100 * step})
        )
    assert slow == []
    stuck = []
    for minute in range(0, 35, 5):
        stuck += signals(eng.observe_reading(AQ, T0 + minute * MIN, {"pm25": 42.0}))
    assert [(s.rule.id, s.at_ms) for s in stuck] == [("stuck", T0 + 30 * MIN)]


def test_absence_in_event_time() -> None:
    eng = engine(
        "  - id: silent\n    type: absence\n    kinds: [air_quality]\n    silent_for: 20m\n"
        "    severity: medium\n    message: m\n"
    )
    eng.observe_reading(AQ, T0, {"pm25": 10.0})
    eng.observe_reading(AQ2, T0, {"pm25": 10.0})
    for minute in range(1, 26):
        eng.observe_reading(AQ2, T0 + minute * MIN, {"pm25": 10.0})
        if minute == 19:
            assert eng.tick() == []
    fired = signals(eng.tick())
    assert [(s.place, s.at_ms) for s in fired] == [(AQ.id, T0 + 20 * MIN)]
    assert eng.tick() == []
    back = eng.observe_reading(AQ, T0 + 26 * MIN, {"pm25": 10.0})
    assert [type(c).__name__ for c in back] == ["Clear"]


def test_absence_does_not_depend_on_batch_boundaries() -> None:
    # The silence ends in the same batch that moves the watermark past the limit, so no
    # tick runs in between: the silence is still signalled where a tick would have put it.
    eng = engine(
        "  - id: silent\n    type: absence\n    kinds: [air_quality]\n    silent_for: 20m\n"
        "    severity: medium\n    message: m\n"
    )
    eng.observe_reading(AQ, T0, {"pm25": 10.0})
    eng.observe_reading(AQ2, T0, {"pm25": 10.0})
    assert eng.tick() == []
    batch = eng.observe_reading(AQ2, T0 + 21 * MIN, {"pm25": 10.0})
    batch += eng.observe_reading(AQ, T0 + 22 * MIN, {"pm25": 10.0})
    assert [(type(c).__name__, c.place, c.at_ms) for c in batch] == [
        ("Signal", AQ2.id, T0 + 20 * MIN),
        ("Clear", AQ2.id, T0 + 21 * MIN),
        ("Signal", AQ.id, T0 + 20 * MIN),
        ("Clear", AQ.id, T0 + 22 * MIN),
    ]
    assert eng.tick() == []
    # A gap shorter than the limit is no silence.
    assert eng.observe_reading(AQ, T0 + 41 * MIN, {"pm25": 10.0}) == []


def test_event_rules_scope_and_composite() -> None:
    gun = CITY.select(kind="gunshot")[0]
    crowd = next(d for d in CITY.select(kind="crowd") if d.district == gun.district)
    eng = engine(
        "  - id: panic\n    type: event\n    event: panic\n    severity: critical\n    message: m\n"
        f"    scope: {{districts: [{PANIC.district}]}}\n"
        "  - id: shot\n    type: event\n    event: gunshot\n    group_by: district\n"
        "    severity: critical\n    message: m\n"
        "  - id: surge\n    type: rate\n    kind: crowd\n    field: people_count\n"
        "    rise: 300\n    window: 10m\n    severity: medium\n    message: m\n"
        "  - id: both\n    type: composite\n    all_of: [shot, surge]\n    radius_m: 20000\n"
        "    within: 10m\n    severity: critical\n    message: m\n"
    )
    fired = signals(eng.observe_event(PANIC, T0, "panic", {"button": "b1"}))
    assert [(s.rule.id, s.devices) for s in fired] == [("panic", (PANIC.id,))]
    other = next(d for d in CITY.select(kind="panic_button") if d.district != PANIC.district)
    assert signals(eng.observe_event(other, T0, "panic", {"button": "b2"})) == []
    lon, lat = gun.location
    details = {"rounds": 3, "lat": lat, "lon": lon, "accuracy_m": 15.0, "sensors": 6,
               "confidence": 0.9}  # fmt: skip
    shot = signals(eng.observe_event(gun, T0 + MIN, "gunshot", details))
    assert [s.rule.id for s in shot] == ["shot"]
    base = {"occupancy": 0.2, "avg_speed": 1.0, "congested": False}
    eng.observe_reading(crowd, T0, {**base, "people_count": 100})
    surge = signals(eng.observe_reading(crowd, T0 + 4 * MIN, {**base, "people_count": 900}))
    assert [s.rule.id for s in surge] == ["surge", "both"]
    assert set(surge[1].devices) == {gun.id, crowd.id}
    assert surge[1].rule.severity.value == "critical"


def test_book_deduplicates_by_rule_place_and_episode() -> None:
    ruleset = rules.loads(
        HEAD + "  - id: shot\n    type: event\n    event: gunshot\n    group_by: district\n"
        "    episode: 15m\n    severity: critical\n    message: m\n"
    )
    eng, book = Engine(ruleset, CITY), Book(CITY.id)
    nodes = CITY.select(kind="gunshot")[:4]
    lon, lat = nodes[0].location
    details = {"rounds": 3, "lat": lat, "lon": lon, "accuracy_m": 15.0, "sensors": 4,
               "confidence": 0.9}  # fmt: skip
    opened = []
    for t in (T0, T0 + MIN, T0 + 14 * MIN, T0 + 16 * MIN):
        for node in nodes:
            for sig in signals(eng.observe_event(node, t, "gunshot", details)):
                incident = book.decide(sig)
                if incident is not None:
                    opened.append(incident)
    # All nodes heard one located shot: one place; a second episode after 15 min.
    assert [(i.district, i.opened_at.timestamp() * 1000) for i in opened] == [
        (opened[0].district, T0),
        (opened[0].district, T0 + 16 * MIN),
    ]
    assert len({i.id for i in opened}) == 2
