"""The sizing model: docs/sizing.md and the size overlays' patches, from measured unit costs.

Reads benchmarks/results/costs.json (per-reading costs, written by `python -m
benchmarks.costs`) and benchmarks/results/citysize.json (per-device costs, written by
`python -m benchmarks.citysize`) and writes docs/sizing.md plus
deploy/kubernetes/overlays/{small,medium,large}/sizing.yaml, so the table a reader sizes
a city with and the manifests they apply cannot disagree.
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
DEVICE_COSTS = ROOT / "benchmarks" / "results" / "citysize.json"
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
OPEN_FILES = 1_048_576  # LimitNOFILE / container ulimit a broker host is given (docs)
OPEN_FILES_HERE = 20_000  # the hard limit of the machine the benchmarks ran on
FILES_RESERVED = 100  # listeners, persistence, logs: not connections
STORM_TARGET_S = 90.0  # every device back within this after a broker restart
SIM_FILES_PER_DEVICE = 1  # a simulated device: its socket (its spool is opened per write)
EMQX_SESSIONS_PER_NODE = 250_000  # per clustered-broker node (memory, fds)
EMQX_CORES_PER_NODE = 4.0  # the EMQX pod's request is 1 core; plan nodes of 4
EMQX_MIN_NODES = 3  # a cluster that survives the loss of one node
RAW_RETENTION_DAYS = 30  # InfluxSettings.retention_duration
MIN_INFLUX_CORES = 2  # compactions and queries need a core of their own
INFLUX_QUERY_SHARE = 1.0  # as much CPU again for dashboards, API and compactions
SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000}


def mosquitto_sessions(costs: dict[str, float]) -> int:
    """Devices one Mosquitto is planned for: its sessions, its open files, and the
    reconnect storm after its restart (single-threaded: every CONNECT on one core)."""
    storm = STORM_TARGET_S / (costs["storm_broker_cpu_ms_per_device"] / 1e3)
    return int(min(MOSQUITTO_MAX_SESSIONS, OPEN_FILES - FILES_RESERVED, storm))


def storm_s(costs: dict[str, float], devices: int, nodes: int) -> float:
    """Broker CPU seconds of every device reconnecting at once, per node."""
    return devices / nodes * costs["storm_broker_cpu_ms_per_device"] / 1e3


def node_cores(nodes: int) -> float:
    """The cores a broker node spreads its CONNECTs over: Mosquitto one, an EMQX node its own."""
    return 1.0 if nodes == 1 else EMQX_CORES_PER_NODE


def load_costs(per_reading: Path = COSTS, per_device: Path = DEVICE_COSTS) -> dict[str, Any]:
    """Both measurements as one dict (their conditions under their own names)."""
    costs = json.loads(per_reading.read_text(encoding="utf-8"))
    devices = json.loads(per_device.read_text(encoding="utf-8"))
    largest = devices["sizes"][-1]
    costs.update({k: v for k, v in devices.items() if k.endswith(("_per_device", "_per_process"))})
    costs["simulator_mib_per_process_at"] = largest["devices"]
    for key in ("storm_broker_cpu_ms_per_device", "broker_us_per_device_s"):
        costs[key] = largest[key]
    costs["device_measured_at"] = devices["measured_at"]
    costs["device_conditions"] = devices["conditions"]
    costs["device_load_end"] = devices["load_average_end"]
    costs["device_sizes"] = devices["sizes"]
    return costs


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
    broker_memory_gib: float
    """Per broker node: its connections (and the accounts they log in as)."""
    storm_cpu_s: float
    """Per broker node: CPU seconds of every device reconnecting at once."""
    storm_s: float
    """Per broker node: those CPU seconds on the node's cores (what must fit in the target)."""
    registry_memory_gib: float
    """Per ingest, alerts or API replica: what holding the registry's devices costs."""


def plan(costs: dict[str, Any], devices: int, every_s: float = REPORT_EVERY_S) -> Plan:
    """Size a city from the unit costs."""

    def kib(process: str) -> float:
        per_device: float = costs[f"{process}_mib_kib_per_device"]
        return per_device

    rate = devices / every_s
    ingest = rate * costs["ingest_us_per_reading"] / 1e6 * HEADROOM
    replicas = max(MIN_INGEST_REPLICAS, math.ceil(ingest / INGEST_CORES_PER_REPLICA))
    broker = rate * costs["broker_us_per_reading"] * BROKER_RECEIVE_FACTOR / 1e6 * HEADROOM
    if broker <= BROKER_CORE_BUDGET and devices <= mosquitto_sessions(costs):
        nodes = 1
    else:
        nodes = max(
            EMQX_MIN_NODES,
            math.ceil(devices / EMQX_SESSIONS_PER_NODE),
            math.ceil(broker / (EMQX_CORES_PER_NODE * BROKER_CORE_BUDGET)),
            # The storm on every node's cores within the target (Mosquitto's cost assumed).
            math.ceil(storm_s(costs, devices, 1) / (STORM_TARGET_S * EMQX_CORES_PER_NODE)),
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
        influx_memory_gib=max(2, 2 * cores, math.ceil(HEADROOM * devices * kib("influxd") / 2**20)),
        disk_gib=disk,
        broker_memory_gib=devices / nodes * kib("broker") / 2**20,
        registry_memory_gib=devices * max(kib(s) for s in ("ingest", "alerts", "api")) / 2**20,
        storm_cpu_s=storm_s(costs, devices, nodes),
        storm_s=storm_s(costs, devices, nodes) / node_cores(nodes),
    )


def _storm(p: Plan) -> str:
    cores = node_cores(p.broker_nodes)
    return f"{p.storm_cpu_s:.0f} s, {p.storm_s:.0f} s on {cores:g} core{'s' if cores > 1 else ''}"


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


def _device_costs(c: dict[str, Any]) -> str:
    """The per-device cost table (slopes between the smallest and the largest city)."""
    kib = "KiB per device"
    sim, broker = c["simulator_mib_kib_per_device"], c["broker_mib_kib_per_device"]
    rows = [
        ("simulator memory (one process's devices)", f"{sim:.1f} {kib}"),
        (
            "simulator memory per process beyond its devices (its interpreter and the "
            f"whole registry), at {c['simulator_mib_per_process_at']:,} devices",
            f"{c['simulator_mib_per_process']:.0f} MiB",
        ),
        ("broker memory per connection (with its account)", f"{broker:.1f} KiB"),
        ("ingest memory per registered device", f"{c['ingest_mib_kib_per_device']:.1f} KiB"),
        ("alerts memory per registered device", f"{c['alerts_mib_kib_per_device']:.1f} KiB"),
        ("API memory per registered device", f"{c['api_mib_kib_per_device']:.1f} KiB"),
        ("InfluxDB memory", f"{c['influxd_mib_kib_per_device']:.1f} {kib}"),
        ("InfluxDB series", f"{c['influx_series_per_device']:.2f} per device"),
        (
            "broker CPU per reconnecting device (CONNECT, password hash, subscriptions, "
            "birth), in a storm",
            f"{c['storm_broker_cpu_ms_per_device']:.2f} ms",
        ),
        (
            "broker CPU per device-second, steady (keep-alive and readings)",
            f"{c['broker_us_per_device_s']:.1f} us",
        ),
    ]
    sizes = c["device_sizes"]
    head = "| Cost | Measured |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    runs = ["| City | " + " | ".join(f"{r['devices']:,}" for r in sizes) + " |"]
    runs.append("|---|" + "---|" * len(sizes))
    for label, key, fmt in (
        ("simulator processes", "simulator_processes", "d"),
        ("API answers, s", "api_s", ".0f"),
        ("99 % of devices online, s", "online99_s", ".0f"),
        ("after kill -9 of the broker: all back, s", "storm_back_s", ".0f"),
        ("overview p99 (cached), ms", "overview_cached_p99_ms", ".0f"),
        ("overview uncached (max of 6), ms", "overview_uncached_max_ms", ".0f"),
        ("overview of an explicit window (max of 3), ms", "overview_explicit_max_ms", ".0f"),
        ("device-list page p99, ms", "device_page_p99_ms", ".0f"),
        ("`safecity verify` after the storm: lost", "verify_lost", ""),
    ):
        cells = (format(r[key], fmt) if key in r else "not measured" for r in sizes)
        runs.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(runs)


def _explicit_s(c: dict[str, Any]) -> float:
    """The slowest explicit-window overview of the largest city, s (before that figure was
    measured apart, the moving window's uncached one was the same statements)."""
    largest = c["device_sizes"][-1]
    return (
        float(largest.get("overview_explicit_max_ms", largest["overview_uncached_max_ms"])) / 1000
    )


def render_doc(costs: dict[str, Any], rollups: dict[str, Any] | None = None) -> str:
    """docs/sizing.md."""
    rows = []
    for size, devices in SIZES.items():
        p = plan(costs, devices)
        broker = "1 Mosquitto" if p.broker_nodes == 1 else f"EMQX, {p.broker_nodes} nodes"
        rows.append(
            f"| {devices:,} | `{size}` | {p.readings_per_s:,.0f} | {p.ingest_replicas} "
            f"({p.ingest_cores:.2f} cores) | {broker} ({p.broker_cores:.2f} cores) | "
            f"{p.influx_cores} cores, {p.influx_memory_gib} GiB | {_gib(p.disk_gib)} | "
            f"{p.broker_memory_gib:.2f} GiB | {_storm(p)} | {p.registry_memory_gib:.2f} GiB |"
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
        f"Disk ({RAW_RETENTION_DAYS} d raw) | Broker memory per node | Reconnect storm per "
        "node: broker CPU, on its cores | Registry memory per service replica |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    return f"""# Sizing a deployment

Generated by `python benchmarks/sizing.py` from `benchmarks/results/costs.json` (written by
`python -m benchmarks.costs`) and `benchmarks/results/citysize.json` (written by `python -m
benchmarks.citysize`): do not edit; re-run them to re-measure. The size overlays in
`deploy/kubernetes/overlays/` take their replica counts and InfluxDB resources from the same
model, so this table and `kubectl apply -k deploy/kubernetes/overlays/<size>` agree.

## Measured unit costs

Measured {c["measured_at"]}: {c["conditions"]}; load average at the end {c["load_average_end"]}.

{costs_table}

## Measured per-device costs

Measured {c["device_measured_at"]} by `python -m benchmarks.citysize`: generated cities
under `safecity run` (every device its own MQTT connection, account and client id);
{c["device_conditions"]}; load average at the end {c["device_load_end"]}.
Per-device figures are the growth between the smallest and the largest city.

{_device_costs(c)}

## Open files: one connection, one file

Each MQTT connection is an open file of the broker (Mosquitto: one per client), and
each simulated device one of its simulator process (its socket; its spool is opened for
each write, never held). A
process may hold as many as its `nofile` limit; the machine these figures come from
allows {OPEN_FILES_HERE:,} per process (a hard limit), so one Mosquitto there serves at
most ~{OPEN_FILES_HERE - FILES_RESERVED:,} devices and a simulator process
~{(OPEN_FILES_HERE - FILES_RESERVED) // SIM_FILES_PER_DEVICE:,} (`safecity run
--simulator-processes N`, `SAFECITY_PROCESSES` in compose and the simulator overlay).
A broker host is planned with {OPEN_FILES:,}:

- systemd: `systemctl edit mosquitto` and `[Service]` / `LimitNOFILE={OPEN_FILES}`;
- compose: `ulimits: {{nofile: {{soft: {OPEN_FILES}, hard: {OPEN_FILES}}}}}` on the
  `mosquitto` service (an override file; the daemon's own limit must allow it);
- Kubernetes: the container runtime's limit applies (containerd's `LimitNOFILE` in its
  systemd unit); EMQX sets its own from the pod (`components/emqx`).

A broker that runs out refuses new connections ("Too many open files" in its log); the
devices keep retrying with backoff and spool meanwhile (nothing is lost, but they are
offline).

## Assumptions

- Each device sends one reading every {REPORT_EVERY_S} s (the catalogue's cadences are 1-5
  min). For another cadence, scale the readings/s column.
- Capacity is planned at {HEADROOM:g}x the steady rate: after an outage the ingest must drain
  its backlog faster than new readings arrive (the reliability contract).
- An ingest replica is one worker with a CPU limit of {INGEST_CORES_PER_REPLICA:g} core; never
  fewer than {MIN_INGEST_REPLICAS}, so one may restart while the other keeps up.
- Receiving a publish is assumed to cost the broker about as much as delivering it
  ({BROKER_RECEIVE_FACTOR:g}x the measured delivery cost). Mosquitto is single-threaded: one
  node is planned at {BROKER_CORE_BUDGET:.0%} of one core and at most
  {mosquitto_sessions(c):,} devices: the least of {MOSQUITTO_MAX_SESSIONS:,} sessions, its open
  files and the devices whose reconnect storm after a broker restart fits in
  {STORM_TARGET_S:.0f} s of its one core ({c["storm_broker_cpu_ms_per_device"]:.2f} ms each,
  measured above); beyond that the clustered broker (EMQX, `components/emqx`) is used: at
  least {EMQX_MIN_NODES} nodes, {EMQX_SESSIONS_PER_NODE:,} sessions and {EMQX_CORES_PER_NODE:g}
  cores per node, with Mosquitto's measured cost per message assumed (not measured here:
  check it with the broker's own benchmark before relying on it).
- Memory grows with the devices, not only with the readings: a broker node holds its
  connections and accounts, InfluxDB its series ({c["influx_series_per_device"]:.0f} per
  device; planned at {HEADROOM:g}x the measured memory per device), and every ingest, alerts
  and API replica the registry (the largest of the three per-device costs above, on top
  of each one's own ~70-100 MiB).
- The simulated fleet (a test rig, not part of a deployment) holds
  {c["simulator_mib_kib_per_device"]:.1f} KiB per device in one process, and each process
  {c["simulator_mib_per_process"]:.0f} MiB beyond its devices at
  {c["simulator_mib_per_process_at"]:,} devices: its interpreter and the city's whole
  registry, which every process keeps (the scene and the faults draw on every device). That
  part grows with the city too, so a fleet spread one process per 6,000 devices pays the
  registry once per process: not linear beyond one process.
- A reconnect storm (every device at once after a broker restart, with the jittered
  backoff of `edge`) must fit in {STORM_TARGET_S:.0f} s of the broker's cores: the plans
  show a node's broker CPU seconds and the same spread over its cores (one for Mosquitto,
  which is single-threaded; an EMQX node is planned with its {EMQX_CORES_PER_NODE:g} cores at
  Mosquitto's measured cost per reconnecting device, assumed, not measured here, and enough
  nodes that the storm fits). This bounds the broker only: the devices must also be able
  to come back that fast (on the 2-core machine above, 18,000 simulated devices took far
  longer to reconnect than the broker's CPU for them: the simulator's processes were
  the bound, see benchmarks/README.md).
- InfluxDB gets as much CPU again for queries (API, Grafana) and compactions, and never
  fewer than {MIN_INFLUX_CORES} cores. Disk is the
  raw retention policy ({RAW_RETENTION_DAYS} days) only; events, security and incidents have
  their own, much smaller, policies. Above ~8 cores one InfluxDB 1.x OSS node is no longer
  the right store: use a clustered InfluxDB (settings only, the v1 API is the same).
- API replicas are not driven by devices but by users: the HorizontalPodAutoscaler scales
  them on CPU; from the costs above one core serves about
  {1000 / max(c["api_overview_cpu_ms"], 1e-9):,.0f} cached overviews/s. The moving
  overview (the last 15 minutes) comes from the API's board, the city's recent points in
  memory (api/README.md): uncached, it took up to
  {max(r["overview_uncached_max_ms"] for r in c["device_sizes"]) / 1000:.1f} s here. An
  explicit window's statements read one InfluxDB series per device: beside a busy
  city of {c["device_sizes"][-1]["devices"]:,} devices they took up to
  {_explicit_s(c):.1f} s, near the API's InfluxDB timeout for the largest cities
  (`SAFECITY_INFLUX__TIMEOUT`, 10 s; a statement past it answers 503): raise it there.

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
    return f"""# Generated by `python benchmarks/sizing.py` from benchmarks/results/*.json:
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
    parser.add_argument("--device-costs", type=Path, default=DEVICE_COSTS)
    args = parser.parse_args(argv)
    costs = load_costs(args.costs, args.device_costs)
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
