"""Simulator publish throughput: QoS 1 + PUBACK tracking + ledger, beside `mosquitto_pub -l`.

One run, one fresh local Mosquitto (the platform's authenticated broker: no anonymous
access, ACLs; `mosquitto_pub` logs in as `_simulator`), the same pre-generated payloads
for every contender:

- ``mosquitto_pub -l``: Mosquitto's own C client, QoS 1, one connection, one topic,
  payloads from stdin (chunks below 65,535 lines per call: one packet-id space);
- ``single``: our asyncio-driven client (`transport=single`), one connection logged
  in as the `_simulator` account (which may write every device topic), every device's
  topic, PUBACK tracked per message, ledger on;
- ``edge``: one MQTT identity per device, each logged in with its own secret (300
  connections in this one process and event loop), PUBACK tracked, ledger on;
- ``generate``: how fast one process makes the payloads (models + faults off).

Usage: ``python -m benchmarks.simulator [--messages N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from control.stack import Mosquitto, find_binary
from edge.agent import DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity import registry
from safecity.ledger import LedgerWriter
from safecity.settings import MqttSettings
from simulators.fleet import DeviceSim, FleetStats, Outgoing, Recorder
from tests.helpers.support import mosquitto

START = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
CHUNK = 60_000
SIMULATOR = "_simulator"  # the single-connection account: may write every device topic


def generate(count: int) -> tuple[list[Outgoing], float]:
    """`count` telemetry messages of the default city, round-robin over devices; and the rate."""
    city = registry.default_city()
    sims = [DeviceSim(city.id, d, 42, START) for d in city.devices]
    out: list[Outgoing] = []
    t0 = time.perf_counter()
    while len(out) < count:
        for sim in sims:
            out.extend(m for m in sim.step() if m.channel.value == "telemetry")
    rate = len(out) / (time.perf_counter() - t0)
    return out[:count], rate


def mosquitto_pub(broker: Mosquitto, messages: list[Outgoing]) -> float:
    """msg/s of `mosquitto_pub -l -q 1` on the same payloads (one topic per chunk)."""
    binary = find_binary("mosquitto_pub", "mosquitto-clients")
    lines = [m.payload for m in messages]
    t0 = time.perf_counter()
    for i in range(0, len(lines), CHUNK):
        chunk = b"\n".join(lines[i : i + CHUNK]) + b"\n"
        subprocess.run(
            [
                *mosquitto(binary, broker, SIMULATOR, client_id=f"bench-pub-{i}"),
                *("-q", "1", "-t", messages[i].topic, "-l"),
            ],
            input=chunk,
            check=True,
        )
    return len(lines) / (time.perf_counter() - t0)


async def _publish(
    broker: Mosquitto, messages: list[Outgoing], ledger: Path, edge: bool, spool: Path
) -> tuple[float, FleetStats]:
    stats = FleetStats()
    writer = LedgerWriter(ledger)
    recorder = Recorder(stats, writer, None)
    settings = EdgeSettings(spool_dir=spool, max_inflight=100, drain_timeout=60.0)
    agents: dict[str, DeviceAgent] = {}
    if edge:
        # Every device logs in as itself (client id = username = device id), own secret.
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        for device_id in dict.fromkeys(m.device_id for m in messages):
            agents[device_id] = DeviceAgent(
                device_id, mqtt, settings, recorder.result, password=broker.secret(device_id),
                encode_meta=Outgoing.to_json,
            )  # fmt: skip
    else:
        one = DeviceAgent(
            "bench-single",
            broker.mqtt_settings(SIMULATOR),
            settings,
            recorder.result,
            username=SIMULATOR,
            max_inflight=1000,
            encode_meta=Outgoing.to_json,
        )
    everyone = list(agents.values()) if edge else [one]
    for agent in everyone:
        agent.set_meta_decoder(Outgoing.from_json)
        agent.start()
    await asyncio.gather(*(a.client.wait_connected(10) for a in everyone))
    t0 = time.perf_counter()
    for n, m in enumerate(messages):
        agent = agents[m.device_id] if edge else one
        # Keep the backlog small (window + part of the spool's memory cache): a load test,
        # not an outage. Every message is written to the device's spool before it is sent
        # (crash-safe store-and-forward). Yielding lets the PUBACKs in.
        while agent.backlog >= (150 if edge else 1500):  # noqa: ASYNC110
            await asyncio.sleep(0)
        agent.submit(Envelope(m.topic, m.payload, m))
        if n % 256 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*(a.close() for a in everyone))
    writer.close()
    elapsed = time.perf_counter() - t0
    return stats.accepted / elapsed, stats


def _mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    return (out.splitlines() or ["Mosquitto"])[0].strip()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison and print conditions, a table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    args = parser.parse_args(argv)
    messages, gen_rate = generate(args.messages)
    size = sum(len(m.payload) for m in messages) / len(messages)
    print("safecity simulator benchmark")
    print(
        f"  conditions: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, loopback {_mosquitto_version()}, {len(messages)} messages, "
        f"mean payload {size:.0f} B, QoS 1, ledger on for ours; authenticated broker: "
        f"mosquitto_pub and single as `{SIMULATOR}`, edge with per-device secrets; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rows: list[tuple[str, float, str]] = [("generate (models, one process)", gen_rate, "")]
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        base = Path(tmp)
        with Mosquitto(base / "broker") as broker:
            pub = mosquitto_pub(broker, messages)
            rows.append(("mosquitto_pub -l (C, 1 connection)", pub, "reference"))
            for edge in (False, True):
                rate, stats = asyncio.run(
                    _publish(broker, messages, base / f"ledger-{edge}.jsonl", edge, base / "spool")
                )
                name = (
                    f"edge agents ({stats.edge.connects or 300} ids, 1 process)"
                    if edge
                    else "single connection (asyncio paho)"
                )
                ok = "ok" if stats.accepted == len(messages) and not stats.failed else "LOSS"
                rows.append((name, rate, f"{rate / pub:.2f} x mosquitto_pub, {ok}"))
    print(f"  {'contender':44} {'msg/s':>9}  notes")
    for name, rate, note in rows:
        print(f"  {name:44} {rate:9.0f}  {note}")


if __name__ == "__main__":
    main()
