"""Ingest throughput, CPU/RSS and latency with every guarantee on, beside its ceilings.

Measured in one run on one machine, against a fresh local Mosquitto + InfluxDB:

- broker raw QoS 1: `mosquitto_pub -l` -> `mosquitto_sub` (the ceiling);
- safecity ingest, 1 worker and 2 workers (`--workers 2`): MQTT v5 persistent
  session, QoS 1, manual ack after the InfluxDB write, the checker's lost/dup;
- a naive ingest: one awaited InfluxDB write per message, then the ack;
- device->durable latency p50/p99 at half the 1-worker rate (the ingest's
  `safecity_ingest_e2e_lag_seconds` histogram: device ts -> written, after which
  the point is queryable).

Run: `make bench` or `.venv/bin/python -m benchmarks.ingest [--messages N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from safecity import ledger, topics
from safecity.influx import InfluxClient
from safecity.mqtt import MqttClient
from safecity.readings import format_ts
from safecity.registry import Device, default_city
from safecity.settings import InfluxSettings, MqttSettings
from safecity.stack import LocalStack, ManagedProcess, free_port
from safecity.verify import verify
from simulators.generators import generate

CHUNK = 50_000  # mosquitto_pub -l at QoS 1 stops early past 65,535 lines per call
KINDS = ("air_quality", "noise", "parking", "traffic", "waste", "weather", "crowd")
CITY = default_city()


def payloads(n: int, start: datetime, seed: int) -> dict[Device, list[bytes]]:
    """`n` valid readings spread over the city's telemetry devices (ms-distinct timestamps)."""
    devices = [d for d in CITY.devices if d.kind in KINDS]
    rng = random.Random(seed)
    out: dict[Device, list[bytes]] = {d: [] for d in devices}
    for i in range(n):
        device = devices[i % len(devices)]
        k = i // len(devices)
        ts = start + timedelta(milliseconds=k * 1000 + i % len(devices))
        body = {
            "ts": format_ts(ts),
            "seq": seed * 10_000_000 + k,
            "values": generate(device, rng, ts),
        }
        out[device].append(json.dumps(body, separators=(",", ":")).encode())
    return out


def write_ledger(path: Path, batches: dict[Device, list[bytes]]) -> None:
    """Ledger of what mosquitto_pub sent (it exits 0 only when every PUBACK arrived)."""
    import hashlib

    writer = ledger.LedgerWriter(path)
    for device, items in batches.items():
        topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
        for raw in items:
            body = json.loads(raw)
            ts = datetime.fromisoformat(body["ts"])
            writer.write(
                ledger.LedgerEntry(
                    device.id,
                    "telemetry",
                    topic,
                    body["seq"],
                    int(ts.timestamp() * 1000),
                    hashlib.sha256(raw).hexdigest(),
                    None,
                    0,
                    body["values"],
                )
            )
    writer.close()


def mosquitto_pub(stack: LocalStack, topic: str, lines: Sequence[bytes], name: str) -> None:
    """Publish lines at QoS 1 (MQTT v5) with Mosquitto's own client, in chunks."""
    for i in range(0, len(lines), CHUNK):
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                stack.mqtt_host,
                "-p",
                str(stack.mqtt_port),
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-i",
                f"{name}-{i}",
                "-t",
                topic,
                "-l",
            ],
            input=b"\n".join(lines[i : i + CHUNK]) + b"\n",
            check=True,
            timeout=600,
        )


def publish_all(stack: LocalStack, batches: dict[Device, list[bytes]], parallel: int = 4) -> None:
    """One mosquitto_pub per device topic, `parallel` at a time."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = [
            pool.submit(
                mosquitto_pub,
                stack,
                topics.telemetry_topic(CITY.id, d.district, d.kind, d.id),
                items,
                f"bench-{d.id}",
            )
            for d, items in batches.items()
            if items
        ]
        for f in futures:
            f.result()


def raw_broker_rate(stack: LocalStack, lines: list[bytes]) -> float:
    """Messages/s from mosquitto_pub through the broker to a QoS 1 mosquitto_sub."""
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            stack.mqtt_host,
            "-p",
            str(stack.mqtt_port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            "bench-raw-sub",
            "-t",
            "bench/raw",
            "-C",
            str(len(lines)),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    started = time.monotonic()
    mosquitto_pub(stack, "bench/raw", lines, "bench-raw-pub")
    sub.wait(600)
    return len(lines) / (time.monotonic() - started)


def scrape(url: str) -> dict[str, float]:
    """Prometheus samples of a /metrics endpoint."""
    out = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def acked(urls: list[str]) -> float:
    return sum(scrape(u).get("safecity_ingest_acked_total", 0.0) for u in urls)


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process (and its children's CPU when reaped)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Upper bound of the histogram bucket holding quantile q (cumulative counts)."""
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return math.inf


def run_ingest(
    stack: LocalStack,
    db: str,
    base: Path,
    workers: int,
    batches: dict[Device, list[bytes]],
    total: int,
    rate_note: str,
) -> dict[str, object]:
    """Start ingest (1 worker or a --workers supervisor), publish, time until all acked."""
    port = free_port() if workers == 1 else 20000 + random.randrange(20000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_INFLUX__DATABASE": db,
            "SAFECITY_WORKER_ID": f"bench{workers}",
            "SAFECITY_SHARE_GROUP": f"bench{workers}",
            "SAFECITY_METRICS_PORT": str(port),
            "SAFECITY_DEADLETTER_DIR": str(base / f"dl{workers}"),
            "SAFECITY_SPOOL_DIR": str(base / f"spool{workers}"),
            "SAFECITY_LOG_LEVEL": "WARNING",
            # The benchmark's devices publish far above a real device's rate.
            "SAFECITY_RATE_LIMIT": "1000000",
            "SAFECITY_RATE_BURST": "1000000",
        }
    )
    argv = [sys.executable, "-m", "safecity", "ingest"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = ManagedProcess(f"ingest-{workers}", argv, base / f"ingest{workers}.log", env=env)
    proc.start()
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(workers)]
    deadline = time.monotonic() + 60
    while True:
        try:
            if all(
                httpx.get(u.replace("/metrics", "/readyz"), timeout=1).status_code == 200
                for u in urls
            ):
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"ingest not ready: {proc.log_tail()}")
        time.sleep(0.2)
    # The session and its subscription now exist: stop, queue the whole load in the
    # broker (so the publisher cannot be the bottleneck), then time the drain.
    proc.stop()
    publish_all(stack, batches)
    proc.start()
    pids = _worker_pids(proc.pid or 0, workers)
    before = {
        p: proc_stats(p)[0] for p in [*pids, stack.mosquitto.pid or 0, stack.influxd.pid or 0]
    }
    while True:
        try:
            first = acked(urls)
            if first > 0:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    started = time.monotonic()
    while acked(urls) < total:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    total = int(total - first)
    cpu = {p: proc_stats(p)[0] - c for p, c in before.items()}
    rss = max(proc_stats(p)[1] for p in pids)
    lags = [scrape(u) for u in urls]
    proc.stop()
    return {
        "rate": total / elapsed,
        "elapsed": elapsed,
        "note": rate_note,
        "ingest_cpu": sum(cpu[p] for p in pids) / elapsed,
        "broker_cpu": cpu[stack.mosquitto.pid or 0] / elapsed,
        "influx_cpu": cpu[stack.influxd.pid or 0] / elapsed,
        "ingest_rss": rss,
        "metrics": lags,
    }


def _worker_pids(pid: int, workers: int) -> list[int]:
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        found = [int(k) for k in kids.split()]
        if len(found) >= workers:
            return found
        time.sleep(0.2)
    raise SystemExit("workers did not start")


async def naive_ingest(stack: LocalStack, db: str, total: int, start_pub: object) -> float:
    """One awaited /write per message, then the ack: the rate of a point-per-message ingest."""
    client = MqttClient(
        MqttSettings(host=stack.mqtt_host, port=stack.mqtt_port),
        "bench-naive",
        clean_start=False,
        session_expiry=600,
        manual_ack=True,
        receive_maximum=1000,
    )
    http = httpx.AsyncClient(base_url=stack.influx_url)
    await client.connect()
    await client.subscribe([(topics.device_filter("telemetry", CITY.id), 1)])
    assert callable(start_pub)
    thread = asyncio.get_running_loop().run_in_executor(None, start_pub)
    done = 0
    started = time.monotonic()
    while done < total:
        for message in await client.inbox.get_batch(1000, None):
            body = json.loads(message.payload)
            parsed = topics.parse_device_topic(message.topic)
            ts = int(datetime.fromisoformat(body["ts"]).timestamp() * 1000)
            fields = ",".join(f"{k}={v}" for k, v in body["values"].items() if isinstance(v, float))
            line = f"{parsed.kind},device_id={parsed.device_id} {fields} {ts}"
            await http.post("/write", params={"db": db, "precision": "ms"}, content=line)
            client.ack(message)
            done += 1
    elapsed = time.monotonic() - started
    await thread
    await client.disconnect()
    await http.aclose()
    return total / elapsed


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ingest benchmark and print its conditions and figures."""
    parser = argparse.ArgumentParser(prog="benchmarks.ingest")
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--naive-messages", type=int, default=3_000)
    args = parser.parse_args(argv)
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="safecity-bench-") as tmp:
        base = Path(tmp)
        with LocalStack(base / "stack") as stack:
            start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
            batches = payloads(n, start, seed=1)
            flat = [p for items in batches.values() for p in items]
            sample = len(flat[0])
            print(
                f"# conditions: {os.cpu_count()} CPUs, {n} readings, ~{sample} B payloads, "
                f"{sum(1 for b in batches.values() if b)} devices, Mosquitto + influxd 1.x "
                "+ ingest on this machine"
            )
            raw = raw_broker_rate(stack, flat)
            print(f"broker raw QoS 1 (mosquitto_pub -l -> mosquitto_sub): {raw:,.0f} msg/s")

            results = {}
            for workers, seed in ((1, 1), (2, 2)):
                b = batches if seed == 1 else payloads(n, start + timedelta(hours=1), seed)
                db = f"bench_w{workers}"
                res = run_ingest(stack, db, base, workers, b, n, "")
                ledger_path = base / f"ledger{workers}.jsonl"
                write_ledger(ledger_path, b)
                client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
                report = asyncio.run(_verify(ledger_path, client, [base / f"dl{workers}"]))
                res["lost"] = len(report.lost)
                res["dup"] = len(report.duplicated)
                results[workers] = res
                print(
                    f"safecity ingest, {workers} worker(s): {res['rate']:,.0f} readings/s, "
                    f"lost {res['lost']}, dup {res['dup']}, ingest CPU {res['ingest_cpu']:.2f} "
                    f"cores, RSS {res['ingest_rss']:.0f} MiB, broker CPU "
                    f"{res['broker_cpu']:.2f}, influxd CPU {res['influx_cpu']:.2f}"
                )

            half = payloads(int(results[1]["rate"]) * 10 // 2, datetime.now(UTC), seed=3)
            lat = latency_run(stack, base, half, float(results[1]["rate"]) / 2)
            print(
                f"latency at {lat['rate']:,.0f}/s: device->durable p50 <= {lat['p50']} s, "
                f"p99 <= {lat['p99']} s"
            )

            naive_batches = payloads(args.naive_messages, start + timedelta(hours=2), seed=4)
            naive_db = "bench_naive"
            asyncio.run(_create_db(stack, naive_db))
            naive = asyncio.run(
                naive_ingest(
                    stack, naive_db, args.naive_messages, lambda: publish_all(stack, naive_batches)
                )
            )
            print(f"naive ingest (one awaited write per message): {naive:,.0f} readings/s")
            print_table(raw, results, lat, naive, n, sample)


async def _verify(path: Path, client: InfluxClient, dirs: list[Path]):  # type: ignore[no-untyped-def]
    try:
        return await verify(path, client, dirs)
    finally:
        await client.close()


async def _create_db(stack: LocalStack, db: str) -> None:
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
    try:
        await client.ensure_database()
    finally:
        await client.close()


def latency_run(
    stack: LocalStack, base: Path, batches: dict[Device, list[bytes]], rate: float
) -> dict[str, object]:
    """Publish at ~`rate` with current timestamps; read the ingest's lag histogram."""
    total = sum(len(b) for b in batches.values())
    res = run_ingest_paced(stack, base, batches, total, rate)
    return res


def run_ingest_paced(
    stack: LocalStack, base: Path, batches: dict[Device, list[bytes]], total: int, rate: float
) -> dict[str, object]:
    """Like run_ingest with one worker, publishing in 0.5 s slices at `rate`."""
    flat = [(d, p) for d, items in batches.items() for p in items]
    flat.sort(key=lambda dp: json.loads(dp[1])["ts"])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_INFLUX__DATABASE": "bench_latency",
            "SAFECITY_WORKER_ID": "benchlat",
            "SAFECITY_SHARE_GROUP": "benchlat",
            "SAFECITY_METRICS_PORT": str(port),
            "SAFECITY_DEADLETTER_DIR": str(base / "dllat"),
            "SAFECITY_SPOOL_DIR": str(base / "spoollat"),
            "SAFECITY_LOG_LEVEL": "WARNING",
            "SAFECITY_RATE_LIMIT": "1000000",
            "SAFECITY_RATE_BURST": "1000000",
        }
    )
    proc = ManagedProcess(
        "ingest-lat", [sys.executable, "-m", "safecity", "ingest"], base / "ingestlat.log", env=env
    )
    proc.start()
    url = f"http://127.0.0.1:{port}/metrics"
    proc.wait_ready(
        lambda: httpx.get(url.replace("/metrics", "/readyz"), timeout=1).status_code == 200, 60
    )

    async def pace() -> None:
        client = MqttClient(MqttSettings(host=stack.mqtt_host, port=stack.mqtt_port), "bench-lat")
        await client.connect()
        started = time.monotonic()
        for i, (device, _) in enumerate(flat):
            due = started + i / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            body = json.dumps(
                {
                    "ts": format_ts(datetime.now(UTC)),
                    "seq": 30_000_000 + i,
                    "values": json.loads(_)["values"],
                },
                separators=(",", ":"),
            )
            client.publish_nowait(
                topics.telemetry_topic(CITY.id, device.district, device.kind, device.id),
                body.encode(),
            )
        await client.disconnect()

    asyncio.run(pace())
    while scrape(url).get("safecity_ingest_acked_total", 0) < total:
        time.sleep(0.1)
    samples = scrape(url)
    proc.stop()
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in samples.items()
        if k.startswith("safecity_ingest_e2e_lag_seconds_bucket")
    )
    return {"rate": rate, "p50": quantile(buckets, 0.5), "p99": quantile(buckets, 0.99)}


def print_table(
    raw: float,
    results: dict[int, dict[str, object]],
    lat: dict[str, object],
    naive: float,
    n: int,
    sample: int,
) -> None:
    """The markdown table recorded in benchmarks/README.md."""
    one, two = results[1], results[2]
    print()
    print("| Measure | Result |")
    print("|---|---|")
    print(f"| broker raw QoS 1 delivery (mosquitto_pub -l -> mosquitto_sub) | {raw:,.0f} msg/s |")
    for w, r in ((1, one), (2, two)):
        print(
            f"| safecity ingest, {w} worker(s), all guarantees | {float(r['rate']):,.0f} "
            f"readings/s (lost {r['lost']}, dup {r['dup']}; ingest CPU "
            f"{float(r['ingest_cpu']):.2f} cores, RSS {float(r['ingest_rss']):.0f} MiB) |"
        )
    print(f"| 2 workers vs broker raw | {float(two['rate']) / raw:.0%} |")
    print(
        f"| naive ingest, one write per message | {naive:,.0f} readings/s "
        f"(1 worker = {float(one['rate']) / naive:.0f}x) |"
    )
    print(
        f"| device->durable latency at {float(lat['rate']):,.0f}/s | p50 <= {lat['p50']} s, "
        f"p99 <= {lat['p99']} s |"
    )
    print(f"| conditions | {n} readings of ~{sample} B, {os.cpu_count()} CPUs |")


if __name__ == "__main__":
    main()
