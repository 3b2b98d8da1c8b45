"""The API as a real process: live SSE over real Mosquitto; schemathesis over the pipeline."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import account_env, influx_rows, mosquitto_pub, wait_for

from api.live import Hub
from control.stack import LocalStack
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import default_city
from safecity.settings import MqttSettings

CITY = default_city()


def _noise(ts: datetime, seq: int, laeq: float) -> str:
    values = {"laeq": laeq, "lamax": laeq + 10, "la90": laeq - 10}
    return json.dumps({"ts": format_ts(ts), "seq": seq, "values": values})


def test_stream_delivers_filtered_live_readings(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any]
) -> None:
    api = start_api(influx_db)
    mine = CITY.select(kind="noise", district="uchtepa")[0]
    other = CITY.select(kind="noise", district="mirobod")[0]
    params = {"district": "uchtepa", "kind": "noise"}
    assert httpx.get(f"{api.url}/v1/stream", params=params, timeout=5).status_code == 401
    with httpx.stream(
        "GET", f"{api.url}/v1/stream", params=params, headers=api.headers, timeout=20
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"  # subscribed before the first byte
        now = datetime.now(UTC)

        def topic(d: Any) -> str:
            return topics.telemetry_topic(CITY.id, d.district, d.kind, d.id)

        mosquitto_pub(stack, topic(other), _noise(now, 1, 70.0))  # other district
        mosquitto_pub(stack, topic(mine), '{"ts": 1, "seq": -1, "values": {}}')  # invalid
        wrong = topics.telemetry_topic(CITY.id, "mirobod", mine.kind, mine.id)
        mosquitto_pub(stack, wrong, _noise(now, 2, 71.0))  # identity mismatch
        mosquitto_pub(stack, topic(mine), _noise(now, 3, 61.5))
        event_line = next(line for line in lines if line.startswith("event:"))
        data_line = next(lines)
    assert event_line == "event: reading"
    item = json.loads(data_line.removeprefix("data: "))
    assert item == {
        "type": "reading",
        "device_id": mine.id,
        "district": "uchtepa",
        "kind": "noise",
        "ts": format_ts(now),
        "seq": 3,
        "values": {"laeq": 61.5, "lamax": 71.5, "la90": 51.5},
    }


def test_a_slow_client_is_dropped_and_never_stalls_the_others() -> None:
    async def scenario() -> None:
        hub = Hub(CITY, MqttSettings(), queue_size=3)
        slow = hub.subscribe(None, None)
        fast = hub.subscribe(None, None)
        picky = hub.subscribe("mirobod", None)
        got: list[int] = []
        for n in range(10):
            hub.publish({"type": "reading", "district": "uchtepa", "kind": "noise", "seq": n})
            got.append((await fast.queue.get())[1]["seq"])  # the fast client keeps up
        assert got == list(range(10))
        assert slow.dropped.is_set() and slow not in hub.subscribers
        assert slow.queue.qsize() == 3  # it got what fitted, then was cut off
        assert not fast.dropped.is_set() and fast in hub.subscribers
        assert picky.queue.qsize() == 0 and not picky.dropped.is_set()  # filtered out
        assert hub.dropped_total == 1

    asyncio.run(scenario())


def test_stream_is_503_when_the_broker_is_unreachable(
    influx_db: str, start_api: Callable[..., Any]
) -> None:
    from control.stack import free_port

    api = start_api(
        influx_db, SAFECITY_MQTT__PORT=str(free_port()), SAFECITY_MQTT__CONNECT_TIMEOUT="2"
    )
    r = httpx.get(f"{api.url}/v1/stream", headers=api.headers, timeout=15)
    assert r.status_code == 503
    assert "live stream unavailable" in r.json()["detail"]


def test_schemathesis_over_the_live_api_seeded_by_the_real_pipeline(
    stack: LocalStack,
    influx_db: str,
    start_ingest: Callable[..., Any],
    start_api: Callable[..., Any],
    tmp_path: Path,
) -> None:
    ingest = start_ingest(influx_db)
    api = start_api(
        influx_db,
        SAFECITY_RATE_LIMIT_RPS="100000",
        SAFECITY_RATE_LIMIT_BURST="100000",
        SAFECITY_DEADLETTER_DIR=ingest.env["SAFECITY_DEADLETTER_DIR"],
    )
    env = {
        **ingest.env,
        **account_env(stack, "simulator"),
        "SAFECITY_CLIENT_ID": "sim-schemathesis",
    }
    sim = subprocess.run(
        [sys.executable, "-m", "control", "simulate", "--devices", "40", "--duration", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sim.returncode == 0, sim.stderr[-2000:]
    wait_for(
        lambda: influx_rows(stack, influx_db, 'SELECT count("seq") FROM /.*/ GROUP BY "device_id"'),
        what="readings stored by the pipeline",
    )
    overview = httpx.get(f"{api.url}/v1/cities/tashkent/overview", headers=api.headers, timeout=10)
    assert overview.status_code == 200
    body = overview.json()
    # The simulator said goodbye (offline status) when it stopped; its readings still count.
    assert body["devices"]["offline"] > 0
    figures = (body["air_quality"]["aqi"], body["traffic"]["avg_speed"], body["noise"]["laeq"])
    assert sum(f["devices"] for f in figures) > 0
    # schemathesis generates and validates; the requests go to the live process over
    # httpx (schemathesis' own requests transport breaks on urllib3-future, which
    # grafana-client -> niquests puts in the shared virtualenv in place of urllib3).
    document = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    failures: list[str] = []
    statuses: dict[int, int] = {}
    # The key both ways: X-API-Key, and as a bearer token for Grafana's intake.
    auth = {"X-API-Key": api.api_key, "Authorization": f"Bearer {api.api_key}"}
    with httpx.Client(timeout=15) as http:
        for result in schema.include(path_regex="^(?!/v1/stream)").get_all_operations():
            operation = result.ok()

            @hypothesis.settings(
                max_examples=6,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
            @hypothesis.given(case=operation.as_strategy())
            def run(case: Any) -> None:
                kw = case.as_transport_kwargs(base_url=api.url, headers=auth)
                response = http.request(
                    kw["method"],
                    kw["url"],
                    params=kw.get("params"),
                    headers=kw.get("headers"),
                    cookies=kw.get("cookies"),
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                try:
                    case.validate_response(response, checks=checks)
                except Exception as exc:  # collect every failure, report them together
                    failures.append(f"{case.method} {case.formatted_path}: {exc}"[:800])

            run()
    assert failures == []
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses.get(200, 0) > 10, statuses


def _server_errors(url: str, headers: dict[str, str]) -> dict[str, float]:
    """5xx responses the API counted (its own metrics), by route."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("safecity_api_requests_total{") and 'status="5' in line:
            out[line.split(" ")[0]] = float(line.split(" ")[1])
    return out
