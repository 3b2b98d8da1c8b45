"""Federation end to end: two city instances and one regional instance, real bridges.

Tashkent and Samarkand each run their own Mosquitto and InfluxDB and an API whose
federation publisher publishes every 3 s interval; each city broker bridges (TLS, its
own `_bridge.<city>` account) to the regional Mosquitto, whose ingest (federation
mode) writes into the region's own InfluxDB, served by the regional API. The cities'
readings are written straight into their databases (so every interval's figures are
fixed before it closes), and raw device messages (a reading, an ANPR hit with a plate
hash) are published on the city brokers meanwhile: none of it may reach the region.
"""

# Statements name only our own measurements and ids the contract validated.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import mosquitto, wait_for

from api.apikeys import KeyStore
from api.overview import MEAN_FIELDS
from broker.bridge import bridge_username, render_bridge
from broker.dynsec import DynsecAdmin
from broker.identity import Role, service_username
from control.stack import LocalStack, ManagedProcess, free_port, http_ok
from safecity import federation as fed
from safecity import incidents as inc
from safecity.citygen import builtin
from safecity.errors import StackError
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import format_ts
from safecity.registry import City, write
from safecity.schema import EVENTS, reading_tags, retention_policy_of
from safecity.settings import InfluxSettings, MqttSettings

CITIES = ("tashkent", "samarkand")
INTERVAL, DELAY = 3.0, 1.0
PLATE = "ab" * 32
SECTIONS = ("air_quality", "traffic", "noise", "devices", "incidents")
REGION_DB = "safecity_federation"


@dataclass
class Instance:
    """One instance: its stack, its services, and what its brokers were seen to carry."""

    name: str
    stack: LocalStack
    city: City | None = None
    api: str = ""
    key: str = ""
    seen: Path | None = None
    children: list[ManagedProcess] = field(default_factory=list)


def _account(stack: LocalStack, username: str, role: Role, city: str | None = None) -> str:
    """Provision an account in the stack's store before its broker starts; its secret."""
    ids = stack.mosquitto.identities
    secret = ids.store.provision(username, role, city) or ids.store.rotate(username)
    ids.store.save()
    ids.secrets[username] = secret
    return secret


def _admin(stack: LocalStack) -> DynsecAdmin:
    """The regional broker's dynamic-security admin."""
    return DynsecAdmin(
        MqttSettings(
            host=stack.mqtt_host,
            port=stack.mqtt_port,
            username=service_username(Role.ADMIN),
            password=stack.mosquitto.identities.admin_secret,
        )
    )


def _toggle(command: str) -> list[dict[str, Any]]:
    """Disable or enable every city's bridge account (a disabled one is disconnected)."""
    return [{"command": command, "username": bridge_username(c)} for c in CITIES]


def _restart(stack: LocalStack) -> None:
    """Start the stopped broker again on its ports (retried while another holds one)."""

    def started() -> bool:
        try:
            stack.mosquitto.start()
        except StackError as exc:
            if "already in use" not in str(exc):
                raise
            return False
        return True

    wait_for(started, 30, "the regional broker's port to be free again", interval=1)


def _audit_account(stack: LocalStack) -> str:
    """A test-only account that may subscribe to `#`, made through the broker's $CONTROL; named
    as a service (`_`): the broker's guard treats every other name as a device."""
    secret = secrets.token_urlsafe(16)
    acls = [
        {"acltype": t, "topic": "#", "priority": 0, "allow": True}
        for t in ("subscribePattern", "publishClientReceive")
    ]
    commands: list[dict[str, Any]] = [{"command": "createRole", "rolename": "audit"}]
    commands += [{"command": "addRoleACL", "rolename": "audit", **a} for a in acls]
    commands.append(
        {
            "command": "createClient",
            "username": "_audit",
            "password": secret,
            "roles": [{"rolename": "audit"}],
        }
    )
    _admin(stack).apply(commands)
    return secret


def _subscriber(
    stack: LocalStack, user: str, secret: str, topic: str, out: Path
) -> subprocess.Popen[bytes]:
    """mosquitto_sub on a persistent QoS 1 session, one `topic payload` line per message."""
    argv = mosquitto(
        "mosquitto_sub",
        stack,
        user,
        secret=secret,
        client_id=f"watch-{out.stem}",
        version="mqttv311",
    )
    argv += ["-q", "1", "-c", "-t", topic, "-F", "%t %p"]
    return subprocess.Popen(argv, stdout=out.open("wb"), stderr=subprocess.DEVNULL)


def _pub(stack: LocalStack, user: str, topic: str, payload: str, tls: bool = False) -> str:
    """mosquitto_pub at QoS 1 (MQTT v5); its stderr (a refusal is reported there)."""
    port = stack.mqtt_tls_port if tls else stack.mqtt_port
    argv = [*mosquitto("mosquitto_pub", stack, user, port=port), "-q", "1"]
    if tls:
        argv += ["--cafile", str(stack.ca_file)]
    argv += ["-t", topic, "-m", payload]
    done = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    return done.stderr.decode() + done.stdout.decode()


def _lines(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        topic, _, payload = line.partition(" ")
        out.append((topic, payload))
    return out


def _query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    response = httpx.post(f"{url}/query", data={"db": db, "q": q}, timeout=20)
    response.raise_for_status()
    return [s for r in response.json()["results"] for s in r.get("series", [])]


def _seed(city: City, url: str, t0: datetime) -> None:
    """Readings of every averaged kind from t0-2 min to t0+4 min, an ANPR hit, an incident."""
    points = []
    start = int((t0 - timedelta(minutes=2)).timestamp()) * 1000
    for device in city.devices:
        if device.kind not in MEAN_FIELDS:
            continue
        h = zlib.crc32(device.id.encode()) % 1000
        for n, at in enumerate(range(start, start + 360_000, 2000)):
            values: dict[str, float | int] = {"seq": n}
            for i, name in enumerate(MEAN_FIELDS[device.kind]):
                values[name] = round(5 + (h * (i + 3)) % 40 + (n % 7) * 0.5, 2)
            if device.kind in ("traffic", "parking", "crowd"):
                values["occupancy"] = round((h % 90) / 100 + (n % 3) / 100, 3)
            points.append(Point(device.kind, reading_tags(city.id, device), values, at))
    anpr = next(d for d in city.devices if d.kind == "anpr")
    event = Point(
        EVENTS,
        {**reading_tags(city.id, anpr), "type": "anpr_hit", "severity": "high"},
        {"seq": 1, "plate_hash": PLATE, "list": "stolen", "confidence": 0.9},
        int(t0.timestamp() * 1000),
    )

    async def run() -> None:
        client = InfluxClient(InfluxSettings(url=url, database="safecity"))
        try:
            await client.ensure_database()
            await client.ensure_retention_policies()
            await client.write(encode_many(points))
            await client.write(encode_many([event]), rp=retention_policy_of(EVENTS))
            store = inc.IncidentStore(client)
            opened = t0.replace(microsecond=0) - timedelta(seconds=60)
            incident = inc.open_incident(
                city=city.id,
                district=anpr.district,
                rule_id="anpr-stolen",
                rule_type="anpr_hit",
                severity="high",
                place=anpr.id,
                devices=[anpr.id],
                opened_at=opened,
                value=None,
                message="stolen vehicle seen",
            )
            await store.open(incident)
            await store.transition(
                incident.id, "acknowledged", "op", at=opened + timedelta(seconds=30)
            )
        finally:
            await client.close()

    asyncio.run(run())


def _env(stack: LocalStack, db: str, user: str, secret: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_HOME": extra.pop("home"),
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_MQTT__USERNAME": user,
            "SAFECITY_MQTT__PASSWORD": secret,
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_INFLUX__DATABASE": db,
            **extra,
        }
    )
    return env


def _launch(inst: Instance, command: str, env: dict[str, str], ready: str, base: Path) -> None:
    proc = ManagedProcess(
        f"{inst.name}-{command}",
        [sys.executable, "-m", "control", command],
        base / f"{inst.name}-{command}.log",
        env=env,
    )
    inst.children.append(proc)
    proc.start()
    proc.wait_ready(http_ok(ready), timeout=60)


def _api(inst: Instance, base: Path, db: str, **extra: str) -> None:
    port = free_port()
    keys = base / f"{inst.name}-keys.json"
    _, inst.key = KeyStore(keys).create("federation-test", ("read",))
    stack = inst.stack
    env = _env(
        stack,
        db,
        "_api",
        stack.secret("_api"),
        home=str(base / f"{inst.name}-home"),
        SAFECITY_HOST="127.0.0.1",
        SAFECITY_PORT=str(port),
        SAFECITY_API_KEYS_FILE=str(keys),
        SAFECITY_AUDIT_LOG_FILE=str(base / f"{inst.name}-audit.jsonl"),
        SAFECITY_FEDERATION__INTERVAL=str(INTERVAL),
        SAFECITY_FEDERATION__DELAY=str(DELAY),
        **extra,
    )
    inst.api = f"http://127.0.0.1:{port}"
    _launch(inst, "api", env, f"{inst.api}/readyz", base)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Instance]]:
    """Three instances started, bridged and publishing; everything stopped afterwards."""
    base = tmp_path_factory.mktemp("federation")
    region = Instance("region", LocalStack(base / "region", city=builtin("tashkent")))
    bridge_secrets = {c: _account(region.stack, bridge_username(c), Role.BRIDGE, c) for c in CITIES}
    _account(region.stack, service_username(Role.REGION), Role.REGION)
    instances = {"region": region}
    try:
        region.stack.start()
        audit = _audit_account(region.stack)
        region.seen = base / "region-all.txt"
        watchers = [_subscriber(region.stack, "_audit", audit, "#", region.seen)]
        # The regional ingest first: its persistent session queues from then on.
        metrics = free_port()
        env = _env(
            region.stack,
            "unused",
            "_region",
            region.stack.secret("_region"),
            home=str(base / "region-home"),
            SAFECITY_REGION__ENABLED="true",
            SAFECITY_REGION__DATABASE=REGION_DB,
            SAFECITY_METRICS_PORT=str(metrics),
            SAFECITY_DEADLETTER_DIR=str(base / "region-deadletter"),
            SAFECITY_WORKER_ID="region-0",
        )
        _launch(region, "ingest", env, f"http://127.0.0.1:{metrics}/readyz", base)
        _api(region, base, REGION_DB, SAFECITY_REGION__LOCAL="false")
        t0 = datetime.now(UTC)
        for name in CITIES:
            city = builtin(name)
            bridge = render_bridge(
                address=f"127.0.0.1:{region.stack.mqtt_tls_port}",
                cities=[name],
                cafile=region.stack.ca_file or Path(),
                username=bridge_username(name),
                password=bridge_secrets[name],
                restart=(1, 3),
            )
            inst = Instance(
                name, LocalStack(base / name, city=city, mosquitto_extra_config=bridge), city
            )
            instances[name] = inst
            # The publisher's account, pinned to this city's _federation topics.
            publisher = service_username(Role.FEDERATION, name)
            secret = _account(inst.stack, publisher, Role.FEDERATION, name)
            inst.stack.start()
            inst.seen = base / f"{name}-published.txt"
            watchers.append(
                _subscriber(
                    inst.stack,
                    "_api",
                    inst.stack.secret("_api"),
                    fed.federation_filter(name),
                    inst.seen,
                )
            )
            _seed(city, inst.stack.influx_url, t0)
            registry = base / f"{name}.jsonl"
            write(city, registry)
            _api(
                inst,
                base,
                "safecity",
                SAFECITY_REGISTRY=str(registry),
                SAFECITY_FEDERATION__ENABLED="true",
                SAFECITY_FEDERATION__BACKFILL="2",
                SAFECITY_FEDERATION__USERNAME=publisher,
                SAFECITY_FEDERATION__PASSWORD=secret,
            )
        yield instances
    finally:
        for inst in instances.values():
            for child in reversed(inst.children):
                child.stop(timeout=15)
        for w in locals().get("watchers", []):
            w.terminate()
        for inst in reversed(list(instances.values())):
            inst.stack.stop()


def _published(inst: Instance) -> set[tuple[str, str]]:
    """(topic, interval start) of every message the city's broker carried."""
    assert inst.seen is not None
    out = set()
    for topic, payload in _lines(inst.seen):
        message = fed.parse_message(topic, payload.encode())
        out.add((topic, message.interval.key()[0]))
    return out


def _stored(region: Instance) -> set[tuple[str, str]]:
    """(topic, interval start) of every federated point in the region's database."""
    out = set()
    for m in ("federated_scopes", "federated_segments"):
        for s in _query(region.stack.influx_url, REGION_DB, f'SELECT "payload" FROM "{m}"'):
            for row in s["values"]:
                data = json.loads(row[1])
                message = (fed.SegmentIndicators if "segment" in data else fed.ScopeIndicators)(
                    **data
                )
                out.add((message.topic(), message.interval.key()[0]))
    return out


def _overview(inst: Instance, start: str, end: str, district: str | None = None) -> dict[str, Any]:
    """The city's own API's overview of the city (or a district) for [start, end)."""
    path = f"/v1/cities/{inst.name}" + (f"/districts/{district}" if district else "")
    response = httpx.get(
        f"{inst.api}{path}/overview",
        params={"from": start, "to": end},
        headers={"X-API-Key": inst.key},
        timeout=30,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _raw_traffic(cities: list[Instance]) -> None:
    """Raw device traffic on the city brokers meanwhile: a reading and an ANPR hit."""
    for inst in cities:
        assert inst.city is not None
        anpr = next(d for d in inst.city.devices if d.kind == "anpr")
        topic = f"safecity/v1/{inst.name}/{anpr.district}/anpr/{anpr.id}/event"
        event = {"ts": format_ts(datetime.now(UTC)), "seq": 7, "type": "anpr_hit"}
        _pub(inst.stack, "_simulator", topic, json.dumps({**event, "plate_hash": PLATE}))


def _outages(region: Instance, cities: list[Instance]) -> set[tuple[str, str]]:
    """Two outages of two intervals each: the bridges cut (their accounts disabled on the
    regional broker), then the regional broker itself stopped. The cities keep
    publishing to their own brokers, whose bridges queue; the region catches up. What the
    cities had published by the end of the last outage."""
    admin = _admin(region.stack)

    def cut_bridges() -> None:
        admin.apply(_toggle("disableClient"))

    def heal_bridges() -> None:
        admin.apply(_toggle("enableClient"))

    outages: list[tuple[Callable[[], None], Callable[[], None]]] = [
        (cut_bridges, heal_bridges),
        (region.stack.mosquitto.stop, lambda: _restart(region.stack)),
    ]
    published: set[tuple[str, str]] = set()
    for cut, heal in outages:
        cut()
        before = set().union(*(_published(c) for c in cities))

        def two_new_intervals(before: set[tuple[str, str]] = before) -> set[tuple[str, str]]:
            now = set().union(*(_published(c) for c in cities))
            during = now - before
            each = [{s for t, s in during if t.split("/")[2] == c.name} for c in cities]
            return now if min(map(len, each)) >= 2 else set()

        published = wait_for(
            two_new_intervals, 10 * INTERVAL, "two intervals published while away", interval=0.5
        )
        during = published - before
        assert during, "the cities kept publishing while the region was away"
        assert not during & _stored(region)
        heal()
        wait_for(
            lambda: published <= _stored(region),  # noqa: B023 - waited for in this pass
            90,
            "the region to catch up on every indicator published",
            interval=0.5,
        )
    return published


def _region_overview(federation: dict[str, Instance], region: Instance) -> dict[str, Any]:
    """The regional figures equal the cities' own overviews of the same intervals; the
    regional overview."""
    view = httpx.get(
        f"{region.api}/v1/region/overview", headers={"X-API-Key": region.key}, timeout=30
    )
    view.raise_for_status()
    body: dict[str, Any] = view.json()
    assert [c["city"] for c in body["cities"]] == sorted(CITIES)
    for entry in body["cities"]:
        assert entry["source"] == "federated"
        own = _overview(federation[entry["city"]], entry["window"]["from"], entry["window"]["to"])
        for section in SECTIONS:
            assert entry[section] == own[section], (entry["city"], section)
        assert entry["response"]["acknowledged"] == 1
        assert entry["response"]["tta_median_s"] == 30.0
        assert entry["incidents"]["total"] == 1
        assert entry["air_quality"]["aqi"]["value"] is not None
        assert entry["traffic"]["avg_speed"]["value"] is not None
        assert entry["delivery"]["stored"] > 0
    return body


def _stored_scopes_equal_the_cities(
    federation: dict[str, Instance], region: Instance, published: set[tuple[str, str]]
) -> None:
    """A sample of the stored scope indicators equals each city's own overview of it."""
    scopes = sorted(k for k in published if "/segment/" not in k[0])
    assert len(scopes) >= 12
    for topic, start in scopes[:: max(1, len(scopes) // 12)]:
        where = fed.parse_federation_topic(topic)
        rows = _query(
            region.stack.influx_url,
            REGION_DB,
            f'SELECT "payload" FROM "federated_scopes" WHERE "city" = \'{where.city}\' '
            f"AND \"scope\" = '{where.name or fed.CITY_SCOPE}' AND time = '{start}'",
        )
        stored = fed.ScopeIndicators.model_validate_json(rows[0]["values"][0][1])
        own = _overview(federation[where.city], *stored.interval.key(), district=where.name)
        mine = stored.model_dump(mode="json")
        for section in SECTIONS:
            assert mine[section] == {k: v for k, v in own[section].items() if k in mine[section]}, (
                topic,
                start,
                section,
            )


def _corridor_kpis(body: dict[str, Any]) -> None:
    """Corridor KPIs from the federated segments."""
    corridor = next(c for c in body["corridors"] if c["id"] == "tashkent-samarkand")
    assert [s["city"] for s in corridor["segments"]] == ["tashkent", "samarkand"]
    for s in corridor["segments"]:
        assert s["source"] == "federated" and s["speed_kmh"] > 0
        assert s["travel_time_s"] == pytest.approx(s["length_km"] / s["speed_kmh"] * 3600, 0.01)
    assert corridor["travel_time_s"] == pytest.approx(
        sum(s["travel_time_s"] for s in corridor["segments"]), abs=0.2
    )
    assert corridor["speed_kmh"] > 0


def _nothing_but_indicators(region: Instance, cities: list[Instance]) -> list[tuple[str, str]]:
    """Nothing but federation indicators reached the regional broker or its database; what
    the broker carried."""
    assert region.seen is not None
    forbidden = [PLATE, "plate", "seq"]
    forbidden += [d.id for inst in cities if inst.city for d in inst.city.devices]
    carried = _lines(region.seen)
    assert carried, "the audit subscription saw the indicators"
    for topic, payload in carried:
        assert fed.parse_federation_topic(topic).city in CITIES
        fed.parse_message(topic, payload.encode())
        assert not [f for f in forbidden if f in payload], topic
    # ... or its database (every measurement of every database scanned).
    dbs = _query(region.stack.influx_url, "", "SHOW DATABASES")[0]["values"]
    for (db,) in dbs:
        if db == "_internal":
            continue
        measurements = _query(region.stack.influx_url, db, "SHOW MEASUREMENTS")
        names = {v[0] for s in measurements for v in s["values"]}
        assert names <= {"federated_scopes", "federated_segments"}, (db, names)
        for name in names:
            for s in _query(region.stack.influx_url, db, f'SELECT * FROM "{name}"'):
                text = json.dumps(s)
                assert not [f for f in forbidden if f in text], (db, name)
    return carried


def _refusals_and_redelivery(
    federation: dict[str, Instance], region: Instance, carried: list[tuple[str, str]]
) -> None:
    """A bridge account may write only its own city's federation topics; bad input is
    dead-lettered with its reason."""
    own_topic = fed.city_topic("tashkent")
    refused = _pub(
        region.stack, bridge_username("tashkent"), fed.city_topic("samarkand"), "{}", tls=True
    )
    assert "not author" in refused.lower(), refused
    # So may a city's publisher on its own broker.
    tashkent = federation["tashkent"].stack
    refused = _pub(tashkent, "_federation.tashkent", fed.city_topic("samarkand"), "{}")
    assert "not author" in refused.lower(), refused
    # A message delivered twice (QoS 1, a bridge's resend) overwrites itself.
    (line,) = [(t, p) for t, p in carried if t == own_topic][-1:]
    again = fed.ScopeIndicators.model_validate_json(line[1])
    count = (
        'SELECT count("payload") FROM "federated_scopes" WHERE "city" = \'tashkent\' '
        f"AND \"scope\" = '_city' AND time = '{again.interval.key()[0]}'"
    )
    assert _query(region.stack.influx_url, REGION_DB, count)[0]["values"][0][1] == 1
    _pub(region.stack, bridge_username("tashkent"), own_topic, line[1], tls=True)
    _pub(region.stack, bridge_username("tashkent"), own_topic, "not json", tls=True)
    letters = region.stack.base_dir.parent / "region-deadletter" / "deadletters.jsonl"
    wait_for(
        lambda: letters.exists() and "bad_json" in letters.read_text(),
        60,
        "the dead letter",
        interval=0.5,
    )
    assert _query(region.stack.influx_url, REGION_DB, count)[0]["values"][0][1] == 1


def test_federation_shares_indicators_not_data(federation: dict[str, Instance]) -> None:
    region = federation["region"]
    cities = [federation[c] for c in CITIES]
    _raw_traffic(cities)

    def intervals(city: str) -> int:
        return len({start for topic, start in _stored(region) if topic.split("/")[2] == city})

    wait_for(
        lambda: min(map(intervals, CITIES)) >= 2,
        60,
        "two intervals of each city in the region",
        interval=0.5,
    )
    published = _outages(region, cities)
    body = _region_overview(federation, region)
    _stored_scopes_equal_the_cities(federation, region, published)
    _corridor_kpis(body)
    carried = _nothing_but_indicators(region, cities)
    _refusals_and_redelivery(federation, region, carried)
