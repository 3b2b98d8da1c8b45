"""How fast a command to a live device is executed, against the broker's own round trip.

One run against a fresh local Mosquitto + InfluxDB and a real API process (its command
service as the `_command` role, the SQLite store fsynced): ten live devices are real edge
agents (one MQTT identity each, persistent sessions, `edge.commands.CommandExecutor`).

- commands: N commands (`set_interval`) sent one after another over HTTP to the ten
  devices in turn; latency = the store's `executed` time of the device's status minus the
  command's `issued_at` (both the API's clock: accepted -> stored -> published -> executed
  by the device -> its result filed). Reported: p50, p95, max.
- baseline, same run: the bare MQTT round trip of the same path without the platform: the
  `_command` account publishes to a device's command topic and the device answers on its
  result topic at once (QoS 1 both ways, no store, no HTTP).

Run: `.venv/bin/python -m benchmarks.commands [--commands 100]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from api.apikeys import KeyStore
from control.stack import LocalStack, ManagedProcess, free_port, http_ok
from edge.agent import DeviceAgent, Envelope
from edge.commands import CommandExecutor
from edge.settings import EdgeSettings
from safecity.commands import Command
from safecity.mqtt import MqttClient
from safecity.registry import Device, default_city
from safecity.topics import command_topic, result_topic

CITY = default_city()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _api(stack: LocalStack, base: Path) -> tuple[ManagedProcess, str, str]:
    port = free_port()
    keys = base / "keys.json"
    _, key = KeyStore(keys).create("bench", ("operate",))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_HOME": str(base),
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_MQTT__USERNAME": "_api",
            "SAFECITY_MQTT__PASSWORD": stack.secret("_api"),
            "SAFECITY_COMMANDS__PASSWORD": stack.secret("_command"),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_API_KEYS_FILE": str(keys),
            "SAFECITY_PORT": str(port),
            "SAFECITY_RATE_LIMIT_RPS": "100000",
            "SAFECITY_RATE_LIMIT_BURST": "1000000",
            "SAFECITY_LOG_LEVEL": "WARNING",
        }
    )
    proc = ManagedProcess(
        "api", [sys.executable, "-m", "control", "api"], base / "api.log", env=env
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(http_ok(f"{url}/readyz"), timeout=60)
    return proc, url, key


async def _devices(stack: LocalStack, devices: list[Device], spool: Path) -> list[DeviceAgent]:
    agents = []
    for device in devices:
        address = (CITY.id, device.district, device.kind, device.id)

        async def nothing(command: Command) -> None:
            return None

        def ignore(envelope: Envelope, code: int) -> None:
            return None

        holder: dict[str, CommandExecutor] = {}

        def receive(payload: bytes, h: dict[str, CommandExecutor] = holder) -> None:
            h["x"].receive(payload)

        agent = DeviceAgent(
            device.id,
            stack.mqtt_settings(device.id),
            EdgeSettings(spool_dir=spool),
            ignore,
            command_topic=command_topic(*address),
            on_command=receive,
        )
        holder["x"] = CommandExecutor(
            device.id, device.kind, result_topic(*address), agent.reply, nothing
        )
        agent.start()
        assert await agent.client.wait_connected(10)
        agents.append(agent)
    await asyncio.sleep(0.5)
    return agents


async def _commands(url: str, key: str, devices: list[Device], count: int) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=10) as http:
        for i in range(count):
            device = devices[i % len(devices)]
            sent = await http.post(
                f"{url}/v1/devices/{device.id}/commands",
                json={"name": "set_interval", "params": {"interval_s": 60 + i}},
            )
            assert sent.status_code == 202, sent.text
            command_id = sent.json()["id"]
            while True:
                body = (await http.get(f"{url}/v1/commands/{command_id}")).json()
                delivery = body["deliveries"][0]
                if delivery["status"] == "executed":
                    break
                assert delivery["status"] in ("pending", "delivered"), body
                await asyncio.sleep(0.005)
            issued = datetime.fromisoformat(body["issued_at"])
            done = datetime.fromisoformat(delivery["updated_at"])
            latencies.append((done - issued).total_seconds())
    return latencies


async def _baseline(stack: LocalStack, device: Device, count: int) -> list[float]:
    """Bare MQTT: the command role publishes, the device answers at once."""
    address = (CITY.id, device.district, device.kind, device.id)
    service = MqttClient(stack.mqtt_settings("_command"), "bench-command-baseline")
    dev = MqttClient(stack.mqtt_settings(device.id), device.id)
    await service.connect()
    await dev.connect()
    await service.subscribe([(result_topic(*address), 1)])
    await dev.subscribe([(command_topic(*address), 1)])
    rtts = []
    for _ in range(count):
        start = time.perf_counter()
        await service.publish(command_topic(*address), b"x", 1, expiry_s=60)
        await dev.inbox.get_batch(1, 5)
        await dev.publish(result_topic(*address), b"y")
        await service.inbox.get_batch(1, 5)
        rtts.append(time.perf_counter() - start)
    await service.disconnect()
    await dev.disconnect()
    return rtts


def run(count: int) -> dict[str, Any]:
    """Both measurements in one run; their figures and ratio."""
    devices = [d for d in CITY.devices if d.kind == "weather"][:10]
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as tmp:
        base = Path(tmp)
        with LocalStack(base / "stack", mqtt_port=0, influx_port=0) as stack:
            proc, url, key = _api(stack, base)
            try:

                async def main() -> tuple[list[float], list[float]]:
                    baseline = await _baseline(stack, devices[-1], count)
                    agents = await _devices(stack, devices[:-1], base / "spool")
                    try:
                        return await _commands(url, key, devices[:-1], count), baseline
                    finally:
                        for agent in agents:
                            await agent.close(1.0)

                commands, baseline = asyncio.run(main())
            finally:
                proc.stop(timeout=15)
    return {"commands": commands, "baseline": baseline}


def main(argv: list[str] | None = None) -> None:
    """Print conditions and figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commands")
    parser.add_argument("--commands", type=int, default=100)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"conditions: {platform.platform()}, {os.cpu_count()} cores, loadavg {load:.2f}; "
          f"{args.commands} commands to 9 live devices, one at a time")  # fmt: skip
    figures = run(args.commands)
    for name, values in figures.items():
        ms = [v * 1000 for v in values]
        print(f"{name:>9}: p50 {_pct(ms, 50):7.1f} ms  p95 {_pct(ms, 95):7.1f} ms  "
              f"max {max(ms):7.1f} ms  mean {statistics.fmean(ms):7.1f} ms")  # fmt: skip
    p95 = _pct(figures["commands"], 95)
    ratio = p95 / _pct(figures["baseline"], 95)
    print(f"command p95 / bare MQTT round-trip p95: {ratio:.1f}x; within 1 s: {p95 < 1.0}")


if __name__ == "__main__":
    main()
