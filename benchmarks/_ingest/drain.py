"""Queued drains: safecity ingest with N workers, the naive ingest, the scale-out rounds."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks._ingest.broker import drop_sessions, queued_drain_ceiling, raw_broker_rate
from benchmarks._ingest.load import CITY, INGEST, WORKER_COUNTS, publish_all
from benchmarks._ingest.probes import acked, check_ledger, drop_database, loadavg, proc_stats
from control.stack import LocalStack, ManagedProcess, free_port
from safecity import topics
from safecity.influx import InfluxClient
from safecity.mqtt import MqttClient
from safecity.registry import Device
from safecity.settings import InfluxSettings


def run_ingest(
    stack: LocalStack,
    db: str,
    base: Path,
    workers: int,
    batches: dict[Device, list[bytes]],
    total: int,
    name: str,
) -> dict[str, float]:
    """Start ingest (1 worker or a --workers supervisor on one share group), pause it, queue
    the load in its sessions, resume it and time the drain to the last ack."""
    port = free_port() if workers == 1 else _free_port_block(workers)
    env = ingest_env(stack, base, name, db, port)
    argv = [sys.executable, "-m", "control", "ingest"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = ManagedProcess(f"ingest-{name}", argv, base / f"ingest-{name}.log", env=env)
    proc.start()
    try:
        urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(workers)]
        _wait_ready(proc, urls)
        pids = _worker_pids(proc.pid or 0, workers)
        elapsed, cpu = _timed_drain(stack, proc, pids, urls, batches, total)
        rss = max(proc_stats(p)[1] for p in pids)
    finally:
        proc.stop()  # also when the run fails: never leave workers behind
    ids = [name] if workers == 1 else [f"{name}-{i}" for i in range(workers)]
    drop_sessions(stack, [f"safecity-{w}" for w in ids])
    return {
        "rate": total / elapsed,
        "elapsed": elapsed,
        "ingest_cpu": sum(cpu[p] for p in pids) / elapsed,
        "broker_cpu": cpu[stack.mosquitto.pid or 0] / elapsed,
        "influx_cpu": cpu[stack.influxd.pid or 0] / elapsed,
        "ingest_rss": rss,
        # The busiest and idlest worker's share: an uneven split points at the share group.
        "worker_cpu_max": max(cpu[p] for p in pids) / elapsed,
        "worker_cpu_min": min(cpu[p] for p in pids) / elapsed,
        "load": os.getloadavg()[0],
    }


def _wait_ready(proc: ManagedProcess, urls: list[str]) -> None:
    """Until every worker answers /readyz (SystemExit after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if all(
                httpx.get(u.replace("/metrics", "/readyz"), timeout=1).status_code == 200
                for u in urls
            ):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"ingest not ready: {proc.log_tail()}")
        time.sleep(0.2)


def _timed_drain(
    stack: LocalStack,
    proc: ManagedProcess,
    pids: list[int],
    urls: list[str],
    batches: dict[Device, list[bytes]],
    total: int,
) -> tuple[float, dict[int, float]]:
    """(seconds, CPU seconds per process) the paused workers take to drain the queued load."""
    # Every worker is warm, connected and subscribed. SIGSTOP them all, queue the whole
    # load in the broker (so the publisher cannot be the bottleneck), SIGCONT them all at
    # once and time the drain to the last ack: neither the publisher nor the workers'
    # process start-up (which, on 2 cores, would overlap the first worker's drain) is timed.
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        publish_all(stack, batches)
    finally:
        procs = [*pids, stack.mosquitto.pid or 0, stack.influxd.pid or 0]
        before = {p: proc_stats(p)[0] for p in procs}
        started = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    deadline = started + 300
    # Every poll makes each worker render its /metrics: 10 a second, not 50, so the
    # observer costs the 2 cores little (0.1 s resolution on a drain of several seconds).
    while acked(urls) < total:
        _check_alive(proc, deadline)
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    return elapsed, {p: proc_stats(p)[0] - c for p, c in before.items()}


def _free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are free (the supervisor's metrics ports)."""
    import socket

    for _ in range(100):
        base = 20000 + random.randrange(20000)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("no block of free ports")


def _check_alive(proc: ManagedProcess, deadline: float) -> None:
    """Stop the benchmark (not spin forever) if the ingest died or stalled."""
    if not proc.alive or time.monotonic() > deadline:
        raise SystemExit(f"ingest {proc.name} exited or stalled:\n{proc.log_tail()}")


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
    """One awaited /write per message, then the ack: the rate of a point-per-message ingest
    (the load is queued in its session first; the first Receive Maximum messages are
    already in its inbox when the clock starts)."""
    client = MqttClient(
        stack.mqtt_settings(INGEST),
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
    # Queue the load first (as for the real ingest): the per-device mosquitto_pub
    # processes, not the writes, would otherwise set the pace.
    await asyncio.get_running_loop().run_in_executor(None, start_pub)
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
    await client.disconnect()
    await http.aclose()
    return total / elapsed


def scale_out(
    stack: LocalStack,
    base: Path,
    batches: dict[Device, list[bytes]],
    flat: list[bytes],
    ledger_path: Path,
    rounds: int,
) -> tuple[list[float], list[float], dict[int, list[dict[str, float]]]]:
    """`rounds` rounds of: the live broker rate and its queued-drain ceiling, then 1, 2 and 3
    workers (order rotated per round) on the same queued load; each run checked by the
    ledger checker."""
    raws: list[float] = []
    ceilings: list[float] = []
    runs: dict[int, list[dict[str, float]]] = {w: [] for w in WORKER_COUNTS}
    n = len(flat)
    for r in range(rounds):
        raw = raw_broker_rate(stack, flat, f"bench-raw-{r}")
        raws.append(raw)
        ceiling, sub_us = queued_drain_ceiling(stack, base, flat, f"bench-ceiling-{r}")
        ceilings.append(ceiling)
        print(
            f"round {r + 1}: broker live QoS 1 (mosquitto_pub -l -> mosquitto_sub): "
            f"{raw:,.0f} msg/s; queued-drain ceiling (paused mosquitto_sub -q 1, persistent "
            f"session): {ceiling:,.0f} msg/s, subscriber CPU {sub_us:.1f} us/msg "
            f"(load average {loadavg()})",
            flush=True,
        )
        order = WORKER_COUNTS[r % 3 :] + WORKER_COUNTS[: r % 3]
        for workers in order:
            name = f"bench{workers}r{r}"
            db = f"bench_{name}"
            res = run_ingest(stack, db, base, workers, batches, n, name)
            client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
            report = asyncio.run(check_ledger(ledger_path, client, [base / f"dl-{name}"]))
            res["lost"] = len(report.lost)
            res["dup"] = len(report.duplicated)
            res["raw"] = raw
            res["ceiling"] = ceiling
            runs[workers].append(res)
            print(
                f"round {r + 1}: safecity ingest, {workers} worker(s): {res['rate']:,.0f} "
                f"readings/s = {float(res['rate']) / raw:.0%} of live, "
                f"{float(res['rate']) / ceiling:.0%} of queued-drain ceiling, lost {res['lost']}, "
                f"dup {res['dup']}, ingest CPU {res['ingest_cpu']:.2f} cores = "
                f"{res['ingest_cpu'] * res['elapsed'] / n * 1e6:.1f} us/reading, RSS "
                f"{res['ingest_rss']:.0f} MiB, broker CPU {res['broker_cpu']:.2f}, influxd CPU "
                f"{res['influx_cpu']:.2f} (load average {loadavg()})",
                flush=True,
            )
            drop_database(stack, db)
    return raws, ceilings, runs


def ingest_env(stack: LocalStack, base: Path, name: str, db: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            # Its own account: reads telemetry, writes dead letters and its status.
            "SAFECITY_MQTT__USERNAME": INGEST,
            "SAFECITY_MQTT__PASSWORD": stack.secret(INGEST),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_INFLUX__DATABASE": db,
            "SAFECITY_WORKER_ID": name,
            "SAFECITY_SHARE_GROUP": name,
            "SAFECITY_METRICS_PORT": str(port),
            "SAFECITY_DEADLETTER_DIR": str(base / f"dl-{name}"),
            "SAFECITY_SPOOL_DIR": str(base / f"spool-{name}"),
            "SAFECITY_LOG_LEVEL": "WARNING",
            # The benchmark's devices publish far above a real device's rate.
            "SAFECITY_RATE_LIMIT": "1000000",
            "SAFECITY_RATE_BURST": "1000000",
        }
    )
    return env


def start_ingest(stack: LocalStack, base: Path, name: str, db: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = ManagedProcess(
        f"ingest-{name}",
        [sys.executable, "-m", "control", "ingest"],
        base / f"ingest-{name}.log",
        env=ingest_env(stack, base, name, db, port),
    )
    proc.start()
    url = f"http://127.0.0.1:{port}/metrics"
    proc.wait_ready(
        lambda: httpx.get(url.replace("/metrics", "/readyz"), timeout=1).status_code == 200, 60
    )
    return proc, url
