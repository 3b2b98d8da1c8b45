"""Unit costs for the sizing model: CPU per reading (ingest, broker, InfluxDB), InfluxDB
disk bytes per point, API CPU per request; written to benchmarks/results/costs.json.

One run on this machine: a fresh local Mosquitto + InfluxDB, one ingest worker draining a
queued backlog (the ingest benchmark's method), then InfluxDB restarted so its cache is
flushed to TSM files before the data directory is measured, then the API answering a
cached city overview and a district series. `benchmarks/sizing.py` turns the JSON into
docs/sizing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from api.apikeys import KeyStore
from benchmarks._ingest.drain import run_ingest
from benchmarks._ingest.load import CITY, KINDS, payloads
from benchmarks._ingest.probes import create_db, loadavg, proc_stats, versions
from control.stack import Influxd, LocalStack, ManagedProcess, free_port
from safecity.lineprotocol import encode_many
from safecity.readings import format_ts, reading_model
from safecity.schema import reading_point
from simulators.generators import generate

RESULTS = Path(__file__).resolve().parent / "results" / "costs.json"
DB = "bench_costs"
DISK_DB = "bench_disk"


class CompactingInfluxd(Influxd):
    """influxd that writes its cache to TSM files and fully compacts them within seconds
    (defaults: 10 min and 4 h), so the data directory shows steady-state disk use."""

    def render_config(self) -> Path:
        """The usual config with the cold-write durations cut to a second."""
        path = super().render_config()
        text = path.read_text(encoding="utf-8").replace(
            "[data]\n",
            '[data]\n  cache-snapshot-write-cold-duration = "1s"\n'
            '  compact-full-write-cold-duration = "2s"\n',
        )
        path.write_text(text, encoding="utf-8")
        return path


def disk_per_point(base: Path, devices: int, days: float) -> tuple[int, int]:
    """(points, bytes on disk) for `devices` reporting once a minute for `days`.

    Written straight through the platform's line-protocol encoder (the ingest's own
    output), so each series holds as many points as a real one does in days: TSM
    compression depends on points per series, which a short drain cannot show."""
    city = CITY.id
    chosen = [d for d in CITY.devices if d.kind in KINDS][:devices]
    rng = random.Random(11)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=days)
    steps = int(days * 1440)
    points = 0
    with CompactingInfluxd(base / "influx-disk") as influxd:
        url = influxd.url
        httpx.post(f"{url}/query", data={"q": f"CREATE DATABASE {DISK_DB}"}).raise_for_status()
        with httpx.Client(timeout=120) as client:
            for device in chosen:
                model = reading_model(device.kind)
                lines = []
                for i in range(steps):
                    ts = start + timedelta(minutes=i)
                    reading = model.model_validate(
                        {"ts": format_ts(ts), "seq": i, "values": generate(device, rng, ts)},
                        strict=False,
                    )
                    lines.append(reading_point(city, device, reading))
                client.post(
                    f"{url}/write",
                    params={"db": DISK_DB, "precision": "ms"},
                    content=encode_many(lines),
                ).raise_for_status()
                points += len(lines)
        data = influxd.data_dir / "data" / DISK_DB
        # Wait for the snapshot and the full compaction: the WAL empties and the TSM
        # files stop changing.
        deadline = time.monotonic() + 120
        previous = -1
        while time.monotonic() < deadline:
            time.sleep(5)
            wal = _du(influxd.data_dir / "wal" / DISK_DB)
            size = sum(_du(p) for p in data.iterdir() if p.name != "_series")
            if wal == 0 and size == previous:
                break
            previous = size
    # The database's series file (`_series`) is preallocated at a fixed 32 MiB whatever
    # the data: a per-database constant, not a cost per point.
    shards = sum(_du(p) for p in data.iterdir() if p.name != "_series")
    return points, shards + _du(influxd.data_dir / "wal" / DISK_DB)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _points(stack: LocalStack) -> tuple[int, int]:
    """(points, field values) stored in the benchmark database, counted by InfluxDB."""
    points = values = 0
    for kind in KINDS:
        statement = f'SELECT COUNT(*) FROM "{kind}"'  # noqa: S608 - kinds: a fixed allow-list
        r = httpx.post(
            f"{stack.influx_url}/query",
            data={"q": statement, "db": DB},
            timeout=120,
        ).json()
        for series in r["results"][0].get("series", []):
            counts = [int(v) for v in series["values"][0][1:] if v is not None]
            points += max(counts)
            values += sum(counts)
    return points, values


def api_costs(stack: LocalStack, base: Path, requests: int) -> dict[str, float]:
    """API process CPU per request: cached city overview, and a 24 h district series."""
    port = free_port()
    keys = base / "apikeys.json"
    _, key = KeyStore(keys).create("bench", ("read",))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        SAFECITY_INFLUX__URL=stack.influx_url,
        SAFECITY_INFLUX__DATABASE=DB,
        SAFECITY_PORT=str(port),
        SAFECITY_API_KEYS_FILE=str(keys),
        SAFECITY_AUDIT_LOG_FILE=str(base / "audit.jsonl"),
        SAFECITY_DEADLETTER_DIR=str(base / "dl-api"),
        SAFECITY_MQTT__PORT=str(stack.mqtt_port),
        SAFECITY_RATE_LIMIT_RPS="100000",
        SAFECITY_RATE_LIMIT_BURST="100000",
        SAFECITY_LOG_LEVEL="WARNING",
    )
    proc = ManagedProcess(
        "api", [sys.executable, "-m", "control", "api"], base / "api.log", env=env
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    try:
        proc.wait_ready(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, 60)
        now = datetime.now(UTC)
        district = CITY.districts[0].id
        cases = {
            "overview": (f"/v1/cities/{CITY.id}/overview", {}),
            "series": (
                f"/v1/cities/{CITY.id}/series",
                {
                    "kind": "noise",
                    "field": "laeq",
                    "district": district,
                    "every": "5m",
                    "from": format_ts(now - timedelta(hours=24)),
                    "to": format_ts(now),
                },
            ),
        }
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
            for name, (path, params) in cases.items():
                client.get(path, params=params).raise_for_status()  # warm-up, cache fill
                before = proc_stats(proc.pid or 0)[0]
                started = time.monotonic()
                for _ in range(requests):
                    client.get(path, params=params).raise_for_status()
                elapsed = time.monotonic() - started
                cpu = proc_stats(proc.pid or 0)[0] - before
                out[f"api_{name}_cpu_ms"] = cpu / requests * 1000
                out[f"api_{name}_ms"] = elapsed / requests * 1000
    finally:
        proc.stop()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the unit costs and write benchmarks/results/costs.json."""
    parser = argparse.ArgumentParser(prog="benchmarks.costs")
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--disk-devices", type=int, default=28)
    parser.add_argument("--disk-days", type=float, default=3.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="safecity-costs-") as tmp:
        base = Path(tmp)
        with LocalStack(base / "stack") as stack:
            start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
            batches = payloads(args.messages, start, seed=7)
            sample = sum(len(p) for items in batches.values() for p in items) / args.messages
            conditions = (
                f"{os.cpu_count()} CPUs, load average at start {loadavg()}; {versions()}; "
                f"{args.messages} readings (mean {sample:.0f} B) over "
                f"{sum(1 for b in batches.values() if b)} devices, one ingest worker "
                "draining the queued backlog, every guarantee on"
            )
            print(f"# conditions: {conditions}", flush=True)
            asyncio.run(create_db(stack, DB))
            run = run_ingest(stack, DB, base, 1, batches, args.messages, "costs")
            n = args.messages
            per = {
                k.replace("_cpu", "_us_per_reading"): run[k] * run["elapsed"] / n * 1e6
                for k in ("ingest_cpu", "broker_cpu", "influx_cpu")
            }
            points, values = _points(stack)
            api = api_costs(stack, base, args.requests)
        disk_points, disk = disk_per_point(base, args.disk_devices, args.disk_days)
        result = {
            "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "conditions": conditions,
            "load_average_end": loadavg(),
            "readings": n,
            "points_stored": points,
            "field_values_stored": values,
            "ingest_rate": run["rate"],
            "ingest_rss_mib": run["ingest_rss"],
            **per,
            "influx_disk_bytes_per_point": disk / max(disk_points, 1),
            "disk_sample": f"{disk_points} points: {args.disk_devices} devices, one reading a "
            f"minute for {args.disk_days:g} days",
            "mean_payload_bytes": sample,
            **api,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for key, value in sorted(result.items()):
        print(f"{key:36} {value}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
