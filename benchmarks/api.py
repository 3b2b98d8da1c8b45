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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from api import lastseen
from api.apikeys import KeyStore
from api.offline import status_statement
from api.overview import EVENTS_STATEMENT, LIGHTS_STATEMENT, MEAN_FIELDS
from api.queries import series_statement
from api.settings import ApiSettings
from api.windows import mean_statement
from benchmarks._api import overview as at_scale
from benchmarks._ingest.probes import loadavg
from control.stack import Influxd, ManagedProcess, free_port
from safecity import catalogue, citygen, registry
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode
from safecity.readings import Status, epoch_ms, format_ts, from_epoch_ms
from safecity.registry import City, Device
from safecity.schema import status_points
from safecity.settings import InfluxSettings

CONCURRENCY = 4
QUERY_TIMEOUT_S = 120.0


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


@dataclass(frozen=True, slots=True)
class Fleet:
    """How the loaded city reports: every device at 1-min cadence (`step_s` 60, `live`
    False), or each at its kind's live cadence (never finer than `step_s`); a share of the
    devices fell silent at some time in the span (`gone`) and a share never reported."""

    step_s: int = 60
    live: bool = False
    gone: float = 0.0
    never: float = 0.0

    def every_s(self, device: Device) -> int:
        """The device's reporting interval in the load."""
        cadence = int(catalogue.KINDS[device.kind].cadence_s) if self.live else 0
        return max(self.step_s, cadence)

    def silent_from(self, devices: Sequence[Device], start_ms: int, end_ms: int) -> dict[str, int]:
        """device id -> when it fell silent (`start_ms`: it never reported), seeded."""
        rng = random.Random(11)
        out: dict[str, int] = {}
        for d in devices:
            x = rng.random()
            if x < self.never:
                out[d.id] = start_ms
            elif x < self.never + self.gone:
                # Silent at least an hour before the end (half the span if shorter).
                out[d.id] = rng.randrange(
                    start_ms, end_ms - min(3_600_000, (end_ms - start_ms) // 2)
                )
        return out


def load(
    influx_url: str, database: str, city: City, hours: float, end: datetime, fleet: Fleet
) -> tuple[int, float]:
    """Write `hours` of readings for every device as `fleet` says; (points, seconds)."""
    rng = random.Random(7)
    end_ms = epoch_ms(end)
    start_ms = end_ms - int(hours * 3_600_000)
    silent = fleet.silent_from(city.devices, start_ms, end_ms)
    t0 = time.perf_counter()
    points = 0
    with httpx.Client(base_url=influx_url, timeout=300) as http:
        http.post("/query", data={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()
        batch: list[str] = []
        for i, device in enumerate(city.devices):
            head = f"{device.kind},city={city.id},district={device.district},device_id={device.id} "
            step = fleet.every_s(device) * 1000
            until = silent.get(device.id, end_ms)
            first = start_ms + rng.randrange(step) // 1000 * 1000  # devices out of phase
            for seq, ts in enumerate(range(first, until, step)):
                batch.append(f"{head}seq={seq}i,{_fields(device, rng)} {ts}")
            batch += _births(city, device, first, until if device.id in silent else None)
            if len(batch) >= 50_000 or i == len(city.devices) - 1:
                _write(http, database, batch)
                points += len(batch)
                batch = []
    return points, time.perf_counter() - t0


def _births(city: City, device: Device, first_ms: int, gone_ms: int | None) -> list[str]:
    """The device's status points: online when it first reported, offline when it fell
    silent (a device that never reported has neither)."""
    if gone_ms is not None and gone_ms <= first_ms:
        return []
    said = [Status(ts=from_epoch_ms(first_ms), state="online")]
    if gone_ms is not None:
        said.append(Status(ts=from_epoch_ms(gone_ms), state="offline"))
    # As the ingest stores them (`schema.status_points`: an offline one has its twin).
    return [encode(p) for status in said for p in status_points(city.id, device, status)]


def _write(http: httpx.Client, database: str, lines: list[str]) -> None:
    """One batch; again after a timeout of a busy InfluxDB (the same points overwrite)."""
    body = gzip.compress("\n".join(lines).encode(), compresslevel=1)
    for attempt in range(5):
        r = http.post(
            "/write",
            params={"db": database, "precision": "ms"},
            content=body,
            headers={"Content-Encoding": "gzip"},
        )
        if r.status_code < 300:
            return
        if r.status_code < 500 or attempt == 4:
            raise SystemExit(f"InfluxDB refused a load batch: {r.status_code} {r.text[:500]}")
        print(f"load: InfluxDB {r.status_code} ({r.text[:200]}), again", flush=True)
        time.sleep(2.0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    call: Callable[[], Awaitable[None]],
    requests: int,
    concurrency: int = CONCURRENCY,
    seconds: float = 0.0,
) -> dict[str, float]:
    """p50/p99 (ms) and requests/s of `call` at `concurrency` concurrent callers: `requests`
    calls, and calls on until `seconds` have passed."""
    latencies: list[float] = []
    remaining = requests
    until = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 or time.perf_counter() < until:
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
            "SAFECITY_INFLUX__TIMEOUT": str(QUERY_TIMEOUT_S),
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
        self.raw = httpx.AsyncClient(base_url=influx_url, timeout=QUERY_TIMEOUT_S, limits=limits)
        self.overview_statements = [
            *(mean_statement(k, MEAN_FIELDS[k]) for k in MEAN_FIELDS),
            LIGHTS_STATEMENT,
            status_statement(),
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
        params = [window] * len(MEAN_FIELDS) + [lights, lookback, window]
        # Last seen as a city whose every device reports asks it: its recent spans only.
        cuts = lastseen.cuts(ApiSettings(), catalogue.KINDS, t - timedelta(hours=24), t)
        recent = [
            (lastseen.full_statement(kinds), {**window, "from": format_ts(cut)})
            for cut, kinds in cuts.items()
        ]
        await asyncio.gather(
            *(
                self.query(q, p)
                for q, p in [*zip(self.overview_statements, params, strict=True), *recent]
            )
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
    args: argparse.Namespace,
    raw: tuple[dict[str, float], dict[str, float]],
) -> list[Row]:
    """The rows of one API process (the cached one also measures the overview just after
    its cache expired, series and device lists)."""
    raw_ov, raw_se = raw
    requests = args.requests

    def get(path: str, params: dict[str, str] | None = None) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            r = await http.get(path, params=params)
            r.raise_for_status()

        return call

    path = f"/v1/cities/{city.id}/overview"
    if not ttl:
        overview = await measure(get(path), max(8, requests // 5))
        return [("city overview (uncached, TTL 0)", overview, raw_ov)]
    # Long enough for the cache to expire and be refreshed in the background a few times.
    overview = await measure(get(path), requests, seconds=args.cached_seconds)
    rows: list[Row] = [(f"city overview (cached, TTL {ttl:g} s)", overview, raw_ov)]
    cold = await at_scale.after_expiry(http, path, ttl, args.samples)
    cold_row = {"p50": cold["median"], "p99": cold["max"], "rps": 0.0, "n": cold["n"]}
    rows.append(
        ("city overview, first request after its cache expired (median, max)", cold_row, None)
    )
    series = await measure(get(f"/v1/cities/{city.id}/series", series_q), requests)
    rows.append(("district series (noise laeq, 24 h / 5 min)", series, raw_se))
    devices = await measure(get("/v1/devices", {"limit": "100"}), requests)
    rows.append(("device list (100, registry only)", devices, None))
    online = await measure(get("/v1/devices", {"status": "online", "limit": "100"}), requests)
    rows.append(("device list (status=online, snapshot)", online, raw_ov))
    return rows


def print_scale(scale: list[tuple[str, dict[str, float]]]) -> None:
    """The snapshot's table: before and now, each as a ratio to before."""
    print(f"load average {loadavg()}")
    print("| Overview part (in one process, no HTTP) | median ms | max ms | n | x before |")
    print("|---|---|---|---|---|")
    figures = dict(scale)
    for name, f in scale:
        before = figures[name.replace(", now", ", before")]["median"]
        print(
            f"| {name} | {f['median']:.0f} | {f['max']:.0f} | {f['n']:.0f} "
            f"| {f['median'] / before:.2f} |",
            flush=True,
        )


def _fleet(args: argparse.Namespace) -> Fleet:
    if not args.live:
        return Fleet()
    return Fleet(args.step, live=True, gone=args.gone, never=args.never)


async def _before_and_now(url: str, city: City, samples: int) -> list[tuple[str, dict[str, float]]]:
    """The overview's snapshot and last-seen queries before and now (in this process)."""
    # A 24-hour last() of a large city on a busy machine outlasts the default timeout.
    influx = InfluxClient(InfluxSettings(url=url, database="bench", timeout=QUERY_TIMEOUT_S))
    try:
        await influx.ensure_retention_policies()  # as the API does at its start
        return await at_scale.compare(influx, city, samples)
    finally:
        await influx.close()


async def run(args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, dict[str, float]]]]:
    """Load, compare the snapshot before and now, start the API twice (cached/uncached),
    measure every endpoint and its floor."""
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
            fleet = _fleet(args)
            points, took = load(influxd.url, "bench", city, args.hours, end, fleet)
            print(
                f"loaded {points:,} points ({len(city.devices)} devices x {args.hours:g} h, "
                f"{fleet}) in {took:.1f}s ({points / took:,.0f} points/s); "
                f"load average {loadavg()}",
                flush=True,
            )
            scale = await _before_and_now(influxd.url, city, args.samples)
            print_scale(scale)
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
                        base_url=url, timeout=120, headers={"X-API-Key": key}
                    ) as http:
                        rows += await _api_rows(
                            http, city, {**series_q, **day}, ttl, args, (raw_ov, raw_se)
                        )
                finally:
                    proc.stop(timeout=10)
            await floor.raw.aclose()
        finally:
            influxd.stop()
    rows.append(("raw overview queries alone (1 client)", raw_ov1, None))
    return rows, scale


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--live",
        action="store_true",
        help="each device at its kind's live cadence (never finer than --step), some gone "
        "silent (--gone) or never seen (--never); default: every device each minute",
    )
    parser.add_argument("--step", type=int, default=60, help="finest reporting interval, s")
    parser.add_argument("--gone", type=float, default=0.02, help="share fallen silent (--live)")
    parser.add_argument("--never", type=float, default=0.01, help="share never seen (--live)")
    parser.add_argument("--samples", type=int, default=6, help="uncached/before-now samples")
    parser.add_argument(
        "--cached-seconds", type=float, default=15.0, help="cached overview measured this long"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the API benchmark and print its tables."""
    args = _parser().parse_args(argv if argv is not None else [])
    print(
        f"conditions: {os.cpu_count()} CPUs (shared), {CONCURRENCY} concurrent clients, "
        f"{args.requests} requests per row, InfluxDB {Influxd.__name__} on loopback, "
        f"load average {loadavg()}",
        flush=True,
    )
    rows, _ = asyncio.run(run(args))
    print(
        "| Endpoint | API p50 ms | API p99 ms | API req/s "
        "| raw InfluxQL p50 ms | raw p99 ms | raw req/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, api, raw in rows:
        floor = f"{raw['p50']:.1f} | {raw['p99']:.1f} | {raw['rps']:.0f}" if raw else "- | - | -"
        print(f"| {name} | {api['p50']:.1f} | {api['p99']:.1f} | {api['rps']:.0f} | {floor} |")
    cached, cold = rows[0][1], rows[1][1]
    strictest = rows[-1][1]  # the overview's queries, one client: the strictest floor
    target = 2 * strictest["p99"] + 10
    verdict = "met" if cached["p99"] <= target else "NOT met"
    print(
        f"target overview p99 <= 2 x raw p99 + 10 ms = {target:.1f} ms: {verdict} "
        f"({cached['p99']:.1f} ms); city-scale targets: cached p99 <= 100 ms "
        f"{'met' if cached['p99'] <= 100 else 'NOT met'}, uncached <= 1 s "
        f"{'met' if cold['p99'] <= 1000 else 'NOT met'} (max {cold['p99']:.0f} ms); "
        f"load average {loadavg()}",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
