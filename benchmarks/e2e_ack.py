"""What the end-to-end acknowledgement costs and what it buys.

One run against a fresh local Mosquitto + InfluxDB, the default city's telemetry devices
as real edge agents (one MQTT identity each, one process, one event loop, crash-safe
spools) and one ingest worker on a plain subscription:

- cost: the same readings with the acknowledgement off (the PUBACK settles a reading;
  the ingest publishes no acks) and on (the spool holds each reading until the
  ingest's ack; the ingest acks every second), at one reading per device per second
  (the worst case: about one ack message per reading) and at ten. Reported: ack
  messages per reading (each one is 4 MQTT packets: ingest PUBLISH, broker PUBACK,
  broker PUBLISH to the device, device PUBACK), and CPU microseconds per reading of
  the devices' process, the ingest and the broker;
- the ack path alone, in process (no network, so no noise from a loaded machine): the
  ingest's bookkeeping (`Watermarks.add_batch` + `drain`) and the device's (spool
  append, hand-out and settle; parsing the ack and finding its readings), per reading;
- benefit: the broker is killed (kill -9) while a backlog waits for a paused ingest
  (Receive Maximum 50, so it sits in the broker's queue): readings lost with the
  acknowledgement off and on (ledger checker).

Run: `.venv/bin/python -m benchmarks.e2e_ack [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import random
import resource
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks._ingest.drain import ingest_env
from benchmarks._ingest.probes import loadavg, proc_stats, scrape
from control.stack import LocalStack, ManagedProcess, free_port
from control.verify import verify
from edge.agent import AgentStats, DeviceAgent, Envelope
from edge.settings import EdgeSettings
from edge.spool import DeviceSpool
from ingest.validate import Validator
from ingest.watermark import Watermarks
from safecity import topics
from safecity.acks import Ack
from safecity.influx import InfluxClient
from safecity.ledger import LedgerEntry, LedgerWriter
from safecity.mqtt import NOT_SENT, Incoming
from safecity.readings import epoch_ms, format_ts
from safecity.registry import Device, default_city
from safecity.settings import InfluxSettings
from simulators.generators import generate

CITY = default_city()
TELEMETRY_KINDS = ("air_quality", "noise", "parking", "traffic", "waste", "weather", "crowd")


@dataclass(frozen=True)
class Reading:
    """One telemetry reading of a device, ready to publish and to write in the ledger."""

    device: Device
    topic: str
    payload: bytes
    seq: int
    ts_ms: int
    values: dict[str, Any]


def readings(count: int, seed: int) -> list[Reading]:
    """`count` valid readings round-robin over the city's telemetry devices, 1 s apart each."""
    pool = [d for d in CITY.devices if d.kind in TELEMETRY_KINDS]
    rng = random.Random(seed)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    out = []
    for i in range(count):
        device = pool[i % len(pool)]
        k = i // len(pool)
        ts = base + timedelta(seconds=k, milliseconds=i % len(pool))
        values = dict(generate(device, rng, ts))
        seq = seed * 10_000_000 + k
        body = {"ts": format_ts(ts), "seq": seq, "values": values}
        out.append(
            Reading(
                device,
                topics.telemetry_topic(CITY.id, device.district, device.kind, device.id),
                json.dumps(body, separators=(",", ":")).encode(),
                seq,
                epoch_ms(ts),
                values,
            )
        )
    return out


class Fleet:
    """One edge agent per device, publishing in a thread of its own (its CPU measured alone)."""

    def __init__(self, stack: LocalStack, spool: Path, confirm: bool, ack_timeout: float) -> None:
        self.stack = stack
        self.settings = EdgeSettings(
            spool_dir=spool, confirm=confirm, backoff_min=0.1, backoff_max=1.0,
            ack_timeout=ack_timeout, ack_timeout_max=max(ack_timeout, 30.0), drain_timeout=120.0,
        )  # fmt: skip
        self.verdicts: dict[tuple[str, int], int] = {}
        self.stats = AgentStats()
        self.cpu_s = 0.0
        self.submitted = 0
        self._thread: threading.Thread | None = None

    def start(self, items: Sequence[Reading], rate: float) -> None:
        def body() -> None:
            before = resource.getrusage(resource.RUSAGE_THREAD)
            asyncio.run(self._run(items, rate))
            after = resource.getrusage(resource.RUSAGE_THREAD)
            self.cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

        self._thread = threading.Thread(target=body, name="fleet", daemon=True)
        self._thread.start()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(300)
        assert not self._thread.is_alive(), "fleet did not finish"

    async def _run(self, items: Sequence[Reading], rate: float) -> None:
        agents: dict[str, DeviceAgent] = {}

        def result(envelope: Envelope, code: int) -> None:
            self.verdicts[(envelope.meta[0], envelope.meta[1])] = code

        for device in {r.device.id: r.device for r in items}.values():
            agents[device.id] = DeviceAgent(
                device.id,
                self.stack.mosquitto.mqtt_settings(device.id),
                self.settings,
                result,
                password=self.stack.secret(device.id),
                ack_topic=topics.ack_topic(CITY.id, device.district, device.kind, device.id),
            )
        for agent in agents.values():
            agent.start()
        await asyncio.gather(*(a.client.wait_connected(10) for a in agents.values()))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index, item in enumerate(items):
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            agents[item.device.id].submit(
                Envelope(item.topic, item.payload, (item.device.id, item.seq), seq=item.seq)
            )
            self.submitted += 1
        await asyncio.gather(*(agent.close() for agent in agents.values()))
        for agent in agents.values():
            self.stats.add(agent.stats)


def write_ledger(
    path: Path, items: Sequence[Reading], verdicts: dict[tuple[str, int], int]
) -> None:
    writer = LedgerWriter(path)
    for item in items:
        writer.write(
            LedgerEntry(
                item.device.id, "telemetry", item.topic, item.seq, item.ts_ms,
                hashlib.sha256(item.payload).hexdigest(), None,
                verdicts.get((item.device.id, item.seq), NOT_SENT), item.values,
            )
        )  # fmt: skip
    writer.close()


def _start_ingest(
    stack: LocalStack, base: Path, name: str, confirm: bool, crash: bool
) -> tuple[ManagedProcess, str]:
    """A fresh ingest into database `name` (acks every second when `confirm`): (it, its URL)."""
    port = free_port()
    env = ingest_env(stack, base, name, name.replace("-", "_"), port)
    env["SAFECITY_SHARE_GROUP"] = ""
    env["SAFECITY_ACK_INTERVAL"] = "1" if confirm else "0"
    if crash:
        env["SAFECITY_RECEIVE_MAXIMUM"] = "50"
    ingest = ManagedProcess(
        name, [sys.executable, "-m", "control", "ingest"], base / f"{name}.log", env=env
    )
    ingest.start()
    url = f"http://127.0.0.1:{port}"
    ingest.wait_ready(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, 60)
    return ingest, url


def _crash_broker(stack: LocalStack, ingest: ManagedProcess, fleet: Fleet, count: int) -> None:
    """A quarter into the run: pause ingest, kill -9 the broker, restart it, resume ingest."""
    while fleet.submitted < count // 4:
        time.sleep(0.05)
    ingest.pause()
    time.sleep(3.0)
    stack.mosquitto.kill()
    time.sleep(0.5)
    stack.mosquitto.start()
    ingest.resume()


def _check(stack: LocalStack, base: Path, name: str, ledger: Path) -> Any:
    """The ledger checker's report of run `name`."""
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=name.replace("-", "_")))

    async def check() -> Any:
        try:
            return await verify(ledger, client, [base / f"dl-{name}"])
        finally:
            await client.close()

    return asyncio.run(check())


def run_once(
    stack: LocalStack, base: Path, confirm: bool, count: int, rate: float, crash: bool
) -> dict[str, float]:
    """One fleet run against a fresh ingest and database; figures per reading."""
    name = f"e2e-{'on' if confirm else 'off'}-{secrets.token_hex(3)}"
    ingest, url = _start_ingest(stack, base, name, confirm, crash)
    items = readings(count, seed=3 if crash else 2)
    # The default re-send bound for the cost; a short one after the crash (a quicker run).
    fleet = Fleet(stack, base / f"spool-{name}", confirm, 3.0 if crash else 10.0)
    assert ingest.pid is not None
    ingest_cpu0, _ = proc_stats(ingest.pid)
    broker_pid = stack.mosquitto.pid
    assert broker_pid is not None
    broker_cpu0, _ = proc_stats(broker_pid)
    fleet.start(items, rate)
    if crash:
        _crash_broker(stack, ingest, fleet, count)
    fleet.join()
    time.sleep(1.5)  # the last batch and ack
    ingest_cpu, _ = proc_stats(ingest.pid)
    broker_cpu = proc_stats(broker_pid)[0] if not crash else float("nan")
    metrics = scrape(f"{url}/metrics")
    ingest.stop(15)
    ledger = base / f"{name}.jsonl"
    write_ledger(ledger, items, fleet.verdicts)
    report = _check(stack, base, name, ledger)
    return {
        "readings": count,
        "confirmed_or_acked": report.acknowledged,
        "stored": report.stored,
        "lost": len(report.lost),
        "duplicated": len(report.duplicated),
        "left_in_spool": fleet.stats.left_buffered,
        "resent": fleet.stats.resent,
        "ack_msgs_per_reading": metrics.get("safecity_ingest_ack_messages_total", 0.0) / count,
        "fleet_cpu_us": fleet.cpu_s / count * 1e6,
        "ingest_cpu_us": (ingest_cpu - ingest_cpu0) / count * 1e6,
        "broker_cpu_us": (broker_cpu - broker_cpu0) / count * 1e6,
    }


def ack_path_cost(per_ack: int, rounds: int = 20) -> dict[str, float]:
    """CPU µs per reading of the ack bookkeeping, `per_ack` readings per device and ack."""

    items = readings(len(CITY.devices) * per_ack, seed=9)
    validator = Validator(CITY, 30 * 86_400.0, 300.0)
    batch = [
        (m, validator.validate(m.topic, m.payload))
        for m in (Incoming(r.topic, r.payload, 1, i, False, False, 0) for i, r in enumerate(items))
    ]
    watermarks = Watermarks(CITY)
    t0 = time.process_time()
    payloads: list[tuple[str, bytes]] = []
    for _ in range(rounds):
        watermarks.add_batch(batch)
        payloads = watermarks.drain()
    ingest_us = (time.process_time() - t0) / (rounds * len(items)) * 1e6
    acks_by_topic = dict(payloads)
    with tempfile.TemporaryDirectory() as tmp:
        spools = {
            r.device.id: DeviceSpool(Path(tmp) / f"{r.device.id}.spool", 1 << 24) for r in items
        }
        t0 = time.process_time()
        for _ in range(rounds):
            for r in items:
                spool = spools[r.device.id]
                spool.append(r.topic, r.payload, None, r.seq, "telemetry")
                spool.take(1)
            for r in items[: len(spools)]:
                spool = spools[r.device.id]
                topic = topics.ack_topic(CITY.id, r.device.district, r.device.kind, r.device.id)
                ack = Ack.from_payload(acks_by_topic[topic])
                ids = [
                    i
                    for first, last in ack.telemetry
                    for i in spool.lookup("telemetry", first, last)
                ]
                spool.settle(ids)
        device_us = (time.process_time() - t0) / (rounds * len(items)) * 1e6
        for spool in spools.values():
            spool.close()
    return {"ingest_us": ingest_us, "device_us": device_us}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the cost and the crash comparisons; print a Markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer readings (a smoke run)")
    args = parser.parse_args(argv)
    scale = 0.25 if args.quick else 1.0
    devices = len([d for d in CITY.devices if d.kind in TELEMETRY_KINDS])
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        base = Path(tmp)
        load = loadavg()
        with LocalStack(base / "stack") as stack:
            for per_device in (1, 10):
                rate = devices * per_device
                count = int(rate * 20 * scale)
                for confirm in (False, True):
                    label = f"{per_device}/s per device, ack {'on' if confirm else 'off'}"
                    rows.append((label, run_once(stack, base, confirm, count, rate, False)))
                    print(label, rows[-1], flush=True)
            for confirm in (False, True):
                label = f"broker kill -9, ack {'on' if confirm else 'off'}"
                count = int(8000 * scale)
                rows.append((label, run_once(stack, base, confirm, count, 400, True)))
                print(label, rows[-1], flush=True)
    micro = {n: ack_path_cost(n) for n in (1, 10)}
    print(f"\n{platform.node()}: {platform.processor() or platform.machine()}, load {load}")
    print(f"{devices} devices as edge agents in one process, one ingest worker\n")
    print(
        "| Run | readings | lost | dup | re-sent | ack msgs/reading | CPU µs/reading: "
        "devices | ingest | broker |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        broker = "-" if r["broker_cpu_us"] != r["broker_cpu_us"] else f"{r['broker_cpu_us']:.0f}"
        print(
            f"| {label} | {r['readings']:.0f} | {r['lost']:.0f} | {r['duplicated']:.0f} | "
            f"{r['resent']:.0f} | {r['ack_msgs_per_reading']:.2f} | {r['fleet_cpu_us']:.0f} | "
            f"{r['ingest_cpu_us']:.0f} | {broker} |"
        )

    print("\nThe ack path alone (in process), CPU µs per reading:\n")
    print("| readings per device and ack | ingest: add_batch + drain | device: spool + ack |")
    print("|---|---|---|")
    for n, r in micro.items():
        print(f"| {n} | {r['ingest_us']:.1f} | {r['device_us']:.1f} |")


if __name__ == "__main__":
    main()
