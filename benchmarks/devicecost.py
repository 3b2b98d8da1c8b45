"""A simulated device's own cost in its simulator process, outside the MQTT client.

Each size runs in a fresh process: a generated city (`safecity.citygen`, seed 7) and its
fleet built as `simulators.fleet` builds it (every device's `DeviceSim` with its profile
and the run's scene, its `DeviceAgent` with its spool, command executor and actuators;
no connection is made, so the MQTT client's own per-connection state is not counted),
then the first burst: every device's first reading generated, validated and spooled, as
at the moment the simulated clock starts. Figures: resident memory per device (growth
of the process's RSS over building, and after the burst: the knots and spooled
readings it leaves) and CPU per first reading, cold (the baseline, as before the fleet
warmed its devices while connecting) and warmed (`DeviceSim.warm`, what the fleet does
while it connects; its own CPU shown apart). Per-device slopes between the sizes show
whether the growth is linear.

Usage: ``python -m benchmarks.devicecost [--sizes 2000 6000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._citysize import procs

START = datetime(2026, 1, 15, 6, 0, tzinfo=UTC)


def _rss_kib() -> float:
    """This process's resident memory, KiB."""
    return procs.rss_mib(os.getpid()) * 1024


async def _measure(devices: int, warm: bool, home: Path) -> dict[str, Any]:
    """One fleet of `devices`: memory per device of each stage, CPU of the first burst."""
    from edge.agent import Envelope
    from safecity import citygen
    from simulators import fleet
    from simulators.actuators import Commands
    from simulators.outgoing import FleetStats, Recorder
    from simulators.settings import SimulatorSettings

    city = citygen.generate("scaleville", devices, 7)
    settings = SimulatorSettings(edge={"spool_dir": home / "spool"})
    gc.collect()
    rss0 = _rss_kib()
    sims = fleet._device_sims(settings, city, START, [], (0, 1))
    gc.collect()
    rss1 = _rss_kib()
    recorder = Recorder(FleetStats(sim_start=START), None, None)
    clock = fleet._Clock(asyncio.get_running_loop(), 0, 1.0)
    commands = Commands()
    agents, _ = fleet._agents(settings, sims, recorder, clock.now_ms, (0, 1), None, commands)
    commands.attach_all(sims, agents, lambda message: None, clock.now_ms, 0.0, settings.seed)
    gc.collect()
    rss2 = _rss_kib()
    t0 = time.process_time()
    if warm:
        for sim in sims:
            sim.warm()
    t1 = time.process_time()
    sent = 0
    for sim in sims:
        for m in sim.step():
            agents[m.device_id].submit(Envelope(m.topic, m.payload, m, True, m.seq))
            sent += 1
    t2 = time.process_time()
    gc.collect()
    return {
        "devices": devices,
        "sims_kib": (rss1 - rss0) / devices,
        "agents_kib": (rss2 - rss1) / devices,
        "fleet_kib": (rss2 - rss0) / devices,
        "burst_kib": (_rss_kib() - rss2) / devices,
        "warm_us_per_device": (t1 - t0) / devices * 1e6,
        "burst_us_per_reading": (t2 - t1) / sent * 1e6,
    }


def _one(devices: int, warm: bool) -> dict[str, Any]:
    """Run one size in a fresh process (its own SAFECITY_HOME); its figures."""
    with tempfile.TemporaryDirectory(prefix="devicecost-") as home:
        env = {**os.environ, "SAFECITY_HOME": home}
        args = [sys.executable, "-m", "benchmarks.devicecost", "--one", str(devices), home]
        result = subprocess.run(
            [*args, *(["--warm"] if warm else [])],
            env=env, capture_output=True, text=True, check=True, timeout=1800,
        )  # fmt: skip
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def _table(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    keys = ("sims_kib", "agents_kib", "fleet_kib", "burst_kib", "burst_us_per_reading")
    print(f"  {'devices':>8} {'warm':>5} " + " ".join(f"{k:>22}" for k in keys)
          + f" {'warm_us_per_device':>19}")  # fmt: skip
    for row in rows:
        cells = " ".join(f"{row[k]:11.2f} ({row[k] / base[k]:5.2f}x)" for k in keys)
        print(f"  {row['devices']:8d} {row['warm']!s:>5} {cells} {row['warm_us_per_device']:19.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    """Measure each size cold and warmed; print conditions, a table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("home", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps({**asyncio.run(_measure(args.one, args.warm, args.home)),
                          "warm": args.warm}))  # fmt: skip
        return
    print("safecity fleet cost per device (outside the MQTT client)")
    print(f"  conditions: {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")  # fmt: skip
    rows = [_one(n, warm) for n in args.sizes for warm in (False, True)]
    print("  ratios to the first row (the smallest fleet, cold)")
    _table(rows)
    small, large = rows[1], rows[-1]
    slope = (large["fleet_kib"] * large["devices"] - small["fleet_kib"] * small["devices"]) / (
        large["devices"] - small["devices"]
    )
    sizes = f"{small['devices']}->{large['devices']}"
    print(f"  fleet memory slope {sizes}: {slope:.2f} KiB per device")
    print(f"  load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
