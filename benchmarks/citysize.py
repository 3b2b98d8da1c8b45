"""Per-device costs of a whole city: `safecity run` with 2k, 6k and 18k devices, each its own
MQTT connection, account and client id.

For each size, a generated city (`safecity.citygen`, seed 7) runs under `safecity run`
(the simulator spread over one process per 6,000 devices) in a temp SAFECITY_HOME on
free ports, and the benchmark measures from outside (/proc, the API, `safecity verify`):

- start: seconds to the API, to 99 % of the devices online (the API's overview);
- steady state (60 s): resident memory of the simulator, broker, database and each
  service, the broker's and the simulator's CPU per device-second, open files;
- the API: overview p99 (cached), the overview just after each cache expiry
  (uncached), a device-list page p99 (100 devices), 4 concurrent clients;
- the reconnect storm: the broker is killed (kill -9) and started again on the same
  data; seconds until every connection is back, its CPU for the storm per device;
- `safecity verify` after the storm: lost must be 0.

Per-device figures are slopes between sizes; each size's figures are shown as ratios
to the smallest size's (the baseline of the same run): linear growth keeps the
per-device figures flat. Results go to benchmarks/results/citysize.json (read by the
sizing model, benchmarks/sizing.py).

Run: `.venv/bin/python -m benchmarks.citysize [--sizes 2000 6000 18000]` (about 4 min
per 6,000 devices on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks._citysize import procs
from benchmarks._citysize.run import ONLINE_SHARE, CityRun, wait
from benchmarks._ingest.probes import loadavg, versions
from safecity.settings import InfluxSettings

RESULTS = Path(__file__).resolve().parent / "results" / "citysize.json"
STEADY_S = 60.0
CACHE_TTL_S = 5.0  # the API's default overview cache


def _series(run: CityRun) -> int:
    """Series in the city's InfluxDB database (exact cardinality)."""
    state_url = run.influx_url()
    db = InfluxSettings().database_for(run.city.id, (run.city.id,))
    r = httpx.get(
        f"{state_url}/query", params={"q": "SHOW SERIES EXACT CARDINALITY", "db": db}, timeout=60
    )
    # One row per measurement.
    series = r.json()["results"][0].get("series", [])
    return int(sum(v[-1] for s in series for v in s.get("values", [])))


def _steady(run: CityRun, seconds: float) -> dict[str, float]:
    """CPU per device-second and memory after `seconds` of steady running."""
    pids = run.pids
    assert pids is not None
    b0, s0 = procs.cpu_s(pids.mosquitto), sum(procs.cpu_s(p) for p in pids.simulators())
    time.sleep(seconds)
    b1, s1 = procs.cpu_s(pids.mosquitto), sum(procs.cpu_s(p) for p in pids.simulators())
    n = run.devices
    out = {
        "broker_us_per_device_s": (b1 - b0) / seconds / n * 1e6,
        "simulator_us_per_device_s": (s1 - s0) / seconds / n * 1e6,
        "simulator_mib": pids.simulator_rss(),
        "simulator_max_files": pids.simulator_files(),
        "broker_mib": procs.rss_mib(pids.mosquitto),
        "broker_files": procs.open_files(pids.mosquitto),
        "influxd_mib": procs.rss_mib(pids.influxd),
    }
    for name, pid in pids.services.items():
        out[f"{name}_mib"] = procs.rss_mib(pid)
    return out


def _storm(run: CityRun) -> dict[str, float]:
    """kill -9 the broker, start it again: seconds until every connection is back."""
    before = run.connections()
    run.kill_broker()
    time.sleep(2.0)
    run.start_broker()
    assert run.pids is not None
    back = wait(lambda: run.connections() >= before, 300, every=0.25)
    return {
        "storm_connections": before,
        "storm_back_s": back if back is not None else float("nan"),
        "storm_broker_cpu_ms_per_device": procs.cpu_s(run.pids.mosquitto) / run.devices * 1e3,
    }


def one(base: Path, devices: int, steady_s: float, requests: int) -> dict[str, Any]:
    """Every figure of one city size."""
    run = CityRun(base / f"n{devices}", devices)
    out: dict[str, Any] = {"devices": devices, "simulator_processes": run.processes}
    try:
        t0 = time.monotonic()
        out["api_s"] = run.start()
        assert run.pids is not None
        cpu0 = procs.cpu_s(run.pids.mosquitto)
        up = wait(lambda: run.online() >= ONLINE_SHARE * devices, 300, every=2.0)
        out["online99_s"] = (time.monotonic() - t0) if up is not None else float("nan")
        out["connect_broker_cpu_ms_per_device"] = (
            (procs.cpu_s(run.pids.mosquitto) - cpu0) / devices * 1e3
        )
        print(f"# {devices}: API {out['api_s']:.1f} s, 99 % online {out['online99_s']:.1f} s")
        out.update(_steady(run, steady_s))
        out["influx_series"] = _series(run)
        out.update(run.api_latency(requests, 6, CACHE_TTL_S))
        out.update(_storm(run))
        time.sleep(30.0)  # the spools drain after the storm
        report = run.verify()
        out["verify"] = {k: report.get(k) for k in ("sent", "acknowledged", "stored", "lost")}
        out["verify_lost"] = report.get("lost", "error")
        out["load_average"] = loadavg()
    finally:
        run.stop()
    print("# " + json.dumps(out), flush=True)
    return out


PER_DEVICE = (
    ("broker_mib", "broker memory, KiB per connection"),
    ("influxd_mib", "InfluxDB memory, KiB per device"),
    ("ingest_mib", "ingest memory, KiB per registered device"),
    ("alerts_mib", "alerts memory, KiB per registered device"),
    ("api_mib", "API memory, KiB per registered device"),
)


def slopes(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per-device figures: the growth between the smallest and the largest size."""
    low, high = rows[0], rows[-1]
    span = high["devices"] - low["devices"]
    out = {}
    for key, _ in PER_DEVICE:
        # The largest city that has the figure (a run may lack one: stated in the table).
        top = [r for r in rows if key in r][-1]
        if top["devices"] > low["devices"]:
            out[f"{key}_kib_per_device"] = _kib_per_device(low, top, key)
    out["influx_series_per_device"] = (high["influx_series"] - low["influx_series"]) / max(span, 1)
    out.update(_simulator_split(rows))
    return out


def _simulator_split(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The simulator's memory per device and per process.

    Every simulator process holds an interpreter and the city's whole registry (its scene
    and faults draw on every device), so a city spread over more processes pays those once
    more each: the per-device figure is the slope between sizes run in as many processes
    as the smallest, and what the largest city holds beyond its devices is per process.
    """
    first = rows[0].get("simulator_processes")
    same = [r for r in rows if r.get("simulator_processes") == first and "simulator_mib" in r]
    if len(same) < 2 or same[-1]["devices"] == same[0]["devices"]:
        return {}
    per_device = _kib_per_device(same[0], same[-1], "simulator_mib")
    top = rows[-1]
    beyond = top["simulator_mib"] - per_device * top["devices"] / 1024
    return {
        "simulator_mib_kib_per_device": per_device,
        "simulator_mib_per_process": beyond / top["simulator_processes"],
    }


def _kib_per_device(low: dict[str, Any], high: dict[str, Any], key: str) -> float:
    """The growth of a MiB figure between two sizes, KiB per device."""
    return float((high[key] - low[key]) * 1024 / (high["devices"] - low["devices"]))


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: each size's figures and their ratio to the smallest size's."""
    base = rows[0]
    head = "| Figure | " + " | ".join(f"{r['devices']:,} devices" for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]

    def row(label: str, key: str, fmt: str, per_device: bool = False) -> None:
        cells = []
        for r in rows:
            if key not in r:
                cells.append("not measured")
                continue
            value = r[key] / r["devices"] if per_device else r[key]
            ref = base.get(key, 0) / base["devices"] if per_device else base.get(key, 0)
            numbers = isinstance(value, int | float) and isinstance(ref, int | float)
            ratio = f" ({value / ref:.2f}x)" if numbers and ref and r is not base else ""
            text = ", ".join(map(str, value)) if isinstance(value, list) else format(value, fmt)
            cells.append(text + ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("simulator processes", "simulator_processes", "d")
    row("API answers, s", "api_s", ".1f")
    row("99 % online, s", "online99_s", ".1f")
    row("simulator memory per device, MiB (total / devices)", "simulator_mib", ".4f", True)
    row("broker memory, MiB", "broker_mib", ".0f")
    row(
        "broker CPU per device connect (birth, first reading), ms",
        "connect_broker_cpu_ms_per_device",
        ".3f",
    )
    row("broker CPU per device-second, us (steady)", "broker_us_per_device_s", ".2f")
    row("simulator CPU per device-second, us (steady)", "simulator_us_per_device_s", ".1f")
    row("InfluxDB series per device", "influx_series", ".2f", True)
    row("overview p99 cached, ms", "overview_cached_p99_ms", ".1f")
    row("overview uncached (max of 6), ms", "overview_uncached_max_ms", ".0f")
    row("overview served by", "overview_served_by", "")
    row("overview of an explicit window (max of 3), ms", "overview_explicit_max_ms", ".0f")
    row("device-list page p99, ms", "device_page_p99_ms", ".1f")
    row("API answers other than 200 (of the requests above)", "api_error_count", "d")
    row("reconnect storm: all back, s", "storm_back_s", ".1f")
    row("reconnect storm: broker CPU per device, ms", "storm_broker_cpu_ms_per_device", ".3f")
    row("verify after the storm: lost", "verify_lost", "")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every size; print the table; write the results."""
    parser = argparse.ArgumentParser(prog="benchmarks.citysize")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000, 18000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--steady", type=float, default=STEADY_S, help="steady window, s")
    parser.add_argument("--requests", type=int, default=200, help="API requests per figure")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other sizes already in --out"
    )
    args = parser.parse_args(argv)
    conditions = f"{os.cpu_count()} CPUs, load average at start {loadavg()}; {versions()}"
    print(f"# conditions: {conditions}", flush=True)
    rows: list[dict[str, Any]] = []
    if args.merge and args.out.exists():
        before = json.loads(args.out.read_text(encoding="utf-8"))
        rows = [r for r in before["sizes"] if r["devices"] not in args.sizes]
        conditions = f"{before['conditions']}; then {conditions}"
    with tempfile.TemporaryDirectory(prefix="safecity-citysize-") as tmp:
        for n in sorted(args.sizes):
            rows.append(one(Path(tmp), n, args.steady, args.requests))
            rows.sort(key=lambda r: r["devices"])
            _write(args.out, conditions, rows)  # each size as soon as it is measured
    print(table(rows))
    print(json.dumps(slopes(rows), indent=1))
    print(f"written to {args.out}")


def _write(out: Path, conditions: str, rows: list[dict[str, Any]]) -> None:
    result = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "conditions": conditions,
        "load_average_end": loadavg(),
        "sizes": rows,
        **(slopes(rows) if len(rows) > 1 else {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
