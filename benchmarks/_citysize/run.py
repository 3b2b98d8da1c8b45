"""One city of N devices under `safecity run`: start, connect, steady state, API, storm, verify."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from api.overview import OVERVIEW_WINDOW
from benchmarks._citysize import procs
from benchmarks.api import measure
from safecity import citygen, instance, registry
from safecity.readings import format_ts

ROOT = Path(__file__).resolve().parents[2]
DEVICES_PER_PROCESS = 6000
"""Simulator processes: one per this many devices (12,000 files each, one core at most)."""
ONLINE_SHARE = 0.99


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        SAFECITY_HOME=str(home),
        SAFECITY_INGEST_METRICS_PORT="0",
        SAFECITY_ALERTS_METRICS_PORT="0",
        SAFECITY_NOTIFY_METRICS_PORT="0",
    )
    return env


def wait(check: Callable[[], bool], timeout: float, every: float = 0.5) -> float | None:
    """Seconds until `check()` holds (None: not within `timeout`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(every)
    return None


class CityRun:
    """`safecity run` of a generated city of `devices` in `home`, on free ports."""

    def __init__(self, home: Path, devices: int) -> None:
        self.home = home
        self.devices = devices
        self.processes = max(1, math.ceil(devices / DEVICES_PER_PROCESS))
        home.mkdir(parents=True, exist_ok=True)
        self.registry = home / "city.jsonl"
        self.city = citygen.generate("scaleville", devices, 7)
        registry.write(self.city, self.registry)
        self.proc: subprocess.Popen[str] | None = None
        self.pids: procs.StackPids | None = None
        self.key = ""
        self.api = ""
        self.broker_cmd: list[str] = []
        self.restarted: subprocess.Popen[bytes] | None = None
        self._influx = ""

    def start(self) -> float:
        """Launch; seconds until the launcher printed "Press Ctrl-C" (the API answers)."""
        ports = ["--api-port", "0", "--mqtt-port", "0", "--influx-port", "0"]
        argv = [sys.executable, "-m", "control", "run", "--mqtt-tls-port", "0", *ports]
        argv += ["--registry", str(self.registry)]
        argv += ["--simulator-processes", str(self.processes)]
        # Four clients on the run's one key measure the API, not its per-key limit.
        argv += ["--api-rate-limit-rps", "100000", "--api-rate-limit-burst", "1000000"]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=_env(self.home), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        printed = ""
        while "Press Ctrl-C" not in printed:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"safecity run ended:\n{printed}")
            printed += line
        took = time.monotonic() - t0
        found = re.search(r"SAFECITY_API_KEY=(\S+)", printed)
        state = instance.running(instance.layout(self.home))
        assert found is not None, printed
        assert state is not None, printed
        self.key, self.api = found.group(1), state.api_url
        self._influx = state.influx_url
        self.pids = procs.StackPids.of(self.proc.pid)
        return took

    def influx_url(self) -> str:
        """The run's InfluxDB."""
        return self._influx

    def client(self) -> httpx.AsyncClient:
        """An API client with the run's key."""
        return httpx.AsyncClient(base_url=self.api, headers={"X-API-Key": self.key}, timeout=30)

    def online(self) -> int:
        """Devices the API counts online now (the uncached overview's figure)."""
        with httpx.Client(base_url=self.api, headers={"X-API-Key": self.key}, timeout=30) as c:
            r = c.get(f"/v1/cities/{self.city.id}/overview")
            if r.status_code != 200:
                return 0
            counts: dict[str, int] = r.json()["devices"]
            return counts["online"]

    def connections(self) -> int:
        """Sockets the broker holds (its connections and its listeners)."""
        assert self.pids is not None
        return procs.sockets(self.pids.mosquitto)

    def api_latency(self, requests: int, uncached_samples: int, ttl: float) -> dict[str, Any]:
        """Overview p99 (cached; uncached: one request after each cache entry grew too old
        to be served while it is recomputed, two TTLs) and a device-list page p99, at 4
        concurrent clients."""
        city = self.city.id
        # An answer other than 200 (a 503 when a statement outlived the API's InfluxDB
        # timeout) is counted, its time kept: one must not end a run of half an hour.
        failed: Counter[str] = Counter()

        async def main() -> dict[str, float]:
            async with self.client() as c:

                async def get(path: str, **params: Any) -> httpx.Response:
                    response = await c.get(path, params=params)
                    if response.status_code != 200:
                        failed[f"{path} {response.status_code}"] += 1
                    return response

                async def overview() -> None:
                    await get(f"/v1/cities/{city}/overview")

                async def page() -> None:
                    await get("/v1/devices", limit=100)

                cached = await measure(overview, requests)
                listing = await measure(page, requests)
                cold = []
                for _ in range(uncached_samples):
                    await asyncio.sleep(2 * ttl + 0.3)
                    t = time.perf_counter()
                    await overview()
                    cold.append((time.perf_counter() - t) * 1000)
                served = (await get(f"/v1/cities/{city}/overview")).json().get("served_by", {})
                # An explicit window is never the board's: always read from InfluxDB.
                fixed = []
                for _ in range(3):
                    end = datetime.now(UTC)
                    bounds = {"from": format_ts(end - OVERVIEW_WINDOW), "to": format_ts(end)}
                    t = time.perf_counter()
                    await get(f"/v1/cities/{city}/overview", **bounds)
                    fixed.append((time.perf_counter() - t) * 1000)
            return {
                "overview_cached_p99_ms": cached["p99"],
                "overview_uncached_max_ms": max(cold),
                "overview_served_by": sorted({p["tier"] for ps in served.values() for p in ps}),
                "overview_explicit_max_ms": max(fixed),
                "device_page_p99_ms": listing["p99"],
            }

        figures: dict[str, Any] = asyncio.run(main())
        figures["api_errors"] = dict(failed)
        figures["api_error_count"] = failed.total()
        return figures

    def kill_broker(self) -> None:
        """kill -9 the broker (its command line kept, to start it again)."""
        assert self.pids is not None
        pid = self.pids.mosquitto
        self.broker_cmd = procs.cmdline(pid).strip().split(" ")
        os.kill(pid, signal.SIGKILL)

    def start_broker(self) -> None:
        """Start the broker again with the same command line (same config, data, port)."""
        assert self.pids is not None
        self.restarted = subprocess.Popen(
            self.broker_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.pids.mosquitto = self.restarted.pid

    def verify(self, settle: float = 20.0) -> dict[str, Any]:
        """`safecity verify --json` beside the run."""
        out = subprocess.run(
            [sys.executable, "-m", "control", "verify", "--json", "--settle", str(settle)],
            env=_env(self.home), cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {"error": (out.stderr or out.stdout)[-500:]}
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def stop(self) -> None:
        """Ctrl-C the launcher; then stop the broker this benchmark restarted."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.restarted is not None and self.restarted.poll() is None:
            self.restarted.terminate()
            self.restarted.wait(timeout=30)
