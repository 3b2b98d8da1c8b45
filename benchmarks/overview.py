"""The city overview at 2k, 6k and 18k devices without a whole city: where its time goes.

For each size, a fresh local InfluxDB (free port, temp dir) holds a generated city
(`safecity.citygen.generate("scaleville", N, 7)`) with the last `--minutes` of readings,
each device at its kind's live cadence, out of phase, as the ingest stores them (the
schema's measurements, tags and fields, and an `online` status when a device first
reported; 2 % fall silent with an `offline` status, 1 % never report). Then:

- each statement of the snapshot alone (sequentially, raw `/query` with the API's bound
  parameters): InfluxDB's time to the last byte, the answer's size, the JSON parse;
- the snapshot in one process (`take_snapshot`, no HTTP) and the overview made from it
  (the API's Python), and the longest the event loop was held meanwhile (a 1 ms ticker);
- the board (`api.boardfeed`): its seed from this history (a city that has run for
  `--minutes`, longer than the seed reads) and the moving window's snapshot made from it;
- the API (`python -m control api`, the default 5 s cache): the overview cached (p99 at 4
  clients), uncached (one request after 2 TTLs, the request computes it) and a device-list
  page (`GET /v1/devices?limit=100`) p99; then the page and the cached overview again
  (p99, 4 clients, 3 TTLs) while one more client polls the overview every 0.25 s, so its
  snapshot is recomputed in the background over and over (`while_refreshing`): what a
  request meets while a refresh parses and aggregates.

Every figure is shown with its ratio to the smallest size's (the baseline of the same
run). Targets at 18,000 devices: overview p99 <= 100 ms cached and <= 1 s uncached,
device page p99 <= 50 ms.

Run: `nice -n 19 .venv/bin/python -m benchmarks.overview [--devices 2000 6000 18000]`
(about 2 minutes per 6,000 devices on a 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from api import lastseen
from api.apikeys import KeyStore
from api.boardfeed import Served, mark_seeded, new_board, seed
from api.offline import OFFLINE_STATEMENT
from api.overview import (
    EVENTS_STATEMENT,
    LIGHTS_STATEMENT,
    MEAN_FIELDS,
    take_snapshot,
    view,
)
from api.params import TimeRange
from api.settings import ApiSettings
from api.tiers import TierBook
from api.windows import mean_statement
from benchmarks._api.overview import after_expiry, while_refreshing
from benchmarks._ingest.probes import loadavg, versions
from benchmarks.api import Fleet, load, measure, start_api
from control.stack import Influxd, free_port
from safecity import catalogue, citygen, registry
from safecity.influx import InfluxClient
from safecity.registry import City
from safecity.settings import InfluxSettings

DB = "bench"
WINDOW = timedelta(minutes=15)  # the overview's default window
TTL_S = 5.0  # the API's default overview cache
TARGETS = {"cached_p99": 100.0, "uncached_max": 1000.0, "page_p99": 50.0}
Figures = dict[str, float]


def statements(city: City, end: datetime, settings: ApiSettings) -> list[tuple[str, str, Any]]:
    """(name, statement, bound parameters) of each raw statement of a snapshot at `end`, as
    `take_snapshot` asks them with no rollup tiers (last seen: the recent spans)."""
    lookback = end - timedelta(seconds=settings.status_lookback)
    window = lastseen.span_params(city.id, end - WINDOW, end)
    out: list[tuple[str, str, Any]] = [
        (f"window means {k}", mean_statement(k, MEAN_FIELDS[k]), window) for k in MEAN_FIELDS
    ]
    lights = lastseen.span_params(city.id, end - timedelta(seconds=1800), end)
    out.append(("lights (30 min)", LIGHTS_STATEMENT, lights))
    for cut, kinds in lastseen.cuts(settings, catalogue.KINDS, lookback, end).items():
        span = lastseen.span_params(city.id, cut, end)
        name = f"last seen, {(end - cut).total_seconds() / 60:g} min ({len(kinds)} kinds)"
        out.append((name, lastseen.full_statement(kinds), span))
    out.append(
        (
            "offline messages (lookback)",
            OFFLINE_STATEMENT,
            lastseen.span_params(city.id, lookback, end),
        )
    )
    out.append(("events (window)", EVENTS_STATEMENT, window))
    return out


async def per_statement(url: str, city: City, samples: int) -> dict[str, Figures]:
    """Each statement alone: median ms to InfluxDB's last byte, KB answered, ms to parse."""
    runs: dict[str, list[tuple[float, float, float]]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for _ in range(samples):
            for name, q, params in statements(city, datetime.now(UTC), ApiSettings()):
                t0 = time.perf_counter()
                r = await http.post(
                    "/query",
                    data={"q": q, "db": DB, "params": json.dumps(params)},
                    params={"epoch": "ms"},
                )
                t1 = time.perf_counter()
                answer = json.loads(r.content)
                t2 = time.perf_counter()
                if r.status_code != 200 or "error" in answer["results"][0]:
                    raise SystemExit(f"{name}: {r.status_code} {r.text[:300]}")
                runs.setdefault(name, []).append(
                    ((t1 - t0) * 1000, len(r.content) / 1024, (t2 - t1) * 1000)
                )
    return {
        name: {
            "influx_ms": statistics.median(x[0] for x in v),
            "kb": statistics.median(x[1] for x in v),
            "parse_ms": statistics.median(x[2] for x in v),
        }
        for name, v in runs.items()
    }


async def _longest_stall(stop: asyncio.Event) -> float:
    """The longest the event loop was held (ms) until `stop`: how late a 1 ms ticker woke.
    What any other request of the API would have waited (on a busy machine, plus the
    time the process was not scheduled at all)."""
    worst = 0.0
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, (time.perf_counter() - t) * 1000 - 1)
    return worst


async def in_process(url: str, city: City, samples: int) -> Figures:
    """What a snapshot costs in one process: an explicit window's and the board's."""
    influx = InfluxClient(InfluxSettings(url=url, database=DB, timeout=300))
    settings = ApiSettings(influx=influx.settings)
    try:
        await influx.ensure_retention_policies()  # as the API does at its start
        return {
            **await _explicit(influx, settings, city, samples),
            **await _from_board(influx, settings, city, samples),
        }
    finally:
        await influx.close()


async def _explicit(
    influx: InfluxClient, settings: ApiSettings, city: City, samples: int
) -> Figures:
    """The snapshot (`take_snapshot`, median and max ms) and the overview made from it."""
    snaps, views, stalls = [], [], []
    for _ in range(samples):
        end = datetime.now(UTC)
        stop = asyncio.Event()
        ticker = asyncio.create_task(_longest_stall(stop))
        t0 = time.perf_counter()
        window = TimeRange(end - WINDOW, end)
        snap = await take_snapshot(influx, city, window, settings, TierBook(()))
        t1 = time.perf_counter()
        await view(snap, settings, city, None)  # as the API makes it
        snaps.append((t1 - t0) * 1000)
        views.append((time.perf_counter() - t1) * 1000)
        stop.set()
        stalls.append(await ticker)
    return {
        "loop_stall_ms": statistics.median(stalls),
        "snapshot_median_ms": statistics.median(snaps),
        "snapshot_max_ms": max(snaps),
        "overview_python_ms": statistics.median(views),
    }


async def _from_board(
    influx: InfluxClient, settings: ApiSettings, city: City, samples: int
) -> Figures:
    """The board's seed from the loaded history (median and max ms, points held) and the
    moving window's snapshot made from the seeded board (median ms)."""
    seeds, snaps, held = [], [], 0
    for _ in range(samples):
        board = new_board(city)
        at = datetime.now(UTC)
        t0 = time.perf_counter()
        await seed(Served(city, influx, board), settings, at)
        seeds.append((time.perf_counter() - t0) * 1000)
        mark_seeded(board, at)
        held = board.points()
        end = datetime.now(UTC)
        t0 = time.perf_counter()
        window = TimeRange(end - WINDOW, end)
        snap = await take_snapshot(influx, city, window, settings, TierBook(()), board)
        snaps.append((time.perf_counter() - t0) * 1000)
        assert snap.board, "the seeded board did not cover the moving window"
    return {
        "seed_median_ms": statistics.median(seeds),
        "seed_max_ms": max(seeds),
        "board_points": held,
        "board_snapshot_median_ms": statistics.median(snaps),
    }


async def through_api(url: str, key: str, city: City, requests: int, samples: int) -> Figures:
    """The API's overview cached (p99, 4 clients) and uncached (max), a device page p99."""
    # Idle connections dropped before uvicorn's 5 s keep-alive ends them: a request on one
    # the server is closing that moment fails (httpx.ReadError), whatever the API.
    limits = httpx.Limits(keepalive_expiry=2.0)
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers, limits=limits) as http:
        path = f"/v1/cities/{city.id}/overview"

        async def get_overview() -> None:
            (await http.get(path)).raise_for_status()

        async def page() -> None:
            (await http.get("/v1/devices", params={"limit": 100})).raise_for_status()

        cached = await measure(get_overview, requests, seconds=2 * TTL_S)
        listing = await measure(page, requests)
        busy_page = await while_refreshing(
            http, path, TTL_S, lambda: measure(page, requests, seconds=3 * TTL_S)
        )
        busy_cached = await while_refreshing(
            http, path, TTL_S, lambda: measure(get_overview, requests, seconds=3 * TTL_S)
        )
        cold = await after_expiry(http, path, TTL_S, samples)
    return {
        "cached_p99": cached["p99"],
        "busy_cached_p99": busy_cached["p99"],
        "busy_page_p99": busy_page["p99"],
        "uncached_median": cold["median"],
        "uncached_max": cold["max"],
        "page_p99": listing["p99"],
    }


def one(base: Path, devices: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one city size, on its own InfluxDB."""
    city = citygen.generate("scaleville", devices, 7)
    home = base / f"n{devices}"
    home.mkdir()
    registry_file = home / "city.jsonl"
    registry.write(city, registry_file)
    influxd = Influxd(home / "influxd", port=free_port())
    influxd.start()
    out: dict[str, Any] = {"devices": devices}
    try:
        end = datetime.now(UTC)
        fleet = Fleet(step_s=1, live=True, gone=0.02, never=0.01)
        points, took = load(influxd.url, DB, city, args.minutes / 60, end, fleet)
        out.update(points=points, load_s=round(took, 1))
        out.update(asyncio.run(in_process(influxd.url, city, args.samples)))
        out["statements"] = asyncio.run(per_statement(influxd.url, city, args.samples))
        _, key = KeyStore(home / "keys.json").create("bench", ("read",))
        proc, url = start_api(influxd.url, DB, registry_file, home / "keys.json", home, TTL_S)
        try:
            out.update(asyncio.run(through_api(url, key, city, args.requests, args.samples)))
        finally:
            proc.stop(timeout=10)
    finally:
        influxd.stop()
    out["load_average"] = loadavg()
    print("# " + json.dumps(out), flush=True)
    return out


def _cell(value: float, base: float | None, fmt: str = ".0f") -> str:
    ratio = f" ({value / base:.2f}x)" if base else ""
    return format(value, fmt) + ratio


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each figure at each size, with its ratio to the smallest size's."""
    first = rows[0]
    head = "| Figure | " + " | ".join(f"{r['devices']:,} devices" for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]

    def line(label: str, get: Any, fmt: str = ".0f") -> None:
        cells = [_cell(get(r), None if r is first else get(first), fmt) for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for name in first["statements"]:
        line(f"{name}: InfluxDB ms", lambda r, n=name: r["statements"][n]["influx_ms"])
        line(f"{name}: answer KB", lambda r, n=name: r["statements"][n]["kb"])
        line(f"{name}: JSON parse ms", lambda r, n=name: r["statements"][n]["parse_ms"], ".1f")
    line("sum of the statements alone, ms", _statement_sum)
    line("snapshot in process (median), ms", lambda r: r["snapshot_median_ms"])
    line("snapshot in process (max), ms", lambda r: r["snapshot_max_ms"])
    line("overview from a snapshot (Python), ms", lambda r: r["overview_python_ms"], ".1f")
    line("longest event-loop stall in both (median), ms", lambda r: r["loop_stall_ms"], ".1f")
    line("board seed from the history (median), ms", lambda r: r["seed_median_ms"])
    line("board seed from the history (max), ms", lambda r: r["seed_max_ms"])
    line("points on the seeded board", lambda r: r["board_points"])
    line("moving snapshot from the board (median), ms", lambda r: r["board_snapshot_median_ms"])
    line("API overview cached p99, ms", lambda r: r["cached_p99"], ".1f")
    line("API overview uncached (median), ms", lambda r: r["uncached_median"])
    line("API overview uncached (max), ms", lambda r: r["uncached_max"])
    line("API device page p99, ms", lambda r: r["page_p99"], ".1f")
    line("API overview cached p99 while refreshing, ms", lambda r: r["busy_cached_p99"], ".1f")
    line("API device page p99 while refreshing, ms", lambda r: r["busy_page_p99"], ".1f")
    return "\n".join(lines)


def _statement_sum(row: dict[str, Any]) -> float:
    return float(sum(s["influx_ms"] for s in row["statements"].values()))


def main(argv: Sequence[str] | None = None) -> None:
    """Run every size; print the table and the verdicts at the largest."""
    parser = argparse.ArgumentParser(prog="benchmarks.overview")
    parser.add_argument("--devices", type=int, nargs="+", default=[2000, 6000, 18000])
    parser.add_argument("--minutes", type=float, default=30.0, help="readings loaded, minutes")
    parser.add_argument("--samples", type=int, default=5, help="uncached/statement samples")
    parser.add_argument("--requests", type=int, default=200, help="requests per API figure")
    args = parser.parse_args(argv if argv is not None else [])
    print(
        f"# conditions: {os.cpu_count()} CPUs, load average {loadavg()}; {versions()}", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="safecity-bench-overview-") as tmp:
        rows = [one(Path(tmp), n, args) for n in sorted(args.devices)]
    print(table(rows))
    top = rows[-1]
    verdicts = [
        f"{name} {top[name]:.1f} ms <= {limit:g}: {'met' if top[name] <= limit else 'NOT met'}"
        for name, limit in TARGETS.items()
    ]
    print(f"at {top['devices']:,} devices: " + "; ".join(verdicts) + f"; load {loadavg()}")


if __name__ == "__main__":
    main(sys.argv[1:])
