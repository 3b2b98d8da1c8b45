"""`safecity simulate --processes N`: one city's fleet spread over processes, typed as a
user would, against a real broker: every device of every shard publishes as itself, all
into one ledger of whole lines; the parent answers /healthz; SIGTERM stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import wait_for

from control.stack import Mosquitto, free_port
from safecity import ledger, registry
from safecity.citygen import generate

ROOT = Path(__file__).resolve().parents[2]
CITY = generate("shardville", 40, 6)


@pytest.mark.timeout(120)
def test_two_processes_share_the_fleet_and_one_ledger(tmp_path: Path) -> None:
    city_file = tmp_path / "city.jsonl"
    registry.write(CITY, city_file)
    book = tmp_path / "ledger.jsonl"
    health = free_port()
    with Mosquitto(tmp_path / "broker", city=CITY) as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
        env.update(
            SAFECITY_HOME=str(tmp_path / "home"),
            SAFECITY_MQTT__HOST=broker.host,
            SAFECITY_MQTT__PORT=str(broker.port),
            SAFECITY_EDGE__SECRETS_FILE=str(broker.secrets_file),
            SAFECITY_EDGE__SPOOL_DIR=str(tmp_path / "spool"),
            SAFECITY_EDGE__CONFIRM="false",  # a broker alone: the PUBACK settles
            SAFECITY_SIMULATOR_METRICS_PORT=str(health),
        )
        argv = ["simulate", "--registry", str(city_file), "--processes", "2"]
        argv += ["--speed", "600", "--ledger", str(book)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "control", *argv],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{health}/healthz"
            wait_for(lambda: _ok(url), 60, "the parent's /healthz")
            wait_for(lambda: _devices(book) == {d.id for d in CITY.devices}, 60, "every device")
            # The parent's /metrics counts what the children published.
            metrics = f"http://127.0.0.1:{health}/metrics"
            wait_for(lambda: _accepted(metrics) >= len(CITY.devices), 30, "the children's counts")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    # Both children reported: the parent's summary counts the whole city.
    assert f"simulated {len(CITY.devices)} devices" in err
    lines = book.read_text(encoding="utf-8").splitlines()
    entries = [ledger.LedgerEntry.from_json(line) for line in lines]  # no torn line
    assert {e.device_id for e in entries} == {d.id for d in CITY.devices}
    # Each device's messages come from one process, in its own order: seqs never repeat.
    seen = [(e.device_id, e.channel, e.seq) for e in entries if e.seq is not None]
    assert len(seen) == len(set(seen))
    assert all(e.acknowledged for e in entries)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _accepted(url: str) -> float:
    """safecity_sim_published_total{result="accepted"} summed over kinds, as scraped."""
    total = 0.0
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith("safecity_sim_published_total{") and 'result="accepted"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _devices(path: Path) -> set[str]:
    if not path.exists():
        return set()
    time.sleep(0.2)
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        found.add(json.loads(line)["d"])
    return found
