"""A scenario run and its outcome as InfluxDB holds it: the alerts that started, the
`events` and `readings` expectations, and `run_scenario`, which drives the simulator
and hands everything to `control.scoring`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from control.scoring import (
    Check,
    Score,
    StoredAlert,
    Truth,
    check_dead_letters,
    check_rejected,
    expectations,
    score,
)
from safecity import catalogue, schema


def _window(start_ms: int, end_ms: int) -> str:
    # Integers we computed ourselves: safe to inline (InfluxQL has no bound time literal).
    return f"time >= {int(start_ms) * 1_000_000} AND time <= {int(end_ms) * 1_000_000}"


async def check_events(
    influx: Any, city: str, items: Iterable[dict[str, Any]], start_ms: int, seconds: Any
) -> list[Check]:
    """`events` entries: at least `min` stored events of the type (in the district) in time."""
    out = []
    for item in items:
        etype, district = str(item["type"]), item.get("district")
        want, within = int(item.get("min", 1)), float(seconds(item["within"]))
        params = {"city": city, "type": etype}
        where = '"city" = $city AND "type" = $type'
        if district is not None:
            params["district"] = str(district)
            where += ' AND "district" = $district'
        window = _window(start_ms, start_ms + int(within * 1000))
        series = await influx.query(
            f'SELECT "seq" FROM {schema.source(schema.EVENTS)} WHERE {where} AND {window}',  # noqa: S608
            params,
        )
        count = sum(len(s.rows()) for s in series)
        out.append(
            Check(
                "events",
                f"{etype} in {district or 'city'} >= {want} within {within:.0f}s",
                count >= want,
                float(count),
            )
        )
    return out


async def check_readings(
    influx: Any, city: str, items: Iterable[dict[str, Any]], start_ms: int, seconds: Any
) -> list[Check]:
    """`readings` entries: a stored reading of the field above/below the value in time."""
    from safecity.influx import quote_ident

    out = []
    for item in items:
        kind, name, district = str(item["kind"]), str(item["field"]), item.get("district")
        within = float(seconds(item["within"]))
        if not any(q.name == name for q in catalogue.telemetry_quantities(kind)):
            raise ValueError(f"kind {kind} has no field {name!r}")
        above = item.get("above")
        stat = "max" if above is not None else "min"
        limit = float(above if above is not None else item["below"])
        params = {"city": city}
        where = '"city" = $city'
        if district is not None:
            params["district"] = str(district)
            where += ' AND "district" = $district'
        window = _window(start_ms, start_ms + int(within * 1000))
        series = await influx.query(
            f"SELECT {stat}({quote_ident(name)}) FROM {quote_ident(schema.measurement_of(kind))} "  # noqa: S608
            f"WHERE {where} AND {window}",
            params,
        )
        values = [float(row[stat]) for s in series for row in s.rows() if row.get(stat) is not None]
        found = (max(values) if stat == "max" else min(values)) if values else None
        ok = found is not None and (found > limit if above is not None else found < limit)
        sign = ">" if above is not None else "<"
        out.append(
            Check(
                "readings",
                f"{kind}.{name} in {district or 'city'} {sign} {limit:g} within {within:.0f}s",
                ok,
                found,
            )
        )
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


async def stored_alerts(influx: Any, city: str, start_ms: int, end_ms: int) -> list[StoredAlert]:
    """The alerts of a city started in [start_ms, end_ms], from InfluxDB."""
    window = _window(start_ms, end_ms)
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
    deadletter_dirs: Sequence[Any] = (),
) -> Score:
    """Run a scenario's simulator (a child process), wait for its outcome, and score it.

    `scenario` is a loaded simulators.scenario.Scenario (passed in: this module imports no
    service package); the broker, InfluxDB, a running alerts service and (for the
    `events`, `readings`, `dead_letters` and `rejected` expectations) a running ingest
    writing dead letters to `deadletter_dirs` come from the environment, as for
    `safecity simulate`, `safecity alerts` and `safecity ingest`.
    """
    import asyncio
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from control.verify import read_deadletters
    from safecity import ledger as ledger_mod
    from safecity.influx import InfluxClient
    from safecity.readings import epoch_ms, format_ts

    command = [
        sys.executable, "-m", "control", "simulate",
        "--scenario", str(scenario.path),
        "--ledger", str(ledger_path),
        "--start", format_ts(start),
        "--speed", str(speed),
        "--duration", str(duration),
    ]  # fmt: skip
    if registry:
        # The `registry` setting's paths, as a JSON list the flag reads back.
        command += ["--registry", json.dumps([str(p) for p in registry])]
    subprocess.run(command, check=True, env=dict(os.environ), timeout=duration + 120)
    start_ms = epoch_ms(start)
    end_ms = start_ms + int(duration * speed * 1000) + 60_000
    wanted = expectations(scenario.expect, seconds)
    truths = [Truth(i.type, i.district, i.start_ms) for i in scenario.resolve(city, start)]
    entries = list(ledger_mod.read(ledger_path))
    expect = scenario.expect

    async def collect() -> Score:
        client = InfluxClient(influx_settings)
        try:
            deadline = time.monotonic() + settle_s
            while True:
                alerts = await stored_alerts(client, city.id, start_ms, end_ms)
                result = score(wanted, truths, entries, alerts, start_ms)
                letters = read_deadletters([Path(d) for d in deadletter_dirs])
                result.checks += await check_events(
                    client, city.id, expect.get("events", []), start_ms, seconds
                )
                result.checks += await check_readings(
                    client, city.id, expect.get("readings", []), start_ms, seconds
                )
                result.checks += check_dead_letters(
                    expect.get("dead_letters", []), entries, letters
                )
                result.checks += check_rejected(expect.get("rejected", []), entries, letters)
                if result.ok or time.monotonic() >= deadline:
                    return result
                await asyncio.sleep(1.0)
        finally:
            await client.close()

    return asyncio.run(collect())
