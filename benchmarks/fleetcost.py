"""What a device costs the process that runs the fleet: memory and steady CPU per device.

One local Mosquitto (the platform's authenticated config, every device its own account)
and, for each size, a fresh process of `FleetClient`s, each device its own connection,
account and client id (the edge agents' backoff, the default 30 s keep-alive). Each
process connects its devices, settles, then publishes one QoS 1 reading per device at
the city's cadence (`--every-s`, each device at its own phase) for `--steady-s`
seconds, every PUBACK awaited. Measured from /proc: the process's resident memory
before the clients and with all connected (per device: the slope between the sizes),
its CPU and the broker's over the steady window (per device-second), its open files
(the hard limit of 20,000 caps devices per process), how long the connects took and
the process's CPU per connect.
The baseline is the smallest size of the same run: flat per-device ratios mean linear
growth.

Usage: ``python -m benchmarks.fleetcost [--sizes 2000 6000] [--steady-s S] [--every-s S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._citysize import procs
from benchmarks._ingest.probes import versions
from control.stack import Mosquitto
from edge.settings import EdgeSettings
from safecity.citygen import generate
from safecity.mqtt import FleetClient
from safecity.secrets import read_secrets
from safecity.settings import MqttSettings

PAYLOAD = b'{"v":1,"ts":1765000000000,"seq":1,"q":{"noise_dba":61.2,"temp_c":3.4}}' * 2


async def _all(clients: list[FleetClient], limit_s: float) -> float:
    t0 = time.monotonic()
    while not all(c.connected for c in clients):
        if time.monotonic() - t0 > limit_s:
            return float("nan")
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def _steady(clients: list[FleetClient], steady_s: float, every_s: float) -> int:
    """Publish one reading per device every `every_s` (own phase each) for `steady_s`."""
    start, sent, n = time.monotonic(), 0, len(clients)
    topics = [f"safecity/v1/fleetville/d1/noise/{c.client_id}/telemetry" for c in clients]
    due = 0  # index of the next publish over all rounds
    while (now := time.monotonic() - start) < steady_s:
        while due * every_s / n <= now:
            if clients[due % n].publish(topics[due % n], PAYLOAD, 1) is not None:
                sent += 1
            due += 1
        await asyncio.sleep(0.1)
    return sent


async def child(args: argparse.Namespace) -> dict[str, float]:
    """One size in this process: connect, settle, steady window; the figures."""
    secrets = read_secrets(Path(args.secrets))
    devices = sorted(d for d in secrets if not d.startswith("_"))[: args.child]
    edge = EdgeSettings()
    settings = MqttSettings(host=args.host, port=args.port, connect_timeout=10)
    acked = [0]

    def on_puback(mid: int, code: int) -> None:
        acked[0] += code < 0x80

    gc.collect()
    rss0 = procs.rss_mib(os.getpid())
    clients = [
        FleetClient(
            settings,
            d,
            username=d,
            password=secrets[d],
            on_puback=on_puback,
            seed=1,
            backoff_min=edge.backoff_min,
            backoff_max=edge.backoff_max,
        )
        for d in devices
    ]
    cpu_start = time.process_time()
    for client in clients:
        client.start()
    connect_s = await _all(clients, 600)
    connect_cpu = time.process_time() - cpu_start
    await asyncio.sleep(5)
    gc.collect()
    rss1 = procs.rss_mib(os.getpid())
    files = procs.open_files(os.getpid())
    cpu0, broker0 = time.process_time(), procs.cpu_s(args.broker_pid)
    sent = await _steady(clients, args.steady_s, args.every_s)
    cpu, broker = time.process_time() - cpu0, procs.cpu_s(args.broker_pid) - broker0
    await asyncio.sleep(2)
    out = {
        "devices": len(clients),
        "connect_s": connect_s,
        "rss0_mib": rss0,
        "rss1_mib": rss1,
        "cpu_s": cpu,
        "connect_cpu_s": connect_cpu,
        "broker_cpu_s": broker,
        "sent": sent,
        "acked": acked[0],
        "connected_at_end": sum(c.connected for c in clients),
        "open_files": files,
    }
    await asyncio.gather(*(c.stop(2.0) for c in clients))
    return out


def _row(r: dict[str, float], steady_s: float) -> dict[str, float]:
    per = r["devices"] * steady_s
    return {
        "connects/s": r["devices"] / r["connect_s"],
        "fleet ms/connect": r["connect_cpu_s"] * 1e3 / r["devices"],
        "KiB/device": (r["rss1_mib"] - r["rss0_mib"]) * 1024 / r["devices"],
        "fleet us/dev-s": r["cpu_s"] * 1e6 / per,
        "broker us/dev-s": r["broker_cpu_s"] * 1e6 / per,
        "acked/sent": r["acked"] / max(1, r["sent"]),
        "files/device": r["open_files"] / r["devices"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Every size in its own process against one broker; figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000])
    parser.add_argument("--steady-s", type=float, default=60.0)
    parser.add_argument("--every-s", type=float, default=60.0, help="the city's cadence")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    for name in ("--host", "--secrets"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return
    print("safecity fleet cost benchmark (memory and steady CPU per device)")
    print(
        f"  conditions: {versions()}, {os.cpu_count()} CPUs, loopback, sizes {args.sizes} "
        f"(one process each), a reading per device every {args.every_s:g} s for "
        f"{args.steady_s:g} s, keep-alive 30 s, load average {os.getloadavg()[0]:.2f}"
    )
    rows: dict[int, dict[str, float]] = {}
    raw: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleetcost-") as tmp:
        city = generate("fleetville", max(args.sizes), 5)
        with Mosquitto(Path(tmp) / "broker", city=city, tls_port=None) as broker:
            for n in args.sizes:
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.fleetcost",
                    "--child",
                    str(n),
                    "--host",
                    broker.host,
                    "--port",
                    str(broker.port),
                    "--secrets",
                    str(broker.secrets_file),
                    "--broker-pid",
                    str(broker.pid),
                    "--steady-s",
                    str(args.steady_s),
                    "--every-s",
                    str(args.every_s),
                ]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                raw[n] = json.loads(done.stdout.strip().splitlines()[-1])
                rows[n] = _row(raw[n], args.steady_s)
    small, large = min(args.sizes), max(args.sizes)
    if large > small:
        slope = (raw[large]["rss1_mib"] - raw[small]["rss1_mib"]) * 1024 / (large - small)
        print(f"  memory per device, slope {small} -> {large}: {slope:.1f} KiB")
    base = rows[small]
    print(f"  {'devices':>8}" + "".join(f"{k:>20}" for k in base))
    for n, row in rows.items():
        cells = [
            f"{v:.2f}" + (f" ({v / base[k]:.2f}x)" if n != small and base[k] else "")
            for k, v in row.items()
        ]
        print(f"  {n:>8}" + "".join(c.rjust(20) for c in cells))
    print(f"  raw: {json.dumps(raw)}")
    print(f"  load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
