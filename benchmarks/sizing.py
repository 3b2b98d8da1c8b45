"""The sizing model: docs/sizing.md and the size overlays' patches, from measured unit costs.

Reads benchmarks/results/costs.json (written by `python -m benchmarks.costs`) and writes
docs/sizing.md plus deploy/kubernetes/overlays/{small,medium,large}/sizing.yaml, so the
table a reader sizes a city with and the manifests they apply cannot disagree.
`--check` exits 1 if any written file differs from what the model gives.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safecity.rollups import DEFAULT_TIERS, parse_tiers

ROOT = Path(__file__).resolve().parent.parent
COSTS = ROOT / "benchmarks" / "results" / "costs.json"
ROLLUPS = ROOT / "benchmarks" / "results" / "rollups.json"
DOC = ROOT / "docs" / "sizing.md"
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"

# Assumptions (stated in the document): each is a choice, not a measurement.
REPORT_EVERY_S = 60  # every device sends one reading a minute (catalogue cadences 1-5 min)
HEADROOM = 2.0  # capacity for twice the steady rate: catch-up after an outage, peaks
INGEST_CORES_PER_REPLICA = 1.0  # the ingest pod's CPU limit
MIN_INGEST_REPLICAS = 2  # one may restart while the other keeps up
BROKER_RECEIVE_FACTOR = 2.0  # receiving a publish costs about what delivering it does
BROKER_CORE_BUDGET = 0.6  # Mosquitto is single-threaded: plan at 60 % of one core
MOSQUITTO_MAX_SESSIONS = 100_000  # persistent TLS sessions one Mosquitto is planned for
EMQX_SESSIONS_PER_NODE = 250_000  # per clustered-broker node (memory, fds)
EMQX_CORES_PER_NODE = 4.0  # the EMQX pod's request is 1 core; plan nodes of 4
EMQX_MIN_NODES = 3  # a cluster that survives the loss of one node
RAW_RETENTION_DAYS = 30  # InfluxSettings.retention_duration
MIN_INFLUX_CORES = 2  # compactions and queries need a core of their own
INFLUX_QUERY_SHARE = 1.0  # as much CPU again for dashboards, API and compactions
SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000}


@dataclass(frozen=True)
class Plan:
    """What a city of `devices` needs."""

    devices: int
    readings_per_s: float
    ingest_replicas: int
    ingest_cores: float
    broker_nodes: int
    broker_cores: float
    influx_cores: int
    influx_memory_gib: int
    disk_gib: float


def plan(costs: dict[str, float], devices: int, every_s: float = REPORT_EVERY_S) -> Plan:
    """Size a city from the unit costs."""
    rate = devices / every_s
    ingest = rate * costs["ingest_us_per_reading"] / 1e6 * HEADROOM
    replicas = max(MIN_INGEST_REPLICAS, math.ceil(ingest / INGEST_CORES_PER_REPLICA))
    broker = rate * costs["broker_us_per_reading"] * BROKER_RECEIVE_FACTOR / 1e6 * HEADROOM
    if broker <= BROKER_CORE_BUDGET and devices <= MOSQUITTO_MAX_SESSIONS:
        nodes = 1
    else:
        nodes = max(
            EMQX_MIN_NODES,
            math.ceil(devices / EMQX_SESSIONS_PER_NODE),
            math.ceil(broker / (EMQX_CORES_PER_NODE * BROKER_CORE_BUDGET)),
        )
    influx = rate * costs["influx_us_per_reading"] / 1e6 * HEADROOM * (1 + INFLUX_QUERY_SHARE)
    disk = rate * costs["influx_disk_bytes_per_point"] * RAW_RETENTION_DAYS * 86_400 / 2**30
    cores = max(MIN_INFLUX_CORES, math.ceil(influx))
    return Plan(
        devices=devices,
        readings_per_s=rate,
        ingest_replicas=replicas,
        ingest_cores=ingest,
        broker_nodes=nodes,
        broker_cores=broker,
        influx_cores=cores,
        influx_memory_gib=max(2, 2 * cores),
        disk_gib=disk,
    )


def _gib(value: float) -> str:
    return f"{value:,.1f} GiB" if value < 1024 else f"{value / 1024:,.1f} TiB"


def rollup_section(rollups: dict[str, Any] | None) -> str:
    """The rollup tiers' disk per device-year, from `benchmarks/results/rollups.json`."""
    if rollups is None:
        return ""
    rows = []
    for tier in parse_tiers(DEFAULT_TIERS):
        measured = rollups["tiers"].get(tier.name)
        if measured is None:
            continue
        # A device reporting every REPORT_EVERY_S fills every bucket of a tier at least
        # that long; a finer tier gets one bucket per reading.
        buckets = 365 * 86_400 / max(tier.every_s, REPORT_EVERY_S)
        year = measured["bytes_per_point"] * buckets / 2**20
        kept_years = None if tier.keep_s is None else tier.keep_s / (365 * 86_400)
        steady = (
            "grows by the per-year figure"
            if kept_years is None
            else (f"{year * kept_years:,.2f} MiB ({tier.keep} kept)")
        )
        rows.append(
            f"| `{tier.name}` | {measured['bytes_per_point']:.1f} | {buckets:,.0f} | "
            f"{year:,.2f} MiB | {steady} |"
        )
    return f"""
## Rollup tiers: disk per device-year

Measured {rollups["measured_at"]} by `python -m benchmarks.rollups` ({rollups["conditions"]}):
bytes per stored bucket of each tier's policy (TSM + WAL: an upper bound), for a device's
own buckets (`<kind>_by_device`; a district's buckets add the same per kind and district).
A device reporting every {REPORT_EVERY_S} s fills every bucket of a tier.

| Tier | Bytes per bucket | Buckets per device-year | Per device-year | Per device, steady state |
|---|---|---|---|---|
{chr(10).join(rows)}
"""


def render_doc(costs: dict[str, float], rollups: dict[str, Any] | None = None) -> str:
    """docs/sizing.md."""
    rows = []
    for size, devices in SIZES.items():
        p = plan(costs, devices)
        broker = "1 Mosquitto" if p.broker_nodes == 1 else f"EMQX, {p.broker_nodes} nodes"
        rows.append(
            f"| {devices:,} | `{size}` | {p.readings_per_s:,.0f} | {p.ingest_replicas} "
            f"({p.ingest_cores:.2f} cores) | {broker} ({p.broker_cores:.2f} cores) | "
            f"{p.influx_cores} cores, {p.influx_memory_gib} GiB | {_gib(p.disk_gib)} |"
        )
    c = costs
    measured = [
        (
            "ingest CPU per reading (decode, validate, line protocol, gzip, write, ack)",
            f"{c['ingest_us_per_reading']:.1f} us",
        ),
        (
            "broker CPU per reading delivered (Mosquitto, QoS 1, to the ingest)",
            f"{c['broker_us_per_reading']:.1f} us",
        ),
        ("InfluxDB CPU per reading written", f"{c['influx_us_per_reading']:.1f} us"),
        (
            f"InfluxDB disk per reading ({c['disk_sample']}; TSM after a clean stop)",
            f"{c['influx_disk_bytes_per_point']:.1f} bytes",
        ),
        (
            "one ingest worker's drain rate (the same run)",
            f"{c['ingest_rate']:,.0f} readings/s, RSS {c['ingest_rss_mib']:.0f} MiB",
        ),
        ("API CPU per cached city overview", f"{c['api_overview_cpu_ms']:.2f} ms"),
        ("API CPU per 24 h district series", f"{c['api_series_cpu_ms']:.2f} ms"),
    ]
    costs_table = "\n".join(
        ["| Cost | Measured |", "|---|---|", *(f"| {a} | {b} |" for a, b in measured)]
    )
    plans_header = (
        "| Devices | Overlay | Readings/s | Ingest replicas | Broker | InfluxDB | "
        f"Disk ({RAW_RETENTION_DAYS} d raw) |\n|---|---|---|---|---|---|---|"
    )
    return f"""# Sizing a deployment

Generated by `python benchmarks/sizing.py` from `benchmarks/results/costs.json` (written by
`python -m benchmarks.costs`): do not edit; re-run both to re-measure. The size overlays in
`deploy/kubernetes/overlays/` take their replica counts and InfluxDB resources from the same
model, so this table and `kubectl apply -k deploy/kubernetes/overlays/<size>` agree.

## Measured unit costs

Measured {c["measured_at"]}: {c["conditions"]}; load average at the end {c["load_average_end"]}.

{costs_table}

## Assumptions

- Each device sends one reading every {REPORT_EVERY_S} s (the catalogue's cadences are 1-5
  min). For another cadence, scale the readings/s column.
- Capacity is planned at {HEADROOM:g}x the steady rate: after an outage the ingest must drain
  its backlog faster than new readings arrive (the reliability contract).
- An ingest replica is one worker with a CPU limit of {INGEST_CORES_PER_REPLICA:g} core; never
  fewer than {MIN_INGEST_REPLICAS}, so one may restart while the other keeps up.
- Receiving a publish is assumed to cost the broker about as much as delivering it
  ({BROKER_RECEIVE_FACTOR:g}x the measured delivery cost). Mosquitto is single-threaded: one
  node is planned at {BROKER_CORE_BUDGET:.0%} of one core and at most {MOSQUITTO_MAX_SESSIONS:,}
  device sessions; beyond that the clustered broker (EMQX, `components/emqx`) is used: at
  least {EMQX_MIN_NODES} nodes, {EMQX_SESSIONS_PER_NODE:,} sessions and {EMQX_CORES_PER_NODE:g}
  cores per node, with Mosquitto's measured cost per message assumed (not measured here:
  check it with the broker's own benchmark before relying on it).
- InfluxDB gets as much CPU again for queries (API, Grafana) and compactions, and never
  fewer than {MIN_INFLUX_CORES} cores. Disk is the
  raw retention policy ({RAW_RETENTION_DAYS} days) only; events, security and incidents have
  their own, much smaller, policies. Above ~8 cores one InfluxDB 1.x OSS node is no longer
  the right store: use a clustered InfluxDB (settings only, the v1 API is the same).
- API replicas are not driven by devices but by users: the HorizontalPodAutoscaler scales
  them on CPU; from the costs above one core serves about
  {1000 / max(c["api_overview_cpu_ms"], 1e-9):,.0f} cached overviews/s.

## Plans

{plans_header}
{chr(10).join(rows)}

Then: `kubectl apply -k deploy/kubernetes/overlays/<overlay>` after creating the Secrets
(deploy/kubernetes/README.md). What is validated here and what is not is stated there.
{rollup_section(rollups)}"""


def render_overlay(costs: dict[str, float], size: str) -> str:
    """The size overlay's patch: ingest replicas and InfluxDB resources and disk."""
    p = plan(costs, SIZES[size])
    disk = max(10, math.ceil(p.disk_gib * 1.3))
    broker = ""
    if p.broker_nodes > 1:
        broker = f"""---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: safecity-emqx
spec:
  replicas: {p.broker_nodes}
"""
    return f"""# Generated by `python benchmarks/sizing.py` from benchmarks/results/costs.json:
# do not edit. A city of {SIZES[size]:,} devices (docs/sizing.md).
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: safecity-ingest
spec:
  replicas: {p.ingest_replicas}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: safecity-influxdb
spec:
  template:
    spec:
      containers:
        - name: influxdb
          resources:
            requests: {{cpu: "{p.influx_cores}", memory: {p.influx_memory_gib}Gi}}
            limits: {{memory: {2 * p.influx_memory_gib}Gi}}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {disk}Gi
{broker}"""


def outputs(costs: dict[str, float], rollups: dict[str, Any] | None = None) -> dict[Path, str]:
    """Every file the model writes."""
    out = {DOC: render_doc(costs, rollups)}
    for size in SIZES:
        out[OVERLAYS / size / "sizing.yaml"] = render_overlay(costs, size)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write (or --check) docs/sizing.md and the overlays' sizing patches."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--costs", type=Path, default=COSTS)
    args = parser.parse_args(argv)
    costs = json.loads(args.costs.read_text(encoding="utf-8"))
    rollups = json.loads(ROLLUPS.read_text(encoding="utf-8")) if ROLLUPS.exists() else None
    stale = 0
    for path, text in outputs(costs, rollups).items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            print(f"stale: {path.relative_to(ROOT)} (run python benchmarks/sizing.py)")
            stale += 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
