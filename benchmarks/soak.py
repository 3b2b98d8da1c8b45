"""Soak: the simulated city at 10x its normal rate for an hour (or a stated time), with a
fault every few minutes; lost/dup from the ledger checker, and each process's RSS and open
file descriptors over time (they must stay flat), spool and dead-letter growth.

`make soak` runs it (not part of `make test`). Faults, in rotation: the ingest killed
with SIGKILL and restarted, InfluxDB stopped (SIGSTOP) for minutes, a graceful broker
restart, a poison message (a 9 KB topic inside a device's own ACL pattern), and a
client-id takeover attempt (a device account connecting as the ingest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from control.stack import LocalStack, ManagedProcess, free_port, http_ok
from control.verify import verify
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.settings import InfluxSettings
from tests.helpers.support import mosquitto

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
DB = "soak"
INGEST_ID = "soak-ingest"


@dataclass
class Sample:
    """One look at every process: seconds since start, RSS (MiB) and open fds per process."""

    t: float
    rss: dict[str, float]
    fds: dict[str, int]
    spool_bytes: int
    deadletters: int


@dataclass
class Soak:
    """What a soak run saw."""

    faults: list[tuple[float, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(sum(1 for _ in p.open("rb")) for p in path.rglob("*.jsonl"))


class City:
    """The stack, one ingest worker and the simulated fleet, as real processes."""

    def __init__(self, stack: LocalStack, base: Path, speed: float, seconds: float) -> None:
        self.stack = stack
        self.base = base
        self.port = free_port()
        self.ledger = base / "ledger.jsonl"
        self.deadletters = base / "deadletter"
        self.spool = base / "spool"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
        self.ingest = ManagedProcess(
            "ingest",
            [sys.executable, "-m", "control", "ingest"],
            base / "ingest.log",
            env={
                **env,
                "SAFECITY_MQTT__HOST": stack.mqtt_host,
                "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
                "SAFECITY_MQTT__USERNAME": "_ingest",
                "SAFECITY_MQTT__PASSWORD": stack.secret("_ingest"),
                "SAFECITY_INFLUX__URL": stack.influx_url,
                "SAFECITY_INFLUX__DATABASE": DB,
                "SAFECITY_WORKER_ID": INGEST_ID,
                "SAFECITY_SHARE_GROUP": "",
                "SAFECITY_METRICS_PORT": str(self.port),
                "SAFECITY_DEADLETTER_DIR": str(self.deadletters),
                "SAFECITY_SPOOL_DIR": str(self.spool),
                "SAFECITY_TS_FUTURE_WINDOW": "600",
                "SAFECITY_LOG_LEVEL": "WARNING",
            },
        )
        # Simulated time ends at the wall clock's "now": every timestamp in the window.
        start = datetime.now(UTC) - timedelta(seconds=seconds * speed)
        self.simulator = ManagedProcess(
            "simulator",
            [
                sys.executable, "-m", "control", "simulate", "--speed", str(speed),
                "--start", start.strftime("%Y-%m-%dT%H:%M:%S"), "--duration", str(seconds),
                "--ledger", str(self.ledger),
            ],
            base / "simulator.log",
            env={
                **env,
                "SAFECITY_MQTT__HOST": stack.mqtt_host,
                "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
                "SAFECITY_MQTT__USERNAME": "_simulator",
                "SAFECITY_MQTT__PASSWORD": stack.secret("_simulator"),
                "SAFECITY_EDGE__SECRETS_FILE": str(stack.secrets_file),
                "SAFECITY_EDGE__SPOOL_DIR": str(base / "edge-spool"),
                "SAFECITY_LOG_LEVEL": "WARNING",
            },
        )  # fmt: skip

    def start_ingest(self) -> None:
        self.ingest.start()
        self.ingest.wait_ready(http_ok(f"http://127.0.0.1:{self.port}/readyz"), 60)

    def processes(self) -> dict[str, int | None]:
        return {
            "ingest": self.ingest.pid,
            "simulator": self.simulator.pid,
            "mosquitto": self.stack.mosquitto.pid,
            "influxd": self.stack.influxd.pid,
        }

    def sample(self, t: float) -> Sample:
        rss: dict[str, float] = {}
        fds: dict[str, int] = {}
        for name, pid in self.processes().items():
            if pid is None:
                continue
            try:
                rss[name], fds[name] = _rss_mib(pid), _fds(pid)
            except OSError:
                continue  # between a kill and its restart
        return Sample(t, rss, fds, _du(self.spool), _lines(self.deadletters))

    # The faults ------------------------------------------------------------------------

    def kill_ingest(self, _: float) -> str:
        self.ingest.kill()
        self.start_ingest()
        return "ingest SIGKILL + restart"

    def stop_influx(self, seconds: float) -> str:
        self.stack.influxd.pause()
        time.sleep(seconds)
        self.stack.influxd.resume()
        return f"InfluxDB SIGSTOP {seconds:.0f} s"

    def restart_broker(self, _: float) -> str:
        self.stack.mosquitto.restart()
        return "broker graceful restart"

    def poison(self, _: float) -> str:
        device = default_city().devices[0]
        topic = f"safecity/v1/{'x' * 9000}/{device.district}/{device.kind}/{device.id}/telemetry"
        subprocess.run(
            [
                *mosquitto(_pub(), self.stack, device.id, client_id=f"{device.id}-poison"),
                *("-q", "1", "-t", topic, "-m", "{}"),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return "poison message (9 KB topic)"

    def takeover(self, _: float) -> str:
        device = default_city().devices[1]
        subprocess.run(
            [
                *mosquitto(_pub(), self.stack, device.id, client_id=f"safecity-{INGEST_ID}"),
                *("-q", "1", "-t", "x", "-m", "x"),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return "client-id takeover attempt (a device as the ingest)"


def _pub() -> str:
    return shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def _drift(values: list[float]) -> str:
    """First-quarter vs last-quarter mean: flat is what a leak-free process shows."""
    if len(values) < 4:
        return "-"
    q = max(1, len(values) // 4)
    first, last = statistics.mean(values[:q]), statistics.mean(values[-q:])
    return f"{first:.0f} -> {last:.0f} ({(last - first) / max(first, 1e-9):+.0%})"


def run(minutes: float, speed: float, fault_every: float, outage: float) -> dict[str, object]:
    """One soak; returns its summary."""
    seconds = minutes * 60
    soak = Soak()
    with tempfile.TemporaryDirectory(prefix="safecity-soak-") as tmp:
        base = Path(tmp)
        with LocalStack(base / "stack") as stack:
            city = City(stack, base, speed, seconds)
            city.start_ingest()
            city.simulator.start()
            started = time.monotonic()
            faults: list[tuple[Callable[[float], str], float]] = [
                (city.kill_ingest, 0),
                (city.stop_influx, outage),
                (city.restart_broker, 0),
                (city.poison, 0),
                (city.takeover, 0),
            ]
            next_fault, turn, last_sample = started + fault_every, 0, 0.0
            while city.simulator.alive and time.monotonic() - started < seconds + 60:
                now = time.monotonic()
                if now - last_sample >= 10:
                    soak.samples.append(city.sample(now - started))
                    last_sample = now
                if now >= next_fault and now - started < seconds - 30:
                    action, arg = faults[turn % len(faults)]
                    what = action(arg)
                    soak.faults.append((time.monotonic() - started, what))
                    print(f"[{time.monotonic() - started:7.0f} s] fault: {what}", flush=True)
                    turn += 1
                    next_fault = time.monotonic() + fault_every
                time.sleep(1)
            city.simulator.stop(60)
            # Let the ingest drain what is queued and spooled before checking.
            time.sleep(15)
            soak.samples.append(city.sample(time.monotonic() - started))
            report = asyncio.run(_verify(stack, city))
            city.ingest.stop()
    summary = report.summary()
    names = ("ingest", "simulator", "mosquitto", "influxd")
    result: dict[str, object] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "conditions": f"{minutes:g} min at {speed:g}x, a fault every {fault_every:g} s "
        f"(InfluxDB outages {outage:g} s), {os.cpu_count()} CPUs",
        "faults": [f"{t:.0f} s: {w}" for t, w in soak.faults],
        "checker": summary,
        "rss_mib": {n: _drift([s.rss[n] for s in soak.samples if n in s.rss]) for n in names},
        "open_fds": {
            n: _drift([float(s.fds[n]) for s in soak.samples if n in s.fds]) for n in names
        },
        "spool_bytes_max": max((s.spool_bytes for s in soak.samples), default=0),
        "deadletters_end": soak.samples[-1].deadletters if soak.samples else 0,
        "samples": [
            {"t": round(s.t), "rss": s.rss, "fds": s.fds, "spool": s.spool_bytes,
             "deadletters": s.deadletters}
            for s in soak.samples
        ],
    }  # fmt: skip
    return result


async def _verify(stack: LocalStack, city: City):  # type: ignore[no-untyped-def]
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=DB))
    try:
        return await verify(city.ledger, client, [city.deadletters])
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the soak and print (and keep) its figures."""
    parser = argparse.ArgumentParser(prog="benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=10.0, help="times the city's real rate")
    parser.add_argument("--fault-every", type=float, default=180.0, help="seconds")
    parser.add_argument("--outage", type=float, default=120.0, help="InfluxDB stop, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = run(args.minutes, args.speed, args.fault_every, args.outage)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"# conditions: {result['conditions']}")
    for key in ("checker", "rss_mib", "open_fds", "spool_bytes_max", "deadletters_end"):
        print(f"{key:16} {result[key]}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
