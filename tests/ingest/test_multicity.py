"""One ingest serving two cities: each city's readings in its own database, nothing in the
other's; a device of one city writing into another and a city nobody serves are dead
letters. Real Mosquitto 2.0.11, InfluxDB and ingest processes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devicepub import publish_as
from faults import Ingest, new_db
from support import influx_rows, wait_for

from control.stack import LocalStack
from ingest.deadletter import DeadLetterStore
from ingest.writer import InfluxWriter, city_of
from safecity import topics
from safecity.citygen import builtin
from safecity.influx import InfluxClient
from safecity.readings import format_ts
from safecity.registry import Device, default_city, write
from safecity.settings import InfluxSettings

TASHKENT = default_city()
SAMARKAND = builtin("samarkand")
NOISE = 'SELECT "device_id", "city", "laeq" FROM "noise"'
SECURITY = 'SELECT * FROM "security"."security_events"'


def reading(seq: int, laeq: float, at: datetime) -> str:
    values = {"laeq": laeq, "lamax": laeq + 10, "la90": laeq - 8}
    return json.dumps({"ts": format_ts(at), "seq": seq, "values": values})


def telemetry(city: str, device: Device) -> str:
    return topics.telemetry_topic(city, device.district, device.kind, device.id)


def letters(ingest: Ingest) -> list[dict[str, object]]:
    return DeadLetterStore(ingest.deadletter_dir).read()


def test_two_cities_each_in_its_own_database(
    stack: LocalStack, ingest_factory, tmp_path: Path
) -> None:
    files = [tmp_path / "tashkent.jsonl", tmp_path / "samarkand.jsonl"]
    write(TASHKENT, files[0])
    write(SAMARKAND, files[1])
    ours, theirs = TASHKENT.select(kind="noise")[0], SAMARKAND.select(kind="noise")[0]
    # The session's broker knows Tashkent's devices; Samarkand's get their accounts here.
    stack.mosquitto.provision(theirs.id, city=SAMARKAND.id)
    db = new_db(stack)
    ingest = ingest_factory(stack, db, SAFECITY_REGISTRY=",".join(map(str, files))).start()
    databases = {c: f"{db}_{c}" for c in ("tashkent", "samarkand")}

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    # Published back to back: one batch spanning both cities, written per database.
    assert publish_as(stack, ours, telemetry("tashkent", ours), reading(1, 51.0, now)) == ""
    assert publish_as(stack, theirs, telemetry("samarkand", theirs), reading(1, 61.0, now)) == ""
    # A Tashkent device publishing under Samarkand (the broker lets it through), and
    # under a city this deployment does not serve.
    later = now + timedelta(seconds=1)
    assert publish_as(stack, ours, telemetry("samarkand", ours), reading(2, 99.0, later)) == ""
    assert publish_as(stack, ours, telemetry("atlantis", ours), reading(3, 98.0, later)) == ""

    wait_for(
        lambda: (
            len(letters(ingest)) >= 2
            and all(influx_rows(stack, d, NOISE) for d in databases.values())
        ),
        30,
        "both cities' readings and two dead letters",
    )
    assert [
        (r["device_id"], r["city"], r["laeq"])
        for r in influx_rows(stack, databases["tashkent"], NOISE)
    ] == [(ours.id, "tashkent", 51.0)]
    assert [
        (r["device_id"], r["city"], r["laeq"])
        for r in influx_rows(stack, databases["samarkand"], NOISE)
    ] == [(theirs.id, "samarkand", 61.0)]
    # Nothing under the deployment's bare database name: every city has its own.
    shown = influx_rows(stack, db, "SHOW DATABASES")
    assert db not in {r["name"] for r in shown}

    by_topic = {str(letter["topic"]): letter for letter in letters(ingest)}
    intruder = by_topic[telemetry("samarkand", ours)]
    assert intruder["reason"] == "identity_mismatch"
    assert "belongs to city 'tashkent'" in str(intruder["detail"])
    stranger = by_topic[telemetry("atlantis", ours)]
    assert stranger["reason"] == "identity_mismatch"
    assert "does not serve" in str(stranger["detail"])

    # The security events are the device's own city's: Tashkent's operators answer for it.
    def security() -> list[dict[str, object]]:
        rows = influx_rows(stack, databases["tashkent"], SECURITY)
        return rows if sum(int(r["count"]) for r in rows) >= 2 else []

    events = wait_for(security, 20, "both security events")
    assert {(e["type"], e["device_id"], e["city"]) for e in events} == {
        ("identity_mismatch", ours.id, "tashkent")
    }
    assert influx_rows(stack, databases["samarkand"], SECURITY) == []

    # Each city's database has the platform's retention policies, made at start-up.
    for database in databases.values():
        policies = {
            r["name"]
            for r in influx_rows(stack, database, f'SHOW RETENTION POLICIES ON "{database}"')
        }
        assert {"raw", "events", "security", "incidents"} <= policies


def test_the_writer_routes_each_line_to_its_city_and_refuses_a_stranger(
    stack: LocalStack,
) -> None:
    db = new_db(stack)
    cities = ("tashkent", "samarkand")
    now_ms = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    lines = [
        f"noise,city=tashkent,device_id=a laeq=50 {now_ms}",
        f"noise,city=atlantis,device_id=x laeq=99 {now_ms}",
        f"noise,city=samarkand,device_id=b laeq=60 {now_ms}",
        "security_events,city=samarkand,source=ingest,type=identity_mismatch "
        f'count=1i,detail="x" {now_ms}',
    ]
    assert [city_of(line) for line in lines] == ["tashkent", "atlantis", "samarkand", "samarkand"]

    async def main() -> list[tuple[int, str]]:
        client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
        try:
            for city in cities:
                await client.for_city(city, cities).ensure_database()
            return await InfluxWriter(client, cities=cities).write(lines)
        finally:
            await client.close()

    refused = asyncio.run(main())
    assert [(i, "atlantis" in message) for i, message in refused] == [(1, True)]
    assert [r["device_id"] for r in influx_rows(stack, f"{db}_tashkent", NOISE)] == ["a"]
    assert [r["device_id"] for r in influx_rows(stack, f"{db}_samarkand", NOISE)] == ["b"]
    assert len(influx_rows(stack, f"{db}_samarkand", SECURITY)) == 1
    assert influx_rows(stack, f"{db}_tashkent", SECURITY) == []
