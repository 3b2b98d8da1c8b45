"""End to end: mosquitto_pub -> Mosquitto -> `safecity ingest` -> InfluxDB -> `safecity api`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from support import DeadLetterWatcher, influx_rows, mosquitto_pub, wait_for

from safecity import topics
from safecity.readings import format_ts
from safecity.registry import default_city

CITY = default_city()


def test_reading_flows_from_mosquitto_pub_to_the_api(
    stack, influx_db, start_ingest, start_api, tmp_path
) -> None:
    start_ingest(influx_db)
    api = start_api(influx_db)
    device = CITY.select(kind="air_quality")[0]
    topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
    ts = datetime.now(UTC).replace(microsecond=250000) - timedelta(seconds=30)
    values = {"pm25": 87.5, "pm10": 140.25, "no2": 61.0, "o3": 12.0, "so2": 18.0, "co": 1.9}
    mosquitto_pub(stack, topic, json.dumps({"ts": format_ts(ts), "seq": 42, "values": values}))

    # Stored, as InfluxQL sees it ...
    rows = wait_for(
        lambda: influx_rows(
            stack, influx_db, 'SELECT * FROM "air_quality" WHERE "device_id" = $d', d=device.id
        ),
        what="the reading in InfluxDB",
    )
    assert rows[0]["pm10"] == 140.25
    assert rows[0]["seq"] == 42
    # ... and served by the API.
    latest = httpx.get(f"{api.url}/v1/devices/{device.id}/latest", headers=api.headers, timeout=10)
    assert latest.status_code == 200
    body = latest.json()
    assert body["device_id"] == device.id
    assert body["ts"] == format_ts(ts)
    assert body["seq"] == 42
    assert body["values"] == values


def test_bad_reading_is_dead_lettered_and_never_reaches_influxdb_or_the_api(
    stack, influx_db, start_ingest, start_api, tmp_path
) -> None:
    start_ingest(influx_db)
    api = start_api(influx_db)
    watcher = DeadLetterWatcher(stack, tmp_path / "dl.out", CITY.id)
    try:
        device = CITY.select(kind="air_quality")[1]
        topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
        bad = {"ts": format_ts(datetime.now(UTC)), "seq": 1, "values": {"pm25": -3.0}}
        mosquitto_pub(stack, topic, json.dumps(bad))
        letters = wait_for(watcher.letters, what="the dead letter")
    finally:
        watcher.close()
    assert letters[0][0] == f"safecity/v1/{CITY.id}/_deadletter/schema"
    assert "pm10" in letters[0][1]["detail"]
    assert influx_rows(stack, influx_db, "SELECT * FROM /.*/") == []
    latest = httpx.get(f"{api.url}/v1/devices/{device.id}/latest", headers=api.headers, timeout=10)
    assert latest.status_code == 404
