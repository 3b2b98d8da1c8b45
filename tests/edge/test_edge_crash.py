"""kill -9 of the edge agent process mid-flush loses nothing (real broker, ingest, InfluxDB)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faults import Ingest, check, new_db
from ledgerpub import good_readings
from support import wait_for

from control.stack import LocalStack
from safecity.ledger import LedgerEntry, LedgerWriter
from safecity.registry import default_city

CHILD = Path(__file__).parents[1] / "helpers" / "edge_child.py"
COUNT, DEVICES = 6000, 20


def child(mode: str, stack: LocalStack, spool: Path, start: datetime) -> list[str]:
    return [
        sys.executable, str(CHILD), mode, "--spool", str(spool), "--host", stack.mqtt_host,
        "--port", str(stack.mqtt_port), "--secrets", str(stack.secrets_file),
        "--count", str(COUNT), "--devices", str(DEVICES), "--start", start.isoformat(),
    ]  # fmt: skip


@pytest.mark.timeout(180)
def test_kill_9_of_the_edge_agent_mid_flush_loses_nothing(
    stack: LocalStack, tmp_path: Path
) -> None:
    db = new_db(stack)
    ingest = Ingest(stack, db, tmp_path, f"edgekill-{db}").start()
    spool = tmp_path / "spool"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    try:
        filled = subprocess.run(
            child("fill", stack, spool, start), capture_output=True, text=True, timeout=60
        )
        assert filled.returncode == 0, filled.stderr
        assert filled.stdout.split() == ["filled", str(COUNT)]
        log = (tmp_path / "flush.log").open("w")
        flush = subprocess.Popen(child("flush", stack, spool, start), stdout=log, stderr=log)
        # Mid-flush: the platform has part of the backlog, the agents the rest in flight,
        # awaiting acks or still spooled.
        wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > 1000, 60, "flush begun")
        flush.kill()
        assert flush.wait(10) == -9
        stored_at_kill = ingest.metric("safecity_ingest_acked_total")
        assert stored_at_kill < COUNT, "the flush finished before the kill"
        left = sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.spool"))
        assert left > 0
        again = subprocess.run(
            child("flush", stack, spool, start), capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.strip().endswith("flushed")
        assert list(spool.glob("*.spool")) == []  # everything confirmed: the spools are gone
        # Confirmed means stored: the ingest has acked every reading before it stops.
        wait_for(
            lambda: ingest.metric("safecity_ingest_acked_total") >= COUNT, 10, "every reading acked"
        )
    finally:
        ingest.stop()
    ledger = tmp_path / "ledger.jsonl"
    writer = LedgerWriter(ledger)
    for message in good_readings(default_city(), COUNT, devices=DEVICES, start=start):
        writer.write(
            LedgerEntry(
                message.device.id, "telemetry", message.topic, message.seq, message.ts_ms,
                hashlib.sha256(message.payload).hexdigest(), None, 0, message.values,
            )
        )  # fmt: skip
    writer.close()
    report = check(stack, db, ledger, ingest.deadletter_dir)
    print(report.render())
    assert report.sent == COUNT
    assert report.lost == [] and report.duplicated == [] and report.unexpected == []
    assert report.value_mismatch == []
    assert report.stored == COUNT
