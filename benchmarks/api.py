"""API latency and throughput beside the raw InfluxQL time of the same queries (the floor).

One run, one machine, a fresh local InfluxDB: a generated city of 1,000 devices with
24 h of readings at 1-min cadence (1.44 M points, direct line-protocol writes), the
API as a real process (`python -m control api`), and for each endpoint:

- the city overview (cached: TTL 5 s, the default; and uncached, TTL 0),
- a district series (noise laeq, mean per 5 min over the last 24 h),
- the device list (page of 100; and filtered by status, which needs the snapshot),

p50/p99 latency and requests/s at 4 concurrent clients, beside the same InfluxQL
statements sent straight to InfluxDB's /query (the overview's statements run
concurrently, as the API runs them). Target: overview p99 <= 2 x raw p99 + 10 ms.

Run: `make bench` or `.venv/bin/python -m benchmarks.api [--devices N --hours H]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from api.apikeys import KeyStore
from api.overview import (
    EVENTS_STATEMENT,
    LAST_SEEN_STATEMENT,
    LIGHTS_STATEMENT,
    MEAN_FIELDS,
    STATUS_STATEMENT,
)
from api.queries import series_statement
from api.tiers import window_statement
from control.stack import Influxd, ManagedProcess, free_port
from safecity import citygen, registry
from safecity.readings import epoch_ms, format_ts
from safecity.registry import City, Device

CONCURRENCY = 4


def _fields(device: Device, rng: random.Random) -> str:
    kind = device.kind
    if kind == "air_quality":
        pm = rng.uniform(10, 120)
        return (
            f"pm25={pm:.1f},pm10={pm * 1.6:.1f},no2={rng.uniform(20, 90):.1f},"
            f"o3={rng.uniform(5, 120):.1f},so2={rng.uniform(5, 30):.1f},"
            f"co={rng.uniform(0.3, 4):.2f}"
        )
    if kind == "traffic":
        return (
            f"intensity={rng.uniform(0, 1800):.0f},occupancy={rng.uniform(0.05, 0.5):.2f},"
            f"avg_speed={rng.uniform(5, 60):.1f},congested=false"
        )
    if kind == "noise":
        la = rng.uniform(45, 75)
        return f"laeq={la:.1f},lamax={la + 12:.1f},la90={la - 8:.1f}"
    if kind == "parking":
        return f"occupancy={rng.uniform(0, 1):.2f}"
    if kind == "streetlight":
        return 'power_state="on",power=80.0,status="ok"'
    if kind == "crowd":
        return (
            f"people_count={rng.randint(0, 3000)}i,occupancy={rng.uniform(0, 1):.2f},"
            "avg_speed=1.2,congested=false"
        )
    if kind == "weather":
        return (
            "temperature=12.5,humidity=0.5,pressure=960.0,wind_speed=2.0,wind_dir=180.0,"
            "precipitation=0.0,solar=300.0"
        )
    if kind == "waste":
        return f"filling_level={rng.uniform(0, 1):.2f},temperature=15.0"
    return f"battery={rng.uniform(0.2, 1):.2f},rssi=-80.0"


def load(
    influx_url: str, database: str, city: City, hours: float, end: datetime
) -> tuple[int, float]:
    """Write `hours` of 1-min readings for every device; return (points, seconds)."""
    rng = random.Random(7)
    minutes = int(hours * 60)
    start_ms = epoch_ms(end) - minutes * 60_000
    heads = [
        f"{d.kind},city={city.id},district={d.district},device_id={d.id} " for d in city.devices
    ]
    t0 = time.perf_counter()
    points = 0
    with httpx.Client(base_url=influx_url, timeout=120) as http:
        http.post("/query", data={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()
        batch: list[str] = []
        for m in range(minutes):
            ts = start_ms + m * 60_000
            for device, head in zip(city.devices, heads, strict=True):
                batch.append(f"{head}seq={m}i,{_fields(device, rng)} {ts}")
            if len(batch) >= 50_000 or m == minutes - 1:
                body = gzip.compress("\n".join(batch).encode(), compresslevel=1)
                r = http.post(
                    "/write",
                    params={"db": database, "precision": "ms"},
                    content=body,
                    headers={"Content-Encoding": "gzip"},
                )
                r.raise_for_status()
                points += len(batch)
                batch = []
    return points, time.perf_counter() - t0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    call: Callable[[], Awaitable[None]], requests: int, concurrency: int = CONCURRENCY
) -> dict[str, float]:
    """p50/p99 (ms) and requests/s of `call` at `concurrency` concurrent callers."""
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t) * 1000)

    await call()  # warm-up (connections, first snapshot)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "p50": _pct(latencies, 0.5),
        "p99": _pct(latencies, 0.99),
        "rps": len(latencies) / wall,
        "n": len(latencies),
    }


def start_api(
    influx_url: str,
    database: str,
    registry_file: Path | None,
    keys: Path,
    base: Path,
    ttl: float,
    extra: dict[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """`python -m control api` on a free port against a database; (process, base URL)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    if registry_file is not None:
        env["SAFECITY_REGISTRY"] = str(registry_file)
    env.update(
        {
            "SAFECITY_INFLUX__URL": influx_url,
            "SAFECITY_INFLUX__DATABASE": database,
            "SAFECITY_API_KEYS_FILE": str(keys),
            "SAFECITY_PORT": str(port),
            "SAFECITY_RATE_LIMIT_RPS": "100000",
            "SAFECITY_RATE_LIMIT_BURST": "1000000",
            "SAFECITY_OVERVIEW_CACHE_TTL": str(ttl),
            "SAFECITY_LOG_LEVEL": "WARNING",
            "SAFECITY_MAX_PAGE_SIZE": "1000",
            **(extra or {}),
        }
    )
    proc = ManagedProcess(
        f"api-{ttl}", [sys.executable, "-m", "control", "api"], base / f"api-{ttl}.log", env=env
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    proc.wait_ready(ready, timeout=60)
    return proc, url


Row = tuple[str, dict[str, float], dict[str, float] | None]


class _Floor:
    """The InfluxQL statements behind the overview and a district series, sent straight to
    InfluxDB's /query: the floor the API's figures stand beside."""

    def __init__(self, influx_url: str, city: City, district: str, day: dict[str, str]) -> None:
        self.city, self.district, self.day = city, district, day
        # The API's own pool size (safecity.influx), so the floor is measured alike.
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=8)
        self.raw = httpx.AsyncClient(base_url=influx_url, timeout=60, limits=limits)
        self.overview_statements = [
            *(window_statement(None, k, MEAN_FIELDS[k]) for k in MEAN_FIELDS),
            LIGHTS_STATEMENT,
            LAST_SEEN_STATEMENT,
            STATUS_STATEMENT,
            EVENTS_STATEMENT,
        ]

    async def query(self, q: str, params: dict[str, str]) -> None:
        r = await self.raw.post(
            "/query",
            data={"q": q, "db": "bench", "params": json.dumps(params)},
            params={"epoch": "ms"},
        )
        r.raise_for_status()

    async def overview(self) -> None:
        t = datetime.now(UTC)
        window = {
            "city": self.city.id,
            "from": format_ts(t - timedelta(minutes=15)),
            "to": format_ts(t),
        }
        lookback = {**window, "from": format_ts(t - timedelta(hours=24))}
        lights = {**window, "from": format_ts(t - timedelta(minutes=30))}
        params = [window] * len(MEAN_FIELDS) + [lights, lookback, lookback, window]
        await asyncio.gather(
            *(self.query(q, p) for q, p in zip(self.overview_statements, params, strict=True))
        )

    async def series(self) -> None:
        await self.query(
            series_statement("noise", "laeq", "mean", 300, by="district"),
            {"city": self.city.id, "district": self.district, **self.day},
        )


async def _api_rows(
    http: httpx.AsyncClient,
    city: City,
    series_q: dict[str, str],
    ttl: float,
    requests: int,
    raw: tuple[dict[str, float], dict[str, float]],
) -> list[Row]:
    """The rows of one API process (the cached one also measures series and device lists)."""
    raw_ov, raw_se = raw

    def get(path: str, params: dict[str, str] | None = None) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            r = await http.get(path, params=params)
            r.raise_for_status()

        return call

    label = "cached, TTL 5 s" if ttl else "uncached, TTL 0"
    overview = await measure(get(f"/v1/cities/{city.id}/overview"), requests)
    rows: list[Row] = [(f"city overview ({label})", overview, raw_ov)]
    if not ttl:
        return rows
    series = await measure(get(f"/v1/cities/{city.id}/series", series_q), requests)
    rows.append(("district series (noise laeq, 24 h / 5 min)", series, raw_se))
    devices = await measure(get("/v1/devices", {"limit": "100"}), requests)
    rows.append(("device list (100, registry only)", devices, None))
    online = await measure(get("/v1/devices", {"status": "online", "limit": "100"}), requests)
    rows.append(("device list (status=online, snapshot)", online, raw_ov))
    return rows


async def run(args: argparse.Namespace) -> list[Row]:
    """Load, start the API twice (cached/uncached), measure every endpoint and its floor."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="safecity-bench-api-") as tmp:
        base = Path(tmp)
        city = citygen.generate("benchcity", args.devices, seed=7, districts=12)
        registry_file = base / "city.jsonl"
        registry.write(city, registry_file)
        influxd = Influxd(base / "influxd", port=free_port())
        influxd.start()
        try:
            end = datetime.now(UTC).replace(second=0, microsecond=0)
            points, took = load(influxd.url, "bench", city, args.hours, end)
            print(
                f"loaded {points:,} points ({len(city.devices)} devices x {args.hours:g} h "
                f"at 1-min cadence) in {took:.1f}s ({points / took:,.0f} points/s)",
                flush=True,
            )
            _, key = KeyStore(base / "keys.json").create("bench", ("read",))
            district = city.districts[0].id
            now = datetime.now(UTC)
            day = {"from": format_ts(now - timedelta(hours=24)), "to": format_ts(now)}
            series_q = {"kind": "noise", "field": "laeq", "district": district, "every": "5m"}
            floor = _Floor(influxd.url, city, district, day)
            await measure(floor.overview, args.requests // 4)  # warm InfluxDB's caches
            raw_ov = await measure(floor.overview, args.requests)
            raw_se = await measure(floor.series, args.requests)
            # One client: the time of one overview's queries alone (4 clients queue on the
            # pool, while the API shares one in-flight snapshot between concurrent callers).
            raw_ov1 = await measure(floor.overview, args.requests // 2, concurrency=1)
            for ttl in (5.0, 0.0):
                proc, url = start_api(
                    influxd.url, "bench", registry_file, base / "keys.json", base, ttl
                )
                try:
                    async with httpx.AsyncClient(
                        base_url=url, timeout=60, headers={"X-API-Key": key}
                    ) as http:
                        rows += await _api_rows(
                            http, city, {**series_q, **day}, ttl, args.requests, (raw_ov, raw_se)
                        )
                finally:
                    proc.stop(timeout=10)
            await floor.raw.aclose()
        finally:
            influxd.stop()
    rows.append(("raw overview queries alone (1 client)", raw_ov1, None))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Run the API benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv if argv is not None else [])
    print(
        f"conditions: {os.cpu_count()} CPUs (shared), {CONCURRENCY} concurrent clients, "
        f"{args.requests} requests per row, InfluxDB {Influxd.__name__} on loopback",
        flush=True,
    )
    rows = asyncio.run(run(args))
    print(
        "| Endpoint | API p50 ms | API p99 ms | API req/s "
        "| raw InfluxQL p50 ms | raw p99 ms | raw req/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, api, raw in rows:
        floor = f"{raw['p50']:.1f} | {raw['p99']:.1f} | {raw['rps']:.0f}" if raw else "- | - | -"
        print(f"| {name} | {api['p50']:.1f} | {api['p99']:.1f} | {api['rps']:.0f} | {floor} |")
    cached = rows[0]
    floor = rows[-1][1]  # the overview's queries, one client: the strictest floor
    target = 2 * floor["p99"] + 10
    verdict = "met" if cached[1]["p99"] <= target else "NOT met"
    print(
        f"target overview p99 <= 2 x raw p99 + 10 ms = {target:.1f} ms: {verdict} "
        f"({cached[1]['p99']:.1f} ms)",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
