"""The peer: Node-RED's standard flow (mqtt in -> function -> influxdb out) on the same load.

The flow, its settings and the pinned npm packages are data in `benchmarks/nodered/`; the
packages are installed once with `npm install --prefix` into a cache dir. The run follows
the ingest's method: Node-RED connects (persistent MQTT v5 session, QoS 1, its own share
group, logged in as `_ingest`), a probe reading shows the whole path works, the process
is SIGSTOPped, the backlog is queued in its session, it is SIGCONTed, and InfluxDB is
polled until the count of stored points stops growing. The rate is what InfluxDB holds at
the end over the time to the last new point; lost is sent minus stored (distinct points).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from benchmarks._ingest.broker import drop_sessions
from benchmarks._ingest.load import CITY, INGEST, mosquitto_pub, publish_all
from benchmarks._ingest.probes import create_db, drop_database, loadavg, proc_stats
from control.processes import ManagedProcess
from control.stack import LocalStack, free_port
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import Device

FLOW_DIR = Path(__file__).resolve().parent.parent / "nodered"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "safecity-bench"
IDLE = 20.0  # s without a new point while Node-RED is idle: it is done
STALL = 180.0  # s without a new point however busy Node-RED is: it is stuck
BUSY = 0.05  # cores: Node-RED above this is still working (writes pending, GC)
PATIENCE = 900.0  # s: the longest a run may take


class NodeRedUnavailableError(RuntimeError):
    """Node-RED could not be installed or started here (the reason is the message)."""


def install() -> tuple[Path, str]:
    """(red.js, Node-RED version) from the pinned package.json, installed once into the cache."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise NodeRedUnavailableError("node/npm not found on PATH")
    spec = (FLOW_DIR / "package.json").read_bytes()
    home = CACHE / f"node-red-{hashlib.sha256(spec).hexdigest()[:12]}"
    red = home / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_bytes(spec)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(home), "--no-audit", "--no-fund", "--omit=dev"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0 or not red.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise NodeRedUnavailableError(f"npm install failed: {' | '.join(tail)}")
    meta = json.loads((home / "node_modules" / "node-red" / "package.json").read_text())
    influx = home / "node_modules" / "node-red-contrib-influxdb" / "package.json"
    contrib = json.loads(influx.read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return red, (
        f"Node-RED {meta['version']}, node-red-contrib-influxdb {contrib}, node {node}, "
        f"open-files limit {files}"
    )


def stored(stack: LocalStack, db: str) -> int:
    """Points in `db` (every measurement), i.e. distinct (series, time) readings stored."""
    body = httpx.get(
        f"{stack.influx_url}/query",
        params={"db": db, "q": "SELECT count(seq) FROM /.*/"},
        timeout=30,
    ).json()
    series = body["results"][0].get("series", [])
    return sum(int(s["values"][0][1]) for s in series)


def _user_dir(stack: LocalStack, base: Path, name: str, client_id: str) -> Path:
    """A fresh Node-RED user dir: the flow, and its MQTT login as a plain credentials file."""
    user = base / f"nodered-{name}"
    user.mkdir()
    shutil.copy(FLOW_DIR / "flows.json", user / "flows.json")
    flows = json.loads((FLOW_DIR / "flows.json").read_text())
    creds: dict[str, dict[str, str]] = {}
    for node in flows:
        if node["type"] == "mqtt-broker":
            creds[node["id"]] = {"user": INGEST, "password": stack.secret(INGEST)}
        elif node["type"] == "influxdb":
            creds[node["id"]] = {"username": "", "password": ""}
    (user / "flows_cred.json").write_text(json.dumps(creds))
    return user


def _probe(start: datetime) -> tuple[str, bytes]:
    """One reading outside the load (an hour before it) to prove login, ACL, subscription
    and writes work before the clock starts; it is not counted."""
    device = next(d for d in CITY.devices if d.kind == "noise")
    topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
    ts = format_ts(start - timedelta(hours=1))
    body = {"ts": ts, "seq": 1, "values": {"laeq": 50.0, "lamax": 60.0, "la90": 40.0}}
    return topic, json.dumps(body, separators=(",", ":")).encode()


@dataclass
class _Watch:
    """What polling InfluxDB during a Node-RED drain saw."""

    procs: list[int]
    before: dict[int, float]  # CPU seconds of each process when the clock started
    started: float
    count: int = 1  # points stored (the probe's included)
    last: float = 0.0  # when the last new point was seen
    at_last: dict[int, float] = field(default_factory=dict)  # CPU seconds then
    fds: int = 0  # the most open files Node-RED held
    busy: float = 0.0  # Node-RED's CPU (cores) over the last few seconds


def nodered_run(
    stack: LocalStack,
    base: Path,
    red: Path,
    batches: dict[Device, list[bytes]],
    start: datetime,
    name: str,
    max_sockets: int | None,
) -> tuple[dict[str, float], str]:
    """Drain the queued load with Node-RED (sockets capped at `max_sockets`, or stock)."""
    db = f"bench_nodered_{name}"
    asyncio.run(create_db(stack, db))
    client_id = f"bench-nodered-{name}"
    env = _env(stack, db, client_id, max_sockets)
    user = _user_dir(stack, base, name, client_id)
    argv = ["node", str(red), "--settings", str(FLOW_DIR / "settings.js"), "--userDir", str(user)]
    proc = ManagedProcess(f"nodered-{name}", argv, base / f"nodered-{name}.log", env=env)
    total = sum(len(v) for v in batches.values())
    proc.start()
    try:
        _until_probe_stored(stack, proc, db, start, client_id)
        pid = proc.pid or 0
        watch = _queue_and_resume(stack, pid, batches)
        _watch_drain(stack, db, watch, total)
        rss = proc_stats(pid)[1]
        log = proc.log_path.read_text(errors="replace")
    finally:
        proc.stop()
    drop_sessions(stack, [client_id])
    drop_database(stack, db)
    kept = watch.count - 1
    elapsed = max(watch.last - watch.started, 1e-6)
    procs = watch.procs
    cpu = {p: watch.at_last[p] - watch.before[p] for p in procs}
    return {
        "sockets": float(max_sockets or 0),
        "sent": float(total),
        "stored": float(kept),
        "lost": float(total - kept),
        "rate": kept / elapsed,
        "elapsed": elapsed,
        "cpu_us": cpu[pid] / max(kept, 1) * 1e6,
        "node_cpu": cpu[pid] / elapsed,
        "broker_cpu": cpu[procs[1]] / elapsed,
        "influx_cpu": cpu[procs[2]] / elapsed,
        "rss": rss,
        "errors": float(_errors(log)),
        "emfile": float(log.count("EMFILE")),
        "fds": float(watch.fds),
        # Still working when the run ended (STALL or PATIENCE): lost may be an upper bound.
        "busy_at_end": watch.busy,
    }, top_error(log)


def _env(stack: LocalStack, db: str, client_id: str, max_sockets: int | None) -> dict[str, str]:
    """The environment the benchmark flow and its settings read."""
    return {
        **os.environ,
        "BENCH_MQTT_HOST": stack.mqtt_host,
        "BENCH_MQTT_PORT": str(stack.mqtt_port),
        "BENCH_CLIENT_ID": client_id,
        "BENCH_TOPIC": f"$share/{client_id}/{topics.device_filter('telemetry', CITY.id)}",
        "BENCH_INFLUX_HOST": "127.0.0.1",
        "BENCH_INFLUX_PORT": str(httpx.URL(stack.influx_url).port),
        "BENCH_INFLUX_DB": db,
        "BENCH_UI_PORT": str(free_port()),
        "BENCH_HTTP_MAX_SOCKETS": str(max_sockets or 0),
    }


def _until_probe_stored(
    stack: LocalStack, proc: ManagedProcess, db: str, start: datetime, client_id: str
) -> None:
    """Publish the probe reading until Node-RED has stored it (the whole path works)."""
    topic, probe = _probe(start)
    deadline = time.monotonic() + 120
    while stored(stack, db) < 1:
        if not proc.alive or time.monotonic() > deadline:
            why = f"the probe reading was not stored:\n{proc.log_tail()}"
            raise NodeRedUnavailableError(why)
        mosquitto_pub(stack, topic, [probe], f"{client_id}-probe")
        time.sleep(1.0)


def _queue_and_resume(stack: LocalStack, pid: int, batches: dict[Device, list[bytes]]) -> _Watch:
    """SIGSTOP Node-RED, queue the load in its session, SIGCONT it: the clock starts."""
    os.kill(pid, signal.SIGSTOP)
    try:
        publish_all(stack, batches)
    finally:
        procs = [pid, stack.mosquitto.pid or 0, stack.influxd.pid or 0]
        before = {p: proc_stats(p)[0] for p in procs}
        started = time.monotonic()
        os.kill(pid, signal.SIGCONT)
    return _Watch(procs, before, started, last=started, at_last=dict(before))


def _watch_drain(stack: LocalStack, db: str, watch: _Watch, total: int) -> None:
    """Poll the stored count until all is stored, Node-RED idles or stalls, or patience ends."""
    pid = watch.procs[0]
    cpu_seen = (watch.started, watch.before[pid])
    while True:
        time.sleep(0.5)
        now_count = stored(stack, db)
        now = time.monotonic()
        watch.fds = max(watch.fds, len(os.listdir(f"/proc/{pid}/fd")))
        if now_count > watch.count:
            watch.count, watch.last = now_count, now
            watch.at_last = {p: proc_stats(p)[0] for p in watch.procs}
        # Node-RED's CPU over the last few seconds: a busy process may still store more.
        if now - cpu_seen[0] >= 5:
            cpu_now = proc_stats(pid)[0]
            watch.busy = (cpu_now - cpu_seen[1]) / (now - cpu_seen[0])
            cpu_seen = (now, cpu_now)
        quiet = now - watch.last
        if (
            now_count - 1 >= total
            or (quiet > IDLE and watch.busy < BUSY)
            or quiet > STALL
            or now - watch.started > PATIENCE
        ):
            return


def _errors(log: str) -> int:
    """Error lines Node-RED logged (a failed write is logged, its reading already acked)."""
    return sum(1 for line in log.splitlines() if "[error]" in line)


def top_error(log: str) -> str:
    """The error Node-RED logged most often, with its count ("" when none)."""
    counts = Counter(
        line.split("[error]", 1)[1].strip() for line in log.splitlines() if "[error]" in line
    )
    if not counts:
        return ""
    text, n = counts.most_common(1)[0]
    return f"{n:,} x `{text[:120]}`"


def still(res: dict[str, float]) -> str:
    """A note when Node-RED was still busy as the run ended (its lost is then an upper bound)."""
    if res["busy_at_end"] < BUSY or res["lost"] <= 0:
        return ""
    return f", still busy ({res['busy_at_end']:.2f} cores) when stopped"


def peer_runs(
    stack: LocalStack,
    base: Path,
    batches: dict[Device, list[bytes]],
    start: datetime,
    max_sockets: int,
) -> tuple[str, list[dict[str, float]], list[str]]:
    """Node-RED stock, then with its HTTP sockets capped; (versions, runs, each run's most
    frequent error) or raises NodeRedUnavailableError with the reason."""
    red, version = install()
    runs, errors = [], []
    for label, cap in (("stock", None), (f"cap{max_sockets}", max_sockets)):
        res, error = nodered_run(stack, base, red, batches, start, label, cap)
        runs.append(res)
        errors.append(error)
        print(
            f"Node-RED ({'stock' if cap is None else f'HTTP sockets capped at {cap}'}): "
            f"{res['stored']:,.0f} of {res['sent']:,.0f} stored, lost {res['lost']:,.0f}, "
            f"{res['rate']:,.0f} readings/s stored, {res['cpu_us']:.0f} us CPU/reading "
            f"({res['node_cpu']:.2f} cores), peak RSS {res['rss']:.0f} MiB, broker CPU "
            f"{res['broker_cpu']:.2f}, influxd CPU {res['influx_cpu']:.2f}; "
            f"{res['errors']:,.0f} error lines logged ({res['emfile']:,.0f} EMFILE), peak "
            f"{res['fds']:,.0f} open files{still(res)}{f', most often {error}' if error else ''} "
            f"(load average {loadavg()})",
            flush=True,
        )
    return version, runs, errors
