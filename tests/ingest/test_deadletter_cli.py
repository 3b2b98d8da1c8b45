"""`safecity deadletter list|stats|replay` and `safecity verify` as real commands."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from faults import check, new_db
from ledgerpub import LedgerPublisher, reading
from support import influx_rows, wait_for

from safecity.registry import default_city

CITY = default_city()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_replay_after_registry_fix_writes_and_removes_the_letter(
    stack, tmp_path, ingest_factory
) -> None:
    device = CITY.select(kind="noise")[5]
    # The registry the worker runs with lacks the device: its readings are unknown_device.
    lines = [line for line in CITY.dumps().splitlines() if f'"id":"{device.id}"' not in line]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    db = new_db(stack)
    ingest = ingest_factory(stack, db, "replay", SAFECITY_REGISTRY=str(broken)).start()
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    values = {"laeq": 58.0, "lamax": 66.0, "la90": 49.0}
    pub = LedgerPublisher(stack.mqtt_settings("_simulator"), tmp_path / "ledger.jsonl")
    pub.run([reading(CITY, device, seq=77, ts=ts, values=values)])
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") >= 1, 20, "ack")
    env = {**ingest.env, "SAFECITY_REGISTRY": str(broken)}

    stats = cli(env, "deadletter", "stats", "--dir", str(ingest.deadletter_dir))
    assert stats.returncode == 0, stats.stderr
    assert "1 dead letters" in stats.stdout and "unknown_device" in stats.stdout
    listed = cli(env, "deadletter", "list", "--dir", str(ingest.deadletter_dir))
    record = json.loads(listed.stdout.splitlines()[0])
    assert record["reason"] == "unknown_device" and record["topic"].endswith(
        f"/{device.id}/telemetry"
    )
    # The loss shows in the checker, and `safecity verify` exits 1 on it.
    assert len(check(stack, db, pub.ledger_path, ingest.deadletter_dir).lost) == 1
    verify = cli(
        env, "verify", "--ledger", str(pub.ledger_path), "--deadletters", str(ingest.deadletter_dir)
    )
    assert verify.returncode == 1 and "lost                   1" in verify.stdout

    still = cli(env, "deadletter", "replay", "--dir", str(ingest.deadletter_dir))
    assert still.returncode == 0, still.stderr
    assert "written 0" in still.stdout and "unknown_device=1" in still.stdout
    # Fixed registry (the default, which has the device): the replay writes it.
    del env["SAFECITY_REGISTRY"]
    fixed = cli(env, "deadletter", "replay", "--dir", str(ingest.deadletter_dir))
    assert fixed.returncode == 0, fixed.stderr
    assert "written 1" in fixed.stdout
    rows = influx_rows(stack, db, 'SELECT * FROM "noise" WHERE "device_id" = $d', d=device.id)
    assert [(r["seq"], r["laeq"], r["time"]) for r in rows] == [(77, 58.0, pub_ts(ts))]
    after = cli(env, "deadletter", "stats", "--dir", str(ingest.deadletter_dir))
    assert "0 dead letters" in after.stdout
    ok = cli(env, "verify", "--ledger", str(pub.ledger_path), "--json")
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["lost"] == 0


def pub_ts(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def test_verify_refuses_a_missing_ledger_clearly(stack, tmp_path) -> None:
    result = cli({"PATH": "/usr/bin:/bin"}, "verify", "--ledger", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert "cannot read ledger" in result.stderr
