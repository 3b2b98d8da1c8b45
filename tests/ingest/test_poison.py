"""Poison messages through the real broker with a device's own account: the ingest never
exits, the message is one dead letter, everything after it is stored, verify loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faults import Ingest, new_db
from ledgerpub import LedgerPublisher, Outgoing, reading
from support import influx_rows, wait_for

from control.stack import LocalStack
from safecity.registry import default_city

CITY = default_city()
DEVICE = CITY.select(kind="noise")[0]
VALUES = {"laeq": 55.0, "lamax": 65.0, "la90": 47.0}
MARKER_SEQ = 987_654_321


def as_device(stack: LocalStack, tmp_path: Path, name: str) -> LedgerPublisher:
    """A ledger publisher logged in as DEVICE itself (its account, its client id)."""
    return LedgerPublisher(stack.mqtt_settings(DEVICE.id), tmp_path / name, client_id=DEVICE.id)


def ordinary(count: int, first_seq: int = 1) -> list[Outgoing]:
    """`count` valid readings of DEVICE, 10 ms apart, from its seq's own millisecond slot
    (two calls never share a millisecond) in the last few minutes."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    return [
        reading(CITY, DEVICE, seq=seq, ts=base + timedelta(milliseconds=10 * seq), values=VALUES)
        for seq in range(first_seq, first_seq + count)
    ]


def safecity_verify(stack: LocalStack, db: str, ledger: Path, deadletters: Path) -> dict:
    """`safecity verify --json` as a user runs it; its summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(SAFECITY_INFLUX__URL=stack.influx_url, SAFECITY_INFLUX__DATABASE=db)
    done = subprocess.run(
        [sys.executable, "-m", "control", "verify", "--ledger", str(ledger),
         "--deadletters", str(deadletters), "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout, done.stderr
    summary: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def dead_letters(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(directory.rglob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def settle(stack: LocalStack, db: str, ledger: Path, ingest: Ingest, stored: int) -> dict:
    """Wait until verify finds nothing lost; its summary (stored count checked)."""
    box: dict = {}

    def done() -> bool:
        box["s"] = safecity_verify(stack, db, ledger, ingest.deadletter_dir)
        return box["s"].get("lost", 1) == 0 and box["s"].get("stored") == stored

    try:
        wait_for(done, 60, f"{stored} readings stored and verify reporting lost 0")
    finally:
        print(box.get("s"))
    return box["s"]


def test_deeply_nested_payload_then_1000_readings(stack, tmp_path, ingest_factory) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db, "nested").start()
    depth = 4000  # valid JSON shape, 8,000 bytes: under the size limit, past any recursion
    nested = reading(CITY, DEVICE, seq=0, ts=datetime.now(UTC), values=VALUES,
                     intended_reason="bad_json", raw=b"[" * depth + b"]" * depth)  # fmt: skip
    pub = as_device(stack, tmp_path, "ledger.jsonl")
    pub.window = 1  # the poison first, then the rest
    pub.run([nested])
    pub2 = as_device(stack, tmp_path, "ledger2.jsonl")
    pub2.run(ordinary(1000))
    ledger = tmp_path / "all.jsonl"
    ledger.write_text(pub.ledger_path.read_text() + pub2.ledger_path.read_text())
    summary = settle(stack, db, ledger, ingest, 1000)
    assert summary["lost"] == 0 and summary["deadletters_by_reason"] == {"bad_json": 1}
    assert ingest.process.alive, "the ingest exited"
    assert len(dead_letters(ingest.deadletter_dir)) == 1
    assert ingest.metric("safecity_ingest_poison_total") == 0  # refused, not poison


@pytest.mark.parametrize("stage", ["validate", "store"])
def test_a_stage_that_raises_on_one_message_quarantines_it(
    stack, tmp_path, ingest_factory, stage: str
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db, f"poison-{stage}").start(
        poison=(stage, f'"seq":{MARKER_SEQ},'), SAFECITY_POISON_ATTEMPTS="3"
    )
    before = ordinary(100)
    chosen = reading(CITY, DEVICE, seq=MARKER_SEQ, ts=datetime.now(UTC) - timedelta(seconds=30),
                     values=VALUES, intended_reason="poison")  # fmt: skip
    after = ordinary(300, first_seq=1000)
    pub = as_device(stack, tmp_path, "ledger.jsonl")
    pub.run([*before, chosen, *after])
    summary = settle(stack, db, pub.ledger_path, ingest, 400)
    assert summary["lost"] == 0 and summary["deadletters_by_reason"] == {"poison": 1}
    assert ingest.process.alive, "the worker exited"
    (letter,) = dead_letters(ingest.deadletter_dir)
    assert letter["reason"] == "poison"
    assert f"stage {stage} raised RuntimeError 3 times" in letter["detail"]
    assert ingest.metric(f'safecity_ingest_poison_total{{stage="{stage}"}}') == 1
    events = influx_rows(
        stack, db, """SELECT "count" FROM "security"."security_events" WHERE "type" = 'poison'"""
    )
    assert sum(row["count"] for row in events) == 1
