"""One alerts process serving two cities: each city's incidents are decided from its own
devices and written into its own database, none into the other's. Real Mosquitto 2.0.11,
InfluxDB and alerts processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support import influx_rows, mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import citygen, registry, topics
from safecity.readings import format_ts

TASHKENT = registry.default_city()
SAMARKAND = citygen.builtin("samarkand")
TRANSITIONS = 'SELECT * FROM "incidents"."incident_transitions"'


def panic(ts: datetime, seq: int) -> str:
    body = {"ts": format_ts(ts), "seq": seq, "type": "panic", "severity": "critical"}
    return json.dumps({**body, "details": {"button": "b1"}})


def test_each_city_has_its_own_incidents(
    stack: LocalStack, influx_db: str, start_alerts: Callable[..., Any], tmp_path: Path
) -> None:
    files = [tmp_path / "tashkent.jsonl", tmp_path / "samarkand.jsonl"]
    registry.write(TASHKENT, files[0])
    registry.write(SAMARKAND, files[1])
    start_alerts(influx_db, SAFECITY_REGISTRY=f"{files[0]},{files[1]}")
    databases = {c: f"{influx_db}_{c}" for c in ("tashkent", "samarkand")}

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    theirs = SAMARKAND.select(kind="panic_button")[0]
    ours = TASHKENT.select(kind="panic_button")[0]
    # The simulator account may write any device's topic: the alerts see both cities.
    mosquitto_pub(
        stack,
        topics.event_topic("samarkand", theirs.district, theirs.kind, theirs.id),
        panic(base, 1),
    )
    # A Tashkent device under Samarkand's topics is not Samarkand's evidence.
    mosquitto_pub(
        stack,
        topics.event_topic("samarkand", ours.district, ours.kind, ours.id),
        panic(base, 2),
    )

    rows = wait_for(lambda: influx_rows(stack, databases["samarkand"], TRANSITIONS), 30, "panic")
    assert {(r["rule_id"], r["city"], r["district"]) for r in rows} == {
        ("panic", "samarkand", theirs.district)
    }
    assert influx_rows(stack, databases["tashkent"], TRANSITIONS) == []

    mosquitto_pub(
        stack,
        topics.event_topic("tashkent", ours.district, ours.kind, ours.id),
        panic(base + timedelta(minutes=1), 3),
    )
    rows = wait_for(lambda: influx_rows(stack, databases["tashkent"], TRANSITIONS), 30, "panic")
    assert {(r["rule_id"], r["city"], r["district"]) for r in rows} == {
        ("panic", "tashkent", ours.district)
    }
    assert len(influx_rows(stack, databases["samarkand"], TRANSITIONS)) == 1
