"""The alerts service as a real process against real Mosquitto and InfluxDB."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import READER, influx_rows, mosquitto, mosquitto_pub, wait_for, wait_for_async

from control.stack import LocalStack
from safecity import incidents as inc
from safecity import registry, topics
from safecity.readings import format_ts

CITY = registry.default_city()
PANIC = CITY.select(kind="panic_button")[0]
AQ = CITY.select(kind="air_quality")[0]
RULES = """city: tashkent
rules:
  - id: panic
    type: event
    event: panic
    episode: 15m
    severity: critical
    message: Panic button pressed
  - id: pm25_demo
    type: threshold
    kind: air_quality
    field: pm25
    above: 75
    for: 60m
    severity: medium
    message: PM2.5 above 75 for an hour
"""


class AlertWatcher:
    """Collects published alerts and incident lifecycle steps with mosquitto_sub."""

    def __init__(self, stack: LocalStack, out: Path) -> None:
        self.out = out
        self.handle = out.open("w")
        self.proc = subprocess.Popen(
            [*mosquitto("mosquitto_sub", stack, READER), "-q", "1", "-v",
             "-t", topics.alert_filter("tashkent"), "-t", topics.incident_filter("tashkent")],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def alerts(self) -> list[tuple[str, dict[str, Any]]]:
        return [(t, json.loads(b)) for t, b in self._lines() if "/_alerts/" in t]

    def steps(self) -> list[tuple[str, str, str]]:
        """The announced lifecycle steps: (topic's state, rule, the step's state)."""
        out = []
        for topic, body in self._lines():
            if "/_incidents/" in topic:
                change = inc.IncidentChange.parse(body.encode())
                out.append((topic.rsplit("/", 1)[1], change.incident.rule_id, change.step.state))
        return out

    def _lines(self) -> list[tuple[str, str]]:
        out = []
        for line in self.out.read_text().splitlines():
            topic, _, body = line.partition(" ")
            if body.startswith("{"):
                out.append((topic, body))
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.handle.close()


@pytest.fixture
def watcher(stack: LocalStack, tmp_path: Path) -> Iterator[AlertWatcher]:
    w = AlertWatcher(stack, tmp_path / "alerts.txt")
    yield w
    w.close()


def _panic(ts: datetime, seq: int) -> str:
    return json.dumps(
        {
            "ts": format_ts(ts),
            "seq": seq,
            "type": "panic",
            "severity": "critical",
            "details": {"button": "b1"},
        }
    )


def _aq(ts: datetime, seq: int, pm25: float) -> str:
    values = {"pm25": pm25, "pm10": pm25 * 1.5, "no2": 40.0, "o3": 20.0, "so2": 10.0, "co": 0.8}
    return json.dumps({"ts": format_ts(ts), "seq": seq, "values": values})


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_alerts_fire_dedup_survive_restart_and_auto_resolve(
    stack: LocalStack,
    influx_db: str,
    start_alerts: Callable[..., Any],
    watcher: AlertWatcher,
    tmp_path: Path,
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    service = start_alerts(influx_db, "alerts-t1", SAFECITY_ALERTS_RULES_FILE=str(rules_file))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    panic_topic = topics.event_topic("tashkent", PANIC.district, PANIC.kind, PANIC.id)
    aq_topic = topics.telemetry_topic("tashkent", AQ.district, AQ.kind, AQ.id)
    elsewhere = "sergeli" if PANIC.district != "sergeli" else "chilanzar"
    wrong = topics.event_topic("tashkent", elsewhere, PANIC.kind, PANIC.id)
    mosquitto_pub(stack, wrong, _panic(base, 0))  # identity mismatch: skipped, counted
    mosquitto_pub(
        stack, panic_topic, "not json", _panic(base, 1), _panic(base + timedelta(minutes=5), 2)
    )
    mosquitto_pub(
        stack, aq_topic, *[_aq(base + timedelta(minutes=m), m, 90.0) for m in range(0, 65, 5)]
    )

    def stored() -> list[dict[str, Any]]:
        return influx_rows(stack, influx_db, 'SELECT * FROM "incidents"."incident_transitions"')

    wait_for(lambda: len(stored()) >= 2, 30, "two incidents opened")
    published = wait_for(lambda: len(watcher.alerts()) >= 2 and watcher.alerts(), 20, "alerts")
    by_rule = {body["rule_id"]: (topic, body) for topic, body in published}
    topic, body = by_rule["panic"]
    assert topic == topics.alert_topic("tashkent", "critical")
    assert body["devices"] == [PANIC.id] and body["district"] == PANIC.district
    assert body["started_at"] == format_ts(base)
    topic, body = by_rule["pm25_demo"]
    assert topic == topics.alert_topic("tashkent", "medium")
    assert body["started_at"] == format_ts(base + timedelta(minutes=60)) and body["value"] == 90.0
    assert sorted(r["rule_id"] for r in stored()) == ["panic", "pm25_demo"]
    assert _metric(service.metrics_url, "safecity_alerts_deduplicated_total") >= 1
    assert (
        _metric(service.metrics_url, 'safecity_alerts_skipped_total{reason="identity_mismatch"}')
        == 1
    )
    assert _metric(service.metrics_url, 'safecity_alerts_skipped_total{reason="bad_json"}') == 1

    # Restart: the same evidence again (a redelivery) and a longer breach fire nothing new.
    service.stop()
    service = start_alerts(influx_db, "alerts-t1", SAFECITY_ALERTS_RULES_FILE=str(rules_file))
    mosquitto_pub(stack, panic_topic, _panic(base, 1), _panic(base + timedelta(minutes=10), 3))
    mosquitto_pub(
        stack, aq_topic, *[_aq(base + timedelta(minutes=m), m, 95.0) for m in range(65, 135, 5)]
    )
    wait_for(
        lambda: _metric(service.metrics_url, "safecity_alerts_received_total") >= 16, 20, "consumed"
    )
    # The clearing reading resolves the PM2.5 incident the restarted service rebuilt.
    mosquitto_pub(stack, aq_topic, _aq(base + timedelta(minutes=140), 140, 20.0))
    rows = wait_for(lambda: len(stored()) >= 3 and stored(), 20, "auto-resolution")
    assert sorted((r["rule_id"], r["state"]) for r in rows) == [
        ("panic", "open"),
        ("pm25_demo", "open"),
        ("pm25_demo", "resolved"),
    ]
    resolved = next(r for r in rows if r["state"] == "resolved")
    assert resolved["by"] == "alerts" and resolved["from_state"] == "open"
    assert len(influx_rows(stack, influx_db, 'SELECT * FROM "incidents"."alerts"')) == 2
    assert len(watcher.alerts()) == 2
    assert _metric(service.metrics_url, "safecity_alerts_fired_total") == 0
    # Every step was announced on the lifecycle topics as it was decided.
    assert set(wait_for(lambda: len(watcher.steps()) >= 3 and watcher.steps(), 20, "steps")) == {
        ("open", "panic", "open"),
        ("open", "pm25_demo", "open"),
        ("resolved", "pm25_demo", "resolved"),
    }


def test_a_dying_refresher_is_restarted_counted_and_unready_meanwhile(
    stack: LocalStack, influx_db: str
) -> None:
    from alerts.rules import loads
    from alerts.service import AlertsService
    from alerts.settings import AlertsSettings
    from safecity.observability import HealthServer
    from safecity.retry import Backoff
    from safecity.settings import InfluxSettings

    settings = AlertsSettings(
        mqtt=stack.mqtt_settings("_alerts"),
        influx=InfluxSettings(url=stack.influx_url, database=influx_db),
        alerts_id=f"alerts-sup-{secrets.token_hex(3)}",
        alerts_share_group=f"a{secrets.token_hex(4)}",
        alerts_session_expiry=60,
        alerts_refresh_interval=0.2,
        alerts_metrics_port=0,
    )

    async def main() -> None:
        service = AlertsService(settings, CITY, loads(RULES))
        service.tasks.backoff = Backoff(base=1.5, cap=1.5)  # "down" long enough to see
        broken = True
        refresh = service.refresh

        async def failing_refresh() -> None:
            if broken:
                raise RuntimeError("injected: refresher dies")
            await refresh()

        # The health server `safecity alerts` runs beside its services, on its readiness.
        health = HealthServer("127.0.0.1", 0, service.ready)
        await health.start()
        await service.start()
        service.refresh = failing_refresh  # type: ignore[method-assign]
        url = f"http://127.0.0.1:{health.port}"
        try:
            async with httpx.AsyncClient(timeout=5) as http:

                async def until(check: Callable[[int, str], bool], what: str) -> None:
                    async def probe() -> bool:
                        ready = (await http.get(f"{url}/readyz")).status_code
                        return check(ready, (await http.get(f"{url}/metrics")).text)

                    await wait_for_async(probe, 20, what)

                def restarts(text: str) -> float:
                    name = 'safecity_task_restarts_total{task="refresh"} '
                    rows = [r for r in text.splitlines() if r.startswith(name)]
                    return float(rows[0].rsplit(" ", 1)[1]) if rows else 0.0

                await until(
                    lambda ready, text: ready == 503 and restarts(text) >= 1, "unready and counted"
                )
                broken = False
                await until(lambda ready, _: ready == 200, "ready again")
                assert service.tasks.healthy and service.tasks.restarts("refresh") >= 1
        finally:
            await service.stop()
            await health.stop()

    asyncio.run(main())


def test_a_message_the_evaluation_keeps_failing_on_is_quarantined_and_the_rest_fires(
    stack: LocalStack,
    influx_db: str,
    start_alerts: Callable[..., Any],
    watcher: AlertWatcher,
    tmp_path: Path,
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    service = start_alerts(
        influx_db,
        poison=("evaluate", '"seq": 424242,'),
        SAFECITY_ALERTS_RULES_FILE=str(rules_file),
        SAFECITY_ALERTS_POISON_ATTEMPTS="2",
    )
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    panic_topic = topics.event_topic("tashkent", PANIC.district, PANIC.kind, PANIC.id)
    # The poison first, then an ordinary panic: the worker keeps consuming and fires it.
    mosquitto_pub(stack, panic_topic, _panic(base, 424242), _panic(base + timedelta(minutes=1), 7))
    published = wait_for(lambda: watcher.alerts(), 30, "the panic after the poison fired")
    assert [body["rule_id"] for _, body in published] == ["panic"]
    assert published[0][1]["started_at"] == format_ts(base + timedelta(minutes=1))
    assert _metric(service.metrics_url, 'safecity_alerts_poison_total{stage="evaluate"}') == 1
    assert service.process.alive
    events = influx_rows(
        stack,
        influx_db,
        """SELECT * FROM "security"."security_events" WHERE "type" = 'alerts_poison'""",
    )
    assert len(events) == 1 and events[0]["source"] == "alerts"
    assert events[0]["device_id"] == PANIC.id
    assert "stage evaluate raised RuntimeError 2 times" in events[0]["detail"]
