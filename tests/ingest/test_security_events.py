"""security_events: attacks seen by ingest and in the real broker's log, and the per-family
retention policies ingest writes into. Real Mosquitto 2.0.11, InfluxDB and ingest processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from faults import new_db
from support import holds_for, influx_rows, mosquitto, mosquitto_pub, wait_for

from control.stack import LocalStack
from ingest.brokerlog import EventClock, LogFollower, parse_line
from ingest.stats import BrokerDropped
from ingest.watch import BROKER_LOG_POLL_S
from ingest.writer import InfluxWriter
from safecity import schema, topics
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode
from safecity.readings import format_ts
from safecity.registry import default_city
from safecity.settings import InfluxSettings

CITY = default_city()
ROOT = Path(__file__).resolve().parents[2]
SECURITY = 'SELECT * FROM "security"."security_events"'
NOT_AUTHORISED = "Client <unknown> disconnected, not authorised."


def connect(
    stack: LocalStack,
    client_id: str,
    username: str | None = None,
    secret: str | None = None,
    topic: str = "x/y",
) -> str:
    """mosquitto_pub once as `username` with `secret` (anonymous for None); its stderr."""
    result = subprocess.run(
        [
            *mosquitto("mosquitto_pub", stack, username, secret=secret, client_id=client_id),
            *("-q", "1", "-t", topic, "-m", "{}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stderr


def noise_payload(seq: int) -> str:
    return json.dumps(
        {
            "ts": format_ts(datetime.now(UTC).replace(microsecond=0)),
            "seq": seq,
            "values": {"laeq": 55.0, "lamax": 65.0, "la90": 47.0},
        }
    )


def test_broker_auth_failures_and_dangerous_ids_become_security_events(
    own_stack, ingest_factory
) -> None:
    db = new_db(own_stack)
    log_path = own_stack.mosquitto.log_path
    ingest = ingest_factory(own_stack, db, "brokerlog", SAFECITY_BROKER_LOG=str(log_path)).start()
    # The follower starts at the end of the log: wait until it says so.
    wait_for(lambda: "following the broker log" in ingest.log_path.read_text(), 20, "follower")
    device, other = CITY.devices[0], CITY.devices[1]
    # Anonymous, wrong password of a real device, unknown user: all CONNACK 0x87.
    assert "Not authorized" in connect(own_stack, "anon-1")
    assert "Not authorized" in connect(own_stack, device.id, device.id, "wrong")
    assert "Not authorized" in connect(own_stack, "ghost-1", "ghost", "x")
    # A device spoofing another's topic: PUBACK 0x87 (the broker logs nothing about it at
    # the platform's log levels; ingest never sees it either).
    spoof = topics.telemetry_topic(CITY.id, other.district, other.kind, other.id)
    secret = own_stack.secret(device.id)
    assert "Not authorized" in connect(own_stack, device.id, device.id, secret, topic=spoof)
    # A client id other than its own (here with a wildcard): refused at CONNECT, since
    # the broker pins each device to its own client id.
    own = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
    assert "Not authorized" in connect(own_stack, "evil+id", device.id, secret, topic=own)

    rows = wait_for(
        lambda: (r := influx_rows(own_stack, db, SECURITY)) and len(r) >= 4 and r,
        30,
        "four broker auth failures",
    )
    # Nothing more may follow. The follower reads every new log line each BROKER_LOG_POLL_S
    # and stores their points before its next read: a fifth event from what the broker
    # logged would show within two polls of the four.
    holds_for(
        lambda: len(influx_rows(own_stack, db, SECURITY)) == 4,
        2 * BROKER_LOG_POLL_S + 1.0,
        "four security events, no more",
    )
    rows = influx_rows(own_stack, db, SECURITY)
    auth = [r for r in rows if r["type"] == "auth_failure"]
    assert len(auth) == 4 and len(rows) == 4
    for row in auth:
        assert (row["source"], row["city"], row["count"]) == ("broker", CITY.id, 1)
        # 2.0.11 does not know the client id yet: no device tags, never a raw id as tag.
        assert row["client_id"] == "<unknown>" and row.get("device_id") is None
        assert row.get("district") is None and row.get("worker_id") is None
        assert row["detail"] == NOT_AUTHORISED
    # Distinct timestamps: no event overwrote another.
    assert len({r["time"] for r in auth}) == 4

    # What Mosquitto 2.0.11 actually wrote, line by line, and how it parses.
    text = log_path.read_text()
    assert text.count(NOT_AUTHORISED) == 4
    assert "dangerous client id" not in text  # it never got as far as an ACL check
    assert "Denied PUBLISH" not in text  # a debug-level line: not logged by the platform
    parsed = [e for e in map(parse_line, text.splitlines()) if e is not None]
    assert [e.type for e in parsed] == ["auth_failure"] * 4
    assert all(e.time_s is not None and abs(e.time_s - time.time()) < 3600 for e in parsed)


def test_refused_command_traffic_becomes_security_events(own_stack, ingest_factory) -> None:
    """A device (Mosquitto's own clients, its own login) publishing a command, publishing a
    result for another device and subscribing to its commands: each refused by the broker
    (its guard plugin) and each an `acl_denied` event of that device in InfluxDB."""
    db = new_db(own_stack)
    log_path = own_stack.mosquitto.log_path
    ingest = ingest_factory(own_stack, db, "guard", SAFECITY_BROKER_LOG=str(log_path)).start()
    wait_for(lambda: "following the broker log" in ingest.log_path.read_text(), 20, "follower")
    spy, victim = CITY.devices[2], CITY.devices[3]
    address = (CITY.id, victim.district, victim.kind, victim.id)
    command, result = topics.command_topic(*address), topics.result_topic(*address)
    login = mosquitto("mosquitto_pub", own_stack, spy.id, client_id=spy.id)
    sub = [*mosquitto("mosquitto_sub", own_stack, spy.id, client_id=spy.id), "-t", command]
    said = [
        subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stderr
        for argv in (
            [*login, "-q", "1", "-t", command, "-m", "{}"],
            [*login, "-q", "1", "-t", result, "-m", "{}"],
            [*sub, "-q", "1", "-W", "2"],
        )
    ]
    assert ["Not authorized" in said[0], "Not authorized" in said[1]] == [True, True]
    assert "All subscription requests were denied" in said[2]
    rows = wait_for(
        lambda: (r := influx_rows(own_stack, db, SECURITY)) and len(r) >= 3 and r,
        30,
        "three refusals as security events",
    )
    assert sorted((r["type"], r["device_id"], r["client_id"], r["detail"]) for r in rows) == [
        ("acl_denied", spy.id, spy.id, f"subscribe {command}"),
        ("acl_denied", spy.id, spy.id, f"topic {command}"),
        ("acl_denied", spy.id, spy.id, f"topic {result}"),
    ]
    assert {(r["source"], r["city"], r["district"]) for r in rows} == {
        ("broker", CITY.id, spy.district)
    }


def test_parser_knows_the_other_broker_lines_and_ignores_the_rest() -> None:
    denied = parse_line(
        "2026-01-15T06:00:00: Denied PUBLISH from airquality-yunusabad-001 (d0, q1, r0, m1, "
        "'safecity/v1/tashkent/chilanzar/noise/noise-chilanzar-001/telemetry', ... (2 bytes))"
    )
    assert denied is not None and denied.type == "acl_denied"
    assert denied.client_id == "airquality-yunusabad-001"
    assert denied.topic == "safecity/v1/tashkent/chilanzar/noise/noise-chilanzar-001/telemetry"
    guarded = parse_line(
        "2026-01-15T06:00:00: safecity-guard: denied subscribe by client 'noise-1' user "
        "'noise-1' on 'safecity/v1/tashkent/+/+/+/cmd'"
    )
    assert guarded is not None and (guarded.type, guarded.access) == ("acl_denied", "subscribe")
    assert (guarded.client_id, guarded.topic) == ("noise-1", "safecity/v1/tashkent/+/+/+/cmd")
    epoch = parse_line("1768456800: Client sensor 7 failed authentication")
    assert epoch is not None and (epoch.type, epoch.time_s) == ("auth_failure", 1768456800)
    assert epoch.client_id == "sensor 7"
    bridge = parse_line("1768456800: Connection Refused: not authorised.")
    assert bridge is not None and bridge.client_id == "<unknown>"
    for line in (
        "2026-01-15T06:00:00: New connection from 127.0.0.1:5000 on port 1883.",
        "2026-01-15T06:00:00: Client airquality-yunusabad-001 disconnected.",
        "2026-01-15T06:00:00: mosquitto version 2.0.11 running",
        "",
    ):
        assert parse_line(line) is None
    # A hostile client id is stored sanitised and truncated, never as a tag.
    hostile = "x" * 100 + '\n"\\é'
    point = schema.security_event_point(
        CITY.id, "auth_failure", 1, device=None, client_id=hostile, detail=hostile
    )
    assert point.fields["client_id"] == "x" * schema.CLIENT_ID_MAX
    assert str(point.fields["detail"]).endswith('?"\\?') and "\n" not in encode(point)
    assert set(point.tags) == {"city", "source", "type"}


def test_event_clock_is_deterministic_and_unique_within_a_second() -> None:
    a, b = EventClock(), EventClock()
    stamps = [a.stamp(100) for _ in range(3)] + [a.stamp(101)]
    assert stamps == [100_000, 100_001, 100_002, 101_000]
    assert [b.stamp(100) for _ in range(3)] + [b.stamp(101)] == stamps


def test_log_follower_tails_from_the_end_and_survives_truncation_and_rotation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mosquitto.log"
    path.write_text("old 1\nold 2\n")
    follower = LogFollower(path)
    assert follower.read() == []
    with path.open("a") as fh:
        fh.write("new 1\nnew ")
    assert follower.read() == ["new 1"]
    with path.open("a") as fh:
        fh.write("2\n")
    assert follower.read() == ["new 2"]
    path.write_text("after truncation\n")
    assert follower.read() == ["after truncation"]
    path.rename(tmp_path / "mosquitto.log.1")
    assert follower.read() == []
    path.write_text("rotated\n")
    assert follower.read() == ["rotated"]


def test_broker_dropped_counts_increases_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "w" / "broker-dropped.json"
    first = BrokerDropped(state)
    first.observe(5)
    first.observe(8)
    assert first.take() == 8 and first.take() == 0
    # A restarted worker remembers 8: the broker's next value counts only its increase.
    second = BrokerDropped(state)
    second.observe(8)
    second.observe(11)
    assert second.take() == 3
    # A value below the last one: the broker restarted and counts from 0 again.
    second.observe(2)
    assert second.take() == 2


def test_writer_puts_each_family_into_its_retention_policy(stack, influx_db) -> None:
    now = int(time.time() * 1000)
    device = CITY.select(kind="noise")[0]
    tags = {"city": CITY.id, "district": device.district, "device_id": device.id}
    points = [
        Point("noise", tags, {"seq": 1, "laeq": 50.0}, now),
        Point(schema.EVENTS, {**tags, "type": "x", "severity": "low"}, {"seq": 2}, now),
        # Refused by InfluxDB (a field type conflict): found in its group, reported by index.
        Point(schema.EVENTS, {**tags, "type": "x", "severity": "low"}, {"seq": "s"}, now + 1),
        schema.security_event_point(
            CITY.id, "unknown_device", now, device=None, client_id="ghost", detail="d"
        ),
        Point("noise", tags, {"seq": 3, "laeq": 51.0}, now + 1),
    ]

    async def main() -> list[tuple[int, str]]:
        client = InfluxClient(InfluxSettings(url=stack.influx_url, database=influx_db))
        try:
            await client.ensure_database()
            return await InfluxWriter(client).write([encode(p) for p in points])
        finally:
            await client.close()

    refused = asyncio.run(main())
    assert [i for i, _ in refused] == [2] and "conflict" in refused[0][1]

    def count(q: str) -> int:
        return len(influx_rows(stack, influx_db, q))

    assert count('SELECT * FROM "raw"."noise"') == 2
    assert count('SELECT * FROM "events"."events"') == 1
    assert count('SELECT * FROM "security"."security_events"') == 1
    assert count('SELECT * FROM "raw"."events"') == count('SELECT * FROM "raw"."security_events"')
    assert count('SELECT * FROM "raw"."events"') == 0


def test_security_events_and_stats_are_spooled_while_influxdb_is_away(
    own_stack, ingest_factory
) -> None:
    db = new_db(own_stack)
    ingest = ingest_factory(own_stack, db, "ownspool").start()
    device = CITY.select(kind="noise")[0]
    elsewhere = next(d.id for d in CITY.districts if d.id != device.district)
    spoof = topics.telemetry_topic(CITY.id, elsewhere, "noise", device.id)
    good = topics.telemetry_topic(CITY.id, device.district, "noise", device.id)
    own_stack.influxd.pause()
    try:
        mosquitto_pub(own_stack, good, noise_payload(1))
        mosquitto_pub(own_stack, spoof, *(noise_payload(10 + i) for i in range(3)))
        wait_for(lambda: ingest.metric("safecity_ingest_acked_total") == 4, 20, "acks")
        # The next ingest_stats point goes to the spool too.
        spooled = ingest.metric("safecity_ingest_spool_points")
        wait_for(
            lambda: ingest.metric("safecity_ingest_spool_points") > spooled, 30, "stats spooled"
        )
    finally:
        own_stack.influxd.resume()
    wait_for(lambda: ingest.metric("safecity_ingest_spool_points") == 0, 30, "spool drained")
    events = influx_rows(own_stack, db, SECURITY)
    assert sum(e["count"] for e in events) == 3
    assert {(e["type"], e["device_id"]) for e in events} == {("identity_mismatch", device.id)}

    def totals() -> tuple[int, int, int]:
        stats = influx_rows(own_stack, db, 'SELECT * FROM "ingest_stats"')
        return (
            sum(s["received"] for s in stats),
            sum(s["written"] for s in stats),
            sum(s["rejected_identity_mismatch"] for s in stats),
        )

    # The drained reading is counted as written in the point after the drain.
    wait_for(lambda: totals() == (4, 1, 3), 30, "the stats of the spooled batch")
    assert influx_rows(own_stack, db, 'SELECT count("laeq") FROM "noise"')[0]["count"] == 1


def test_docs_document_the_security_events_schema() -> None:
    doc = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    assert schema.security_events_markdown() in doc
    security = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for name in (
        "test_broker_auth_failures_and_dangerous_ids_become_security_events",
        "test_ingest_stats_deltas_match_dead_letters_and_writes_across_a_restart",
    ):
        assert name in security
