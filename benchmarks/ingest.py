"""Ingest throughput, CPU/RSS and latency with every guarantee on, beside its ceilings.

Measured in one run on one machine, against a fresh local Mosquitto + InfluxDB:

- broker raw QoS 1: `mosquitto_pub -l` -> `mosquitto_sub` (the ceiling);
- scale-out: safecity ingest with 1, 2 and 3 workers (`--workers N`) on one shared
  subscription each, the same queued load, `--rounds` rounds in rotating order, each
  round beside its own raw broker rate: MQTT v5 persistent sessions, QoS 1, manual
  ack after the InfluxDB write, and the checker's lost/dup for every run;
- a naive ingest: one awaited InfluxDB write per message, then the ack;
- device->queryable latency p50/p99 at 5,000 readings/s (half the 10,000/s one-worker
  target; `--latency-rate`): current-time readings
  published by `mosquitto_pub`, InfluxDB polled every 20 ms for each device's stored
  max(seq) (beside the ingest's own `safecity_ingest_e2e_lag_seconds` histogram);
- ingest RSS while InfluxDB is SIGSTOPped for 60 s at 10,000 readings/s (the spool
  takes over), the drain after SIGCONT, and lost/dup through the checker.

The broker is the platform's only one (no anonymous access, ACLs): the publishers log
in as `_simulator` (which may write every device topic and `_services`), the raw
subscriber as the read-only `_api`, every ingest as `_ingest`. The raw baseline uses
`safecity/v1/<city>/_services/bench-raw` (writable by `_simulator`, readable by `_api`,
outside the ingest's subscription).

Run: `make bench` or `.venv/bin/python -m benchmarks.ingest [--messages N --rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from control.stack import LocalStack, ManagedProcess, free_port
from control.verify import verify
from safecity import ledger, topics
from safecity.influx import InfluxClient
from safecity.mqtt import MqttClient
from safecity.readings import format_ts
from safecity.registry import Device, default_city
from safecity.settings import InfluxSettings
from simulators.generators import generate

CHUNK = 50_000  # mosquitto_pub -l at QoS 1 stops early past 65,535 lines per call
PUBLISHER = "_simulator"  # may write every device topic and _services
READER = "_api"  # read-only
INGEST = "_ingest"
WORKER_COUNTS = (1, 2, 3)
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


def login(stack: LocalStack, username: str) -> list[str]:
    """mosquitto_pub/sub arguments logging in as `username` (the broker has no anonymous)."""
    return ["-u", username, "-P", stack.secret(username)]


def mosquitto_pub(stack: LocalStack, topic: str, lines: Sequence[bytes], name: str) -> None:
    """Publish lines at QoS 1 (MQTT v5) with Mosquitto's own client as `_simulator`, in chunks."""
    for i in range(0, len(lines), CHUNK):
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                stack.mqtt_host,
                "-p",
                str(stack.mqtt_port),
                *login(stack, PUBLISHER),
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


def raw_broker_rate(stack: LocalStack, lines: list[bytes], name: str = "bench-raw") -> float:
    """Messages/s from mosquitto_pub (`_simulator`) through the broker to a QoS 1
    mosquitto_sub (`_api`), on a `_services` topic both may use and no ingest reads."""
    topic = topics.service_status_topic(CITY.id, name)
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            stack.mqtt_host,
            "-p",
            str(stack.mqtt_port),
            *login(stack, READER),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            f"{name}-sub",
            "-t",
            topic,
            "-C",
            str(len(lines)),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    started = time.monotonic()
    mosquitto_pub(stack, topic, lines, f"{name}-pub")
    if sub.wait(600) != 0:
        raise SystemExit("raw baseline: mosquitto_sub failed (login or ACL?)")
    return len(lines) / (time.monotonic() - started)


def queued_drain_ceiling(
    stack: LocalStack, base: Path, lines: list[bytes], name: str = "bench-ceiling"
) -> tuple[float, float]:
    """(msg/s, subscriber CPU us per message) of the broker draining a pre-queued backlog into
    `mosquitto_sub -q 1` on a persistent session: the ingest's method without the ingest.

    The subscriber (`_api`, MQTT v5, `-c`, session expiry 1 h) subscribes, is SIGSTOPped,
    the whole load is queued in its session, then it is SIGCONTed and timed to its last
    message. This, not the live publish->subscribe rate (set by the publisher), is what the
    broker can hand a consumer.
    """
    topic = topics.service_status_topic(CITY.id, name)
    client = [
        *("mosquitto_sub", "-h", stack.mqtt_host, "-p", str(stack.mqtt_port)),
        *login(stack, READER),
        *("-V", "mqttv5", "-q", "1", "-c", "-x", "3600", "-i", f"{name}-sub", "-t", topic),
    ]
    # The session and its subscription first (-E: exit once subscribed), so that nothing
    # published from here on can miss it; a probe then shows the subscriber is connected.
    subprocess.run([*client, "-E"], check=True, timeout=30, stdout=subprocess.DEVNULL)
    out = base / f"{name}.out"
    with out.open("wb") as sink:
        sub = subprocess.Popen([*client, "-C", str(len(lines) + 1)], stdout=sink)
    mosquitto_pub(stack, topic, [b"probe"], f"{name}-probe")
    watchdog = threading.Timer(600, sub.kill)
    try:
        deadline = time.monotonic() + 60
        while out.stat().st_size == 0:
            if sub.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("queued-drain ceiling: mosquitto_sub failed (login or ACL?)")
            time.sleep(0.05)
        os.kill(sub.pid, signal.SIGSTOP)
        try:
            mosquitto_pub(stack, topic, lines, f"{name}-pub")
        finally:
            cpu_before = proc_stats(sub.pid)[0]
            started = time.monotonic()
            os.kill(sub.pid, signal.SIGCONT)
        watchdog.start()
        # wait4 returns when the last message is in (mosquitto_sub -C exits on it) and gives
        # the subscriber's CPU, which /proc no longer shows once it is reaped.
        _, status, usage = os.wait4(sub.pid, 0)
        elapsed = time.monotonic() - started
        sub.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        if sub.returncode is None:
            sub.kill()
            sub.wait()
        out.unlink(missing_ok=True)
    if sub.returncode != 0:
        raise SystemExit(f"queued-drain ceiling: mosquitto_sub exited {sub.returncode}")
    drop_sessions(stack, [f"{name}-sub"], READER)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    return len(lines) / elapsed, cpu / len(lines) * 1e6


def drop_sessions(stack: LocalStack, client_ids: Sequence[str], username: str = INGEST) -> None:
    """End the persistent sessions of finished consumers (clean start, expiry 0).

    A stopped worker's session stays subscribed and would queue every later load of the
    run (broker memory and CPU the next contender would pay for).
    """
    for client_id in client_ids:
        subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                stack.mqtt_host,
                "-p",
                str(stack.mqtt_port),
                *login(stack, username),
                "-V",
                "mqttv5",
                "-i",
                client_id,
                "-t",
                topics.service_status_topic(CITY.id, "bench-none"),
                "-E",
            ],
            check=True,
            timeout=30,
            stdout=subprocess.DEVNULL,
        )


def scrape(url: str) -> dict[str, float]:
    """Prometheus samples of a /metrics endpoint."""
    out = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def acked_each(urls: list[str]) -> list[float]:
    """Messages acked by each worker; a worker not answering yet counts 0."""
    out = []
    for url in urls:
        count = 0.0
        with contextlib.suppress(httpx.HTTPError):
            count = scrape(url).get("safecity_ingest_acked_total", 0.0)
        out.append(count)
    return out


def acked(urls: list[str]) -> float:
    """Messages acked by all workers; a worker not answering yet counts 0."""
    return sum(acked_each(urls))


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
    name: str,
) -> dict[str, float]:
    """Start ingest (1 worker or a --workers supervisor on one share group), pause it, queue
    the load in its sessions, resume it and time the drain to the last ack."""
    port = free_port() if workers == 1 else _free_port_block(workers)
    env = _ingest_env(stack, base, name, db, port)
    argv = [sys.executable, "-m", "control", "ingest"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = ManagedProcess(f"ingest-{name}", argv, base / f"ingest-{name}.log", env=env)
    proc.start()
    try:
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
        # Every worker is warm, connected and subscribed. SIGSTOP them all, queue the whole
        # load in the broker (so the publisher cannot be the bottleneck), SIGCONT them all at
        # once and time the drain to the last ack: neither the publisher nor the workers'
        # process start-up (which, on 2 cores, would overlap the first worker's drain) is timed.
        pids = _worker_pids(proc.pid or 0, workers)
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
        cpu = {p: proc_stats(p)[0] - c for p, c in before.items()}
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
    }


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


def versions() -> str:
    """Python, Mosquitto and InfluxDB versions of this run."""
    import platform

    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    influx = subprocess.run(["influxd", "version"], capture_output=True, text=True).stdout
    return (
        f"Python {platform.python_version()}, "
        f"{(mosq.splitlines() or ['mosquitto ?'])[0].strip()}, {influx.strip() or 'influxd ?'}"
    )


T0 = time.monotonic()


def loadavg() -> str:
    """The 1-minute load average (other load on the machine), and the time since start."""
    return f"{os.getloadavg()[0]:.2f}, t+{time.monotonic() - T0:.0f} s"


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
            report = asyncio.run(_verify(ledger_path, client, [base / f"dl-{name}"]))
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
            _drop_database(stack, db)
    return raws, ceilings, runs


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ingest benchmark and print its conditions and figures."""
    parser = argparse.ArgumentParser(prog="benchmarks.ingest")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="scale-out rounds (median shown)")
    parser.add_argument("--naive-messages", type=int, default=3_000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    # Half the 10,000/s one-worker target (the p99 < 1 s latency target is set at it).
    parser.add_argument("--latency-rate", type=float, default=5_000.0)
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="0: skip")
    parser.add_argument("--outage-rate", type=float, default=10_000.0)
    args = parser.parse_args(argv)
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="safecity-bench-") as tmp:
        base = Path(tmp)
        with LocalStack(base / "stack") as stack:
            start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
            batches = payloads(n, start, seed=1)
            flat = [p for items in batches.values() for p in items]
            sample = len(flat[0])
            ledger_path = base / "ledger-scaleout.jsonl"
            write_ledger(ledger_path, batches)
            conditions = (
                f"{os.cpu_count()} CPUs, load average at start {loadavg()}; {versions()}; "
                f"{n} readings of ~{sample} B over "
                f"{sum(1 for b in batches.values() if b)} devices; authenticated broker "
                f"(publishers `{PUBLISHER}`, raw subscriber `{READER}`, ingest `{INGEST}`); "
                "Mosquitto + influxd + ingest + publishers on this machine"
            )
            print(f"# conditions: {conditions}", flush=True)
            raws, ceilings, runs = scale_out(stack, base, batches, flat, ledger_path, args.rounds)

            naive_batches = payloads(args.naive_messages, start + timedelta(hours=2), seed=4)
            naive_db = "bench_naive"
            asyncio.run(_create_db(stack, naive_db))
            naive = asyncio.run(
                naive_ingest(
                    stack, naive_db, args.naive_messages, lambda: publish_all(stack, naive_batches)
                )
            )
            drop_sessions(stack, ["bench-naive"])
            print(
                f"naive ingest (one awaited write per message): {naive:,.0f} readings/s "
                f"(load average {loadavg()})",
                flush=True,
            )
            lat = latency_run(stack, base, args.latency_rate, args.latency_seconds)
            print(
                f"latency at {float(lat['rate']):,.0f}/s ({lat['n']} readings): device->queryable "
                f"(InfluxDB polled) p50 {float(lat['q_p50']):.3f} s, p99 "
                f"{float(lat['q_p99']):.3f} s, max {float(lat['q_max']):.3f} s; ingest histogram "
                f"device->durable p50 <= {lat['p50']} s, p99 <= {lat['p99']} s "
                f"(load average {loadavg()})",
                flush=True,
            )
            out: dict[str, float] | None = None
            if args.outage_seconds > 0:
                out = outage_run(stack, base, args.outage_rate, args.outage_seconds)
                print(
                    f"InfluxDB SIGSTOP {args.outage_seconds:.0f} s at {float(out['rate']):,.0f}/s: "
                    f"ingest peak RSS {float(out['rss']):.0f} MiB, spooled {out['spooled']:,.0f}, "
                    f"drained {float(out['drained_after']):.1f} s after SIGCONT, "
                    f"lost {out['lost']}, dup {out['dup']} (load average {loadavg()})",
                    flush=True,
                )
            print(f"# load average at end {loadavg()}")
            print_table(raws, ceilings, runs, lat, out, naive, n, sample)


async def _verify(path: Path, client: InfluxClient, dirs: list[Path]):  # type: ignore[no-untyped-def]
    try:
        return await verify(path, client, dirs)
    finally:
        await client.close()


def _drop_database(stack: LocalStack, db: str) -> None:
    """Drop a checked run's database (keeps InfluxDB's work the same for every run)."""
    httpx.post(
        f"{stack.influx_url}/query", data={"q": f'DROP DATABASE "{db}"'}, timeout=60
    ).raise_for_status()


async def _create_db(stack: LocalStack, db: str) -> None:
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
    try:
        await client.ensure_database()
    finally:
        await client.close()


def _ingest_env(stack: LocalStack, base: Path, name: str, db: str, port: int) -> dict[str, str]:
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


def _start_ingest(stack: LocalStack, base: Path, name: str, db: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = ManagedProcess(
        f"ingest-{name}",
        [sys.executable, "-m", "control", "ingest"],
        base / f"ingest-{name}.log",
        env=_ingest_env(stack, base, name, db, port),
    )
    proc.start()
    url = f"http://127.0.0.1:{port}/metrics"
    proc.wait_ready(
        lambda: httpx.get(url.replace("/metrics", "/readyz"), timeout=1).status_code == 200, 60
    )
    return proc, url


class PacedPublisher:
    """Publish current-time readings at `rate`/s with one `mosquitto_pub -l -q 1` per device.

    Each reading's `ts` is the wall clock (ms, strictly increasing per device) when its
    line is handed to mosquitto_pub, so device->queryable latency includes the
    publisher's own delay (conservative). Records every payload for the ledger.
    """

    TICK = 0.02

    def __init__(self, stack: LocalStack, devices: list[Device], rate: float, seed: int) -> None:
        self.stack = stack
        self.devices = devices
        self.rate = rate
        self.seed = seed
        rng = random.Random(seed)
        now = datetime.now(UTC)
        # A pool of generated values per device, serialised once.
        self.pool = {
            d: [json.dumps(generate(d, rng, now), separators=(",", ":")) for _ in range(64)]
            for d in devices
        }
        self.sent: dict[Device, list[bytes]] = {d: [] for d in devices}
        self.last_ms = {d: 0 for d in devices}
        self.procs: dict[Device, tuple[subprocess.Popen[bytes], int]] = {}
        self.total = 0

    def _pipe(self, device: Device, lines: int) -> subprocess.Popen[bytes]:
        proc, count = self.procs.get(device, (None, 0))
        if proc is None or count + lines > CHUNK:
            if proc is not None:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(120)
            topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
            proc = subprocess.Popen(
                [
                    "mosquitto_pub",
                    "-h",
                    self.stack.mqtt_host,
                    "-p",
                    str(self.stack.mqtt_port),
                    *login(self.stack, PUBLISHER),
                    "-V",
                    "mqttv5",
                    "-q",
                    "1",
                    "-i",
                    f"bench-paced-{self.seed}-{device.id}-{len(self.sent[device])}",
                    "-t",
                    topic,
                    "-l",
                ],
                stdin=subprocess.PIPE,
            )
            count = 0
        self.procs[device] = (proc, count + lines)
        return proc

    def run(self, duration: float, at: dict[float, object] | None = None) -> float:
        """Publish for `duration` s; call `at[t]()` once t s have passed. Return the rate."""
        hooks = sorted((at or {}).items(), key=lambda kv: kv[0])
        started = time.monotonic()
        per_device = self.rate / len(self.devices)
        due = 0.0
        while True:
            elapsed = time.monotonic() - started
            while hooks and hooks[0][0] <= elapsed:
                hook = hooks.pop(0)[1]
                assert callable(hook)
                hook()
            if elapsed >= duration:
                break
            target = per_device * min(elapsed + self.TICK, duration)
            n = int(target - due)
            if n > 0:
                due += n
                now_ms = int(time.time() * 1000)
                for device in self.devices:
                    lines = []
                    pool = self.pool[device]
                    sent = self.sent[device]
                    for j in range(n):
                        # A backlog after a late tick gets past timestamps, never future ones.
                        ts = max(now_ms - (n - 1 - j), self.last_ms[device] + 1)
                        self.last_ms[device] = ts
                        seq = self.seed * 10_000_000 + len(sent)
                        body = (
                            f'{{"ts":"{format_ts(datetime.fromtimestamp(ts / 1000, UTC))}",'
                            f'"seq":{seq},"values":{pool[seq % len(pool)]}}}'
                        ).encode()
                        sent.append(body)
                        lines.append(body)
                    proc = self._pipe(device, len(lines))
                    assert proc.stdin is not None
                    proc.stdin.write(b"\n".join(lines) + b"\n")
                    proc.stdin.flush()
                self.total += n * len(self.devices)
            time.sleep(max(0.0, started + elapsed + self.TICK - time.monotonic()))
        spent = time.monotonic() - started
        for proc, _ in self.procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
        for proc, _ in self.procs.values():
            if proc.wait(300) != 0:
                raise SystemExit("mosquitto_pub failed")
        return self.total / spent


class WatermarkPoller(threading.Thread):
    """Polls InfluxDB for each device's highest stored `seq` (when it became queryable).

    One ingest worker writes each device's readings in receive (= publish) order, so
    seq s of a device is queryable once the device's stored max(seq) >= s: the first
    poll that sees it bounds the reading's device->queryable time from above (by the
    poll interval and the query's own time).
    """

    def __init__(self, url: str, db: str, devices: list[Device], interval: float = 0.02):
        super().__init__(daemon=True)
        self.url, self.db, self.interval = url, db, interval
        self.kinds = sorted({d.kind for d in devices})
        self.seen: dict[str, list[tuple[float, int]]] = {d.id: [] for d in devices}
        self.stop_flag = threading.Event()
        self.since_ms = int(time.time() * 1000) - 5000

    def run(self) -> None:
        measurements = ",".join(f'"{k}"' for k in self.kinds)
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop_flag.is_set():
                # Measurement names come from the catalogue, the bound is an int.
                q = f"SELECT max(seq) FROM {measurements} WHERE time > {self.since_ms}ms GROUP BY device_id"  # noqa: E501, S608
                try:
                    body = http.get("/query", params={"db": self.db, "q": q, "epoch": "ms"}).json()
                except httpx.HTTPError:
                    continue
                now = time.time()
                for series in body["results"][0].get("series", []):
                    seen = self.seen.get(series["tags"]["device_id"])
                    top = int(series["values"][0][1])
                    if seen is not None and (not seen or seen[-1][1] < top):
                        seen.append((now, top))
                time.sleep(self.interval)

    def latencies(self, sent: dict[Device, list[bytes]]) -> list[float]:
        """Device ts -> first poll that saw it, per reading (inf if never seen)."""
        out = []
        for device, bodies in sent.items():
            seen = self.seen[device.id]
            k = 0
            for raw in bodies:
                body = json.loads(raw)
                while k < len(seen) and seen[k][1] < body["seq"]:
                    k += 1
                ts = datetime.fromisoformat(body["ts"]).timestamp()
                out.append(seen[k][0] - ts if k < len(seen) else math.inf)
        return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_run(stack: LocalStack, base: Path, rate: float, duration: float) -> dict[str, float]:
    """Publish at ~`rate` with current timestamps; measure device->queryable in InfluxDB."""
    db = "bench_latency"
    proc, url = _start_ingest(stack, base, "benchlat", db)
    devices = [d for d in CITY.devices if d.kind in KINDS][:8]
    publisher = PacedPublisher(stack, devices, rate, seed=3)
    poller = WatermarkPoller(stack.influx_url, db, devices)
    poller.start()
    achieved = publisher.run(duration)
    deadline = time.monotonic() + 120
    while scrape(url).get("safecity_ingest_acked_total", 0) < publisher.total:
        if time.monotonic() > deadline:
            raise SystemExit("latency run: ingest did not ack everything")
        time.sleep(0.1)
    time.sleep(0.5)
    poller.stop_flag.set()
    poller.join(10)
    samples = scrape(url)
    proc.stop()
    drop_sessions(stack, ["safecity-benchlat"])
    lat = poller.latencies(publisher.sent)
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in samples.items()
        if k.startswith("safecity_ingest_e2e_lag_seconds_bucket")
    )
    return {
        "rate": achieved,
        "n": len(lat),
        "q_p50": _pct(lat, 0.5),
        "q_p99": _pct(lat, 0.99),
        "q_max": max(lat),
        "p50": quantile(buckets, 0.5),
        "p99": quantile(buckets, 0.99),
    }


def outage_run(
    stack: LocalStack, base: Path, rate: float, outage: float, lead: float = 10.0
) -> dict[str, float]:
    """Publish at `rate` while InfluxDB is SIGSTOPped for `outage` s; ingest RSS, then lost/dup."""
    db = "bench_outage"
    proc, url = _start_ingest(stack, base, "benchout", db)
    pid = proc.pid or 0
    devices = [d for d in CITY.devices if d.kind in KINDS][8:16]
    publisher = PacedPublisher(stack, devices, rate, seed=5)
    peak = {"rss": 0.0, "spool": 0.0, "resumed": 0.0, "emptied": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        peak["rss"] = max(peak["rss"], int(line.split()[1]) / 1024)
            with contextlib.suppress(httpx.HTTPError):
                points = scrape(url).get("safecity_ingest_spool_points", 0.0)
                peak["spool"] = max(peak["spool"], points)
                if peak["resumed"] and not peak["emptied"] and points == 0:
                    peak["emptied"] = time.monotonic()
            time.sleep(0.25)

    def pause() -> None:
        stack.influxd.pause()

    def resume() -> None:
        stack.influxd.resume()
        peak["resumed"] = time.monotonic()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    achieved = publisher.run(lead + outage + lead, {lead: pause, lead + outage: resume})
    finished = time.monotonic()
    metrics: dict[str, float] = {}
    while True:
        metrics = scrape(url)
        if (
            metrics.get("safecity_ingest_acked_total", 0) >= publisher.total
            and metrics.get("safecity_ingest_spool_points", 1) == 0
        ):
            break
        if time.monotonic() - finished > 300:
            raise SystemExit("outage run: spool did not drain")
        time.sleep(0.2)
    done.set()
    sampler.join(5)
    drained = (peak["emptied"] or time.monotonic()) - peak["resumed"]
    proc.stop()
    drop_sessions(stack, ["safecity-benchout"])
    ledger_path = base / "ledger-outage.jsonl"
    write_ledger(ledger_path, publisher.sent)
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
    report = asyncio.run(_verify(ledger_path, client, [base / "dl-benchout"]))
    return {
        "rate": achieved,
        "outage": outage,
        "n": publisher.total,
        "rss": peak["rss"],
        "spool_peak": peak["spool"],
        "spooled": metrics.get("safecity_ingest_spooled_points_total", 0.0),
        "drained_after": drained,
        "lost": len(report.lost),
        "dup": len(report.duplicated),
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def next_worker_limit(runs: dict[int, list[dict[str, float]]], ceiling: float) -> str:
    """Which resource the 2-worker runs ran out of: the broker, the cores, or neither."""
    two = runs.get(2) or []
    if not two:
        return "not measured"
    rate = _median([float(r["rate"]) for r in two])
    cores = {
        k: _median([float(r[k]) for r in two]) for k in ("ingest_cpu", "broker_cpu", "influx_cpu")
    }
    busy = sum(cores.values())
    used = (
        f"2 workers {cores['ingest_cpu']:.2f} + broker {cores['broker_cpu']:.2f} + influxd "
        f"{cores['influx_cpu']:.2f} = {busy:.2f} of {os.cpu_count()} cores, "
        f"{rate / ceiling:.0%} of the broker's queued-drain ceiling"
    )
    if rate >= 0.8 * ceiling:
        return f"the broker ({used})"
    if busy >= 0.85 * (os.cpu_count() or 1):
        return f"the cores: a third worker only takes CPU from the other two ({used})"
    return f"neither cores nor broker saturated: the workers wait (other load, I/O) ({used})"


def print_table(
    raws: list[float],
    ceilings: list[float],
    runs: dict[int, list[dict[str, float]]],
    lat: dict[str, float],
    out: dict[str, float] | None,
    naive: float,
    n: int,
    sample: int,
) -> None:
    """The markdown table recorded in benchmarks/README.md, then the ingest targets."""
    raw = _median(raws)
    rate = {w: _median([float(r["rate"]) for r in rs]) for w, rs in runs.items()}
    share = {w: _median([float(r["rate"]) / float(r["raw"]) for r in rs]) for w, rs in runs.items()}
    ceiling = _median(ceilings)
    of_ceiling = {
        w: _median([float(r["rate"]) / float(r["ceiling"]) for r in rs]) for w, rs in runs.items()
    }
    us_per = {
        w: _median([float(r["ingest_cpu"]) * float(r["elapsed"]) / n * 1e6 for r in rs])
        for w, rs in runs.items()
    }
    lost = sum(int(r["lost"]) for rs in runs.values() for r in rs)
    dup = sum(int(r["dup"]) for rs in runs.values() for r in rs)
    print()
    print(f"| Measure ({len(raws)} rounds, median; runs in brackets) | Result |")
    print("|---|---|")
    print(
        f"| broker live QoS 1 publish->subscribe (mosquitto_pub -l -> mosquitto_sub) | "
        f"{raw:,.0f} msg/s ({' / '.join(f'{x:,.0f}' for x in raws)}) |"
    )
    print(
        f"| broker queued-drain ceiling (paused `mosquitto_sub -q 1`, persistent session, "
        f"same backlog) | {ceiling:,.0f} msg/s ({' / '.join(f'{x:,.0f}' for x in ceilings)}) |"
    )
    for w, rs in runs.items():
        each = " / ".join(f"{float(r['rate']):,.0f}" for r in rs)
        print(
            f"| safecity ingest, {w} worker{'s' if w > 1 else ''}, all guarantees | "
            f"{rate[w]:,.0f} readings/s ({each}) "
            f"= **{of_ceiling[w]:.0%} of the queued-drain ceiling**, {share[w]:.0%} of live, "
            f"{rate[w] / rate[1]:.2f}x 1 worker; ingest CPU "
            f"{_median([float(r['ingest_cpu']) for r in rs]):.2f} cores, "
            f"**{us_per[w]:.1f} us/reading**, RSS "
            f"{max(float(r['ingest_rss']) for r in rs):.0f} MiB/worker; broker CPU "
            f"{_median([float(r['broker_cpu']) for r in rs]):.2f}, influxd CPU "
            f"{_median([float(r['influx_cpu']) for r in rs]):.2f} |"
        )
    print(f"| lost / dup (checker), every run | {lost} / {dup} |")
    print(f"| what limits the next worker | {next_worker_limit(runs, ceiling)} |")
    print(
        f"| naive ingest, one write per message | {naive:,.0f} readings/s "
        f"(1 worker = {rate[1] / naive:.0f}x) |"
    )
    print(
        f"| device->queryable latency at {float(lat['rate']):,.0f}/s (InfluxDB polled every "
        f"20 ms) | p50 {float(lat['q_p50']):.2f} s, p99 {float(lat['q_p99']):.2f} s, max "
        f"{float(lat['q_max']):.2f} s (ingest histogram: p50 <= {lat['p50']} s, p99 <= "
        f"{lat['p99']} s) |"
    )
    if out is not None:
        print(
            f"| InfluxDB SIGSTOP {float(out['outage']):.0f} s at {float(out['rate']):,.0f}/s "
            f"| ingest peak RSS {float(out['rss']):.0f} MiB; {float(out['spooled']):,.0f} "
            f"spooled, drained {float(out['drained_after']):.0f} s after SIGCONT; lost "
            f"{out['lost']}, dup {out['dup']} |"
        )
    print(f"| conditions | {n} readings of ~{sample} B, {os.cpu_count()} CPUs |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print("targets:")
    print(f"  1 worker >= 10,000/s: {verdict(rate[1] >= 10_000)} ({rate[1]:,.0f})")
    print(f"  1 worker >= 10x naive: {verdict(rate[1] >= 10 * naive)} ({rate[1] / naive:.0f}x)")
    print(f"  2 workers >= 50 % of live: {verdict(share[2] >= 0.5)} ({share[2]:.0%})")
    print(
        f"  2 workers >= 35 % of the queued-drain ceiling: {verdict(of_ceiling[2] >= 0.35)} "
        f"({of_ceiling[2]:.0%})"
    )
    print(
        f"  consumer CPU <= 12 us/reading (1 worker): {verdict(us_per[1] <= 12)} ({us_per[1]:.1f})"
    )
    print(f"  lost = 0: {verdict(lost == 0 and (out is None or out['lost'] == 0))}")
    print(
        f"  p99 device->queryable < 1 s at {float(lat['rate']):,.0f}/s: "
        f"{verdict(float(lat['q_p99']) < 1)} ({float(lat['q_p99']):.2f} s)"
    )
    if out is not None:
        print(
            f"  RSS < 300 MiB in a {float(out['outage']):.0f} s outage: "
            f"{verdict(float(out['rss']) < 300)} ({float(out['rss']):.0f} MiB)"
        )


if __name__ == "__main__":
    main()
