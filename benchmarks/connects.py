"""A fleet connecting at once, and again after kill -9 of its broker: with and without the
connect window (`safecity.mqtt.fleet.CONNECTS_IN_FLIGHT`).

One local Mosquitto (the platform's authenticated config: every device its own account,
password hashed at each CONNECT) and one process of `FleetClient`s, each device its own
connection, account and client id, with the edge agents' backoff. Two phases per mode:

- start: every client starts at once; seconds until the last is connected, the broker's
  CPU milliseconds per device and the attempts that failed (a CONNACK later than the
  connect timeout is a failed attempt, and its retry costs the broker another hash);
- storm: the broker is killed (SIGKILL) and started on the same data; seconds from the
  kill until the last device is back, failed attempts, broker CPU per device.

What matters is the ratio of the broker's CONNECT queue to the connect timeout: the
default (1,000 devices, a 1 s timeout) puts this machine's queue where 18,000 devices
and the default 10 s timeout put it. Baseline: no window (every attempt at once).

Usage: ``python -m benchmarks.connects [--devices N] [--connect-timeout S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from safecity.mqtt import fleet as fleet_client
from safecity.secrets import read_secrets

UNBOUNDED = 1_000_000


def broker_cpu(broker: Mosquitto) -> float:
    """CPU seconds (user + system) the broker process has used so far."""
    assert broker.pid is not None
    return procs.cpu_s(broker.pid)


async def _until(predicate: object, limit_s: float) -> float:
    """Seconds until `predicate()` holds (checked every 50 ms); nan after `limit_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return float("nan")


async def one_mode(broker: Mosquitto, connect_s: float, limit_s: float) -> dict[str, float]:
    """Start every device's client at once, then kill -9 and restart the broker."""
    secrets = read_secrets(broker.secrets_file)
    edge = EdgeSettings()
    settings = broker.mqtt_settings("_simulator").model_copy(update={"connect_timeout": connect_s})
    clients = [
        FleetClient(
            settings,
            d,
            username=d,
            password=secrets[d],
            seed=1,
            backoff_min=edge.backoff_min,
            backoff_max=edge.backoff_max,
        )
        for d in sorted(secrets)
        if not d.startswith("_")
    ]
    out: dict[str, float] = {"devices": len(clients)}
    cpu0 = broker_cpu(broker)
    for client in clients:
        client.start()
    out["start_s"] = await _until(lambda: all(c.connected for c in clients), limit_s)
    out["start_failed"] = sum(c.failures for c in clients)
    out["start_broker_ms"] = (broker_cpu(broker) - cpu0) * 1e3 / len(clients)
    broker.kill()
    killed = time.monotonic()
    await _until(lambda: not any(c.connected for c in clients), 30)
    broker.start()
    cpu0 = broker_cpu(broker)
    await _until(lambda: all(c.connects >= 2 for c in clients), limit_s)
    out["storm_s"] = time.monotonic() - killed
    out["storm_failed"] = sum(c.failures for c in clients) - out["start_failed"]
    out["storm_broker_ms"] = (broker_cpu(broker) - cpu0) * 1e3 / len(clients)
    await asyncio.gather(*(c.stop(2.0) for c in clients))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Both modes against one broker; print conditions, figures and ratios to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    parser.add_argument("--limit", type=float, default=300.0, help="give up after, s")
    parser.add_argument(
        "--windows", type=int, nargs="+", default=[fleet_client.CONNECTS_IN_FLIGHT],
        help="window sizes to measure beside the baseline",
    )  # fmt: skip
    args = parser.parse_args(argv)
    window = fleet_client.CONNECTS_IN_FLIGHT
    print("safecity fleet connect benchmark")
    print(
        f"  conditions: {versions()}, {os.cpu_count()} CPUs, loopback, {args.devices} devices "
        f"(one process), connect timeout {args.connect_timeout} s, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-connects-") as tmp:
        city = generate("connectville", args.devices, 5)
        with Mosquitto(Path(tmp) / "broker", city=city, tls_port=None) as broker:
            modes = [("no window (baseline)", UNBOUNDED)] + [
                (f"window {w}", w) for w in args.windows
            ]
            for name, size in modes:
                fleet_client.CONNECTS_IN_FLIGHT = size
                results[name] = asyncio.run(one_mode(broker, args.connect_timeout, args.limit))
    fleet_client.CONNECTS_IN_FLIGHT = window
    base = next(iter(results.values()))
    keys = ("start_s", "start_failed", "start_broker_ms", "storm_s", "storm_failed",
            "storm_broker_ms")  # fmt: skip
    print(f"  {'mode':22}" + "".join(f"{k:>17}" for k in keys))
    for name, row in results.items():
        cells = []
        for k in keys:
            ratio = f" ({row[k] / base[k]:.2f}x)" if base[k] and row is not base else ""
            cells.append(f"{row[k]:.1f}{ratio}".rjust(17))
        print(f"  {name:22}" + "".join(cells))
    print(f"  load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
