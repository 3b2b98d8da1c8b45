"""Every panel, variable and alert-rule query runs against InfluxDB filled by the real pipeline.

The simulator publishes the whole default city to the session's Mosquitto, a real
`safecity ingest` writes it, and mosquitto_pub adds the rarer messages a few seconds
of simulation would not produce (incidents, an offline device, a faulty lamp) and the
attacks the security panels show (a wrong password the broker logs, a spoofed and an
unknown device, a flood). The `ingest_stats` panels read what that ingest writes. Grafana's
macros are substituted the way Grafana's InfluxQL datasource does, then each query goes
to InfluxDB's /query as Grafana would send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from support import mosquitto, mosquitto_pub, wait_for

from control.stack import LocalStack
from dashboards import build
from dashboards.boards import airyear
from edge.settings import EdgeSettings
from safecity import catalogue, registry, schema, topics
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import Status, epoch_ms, event_model, format_ts, reading_model
from safecity.registry import City, Device
from safecity.settings import InfluxSettings, MqttSettings
from simulators.fleet import run as run_fleet
from simulators.settings import SimulatorSettings

CITY: City = registry.default_city()
TIME_FILTER = "time > now() - 6h"
INTERVAL = "1m"
# Grafana's InfluxDB datasource regex-escapes multi/All values before joining them.
_REGEX_SPECIAL = re.compile(r"([-/\\^$*+?.()|\[\]{}])")


@dataclass(frozen=True)
class Query:
    """One query as Grafana stores it, where it lives, and the variables in scope."""

    where: str
    text: str
    time_filter: str = TIME_FILTER


def grafana_value(values: list[str], multi: bool) -> str:
    """A variable's interpolation: raw single value, or an escaped (a|b) alternation."""
    if not multi:
        return values[0]
    return "(" + "|".join(_REGEX_SPECIAL.sub(r"\\\1", v) for v in values) + ")"


def render(query: Query, variables: dict[str, str]) -> str:
    """Substitute $timeFilter, $__interval(_ms) and template variables; unknown ones fail."""
    # $__from: the range start in epoch ms (Grafana's global variable), here 6 h ago.
    start_ms = epoch_ms(datetime.now(UTC) - timedelta(hours=6))
    fixed = {
        "timeFilter": query.time_filter,
        "__interval": INTERVAL,
        "__interval_ms": "60000",
        "__from": str(start_ms),
        "__to": str(epoch_ms(datetime.now(UTC))),
    }

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in fixed:
            return fixed[name]
        assert name in variables, f"{query.where}: unknown macro ${name}"
        return variables[name]

    return re.sub(r"\$(\w+)", sub, query.text)


def influx(stack: LocalStack, db: str, q: str) -> list[dict[str, Any]]:
    """POST /query like Grafana (epoch ms); raise on any error; return the series."""
    response = httpx.post(
        f"{stack.influx_url}/query", data={"q": q, "db": db}, params={"epoch": "ms"}, timeout=20
    )
    body = response.json()
    assert response.status_code == 200 and "error" not in body, (q, body)
    series: list[dict[str, Any]] = []
    for result in body["results"]:
        assert "error" not in result, (q, result["error"])
        series.extend(result.get("series", []))
    return series


def has_data(series: list[dict[str, Any]]) -> bool:
    """At least one non-null value outside the time column."""
    for s in series:
        columns = s["columns"]
        for row in s.get("values", []):
            if any(v is not None for c, v in zip(columns, row, strict=True) if c != "time"):
                return True
    return False


def dashboard_queries() -> Iterator[tuple[dict[str, Any], Query]]:
    """(dashboard, query) for every variable and panel target."""
    for path in sorted((build.OUT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for var in board["templating"]["list"]:
            yield board, Query(f"{board['uid']} variable {var['name']}", var["query"])
        for panel in board["panels"]:
            for t in panel["targets"]:
                where = f"{board['uid']} / {panel['title']} / {t['refId']}"
                yield board, Query(where, t["query"])


def load_yaml(path: Path) -> Any:
    """Our YAML files are a comment line plus JSON (JSON is YAML 1.2)."""
    return json.loads(path.read_text(encoding="utf-8").removeprefix(build.HEADER))


def rule_queries() -> Iterator[Query]:
    """The InfluxQL step of every provisioned alert rule, over its relative time range."""
    groups = load_yaml(build.OUT / "provisioning" / "alerting" / "safecity.yaml")["groups"]
    for rule in groups[0]["rules"]:
        step = rule["data"][0]
        seconds = step["relativeTimeRange"]["from"]
        yield Query(f"rule {rule['uid']}", step["model"]["query"], f"time > now() - {seconds}s")


# --- filling InfluxDB through the real pipeline ------------------------------------------


def _device(kind: str, district: str | None = None) -> Device:
    devices = CITY.select(kind=kind, district=district) or CITY.select(kind=kind)
    return devices[0]


def _topic(device: Device, channel: topics.Channel) -> str:
    args = (CITY.id, device.district, device.kind, device.id)
    return {
        topics.Channel.TELEMETRY: topics.telemetry_topic,
        topics.Channel.EVENT: topics.event_topic,
        topics.Channel.STATUS: topics.status_topic,
    }[channel](*args)


def publish_rare_messages(stack: LocalStack, district: str) -> int:
    """Incidents, an offline device and a faulty streetlight, via mosquitto_pub; return count."""
    now = datetime.now(UTC)
    seq = epoch_ms(now) * 1000
    events: list[tuple[Device, str, str, dict[str, Any]]] = [
        (_device("panic_button"), "panic", "critical", {"button": "stop-12"}),
        (
            _device("gunshot"),
            "gunshot",
            "critical",
            {
                "rounds": 3,
                "lat": 41.3,
                "lon": 69.25,
                "accuracy_m": 12.0,
                "sensors": 6,
                "confidence": 0.9,
            },
        ),
        (
            _device("cctv", district),
            "intrusion",
            "high",
            {"zone": "depot", "object_class": "person", "confidence": 0.8},
        ),
        (_device("cctv", district), "camera_tamper", "medium", {"cause": "covered"}),
        (
            _device("traffic", district),
            "road_accident",
            "high",
            {"vehicles": 2, "casualties": 0, "lanes_blocked": 1},
        ),
        (
            _device("traffic", district),
            "congestion",
            "low",
            {"segment": "amir-temur", "speed": 9.0, "queue_m": 400.0},
        ),
    ]
    count = 0
    for i, (device, kind, severity, details) in enumerate(events):
        event = event_model(kind).model_validate(
            {
                "ts": format_ts(now - timedelta(seconds=i)),
                "seq": seq + i,
                "type": kind,
                "severity": severity,
                "details": details,
            }
        )
        mosquitto_pub(stack, _topic(device, topics.Channel.EVENT), event.to_payload().decode())
        count += 1
    waste = _device("waste")
    offline = Status.model_validate({"ts": format_ts(now), "state": "offline", "reason": "lost"})
    mosquitto_pub(stack, _topic(waste, topics.Channel.STATUS), offline.to_payload().decode())
    # Three faulty lamps: a lamp's next regular reading (every 15 min) could land within
    # the test and report "ok" again, but not for all three.
    for lamp in CITY.select(kind="streetlight")[:3]:
        reading = reading_model("streetlight").model_validate(
            {
                "ts": format_ts(now),
                "seq": seq + 100,
                "values": {"power_state": "off", "power": 0.0, "status": "defective_lamp"},
            }
        )
        topic = _topic(lamp, topics.Channel.TELEMETRY)
        mosquitto_pub(stack, topic, reading.to_payload().decode())
    return count


def publish_attacks(stack: LocalStack) -> set[str]:
    """What the security panels show, done for real; return the security event types.

    A wrong password (the broker refuses it and logs it), a spoofed device (a registry
    id under another district), an unknown device, and a flood past the rate limit.
    """
    victim = _device("air_quality")
    wrong = subprocess.run(
        [
            *mosquitto(
                "mosquitto_pub", stack, victim.id, secret="not-the-secret", client_id=victim.id
            ),
            *("-t", _topic(victim, topics.Channel.TELEMETRY), "-m", "{}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode != 0 and "Not authorized" in wrong.stderr
    now = datetime.now(UTC)
    noise = CITY.select(kind="noise")
    payload = (
        reading_model("noise")
        .model_validate(
            {
                "ts": format_ts(now),
                "seq": epoch_ms(now),
                "values": {"laeq": 55.0, "lamax": 65.0, "la90": 47.0},
            }
        )
        .to_payload()
        .decode()
    )
    spoofed = noise[0]
    elsewhere = next(d.id for d in CITY.districts if d.id != spoofed.district)
    mosquitto_pub(stack, topics.telemetry_topic(CITY.id, elsewhere, "noise", spoofed.id), payload)
    mosquitto_pub(
        stack, topics.telemetry_topic(CITY.id, spoofed.district, "noise", "noise-ghost-1"), payload
    )
    # The same reading 1,300 times: past the default burst of 1,200 of the token bucket.
    flooder = noise[-1]
    mosquitto_pub(stack, _topic(flooder, topics.Channel.TELEMETRY), *([payload] * 1300))
    return {"auth_failure", "identity_mismatch", "unknown_device", "rate_limited"}


@contextlib.contextmanager
def live_city(stack: LocalStack) -> Iterator[None]:
    """The simulated city publishing, in a thread of its own, until the block ends.

    It must still run while the queries do: a stopped fleet says goodbye with an offline
    status for every device, and "devices online" would rightly be empty.
    """
    settings = SimulatorSettings(
        mqtt=MqttSettings(host=stack.mqtt_host, port=stack.mqtt_port),
        # Every device logs in as itself with its own secret.
        edge=EdgeSettings(secrets_file=stack.secrets_file),
        client_id=f"sim-{secrets.token_hex(4)}",
        duration=120.0,
        speed=1.0,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stop = asyncio.Event()
    future = asyncio.run_coroutine_threadsafe(run_fleet(settings, CITY, stop=stop), loop)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        stats = future.result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert stats.accepted >= 2 * len(CITY.devices) and stats.refused == stats.failed == 0


def fill(stack: LocalStack, db: str, district: str) -> None:
    """Wait for the live city in InfluxDB, then add the rare messages and wait for them."""
    devices = (
        'SELECT count("seq") FROM (SELECT last("seq") AS "seq" FROM '  # noqa: S608
        f'/^({build.KIND_MEASUREMENTS})$/ GROUP BY "device_id")'
    )

    def first(q: str) -> int:
        series = influx(stack, db, q)
        return int(sum(row[1] for s in series for row in s["values"]))

    def city_stored() -> bool:
        births = first('SELECT count("state") FROM "device_status" WHERE "state" = \'online\'')
        return first(devices) >= len(CITY.devices) and births >= len(CITY.devices)

    wait_for(city_stored, 40, "every device's birth and first reading in InfluxDB")
    # Only now: these must be newer than the births and first readings they supersede.
    events = publish_rare_messages(stack, district)

    def rare_stored() -> bool:
        offline = first('SELECT count("state") FROM "device_status" WHERE "state" = \'offline\'')
        faulty = first('SELECT count("status") FROM "streetlight" WHERE "status" <> \'ok\'')
        stored = first(f'SELECT count("seq") FROM {schema.source(schema.EVENTS)}')  # noqa: S608
        return stored >= events and offline >= 1 and faulty >= 3

    wait_for(rare_stored, 30, "the incidents, the offline status and the faulty lamps")
    attacks = publish_attacks(stack)
    security = schema.source(schema.SECURITY_EVENTS)

    def attacks_stored() -> bool:
        series = influx(stack, db, f'SELECT sum("count") FROM {security} GROUP BY "type"')  # noqa: S608
        return attacks <= {s["tags"]["type"] for s in series}

    wait_for(attacks_stored, 30, "the security events of the attacks")

    def stats_stored() -> bool:
        # ingest_stats points come every 10 s; one that counted received messages.
        return first(f'SELECT max("received") FROM "{schema.INGEST_STATS}"') > 0  # noqa: S608

    wait_for(stats_stored, 40, "an ingest_stats point of the ingest")


def without_aq_sensor(q: str) -> bool:
    """A district-map target of a district with no air-quality sensor (no PM2.5, no marker)."""
    match = re.search(r"\"district\" = '([a-z0-9_.-]+)'", q)
    return (
        match is not None
        and '"air_quality"' in q
        and not CITY.select(kind="air_quality", district=match.group(1))
    )


# --- the test --------------------------------------------------------------------------------


def operate_incidents(stack: LocalStack, db: str) -> None:
    """Wait for the alerts service's incidents of the rare events; acknowledge and resolve
    some through the incident store, as operators do through the API."""

    async def load() -> dict[str, inc.Incident]:
        client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
        try:
            return await inc.IncidentStore(client).load(CITY.id)
        finally:
            await client.close()

    def opened() -> dict[str, inc.Incident]:
        found = asyncio.run(load())
        rules = {i.rule_id for i in found.values()}
        return found if {"panic", "gunshot"} <= rules else {}

    found = wait_for(opened, 30, "the alerts service's panic and gunshot incidents")

    async def steps() -> None:
        client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
        store = inc.IncidentStore(client)
        try:
            for incident in found.values():
                if incident.rule_id in ("panic", "gunshot") and not incident.resolved:
                    await store.transition(incident.id, "acknowledged", "op-1", "on it")
                if incident.rule_id == "panic":
                    await store.transition(incident.id, "resolved", "op-1", "false alarm")
        finally:
            await client.close()

    asyncio.run(steps())


def test_every_query_runs_and_returns_data(
    stack: LocalStack,
    influx_db: str,
    start_ingest: Callable[..., Any],
    start_alerts: Callable[..., Any],
) -> None:
    # The drill-down's district: the one with the most kinds, so each of its panels has data.
    district = max(
        CITY.districts, key=lambda d: len(registry.kinds_present(CITY.select(district=d.id)))
    ).id
    # It follows the broker's log: the wrong password lands in security_events.
    start_ingest(influx_db, SAFECITY_BROKER_LOG=str(stack.mosquitto.log_path))
    # The real alerts service opens incidents from the events (the incident panels).
    start_alerts(influx_db)
    with live_city(stack):
        fill(stack, influx_db, district)
        operate_incidents(stack, influx_db)
        run_every_query(stack, influx_db, district)


def run_every_query(stack: LocalStack, influx_db: str, district: str) -> None:
    """All dashboard, variable and rule queries, each returning data."""

    # Variable values come from the variable queries themselves, as in Grafana.
    def show(q: str) -> list[str]:
        # One series per measurement; Grafana merges them into unique values.
        values = [row[-1] for s in influx(stack, influx_db, q) for row in s["values"]]
        return list(dict.fromkeys(values))

    cities = show('SHOW TAG VALUES WITH KEY = "city"')
    assert cities == [CITY.id]
    districts = show(f'SHOW TAG VALUES WITH KEY = "district" WHERE "city" =~ /^{CITY.id}$/')
    assert sorted(districts) == sorted(d.id for d in CITY.districts)

    failures: list[str] = []
    stats_queries = 0
    ran = 0
    for board, query in dashboard_queries():
        if board["uid"] == airyear.UID:
            continue  # reads the day tier, which 6 live hours never fill: test_year_board.py
        multi = {v["name"]: v["multi"] or v["includeAll"] for v in board["templating"]["list"]}
        values = {
            "city": grafana_value(cities, multi["city"]),
            # "All" = every value, in the multi-value regex form (a|b|...).
            "district": grafana_value(
                districts if multi["district"] else [district], multi["district"]
            ),
            "kind": grafana_value(list(catalogue.KINDS), True),
        }
        q = render(query, values)
        ran += 1
        try:
            series = influx(stack, influx_db, q)
        except AssertionError as exc:
            failures.append(f"{query.where}: error {exc}")
            continue
        stats_queries += schema.INGEST_STATS in q
        if not has_data(series) and not without_aq_sensor(q):
            failures.append(f"{query.where}: no data for {q}")
    for query in rule_queries():
        q = render(query, {})
        ran += 1
        try:
            series = influx(stack, influx_db, q)
        except AssertionError as exc:
            failures.append(f"{query.where}: error {exc}")
            continue
        stats_queries += schema.INGEST_STATS in q
        if not has_data(series):
            failures.append(f"{query.where}: no data for {q}")
    assert failures == [], "\n".join(failures)
    assert ran > 100 and stats_queries >= 10


def test_district_map_targets_carry_the_registry_centroids(
    stack: LocalStack, influx_db: str
) -> None:
    # Written directly: this checks the coordinate arithmetic, not the pipeline.
    now_ms = epoch_ms(datetime.now(UTC))
    points = [
        Point(
            "air_quality",
            {"city": CITY.id, "district": d.id, "device_id": "aq-x"},
            {"pm25": 20.0 + i},
            now_ms,
        )
        for i, d in enumerate(CITY.districts)
    ]
    response = httpx.post(
        f"{stack.influx_url}/write",
        params={"db": influx_db, "precision": "ms"},
        content=encode_many(points),
        timeout=10,
    )
    assert response.status_code == 204
    board = json.loads((build.OUT / "dashboards" / "city-overview.json").read_text())
    geomap = next(p for p in board["panels"] if p["type"] == "geomap")
    for i, (t, district) in enumerate(zip(geomap["targets"], CITY.districts, strict=True)):
        q = render(Query("map", t["query"]), {"city": CITY.id})
        (series,) = influx(stack, influx_db, q)
        row = dict(zip(series["columns"], series["values"][0], strict=True))
        assert series["tags"] == {"district": district.id}
        assert row["pm25"] == 20.0 + i
        assert (row["longitude"], row["latitude"]) == district.centroid
