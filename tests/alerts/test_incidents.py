"""Incidents in a real InfluxDB: append-only lifecycle, refused transitions, figures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from support import influx_rows

from control.stack import LocalStack
from safecity import incidents as inc
from safecity.errors import IncidentError, TransitionError
from safecity.influx import InfluxClient
from safecity.settings import InfluxSettings

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def _new(rule: str = "gunshot", district: str = "yunusabad", minute: int = 0) -> inc.Incident:
    return inc.open_incident(
        city="tashkent",
        district=district,
        rule_id=rule,
        rule_type="event",
        severity="critical",
        place=district,
        devices=["gunshot-yunusabad-001"],
        opened_at=T0 + timedelta(minutes=minute),
        value=3.0,
        message="Gunshot detected",
        event="gunshot",
    )


async def _refused_steps(store: inc.IncidentStore, incident_id: str) -> None:
    """Steps the lifecycle refuses once an incident is resolved, and an unknown id."""
    with pytest.raises(TransitionError, match="is resolved: cannot go to acknowledged"):
        await store.transition(incident_id, "acknowledged", "op-1")
    with pytest.raises(TransitionError, match="unknown state 'closed'"):
        await store.transition(incident_id, "closed", "op-1")
    with pytest.raises(IncidentError, match="no incident"):
        await store.get("inc-nope")


async def _lifecycle(
    store: inc.IncidentStore,
) -> tuple[inc.Incident, inc.Incident, str, dict[str, inc.Incident]]:
    """One incident through its whole life, a second one acknowledged; (the resolved one as
    returned, as re-read, the refusal of a skipped step, every incident of the city)."""
    first = _new()
    await store.open(first)
    await store.open(first)  # a redelivered opening: same id, same point
    with pytest.raises(TransitionError) as refused:
        await store.transition(first.id, "dispatched", "op-1")
    t = T0 + timedelta(minutes=2)
    await store.transition(first.id, "acknowledged", "op-1", "on it", at=t)
    later = t + timedelta(minutes=1)
    await store.transition(first.id, "dispatched", "op-1", "unit 7", at=later)
    done = await store.transition(
        first.id, "resolved", "op-2", "no casualties", at=t + timedelta(minutes=30)
    )
    await _refused_steps(store, first.id)
    second = _new(minute=60)
    await store.open(second)
    await store.transition(second.id, "acknowledged", "op-3", at=T0 + timedelta(minutes=70))
    return done, await store.get(first.id), str(refused.value), await store.load("tashkent")


def test_lifecycle_is_append_only_and_refuses_bad_steps(stack: LocalStack, influx_db: str) -> None:
    async def scenario() -> tuple[inc.Incident, inc.Incident, str, dict[str, inc.Incident]]:
        client = InfluxClient(InfluxSettings(url=stack.influx_url, database=influx_db))
        try:
            await client.ensure_database()
            return await _lifecycle(inc.IncidentStore(client))
        finally:
            await client.close()

    done, reread, refused, everything = asyncio.run(scenario())
    assert "is open: cannot go to dispatched (allowed from open: acknowledged, resolved)" in refused
    assert [t.state.value for t in reread.transitions] == [
        "open",
        "acknowledged",
        "dispatched",
        "resolved",
    ]
    assert [(t.by, t.note) for t in reread.transitions][1:] == [
        ("op-1", "on it"),
        ("op-1", "unit 7"),
        ("op-2", "no casualties"),
    ]
    assert reread == done
    assert reread.time_to_acknowledge == 120.0
    assert reread.time_to_resolve == 32 * 60.0
    # Append-only: one stored point per step, the redelivered opening overwrote itself.
    rows = influx_rows(stack, influx_db, 'SELECT * FROM "incidents"."incident_transitions"')
    assert sorted((r["incident_id"], r["seq"]) for r in rows if r["incident_id"] == done.id) == [
        (done.id, 0),
        (done.id, 1),
        (done.id, 2),
        (done.id, 3),
    ]
    assert len(influx_rows(stack, influx_db, 'SELECT * FROM "incidents"."alerts"')) == 2
    assert set(everything) == {done.id, _new(minute=60).id}
    figures = inc.figures(everything.values())
    assert [(f.rule_id, f.district, f.incidents, f.open, f.acknowledged, f.resolved)
            for f in figures] == [("gunshot", "yunusabad", 2, 1, 2, 1)]  # fmt: skip
    assert figures[0].tta_mean == (120.0 + 600.0) / 2
    assert figures[0].ttr_max == 32 * 60.0
