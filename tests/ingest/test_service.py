"""The ingest service as a real process between a real Mosquitto and a real InfluxDB."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import DeadLetterWatcher, influx_rows, mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import Device, default_city

CITY = default_city()


def device_of(kind: str, index: int = 0) -> Device:
    return CITY.select(kind=kind)[index]


def topic_of(device: Device, channel: str = "telemetry") -> str:
    return topics.device_topic(CITY.id, device.district, device.kind, device.id, channel)


def noise_payload(seq: int, ts: datetime | None = None, laeq: float = 55.0) -> str:
    when = ts or datetime.now(UTC).replace(microsecond=0)
    return json.dumps(
        {
            "ts": format_ts(when),
            "seq": seq,
            "values": {"laeq": laeq, "lamax": laeq + 10, "la90": laeq - 8},
        }
    )


@pytest.fixture
def deadletters(stack: LocalStack, tmp_path: Path) -> Any:
    watcher = DeadLetterWatcher(stack, tmp_path / "deadletters.out", CITY.id)
    yield watcher
    watcher.close()


def test_reading_published_by_mosquitto_pub_is_stored(stack, influx_db, start_ingest) -> None:
    start_ingest(influx_db)
    device = device_of("noise")
    ts = datetime.now(UTC).replace(microsecond=123000)
    mosquitto_pub(stack, topic_of(device), noise_payload(7, ts, laeq=61.5))

    def whole() -> list[dict[str, Any]]:
        # InfluxDB 1.x keeps each field apart: a query racing the write may see some.
        rows = influx_rows(
            stack, influx_db, 'SELECT * FROM "noise" WHERE "device_id" = $d', d=device.id
        )
        fields = ("laeq", "lamax", "la90", "seq")
        return rows if rows and all(rows[0].get(f) is not None for f in fields) else []

    rows = wait_for(whole, what="the whole reading in InfluxDB")
    assert len(rows) == 1
    row = rows[0]
    assert row["time"] == int(ts.timestamp() * 1000)
    assert (row["city"], row["district"], row["device_id"]) == (CITY.id, device.district, device.id)
    assert (row["laeq"], row["lamax"], row["la90"], row["seq"]) == (61.5, 71.5, 53.5, 7)


def test_events_and_status_are_stored(stack, influx_db, start_ingest) -> None:
    start_ingest(influx_db)
    camera = device_of("cctv")
    now = format_ts(datetime.now(UTC).replace(microsecond=0))
    event = {
        "ts": now,
        "seq": 1,
        "type": "intrusion",
        "severity": "high",
        "details": {"zone": "gate 2", "object_class": "person", "confidence": 0.93},
    }
    mosquitto_pub(stack, topic_of(camera, "event"), json.dumps(event))
    mosquitto_pub(stack, topic_of(camera, "status"), json.dumps({"ts": now, "state": "online"}))

    # `events` lives in its own retention policy (README "Retention").
    events = wait_for(
        lambda: influx_rows(stack, influx_db, 'SELECT * FROM "events"."events"'), what="event"
    )
    assert events[0]["type"] == "intrusion" and events[0]["severity"] == "high"
    assert events[0]["zone"] == "gate 2" and events[0]["confidence"] == 0.93
    assert events[0]["device_id"] == camera.id and events[0]["kind"] == "cctv"
    status = wait_for(
        lambda: influx_rows(stack, influx_db, 'SELECT * FROM "device_status"'), what="status"
    )
    assert status[0]["state"] == "online" and status[0]["online"] is True
    # Nothing of it in the default policy: telemetry and status only.
    assert influx_rows(stack, influx_db, 'SELECT * FROM "raw"."events"') == []
    # An online message has no twin in device_offline (only offline ones have).
    assert influx_rows(stack, influx_db, 'SELECT * FROM "device_offline"') == []


def test_an_offline_status_is_stored_with_its_twin(stack, influx_db, start_ingest) -> None:
    """An offline message is stored as `schema.status_points` says: its `device_status`
    point and, with the same tags and time, its `device_offline` twin; sent again (a
    redelivery), it is still one point in each."""
    start_ingest(influx_db)
    light = device_of("streetlight")
    ts = datetime.now(UTC).replace(microsecond=0)
    said = json.dumps({"ts": format_ts(ts), "state": "offline", "reason": "lost power"})
    for _ in range(2):
        mosquitto_pub(stack, topic_of(light, "status"), said)
    twins = wait_for(
        lambda: influx_rows(stack, influx_db, 'SELECT * FROM "device_offline" GROUP BY *'),
        what="the offline twin",
    )
    status = influx_rows(stack, influx_db, 'SELECT * FROM "device_status" GROUP BY *')
    assert [(r["time"], r["state"]) for r in status] == [(int(ts.timestamp() * 1000), "offline")]
    tags = ("city", "district", "device_id")
    assert [{k: r[k] for k in (*tags, "time", "state")} for r in twins] == [
        {k: status[0][k] for k in (*tags, "time", "state")}
    ]
    assert (twins[0]["city"], twins[0]["device_id"]) == (CITY.id, light.id)


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("bad_json", lambda d: (topic_of(d), "{not json")),
        (
            "schema",
            lambda d: (
                topic_of(d),
                json.dumps({"ts": format_ts(datetime.now(UTC)), "seq": 1, "values": {"laeq": 50}}),
            ),
        ),
        ("non_finite", lambda d: (topic_of(d), noise_payload(1).replace("55.0", "NaN", 1))),
        ("out_of_range", lambda d: (topic_of(d), noise_payload(1, laeq=400.0))),
        (
            "ts_out_of_window",
            lambda d: (topic_of(d), noise_payload(1, datetime.now(UTC) - timedelta(days=8))),
        ),
        (
            "too_large",
            lambda d: (topic_of(d), noise_payload(1)[:-1] + ',"pad":"' + "x" * 9000 + '"}'),
        ),
        (
            "unknown_device",
            lambda d: (
                topics.telemetry_topic(CITY.id, d.district, "noise", "noise-ghost-999"),
                noise_payload(1),
            ),
        ),
        (
            "identity_mismatch",
            lambda d: (
                topics.telemetry_topic(
                    CITY.id, "sergeli" if d.district != "sergeli" else "bektemir", "noise", d.id
                ),
                noise_payload(1),
            ),
        ),
    ],
)
def test_bad_message_is_dead_lettered_and_not_written(
    stack, influx_db, start_ingest, deadletters, reason, make
) -> None:
    ingest = start_ingest(influx_db)
    device = device_of("noise", 1)
    topic, payload = make(device)
    mosquitto_pub(stack, topic, payload)

    letters = wait_for(deadletters.letters, what=f"a {reason} dead letter")
    assert len(letters) == 1
    dl_topic, record = letters[0]
    assert dl_topic == topics.deadletter_topic(CITY.id, reason)
    assert record["reason"] == reason and record["topic"] == topic and record["detail"]
    # The dead-letter store holds it too, and InfluxDB holds nothing.
    store = Path(ingest.env["SAFECITY_DEADLETTER_DIR"]) / "deadletters.jsonl"
    stored = [json.loads(line) for line in store.read_text().splitlines()]
    assert [s["reason"] for s in stored] == [reason]
    # InfluxDB holds no message point (only ingest's own statistics may be there already).
    held = influx_rows(stack, influx_db, "SELECT * FROM /.*/")
    assert [r for r in held if r.get("worker_id") is None] == []
    # Attacks are security events too (their own retention policy), with registry tags
    # only for a registry device.
    security = influx_rows(stack, influx_db, 'SELECT * FROM "security"."security_events"')
    if reason in ("unknown_device", "identity_mismatch"):
        (event,) = wait_for(
            lambda: influx_rows(stack, influx_db, 'SELECT * FROM "security"."security_events"'),
            what="the security event",
        )
        assert (event["type"], event["source"], event["count"]) == (reason, "ingest", 1)
        assert event["worker_id"] == ingest.env["SAFECITY_WORKER_ID"]
        if reason == "identity_mismatch":
            assert (event["device_id"], event["district"]) == (device.id, device.district)
            assert event["client_id"] == device.id
        else:
            assert event.get("device_id") is None and event["client_id"] == "noise-ghost-999"
    else:
        assert security == []
    metrics = httpx.get(f"{ingest.metrics_url}/metrics", timeout=5).text
    assert f'safecity_ingest_rejected_total{{reason="{reason}"}} 1.0' in metrics


def test_good_and_bad_mixed_only_good_written(stack, influx_db, start_ingest, deadletters) -> None:
    start_ingest(influx_db)
    device = device_of("noise", 2)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    payloads = []
    for i in range(200):
        if i % 10 == 3:
            payloads.append(noise_payload(i, base + timedelta(seconds=i), laeq=1000.0))
        else:
            payloads.append(noise_payload(i, base + timedelta(seconds=i)))
    mosquitto_pub(stack, topic_of(device), *payloads)

    q = 'SELECT count("seq") FROM "noise" WHERE "device_id" = $d'
    wait_for(
        lambda: (r := influx_rows(stack, influx_db, q, d=device.id)) and r[0]["count"] == 180,
        what="180 good readings",
    )
    wait_for(lambda: len(deadletters.letters()) == 20, what="20 dead letters")
    assert {r["reason"] for _, r in deadletters.letters()} == {"out_of_range"}


def test_messages_published_while_ingest_is_down_are_delivered_after_restart(
    stack, influx_db, start_ingest
) -> None:
    first = start_ingest(influx_db, worker_id="ingest-restart")
    first.stop()
    device = device_of("noise", 3)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    mosquitto_pub(
        stack, topic_of(device), *(noise_payload(i, base + timedelta(seconds=i)) for i in range(50))
    )

    start_ingest(influx_db, worker_id="ingest-restart")
    q = 'SELECT count("seq") FROM "noise" WHERE "device_id" = $d'
    wait_for(
        lambda: (r := influx_rows(stack, influx_db, q, d=device.id)) and r[0]["count"] == 50,
        what="the 50 readings queued in the persistent session",
    )


def test_redelivered_reading_overwrites_itself(stack, influx_db, start_ingest) -> None:
    start_ingest(influx_db)
    device = device_of("noise", 4)
    ts = datetime.now(UTC).replace(microsecond=0)
    # A later reading as a marker: once it is stored, both copies before it were handled.
    marker = noise_payload(6, ts + timedelta(seconds=1))
    mosquitto_pub(stack, topic_of(device), noise_payload(5, ts), noise_payload(5, ts), marker)
    q = 'SELECT * FROM "noise" WHERE "device_id" = $d'
    rows = wait_for(
        lambda: (
            [r for r in influx_rows(stack, influx_db, q, d=device.id) if r["seq"] == 6]
            and influx_rows(stack, influx_db, q, d=device.id)
        ),
        what="the marker reading",
    )
    assert sorted(r["seq"] for r in rows) == [5, 6]


def test_ingest_exposes_health_and_metrics(influx_db, start_ingest) -> None:
    ingest = start_ingest(influx_db)
    assert httpx.get(f"{ingest.metrics_url}/healthz", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{ingest.metrics_url}/readyz", timeout=5).status_code == 200
    text = httpx.get(f"{ingest.metrics_url}/metrics", timeout=5).text
    assert "safecity_ingest_mqtt_connected 1.0" in text
