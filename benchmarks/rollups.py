"""Long windows from rollup tiers beside the raw query, and the disk per tier.

One run, one machine, a fresh local InfluxDB: a year of the default city (all 300
devices, every kind) backfilled by the simulator (`simulators.backfill`, one reading per
device per `--every`); its air-quality kind, the one the measured queries read, rolled
up by the rollup job (`rollups.service.CityRollups`; tiers `1h` and `1d` by default;
`--roll-all` rolls every kind, about ten times longer); the API as a real process; then,
at 4 concurrent clients, p50/p99 of

- a 365-day daily district series (`every=1d`: the `1d` tier),
- the annual air-quality report of the current year (the `1d` tier),
- a 30-day hourly district series (`every=1h`: the `1h` tier),

beside the raw InfluxQL of the same series over the longest window raw can still answer
(31 days) in the same run. Targets: p99 <= 100, 100 and 50 ms. Then the disk of each
tier's policy (TSM + WAL, an upper bound) per stored point, written to
benchmarks/results/rollups.json for the sizing model.

Run: `.venv/bin/python -m benchmarks.rollups [--days 365 --every 1h --requests 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

from api.apikeys import KeyStore
from api.queries import series_statement
from benchmarks.api import CONCURRENCY, measure, start_api
from benchmarks.costs import _du
from control.stack import Influxd, free_port
from rollups.service import CityRollups
from rollups.settings import RollupSettings
from safecity import registry
from safecity.influx import InfluxClient
from safecity.readings import format_epoch_ms
from safecity.registry import City
from safecity.rollups import parse_tiers
from safecity.settings import InfluxSettings
from simulators.backfill import BackfillPlan, parse_span, run_backfill

RESULTS = Path(__file__).resolve().parent / "results" / "rollups.json"
DAY_MS = 86_400_000
DB = "bench"
KIND = "air_quality"


async def prepare(
    influx: InfluxSettings, city: City, days: int, every_s: int, kinds: tuple[str, ...]
) -> dict[str, float]:
    """Backfill the whole city and roll `kinds` up; the figures of both."""
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    plan = BackfillPlan(city, city.devices, today - days * DAY_MS, today, every_s, seed=7)
    stats = await run_backfill(influx, plan, sys.stdout, workers=os.cpu_count() or 1)
    client = InfluxClient(influx)
    started = time.monotonic()
    job = RollupSettings(influx=influx, rollup_chunk_buckets=240)
    chunks = await CityRollups(job, city, client, kinds).catch_up(int(time.time() * 1000))
    rolled = time.monotonic() - started
    await client.close()
    print(f"rolled up {chunks} chunks of {days} days of {kinds} in {rolled:.1f} s", flush=True)
    return {
        "devices": len(city.devices),
        "rolled_devices": sum(1 for d in city.devices if d.kind in kinds),
        "readings": stats.readings,
        "backfill_rate": stats.rate,
        "rollup_seconds": rolled,
    }


def _raw_call(
    http: httpx.AsyncClient, statement: str, params: dict[str, str]
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        r = await http.post(
            "/query",
            data={"q": statement, "db": DB, "params": json.dumps(params)},
            params={"epoch": "ms"},
        )
        r.raise_for_status()

    return call


def _get(
    http: httpx.AsyncClient, path: str, params: dict[str, str]
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        r = await http.get(path, params=params)
        r.raise_for_status()

    return call


async def latencies(
    url: str, influx_url: str, key: str, city: City, requests: int
) -> list[tuple[str, dict[str, float], float]]:
    """(row, figures, target p99 ms) of every measured query."""
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    district = next(d.district for d in city.devices if d.kind == KIND)
    base = {"kind": KIND, "field": "pm25", "district": district}

    def window(days: int) -> dict[str, str]:
        return {"from": format_epoch_ms(today - days * DAY_MS), "to": format_epoch_ms(today)}

    raw_params = {"city": city.id, "district": district}
    daily = series_statement(KIND, "pm25", "mean", 86_400, by="district")
    hourly = series_statement(KIND, "pm25", "mean", 3600, by="district")
    rows: list[tuple[str, dict[str, float], float]] = []
    async with (
        httpx.AsyncClient(base_url=url, timeout=60, headers={"X-API-Key": key}) as api,
        httpx.AsyncClient(base_url=influx_url, timeout=60) as raw,
    ):
        series = f"/v1/cities/{city.id}/series"
        report = f"/v1/cities/{city.id}/reports/air-quality"
        year = {"year": str(datetime.now(UTC).year)}
        daily_api = {**base, "every": "1d", **window(365)}
        hourly_api = {**base, "every": "1h", **window(30)}
        cases = [
            ("API 365-day daily district series", _get(api, series, daily_api), 100.0),
            ("API annual air-quality report", _get(api, report, year), 100.0),
            ("API 30-day hourly district series", _get(api, series, hourly_api), 50.0),
            (
                "raw InfluxQL 31-day daily district series",
                _raw_call(raw, daily, {**raw_params, **window(31)}),
                0.0,
            ),
            (
                "raw InfluxQL 30-day hourly district series",
                _raw_call(raw, hourly, {**raw_params, **window(30)}),
                0.0,
            ),
        ]
        for name, call, target in cases:
            rows.append((name, await measure(call, requests), target))
    return rows


def disk(influxd: Influxd, tiers: str) -> dict[str, dict[str, float]]:
    """Bytes of each policy (TSM + WAL) and the points in it, per stored point."""
    out: dict[str, dict[str, float]] = {}

    async def count(policy: str, measurement: str) -> int:
        client = InfluxClient(InfluxSettings(url=influxd.url, database=DB))
        try:
            series = await client.query(
                f'SELECT count("readings") AS "n" FROM "{policy}"."{measurement}"'  # noqa: S608
            )
        finally:
            await client.close()
        return sum(int(r["n"] or 0) for s in series for r in s.rows())

    for tier in parse_tiers(tiers):
        size = _du(influxd.data_dir / "data" / DB / tier.policy)
        size += _du(influxd.data_dir / "wal" / DB / tier.policy)
        points = sum(
            asyncio.run(count(tier.policy, f"{KIND}_by_{level}"))
            for level in ("device", "district")
        )
        out[tier.name] = {"bytes": size, "points": points, "bytes_per_point": size / max(points, 1)}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Run the rollup benchmark, print its table and write its results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollups")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--every", default="1h")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--tiers",
        default="1h:1825d,1d:INF",
        help="rollup tiers (default: the two the measured queries use; add 1m:90d to size it)",
    )
    parser.add_argument(
        "--roll-all", action="store_true", help="roll every kind up, not only air quality"
    )
    args = parser.parse_args(argv if argv is not None else [])
    city = registry.default_city()
    every_s = parse_span(args.every, "--every")
    kinds = tuple(sorted({d.kind for d in city.devices})) if args.roll_all else (KIND,)
    load = os.getloadavg()
    print(
        f"conditions: {os.cpu_count()} CPUs (shared, load {load[0]:.1f}), {CONCURRENCY} "
        f"concurrent clients, {args.requests} requests per row; {city.name}'s "
        f"{len(city.devices)} devices, {args.days} days, one reading per {args.every}; "
        f"rolled up: {', '.join(kinds)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="safecity-bench-rollups-") as tmp:
        base = Path(tmp)
        influxd = Influxd(base / "influxd", port=free_port())
        influxd.start()
        try:
            influx = InfluxSettings(
                url=influxd.url,
                database=DB,
                retention_duration="INF",
                rollup_tiers=args.tiers,
                timeout=120,
            )
            figures = asyncio.run(prepare(influx, city, args.days, every_s, kinds))
            _, key = KeyStore(base / "keys.json").create("bench", ("read",))
            proc, url = start_api(
                influxd.url, DB, None, base / "keys.json", base, 5.0,
                extra={
                    "SAFECITY_INFLUX__RETENTION_DURATION": "INF",
                    "SAFECITY_INFLUX__ROLLUP_TIERS": args.tiers,
                },
            )  # fmt: skip
            try:
                rows = asyncio.run(latencies(url, influxd.url, key, city, args.requests))
            finally:
                proc.stop(timeout=10)
            tiers = disk(influxd, influx.rollup_tiers)
        finally:
            influxd.stop()
    print("| Query | p50 ms | p99 ms | req/s | target p99 |")
    print("|---|---|---|---|---|")
    for name, f, target in rows:
        goal = f"<= {target:g} ms: {'met' if f['p99'] <= target else 'NOT met'}" if target else "-"
        print(f"| {name} | {f['p50']:.1f} | {f['p99']:.1f} | {f['rps']:.0f} | {goal} |")
    for name, t in tiers.items():
        print(
            f"tier {name}: {t['points']:,.0f} points, {t['bytes']:,.0f} bytes, "
            f"{t['bytes_per_point']:.1f} B/point"
        )
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "conditions": f"{os.cpu_count()} CPUs, load {load[0]:.1f}; "
                f"{figures['devices']:.0f} devices, {args.days} days at one reading "
                f"per {args.every}, {figures['rolled_devices']:.0f} of them rolled up",
                **figures,
                "tiers": tiers,
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
