"""Hostile input through every field, end to end: Mosquitto -> ingest -> InfluxDB.

Every dangerous character goes through every part of a message — the topic's city,
district, kind and device id, the payload's keys, timestamp, sequence number, values,
enum values, event details, and the raw JSON around them. Each message must end as
exactly one of: a dead letter with a reason, or the point that was meant, stored as
meant. Nothing else may appear in InfluxDB (no extra measurement, series, tag or field).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support import PUBLISHER, influx_rows, mosquitto, wait_for

from control.stack import LocalStack
from safecity import schema, topics
from safecity.readings import format_ts
from safecity.registry import default_city

CITY = default_city()
NOISE = CITY.select(kind="noise")[0]
LIGHT = CITY.select(kind="streetlight")[0]
CAMERA = CITY.select(kind="cctv")[0]

# Characters that break line protocol, InfluxQL, JSON, shells or logs when only escaped.
PAYLOAD_CHARS = ["\n", "\r", "\x00", ",", "=", " ", '"', "\\", "'", "\t", "#", ";", "/", "é", "🙂"]
# MQTT forbids + and # and NUL in a publish topic, and Mosquitto's clients refuse control
# characters there; the rest can reach the ingest inside a topic level.
TOPIC_CHARS = [",", "=", " ", '"', "\\", "'", ";", "é", "🙂", "A"]


@dataclass
class Case:
    """One hostile message and what must become of it."""

    label: str
    topic: str
    payload: bytes
    # None: must be dead-lettered; else the (measurement, device, field, value) stored.
    stored: tuple[str, str, str, Any] | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


def noise_body(base: datetime, n: int, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ts": format_ts(base + timedelta(seconds=n)),
        "seq": n,
        "values": {"laeq": 55.0, "lamax": 65.0, "la90": 47.0},
    }
    body.update(over)
    return body


def cases() -> list[Case]:
    """Every case, its readings timed from half an hour before it is made."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    out: list[Case] = []
    seq = 0

    def nxt() -> int:
        nonlocal seq
        seq += 1
        return seq

    noise_topic = topics.telemetry_topic(CITY.id, NOISE.district, NOISE.kind, NOISE.id)
    for i, c in enumerate(TOPIC_CHARS):
        parts = {
            "city": (f"{CITY.id}{c}", NOISE.district, NOISE.kind, NOISE.id),
            "district": (CITY.id, f"{NOISE.district}{c}", NOISE.kind, NOISE.id),
            "kind": (CITY.id, NOISE.district, f"noise{c}", NOISE.id),
            "device": (CITY.id, NOISE.district, NOISE.kind, f"{NOISE.id}{c}x"),
        }
        for where, (city, district, kind, device) in parts.items():
            if where == "city":
                continue  # ingest subscribes to its own city only: never delivered
            topic = f"safecity/v1/{city}/{district}/{kind}/{device}/telemetry"
            body = json.dumps(noise_body(base, nxt())).encode()
            out.append(Case(f"topic {where} {c!r} #{i}", topic, body))
    for c in PAYLOAD_CHARS:
        s = nxt()
        out.append(
            Case(
                f"values key {c!r}",
                noise_topic,
                json.dumps(
                    noise_body(base, s, values={f"laeq{c}": 55.0, "lamax": 65.0, "la90": 47.0})
                ).encode(),
            )
        )
        out.append(
            Case(
                f"ts {c!r}",
                noise_topic,
                json.dumps(noise_body(base, nxt(), ts=f"2026{c}")).encode(),
            )
        )
        out.append(
            Case(f"seq {c!r}", noise_topic, json.dumps(noise_body(base, 1, seq=f"1{c}")).encode())
        )
        # A second line smuggled after the JSON: line protocol in the payload.
        smuggled = json.dumps(noise_body(base, nxt())) + f"{c}noise,city=evil laeq=1 1"
        out.append(Case(f"trailing line {c!r}", noise_topic, smuggled.encode()))
        light_topic = topics.telemetry_topic(CITY.id, LIGHT.district, LIGHT.kind, LIGHT.id)
        light = {
            "ts": format_ts(base + timedelta(seconds=nxt())),
            "seq": seq,
            "values": {"power_state": f"on{c}", "power": 40.0, "status": "ok"},
        }
        out.append(Case(f"enum value {c!r}", light_topic, json.dumps(light).encode()))
        event_topic = topics.event_topic(CITY.id, CAMERA.district, CAMERA.kind, CAMERA.id)
        zone = f"gate{c}1"
        event = {
            "ts": format_ts(base + timedelta(seconds=nxt())),
            "seq": seq,
            "type": "loitering",
            "severity": "medium",
            "details": {"zone": zone, "dwell_s": 120.0},
        }
        # Free-text details allow letters, digits, space and `_ . : -` only.
        allowed = c == " "
        out.append(
            Case(
                f"event detail {c!r}",
                event_topic,
                json.dumps(event).encode(),
                ("events", CAMERA.id, "zone", zone) if allowed else None,
            )
        )
    # Raw bytes the JSON decoder must refuse: not UTF-8, NaN, nesting bombs.
    out.append(Case("not utf-8", noise_topic, b'{"ts":"\xff\xfe"}'))
    out.append(
        Case(
            "nan", noise_topic, json.dumps(noise_body(base, nxt())).replace("55.0", "NaN").encode()
        )
    )
    out.append(Case("deep nesting", noise_topic, b"[" * 4000 + b"]" * 4000))
    # And one clean reading, which must be stored as sent.
    out.append(
        Case(
            "clean",
            noise_topic,
            json.dumps(noise_body(base, nxt())).encode(),
            ("noise", NOISE.id, "laeq", 55.0),
        )
    )
    return out


def publish(stack: LocalStack, case: Case, tmp: Path) -> None:
    """mosquitto_pub -f: the payload's exact bytes (NUL, CR, LF included), QoS 1."""
    body = tmp / f"{case.sha256}.bin"
    body.write_bytes(case.payload)
    subprocess.run(
        [*mosquitto("mosquitto_pub", stack, PUBLISHER), "-q", "1", "-t", case.topic,
         "-f", str(body)],
        check=True, timeout=30,
    )  # fmt: skip


def test_every_dangerous_character_in_every_field_is_dead_lettered_or_stored_exactly(
    stack: LocalStack, influx_db: str, start_ingest: Callable[..., Any], tmp_path: Path
) -> None:
    ingest = start_ingest(influx_db, SAFECITY_TS_PAST_WINDOW=str(86_400))
    all_cases = cases()
    for case in all_cases:
        publish(stack, case, tmp_path)
    store = Path(ingest.env["SAFECITY_DEADLETTER_DIR"]) / "deadletters.jsonl"
    expected_dead = {c.sha256 for c in all_cases if c.stored is None}

    def letters() -> dict[str, dict[str, Any]]:
        if not store.exists():
            return {}
        return {r["sha256"]: r for r in map(json.loads, store.read_text().splitlines())}

    wait_for(lambda: expected_dead <= letters().keys(), 60, "every hostile message dead-lettered")
    dead = letters()
    for case in all_cases:
        if case.stored is None:
            record = dead[case.sha256]
            assert record["reason"] in {"bad_json", "schema", "non_finite", "unknown_device"}, (
                case.label
            )
            assert record["topic"] == case.topic, case.label
        else:
            assert case.sha256 not in dead, f"{case.label}: {dead[case.sha256]}"
    # What was meant to be stored is stored exactly, and nothing else exists.
    for case in all_cases:
        if case.stored is None:
            continue
        measurement, device_id, field, value = case.stored
        source = schema.source(measurement)  # its retention policy's and the default one
        rows = wait_for(
            lambda m=source, d=device_id: influx_rows(
                stack,
                influx_db,
                f"SELECT * FROM {m} WHERE device_id = $d",  # noqa: S608 - m is ours
                d=d,
            ),
            30,
            f"{case.label} stored",
        )
        assert [row[field] for row in rows] == [value], case.label
    measurements = {r["name"] for r in influx_rows(stack, influx_db, "SHOW MEASUREMENTS")}
    assert measurements <= {"noise", "events", "device_status", "ingest_stats", "security_events"}
    series = [r["key"] for r in influx_rows(stack, influx_db, "SHOW SERIES")]
    registered = {d.id for d in CITY.devices}
    for key in series:
        tags = dict(part.split("=", 1) for part in key.split(",")[1:])
        if "device_id" in tags:
            assert tags["device_id"] in registered, key
        assert tags.get("city", CITY.id) == CITY.id, key
