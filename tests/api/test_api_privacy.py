"""Privacy by design: a retention policy per measurement family (created at start-up,
idempotently, documented), and licence plates only as salted hashes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import influx_rows, mosquitto_pub, wait_for

from api.apikeys import KeyStore
from api.app import create_app
from api.settings import ApiSettings
from control.stack import LocalStack
from safecity import catalogue, schema, topics
from safecity.influx import InfluxClient
from safecity.readings import Event, Rejection, RejectReason, format_ts, parse
from safecity.registry import City
from safecity.settings import InfluxSettings

ROOT = Path(__file__).resolve().parents[2]


def _policies(stack: LocalStack, db: str) -> dict[str, tuple[str, bool]]:
    rows = influx_rows(stack, db, f'SHOW RETENTION POLICIES ON "{db}"')
    return {r["name"]: (r["duration"], r["default"]) for r in rows}


def test_every_family_gets_its_policy_idempotently(stack: LocalStack, influx_db: str) -> None:
    async def ensure(settings: InfluxSettings) -> None:
        client = InfluxClient(settings)
        try:
            await client.ensure_database()
        finally:
            await client.close()

    settings = InfluxSettings(url=stack.influx_url, database=influx_db)
    asyncio.run(ensure(settings))
    asyncio.run(ensure(settings))  # again: nothing changes, nothing fails
    policies = _policies(stack, influx_db)
    assert policies["raw"] == ("720h0m0s", True)
    assert policies["events"] == ("8760h0m0s", False)
    assert policies["security"] == ("2160h0m0s", False)
    assert policies["incidents"] == ("43800h0m0s", False)
    # A changed setting alters the policy in place; the default stays the default.
    shorter = settings.model_copy(update={"events_retention_duration": "30d"})
    asyncio.run(ensure(shorter))
    policies = _policies(stack, influx_db)
    assert policies["events"] == ("720h0m0s", False) and policies["raw"][1] is True


def test_the_api_creates_the_policies_but_never_the_database(
    stack: LocalStack, influx_db: str, api_settings: ApiSettings, city: City
) -> None:
    # influx_db exists with InfluxDB's own default policy only.
    assert set(_policies(stack, influx_db)) == {"autogen"}
    settings = api_settings.model_copy(
        update={"influx": InfluxSettings(url=stack.influx_url, database=influx_db)}
    )
    with TestClient(create_app(settings, city)) as c:
        assert c.get("/healthz").status_code == 200
    assert {"events", "security", "incidents"} <= set(_policies(stack, influx_db))
    missing = api_settings.model_copy(
        update={"influx": InfluxSettings(url=stack.influx_url, database="never_created_db")}
    )
    with TestClient(create_app(missing, city), raise_server_exceptions=False) as c:
        r = c.get("/v1/incidents", headers={"X-API-Key": _read_key(api_settings)})
        assert r.status_code == 503 and "database not found" in r.json()["detail"]
    names = {r["name"] for r in influx_rows(stack, influx_db, "SHOW DATABASES")}
    assert "never_created_db" not in names


def _read_key(settings: ApiSettings) -> str:
    return KeyStore(settings.api_keys_file).create("privacy-test", ("read",))[1]


def test_every_measurement_has_one_family_and_the_docs_its_table() -> None:
    families = [m for f in schema.RETENTION_FAMILIES for m in f.measurements]
    assert len(families) == len(set(families))
    known = {*catalogue.KINDS, schema.EVENTS, schema.DEVICE_STATUS, schema.DEVICE_OFFLINE}
    known |= {schema.INGEST_STATS}
    known |= {schema.SECURITY_EVENTS, schema.ALERTS, schema.INCIDENT_TRANSITIONS}
    assert set(families) == known
    assert schema.retention_policy_of("noise") is None
    assert schema.retention_policy_of(schema.EVENTS) == "events"
    assert schema.retention_policy_of(schema.INCIDENT_TRANSITIONS) == "incidents"
    assert schema.source("noise") == '"noise"'
    assert schema.source(schema.EVENTS) == '"events", "events"."events"'
    assert schema.retention_markdown_table() in (ROOT / "docs" / "schema.md").read_text()


ANPR_SALT = b"test-salt"


def _anpr(ts: datetime, seq: int, plate: str) -> str:
    return json.dumps(
        {
            "ts": format_ts(ts),
            "seq": seq,
            "type": "anpr_hit",
            "severity": "high",
            "details": {"plate_hash": plate, "list": "stolen", "confidence": 0.9},
        }
    )


@pytest.mark.parametrize("plate", ["01A123BC", "01 a 123 bc", "a" * 63, "G" * 64])
def test_a_plain_plate_is_refused_by_the_contract(plate: str) -> None:
    refused = parse(
        "anpr", _anpr(datetime.now(UTC), 1, plate).encode(), channel=topics.Channel.EVENT
    )
    assert isinstance(refused, Rejection) and refused.reason is RejectReason.SCHEMA
    assert "plate_hash" in refused.detail


def test_a_plain_plate_never_reaches_storage(
    stack: LocalStack, influx_db: str, start_ingest: Callable[..., Any], city: City
) -> None:
    ingest = start_ingest(influx_db)
    camera = city.select(kind="anpr")[0]
    topic = topics.event_topic(city.id, camera.district, camera.kind, camera.id)
    hashed = hashlib.sha256(ANPR_SALT + b"01A123BC").hexdigest()
    now = datetime.now(UTC).replace(microsecond=0)
    ok = parse("anpr", _anpr(now, 2, hashed).encode(), channel=topics.Channel.EVENT)
    assert isinstance(ok, Event)
    mosquitto_pub(stack, topic, _anpr(now, 1, "01A123BC"), _anpr(now, 2, hashed))
    letters = Path(ingest.env["SAFECITY_DEADLETTER_DIR"]) / "deadletters.jsonl"
    wait_for(letters.exists, 20, "the dead letter")
    refused = [json.loads(line) for line in letters.read_text().splitlines()]
    assert [(r["reason"], r["topic"]) for r in refused] == [("schema", topic)]
    events = f"SELECT * FROM {schema.source(schema.EVENTS)}"  # noqa: S608 (allow-listed)
    stored = wait_for(
        lambda: influx_rows(stack, influx_db, events),
        20,
        "the hashed hit",
    )
    assert [r["plate_hash"] for r in stored] == [hashed]
    everything = json.dumps(
        [
            influx_rows(stack, influx_db, q)
            for q in ("SELECT * FROM /.*/", 'SELECT * FROM "events"./.*/')
        ]
    )
    assert "01A123BC" not in everything
