"""Nothing a device sends vanishes silently: same-`ts` messages, publishes into another
city, auth-failure floods. Real Mosquitto 2.0.11, InfluxDB and ingest processes."""

from __future__ import annotations

import json
import secrets
import socket
from collections import Counter
from datetime import UTC, datetime

import httpx
from devicepub import publish_as
from faults import Ingest, new_db
from support import influx_rows, wait_for

from control.stack import LocalStack
from ingest.brokerlog import EventClock
from ingest.deadletter import DeadLetterStore
from ingest.watch import BrokerEvents
from safecity import topics
from safecity.mqtt.wire import encode_varint
from safecity.readings import format_ts
from safecity.registry import default_city

CITY = default_city()
NOISE = CITY.select(kind="noise")
SECURITY = 'SELECT * FROM "security"."security_events"'


def payload(seq: int, ts: datetime, laeq: float) -> str:
    values = {"laeq": laeq, "lamax": laeq + 10, "la90": laeq - 8}
    return json.dumps({"ts": format_ts(ts), "seq": seq, "values": values})


def letters(ingest: Ingest) -> list[dict[str, object]]:
    return DeadLetterStore(ingest.deadletter_dir).read()


def test_same_ts_other_seq_is_dead_lettered_and_a_redelivery_stores_once(
    stack: LocalStack, ingest_factory
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db).start()
    device = NOISE[0]
    topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
    ts = datetime.now(UTC).replace(microsecond=250_000)
    first, second = payload(101, ts, 50.0), payload(102, ts, 70.0)
    assert publish_as(stack, device, topic, first, second) == ""
    wait_for(lambda: letters(ingest), 20, "the dead letter of the second message")
    # The same message again (a device re-sending after a lost PUBACK): stored once.
    assert publish_as(stack, device, topic, first) == ""
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") >= 3, 20, "all three acked")

    rows = influx_rows(stack, db, 'SELECT * FROM "noise" WHERE "device_id" = $d', d=device.id)
    assert [(r["time"], r["seq"], r["laeq"]) for r in rows] == [
        (int(ts.timestamp() * 1000), 101, 50.0)
    ]
    (letter,) = letters(ingest)
    assert letter["reason"] == "conflicting_duplicate"
    assert json.loads(str(letter["payload"]))["seq"] == 102
    assert "seq 101 and seq 102 with the same ts" in str(letter["detail"])


def test_publishing_into_another_city_is_dead_lettered_and_a_security_event(
    stack: LocalStack, ingest_factory
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db).start()
    device = NOISE[1]
    elsewhere = f"c{secrets.token_hex(3)}"
    topic = topics.telemetry_topic(elsewhere, device.district, device.kind, device.id)
    # The broker's ACL lets a device write its own id under any city; PUBACK 0x00, not
    # 0x10 "no subscribers": the ingest sees it.
    assert publish_as(stack, device, topic, payload(5, datetime.now(UTC), 55.0)) == ""

    (letter,) = wait_for(lambda: letters(ingest), 20, "the dead letter")
    assert letter["reason"] == "identity_mismatch" and letter["topic"] == topic
    assert elsewhere in str(letter["detail"])
    rows = wait_for(lambda: influx_rows(stack, db, SECURITY), 20, "the security event")
    (event,) = rows
    assert (event["type"], event["source"], event["device_id"]) == (
        "identity_mismatch",
        "ingest",
        device.id,
    )
    assert influx_rows(stack, db, 'SELECT * FROM "noise"') == []


def _bad_connects(host: str, port: int, username: str, count: int) -> list[int]:
    """`count` MQTT v5 CONNECTs with a wrong password, as one burst: every connection is
    opened first, then all CONNECTs are sent back to back. The CONNACK reason codes."""
    socks = [socket.create_connection((host, port), timeout=60) for _ in range(count)]
    try:
        for sock in socks:
            client_id = f"flood-{secrets.token_hex(4)}"
            variable = b"\x00\x04MQTT\x05\xc2\x00\x3c\x00"  # v5, user+password, clean
            body = variable + _str(client_id) + _str(username) + _str("wrong-password")
            sock.sendall(b"\x10" + encode_varint(len(body)) + body)
        heads = [sock.recv(8) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    return [head[3] if len(head) >= 4 else -1 for head in heads]


def _str(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def test_auth_failure_flood_is_counted_exactly(own_stack: LocalStack, ingest_factory) -> None:
    db = new_db(own_stack)
    log_path = own_stack.mosquitto.log_path
    ingest = ingest_factory(own_stack, db, "flood", SAFECITY_BROKER_LOG=str(log_path)).start()
    wait_for(lambda: "following the broker log" in ingest.log_path.read_text(), 20, "follower")
    attempts = 3000
    codes = _bad_connects(own_stack.mqtt_host, own_stack.mqtt_port, NOISE[2].id, attempts)
    assert codes.count(0x86) + codes.count(0x87) == attempts
    failures = [
        line.split(": ", 1)[0]
        for line in log_path.read_text().splitlines()
        if line.endswith("disconnected, not authorised.")
    ]
    assert len(failures) == attempts

    def rows() -> list[dict[str, object]]:
        return influx_rows(own_stack, db, SECURITY + " WHERE \"type\" = 'auth_failure'")

    wait_for(
        lambda: sum(int(str(r["count"])) for r in rows()) == attempts,
        60,
        f"{attempts} auth failures in security_events",
    )
    busiest = max(Counter(failures).values())
    if busiest > EventClock.SLOTS:
        # More failures in one second than milliseconds: the overflow slot holds the rest.
        assert max(int(str(r["count"])) for r in rows()) == busiest - EventClock.SLOTS + 1


def test_a_second_with_more_than_1000_events_keeps_every_count() -> None:
    lines = [
        "2026-01-15T06:00:00: Client <unknown> disconnected, not authorised." for _ in range(3000)
    ]
    watch = BrokerEvents(CITY)
    # Fed in four polls, as the follower would: the overflow slot's point is rewritten.
    points = [p for chunk in range(4) for p in watch.points(lines[chunk * 750 : (chunk + 1) * 750])]
    final: dict[int, int] = {}
    for point in points:
        final[point.time_ms] = int(point.fields["count"])
    assert len(final) == EventClock.SLOTS and sum(final.values()) == 3000


def test_two_events_of_one_device_in_one_millisecond_are_both_stored_and_listed(
    stack: LocalStack, ingest_factory, start_api
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db).start()
    camera = CITY.select(kind="cctv")[0]
    topic = topics.event_topic(CITY.id, camera.district, camera.kind, camera.id)
    ts = datetime.now(UTC).replace(microsecond=250_000)

    def intrusion(seq: int, zone: str) -> str:
        details = {"zone": zone, "object_class": "person", "confidence": 0.9}
        body = {"ts": format_ts(ts), "seq": seq, "type": "intrusion", "severity": "high"}
        return json.dumps({**body, "details": details})

    # Two intrusion zones of one analytic in the same millisecond, then the first again
    # (a device re-sending after a lost PUBACK: stored once).
    first, second = intrusion(7, "gate"), intrusion(8, "fence")
    assert publish_as(stack, camera, topic, first, second, first) == ""
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") >= 3, 20, "all three acked")
    assert letters(ingest) == []
    rows = influx_rows(
        stack, db, 'SELECT * FROM "events"."events" WHERE "device_id" = $d', d=camera.id
    )
    ms = int(ts.timestamp() * 1000)
    assert sorted((r["time"], r["seq"], r["zone"]) for r in rows) == [
        (ms, 7, "gate"),
        (ms, 8, "fence"),
    ]
    api = start_api(db)
    window = {"from": format_ts(ts.replace(microsecond=0)), "device_id": camera.id}
    listed = httpx.get(f"{api.url}/v1/events", params=window, headers=api.headers, timeout=10)
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert sorted((i["ts"], i["seq"], i["details"]["zone"]) for i in items) == [
        (format_ts(ts), 7, "gate"),
        (format_ts(ts), 8, "fence"),
    ]


def test_a_qos0_publish_is_counted_and_dead_lettered_never_silent(
    stack: LocalStack, ingest_factory
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db).start()
    device = NOISE[2]
    topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
    now = datetime.now(UTC).replace(microsecond=0)
    # While the ingest is away: the broker queues it for the ingest's session (2.0.11
    # cannot refuse a QoS 0 publish; by default it would drop it without a trace).
    ingest.stop()
    assert publish_as(stack, device, topic, payload(1, now, 50.0), qos=0) == ""
    ingest.start()
    (letter,) = wait_for(lambda: letters(ingest), 20, "the queued QoS 0 message's dead letter")
    assert letter["reason"] == "qos0" and "QoS 0" in str(letter["detail"])
    # While the ingest is up: the same.
    assert publish_as(stack, device, topic, payload(2, now, 51.0), qos=0) == ""
    wait_for(lambda: len(letters(ingest)) == 2, 20, "the second QoS 0 message's dead letter")
    assert ingest.metric('safecity_ingest_rejected_total{reason="qos0"}') == 2
    assert [json.loads(str(d["payload"]))["seq"] for d in letters(ingest)] == [1, 2]
    rows = influx_rows(stack, db, 'SELECT * FROM "noise" WHERE "device_id" = $d', d=device.id)
    assert rows == []  # refused, not stored
