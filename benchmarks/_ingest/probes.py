"""What the benchmark reads off processes, endpoints and InfluxDB."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from pathlib import Path

import httpx

from control.stack import LocalStack
from control.verify import verify
from safecity.influx import InfluxClient
from safecity.settings import InfluxSettings


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


async def check_ledger(path: Path, client: InfluxClient, dirs: list[Path]):  # type: ignore[no-untyped-def]
    try:
        return await verify(path, client, dirs)
    finally:
        await client.close()


def drop_database(stack: LocalStack, db: str) -> None:
    """Drop a checked run's database (keeps InfluxDB's work the same for every run)."""
    httpx.post(
        f"{stack.influx_url}/query", data={"q": f'DROP DATABASE "{db}"'}, timeout=60
    ).raise_for_status()


async def create_db(stack: LocalStack, db: str) -> None:
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
    try:
        await client.ensure_database()
    finally:
        await client.close()
