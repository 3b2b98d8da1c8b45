"""Escalation and outages on a simulated clock: the planner, the outbox and the dispatcher
in process, a real webhook receiver, and (for acknowledgements) the real incident store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from receivers import HttpReceiver

from control.stack import Influxd
from notify import routing
from notify.channels.webhook import WebhookChannel
from notify.dispatch import Dispatcher
from notify.plan import Planner
from notify.watch import Closer, Watcher
from safecity import acklinks
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.outbox import DeliveryStatus, Outbox, Result
from safecity.settings import InfluxSettings

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp()  # 15:00 in Tashkent
ROUTING = """city: tashkent
timezone: Asia/Tashkent
digest_max: 50
channels:
  hook: {type: webhook, url: "http://unused", secret_file: /unused}
people:
  - {id: ann, name: Ann, contacts: {hook: ann}}
  - {id: bob, name: Bob, contacts: {hook: bob}}
rosters:
  - id: patrol
    shifts: [{people: [ann]}]
policies:
  - id: urgent
    tiers:
      - {roster: patrol, repeat_every: 5m, repeats: 2}
      - {after: 12m, people: [bob]}
routes:
  - policy: urgent
"""


class Clock:
    """The simulated clock (epoch seconds)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    server = HttpReceiver("webhook")
    yield server
    server.close()


def _incident(n: int, district: str = "chilonzor") -> inc.Incident:
    opened = inc.open_incident(
        city="tashkent", district=district, rule_id="gunshot", rule_type="event",
        severity="critical", place=district, devices=("gs-1",),
        opened_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC), value=None,
        message="Gunshot detected",
    )  # fmt: skip
    return opened.model_copy(update={"id": f"inc-{n}"})


class Rig:
    """Planner + outbox + dispatcher on one simulated clock."""

    def __init__(self, tmp_path: Path, hook: HttpReceiver) -> None:
        self.clock = Clock()
        self.routing = routing.loads(ROUTING)
        self.outbox = Outbox(tmp_path / "tashkent.outbox.db", owner="t", clock=self.clock)
        key = acklinks.ensure_key(tmp_path / "ack.key")
        self.planner = Planner(self.routing, lambda c: acklinks.sign(key, c), "http://api")
        channel = WebhookChannel(hook.url, hook.secret.encode(), 5.0)
        self.dispatcher = Dispatcher(
            self.outbox, {"hook": channel}, {}, digest_max=50, max_in_flight=8, clock=self.clock
        )

    def open(self, *incidents: inc.Incident) -> None:
        self.outbox.enqueue([m for i in incidents for m in self.planner.plan(i, self.clock.now)])

    def at(self, seconds: float) -> int:
        """Move the clock to T0 + seconds and send what is due."""
        self.clock.now = T0 + seconds
        return asyncio.run(self.dispatcher.step())


def _steps(hook: HttpReceiver) -> list[tuple[str, str, int, int]]:
    return [(b["to"], p["incident_id"], p["tier"], p["repeat"]) for b in hook.received
            for p in b["pages"]]  # fmt: skip


def test_tier_1_at_once_reminders_then_tier_2_at_the_configured_time(
    tmp_path: Path, hook: HttpReceiver
) -> None:
    rig = Rig(tmp_path, hook)
    rig.open(_incident(1))
    rig.at(0)
    assert _steps(hook) == [("ann", "inc-1", 1, 0)]
    rig.at(299)
    assert len(hook.received) == 1
    rig.at(300)
    rig.at(600)
    assert _steps(hook)[1:] == [("ann", "inc-1", 1, 1), ("ann", "inc-1", 1, 2)]
    rig.at(12 * 60 - 1)
    assert len(hook.received) == 3  # tier 2 not a second early
    rig.at(12 * 60)
    assert _steps(hook)[3:] == [("bob", "inc-1", 2, 0)]
    assert rig.outbox.counts()[DeliveryStatus.PENDING] == 0


def test_an_acknowledgement_stops_the_escalation(
    tmp_path: Path, hook: HttpReceiver, influxd: Influxd, influx_db: str
) -> None:
    rig = Rig(tmp_path, hook)
    influx = InfluxClient(InfluxSettings(url=influxd.url, database=influx_db))

    async def scenario() -> tuple[str, int]:
        await influx.ensure_database()  # the incidents' retention policy
        store = inc.IncidentStore(influx)
        opened = inc.open_incident(
            city="tashkent", district="chilonzor", rule_id="gunshot", rule_type="event",
            severity="critical", place="chilonzor", devices=["gs-1"],
            opened_at=datetime.now(UTC).replace(microsecond=0), value=None, message="Gunshot",
        )  # fmt: skip
        await store.open(opened)
        rig.open(opened, _incident(2))
        await rig.dispatcher.step()
        rig.clock.now = T0 + 7 * 60  # ann was paged and reminded once; then she acknowledges
        await rig.dispatcher.step()
        await store.transition(opened.id, "acknowledged", "ann", "via hook (acknowledgement link)")
        closer = Closer(rig.outbox, rig.planner, rig.clock)
        cancelled = await Watcher(store, rig.outbox, closer, "tashkent", 86_400).refresh()
        await influx.close()
        return opened.id, cancelled

    ident, cancelled = asyncio.run(scenario())
    assert cancelled == 2  # her last reminder and bob's tier 2
    rig.at(20 * 60)
    mine = [s for s in _steps(hook) if s[1] == ident]
    assert mine == [("ann", ident, 1, 0), ("ann", ident, 1, 1)]
    others = [s for s in _steps(hook) if s[1] == "inc-2"]
    assert ("bob", "inc-2", 2, 0) in others  # the other incident escalated as planned
    stopped = rig.outbox.entries(group=ident, status=DeliveryStatus.CANCELLED)
    assert {e.detail for e in stopped} == {"acknowledged by ann (via hook (acknowledgement link))"}


def test_a_ten_minute_outage_delivers_everything_in_order_after(
    tmp_path: Path, hook: HttpReceiver
) -> None:
    rig = Rig(tmp_path, hook)
    hook.down = True
    for second in range(600):  # ten simulated minutes down; incidents keep coming
        if second % 6 == 0:
            rig.open(_incident(second // 6))
        rig.at(second)
    assert hook.received == []
    refused = sum(1 for _ in hook.refused)
    attempts = rig.outbox.attempt_counts()
    assert attempts[Result.RETRY] > 0 and refused == 0  # 503s are retries, not refusals
    hook.down = False
    second = 600
    while rig.outbox.counts()[DeliveryStatus.PENDING] and second < 600 + 3600:
        rig.at(second)
        second += 1
    counts = rig.outbox.counts()
    assert counts[DeliveryStatus.PENDING] == 0 and counts[DeliveryStatus.FAILED] == 0
    for person in ("ann", "bob"):
        got = [(s[1], s[2], s[3]) for s in _steps(hook) if s[0] == person]
        expected = sorted(
            ((e.group, e.payload["tier"], e.payload["repeat"]) for e in rig.outbox.entries(
                limit=100_000) if e.recipient == person),
            key=lambda g: _due(rig.outbox, person, g),
        )  # fmt: skip
        assert got == expected  # every page once, in the lane's order
    assert len(_steps(hook)) == 100 * 4


def _due(box: Outbox, person: str, step: tuple[Any, ...]) -> tuple[float, int]:
    entry = next(
        e for e in box.entries(group=step[0], limit=100)
        if e.recipient == person and (e.payload["tier"], e.payload["repeat"]) == step[1:]
    )  # fmt: skip
    return entry.not_before, entry.seq
