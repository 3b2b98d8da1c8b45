"""The summary table, the targets and what limits the next worker."""

from __future__ import annotations

import os
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def next_worker_limit(runs: dict[int, list[dict[str, float]]], ceiling: float) -> str:
    """Which resource the 2-worker runs ran out of: the broker, the cores, or neither."""
    two = runs.get(2) or []
    if not two:
        return "not measured"
    rate = median([float(r["rate"]) for r in two])
    cores = {
        k: median([float(r[k]) for r in two]) for k in ("ingest_cpu", "broker_cpu", "influx_cpu")
    }
    busy = sum(cores.values())
    used = (
        f"2 workers {cores['ingest_cpu']:.2f} + broker {cores['broker_cpu']:.2f} + influxd "
        f"{cores['influx_cpu']:.2f} = {busy:.2f} of {os.cpu_count()} cores, "
        f"{rate / ceiling:.0%} of the broker's queued-drain ceiling"
    )
    if rate >= 0.8 * ceiling:
        return f"the broker ({used})"
    if busy >= 0.85 * (os.cpu_count() or 1):
        return f"the cores: a third worker only takes CPU from the other two ({used})"
    return f"neither cores nor broker saturated: the workers wait (other load, I/O) ({used})"


def print_table(
    raws: list[float],
    ceilings: list[float],
    runs: dict[int, list[dict[str, float]]],
    lat: dict[str, float],
    out: dict[str, float] | None,
    naive: float,
    n: int,
    sample: int,
) -> None:
    """The markdown table recorded in benchmarks/README.md, then the ingest targets."""
    raw = median(raws)
    rate = {w: median([float(r["rate"]) for r in rs]) for w, rs in runs.items()}
    share = {w: median([float(r["rate"]) / float(r["raw"]) for r in rs]) for w, rs in runs.items()}
    ceiling = median(ceilings)
    of_ceiling = {
        w: median([float(r["rate"]) / float(r["ceiling"]) for r in rs]) for w, rs in runs.items()
    }
    us_per = {
        w: median([float(r["ingest_cpu"]) * float(r["elapsed"]) / n * 1e6 for r in rs])
        for w, rs in runs.items()
    }
    lost = sum(int(r["lost"]) for rs in runs.values() for r in rs)
    dup = sum(int(r["dup"]) for rs in runs.values() for r in rs)
    print()
    print(f"| Measure ({len(raws)} rounds, median; runs in brackets) | Result |")
    print("|---|---|")
    print(
        f"| broker live QoS 1 publish->subscribe (mosquitto_pub -l -> mosquitto_sub) | "
        f"{raw:,.0f} msg/s ({' / '.join(f'{x:,.0f}' for x in raws)}) |"
    )
    print(
        f"| broker queued-drain ceiling (paused `mosquitto_sub -q 1`, persistent session, "
        f"same backlog) | {ceiling:,.0f} msg/s ({' / '.join(f'{x:,.0f}' for x in ceilings)}) |"
    )
    for w, rs in runs.items():
        each = " / ".join(f"{float(r['rate']):,.0f}" for r in rs)
        print(
            f"| safecity ingest, {w} worker{'s' if w > 1 else ''}, all guarantees | "
            f"{rate[w]:,.0f} readings/s ({each}) "
            f"= **{of_ceiling[w]:.0%} of the queued-drain ceiling**, {share[w]:.0%} of live, "
            f"{rate[w] / rate[1]:.2f}x 1 worker; ingest CPU "
            f"{median([float(r['ingest_cpu']) for r in rs]):.2f} cores, "
            f"**{us_per[w]:.1f} us/reading**, RSS "
            f"{max(float(r['ingest_rss']) for r in rs):.0f} MiB/worker; broker CPU "
            f"{median([float(r['broker_cpu']) for r in rs]):.2f}, influxd CPU "
            f"{median([float(r['influx_cpu']) for r in rs]):.2f} |"
        )
    print(f"| lost / dup (checker), every run | {lost} / {dup} |")
    print(f"| what limits the next worker | {next_worker_limit(runs, ceiling)} |")
    print(
        f"| naive ingest, one write per message | {naive:,.0f} readings/s "
        f"(1 worker = {rate[1] / naive:.0f}x) |"
    )
    print(
        f"| device->queryable latency at {float(lat['rate']):,.0f}/s (InfluxDB polled every "
        f"20 ms) | p50 {float(lat['q_p50']):.2f} s, p99 {float(lat['q_p99']):.2f} s, max "
        f"{float(lat['q_max']):.2f} s (ingest histogram: p50 <= {lat['p50']} s, p99 <= "
        f"{lat['p99']} s) |"
    )
    if out is not None:
        print(
            f"| InfluxDB SIGSTOP {float(out['outage']):.0f} s at {float(out['rate']):,.0f}/s "
            f"| ingest peak RSS {float(out['rss']):.0f} MiB; {float(out['spooled']):,.0f} "
            f"spooled, drained {float(out['drained_after']):.0f} s after SIGCONT; lost "
            f"{out['lost']}, dup {out['dup']} |"
        )
    print(f"| conditions | {n} readings of ~{sample} B, {os.cpu_count()} CPUs |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print("targets:")
    print(f"  1 worker >= 10,000/s: {verdict(rate[1] >= 10_000)} ({rate[1]:,.0f})")
    print(f"  1 worker >= 10x naive: {verdict(rate[1] >= 10 * naive)} ({rate[1] / naive:.0f}x)")
    print(f"  2 workers >= 50 % of live: {verdict(share[2] >= 0.5)} ({share[2]:.0%})")
    print(
        f"  2 workers >= 35 % of the queued-drain ceiling: {verdict(of_ceiling[2] >= 0.35)} "
        f"({of_ceiling[2]:.0%})"
    )
    print(
        f"  consumer CPU <= 12 us/reading (1 worker): {verdict(us_per[1] <= 12)} ({us_per[1]:.1f})"
    )
    print(f"  lost = 0: {verdict(lost == 0 and (out is None or out['lost'] == 0))}")
    print(
        f"  p99 device->queryable < 1 s at {float(lat['rate']):,.0f}/s: "
        f"{verdict(float(lat['q_p99']) < 1)} ({float(lat['q_p99']):.2f} s)"
    )
    if out is not None:
        print(
            f"  RSS < 300 MiB in a {float(out['outage']):.0f} s outage: "
            f"{verdict(float(out['rss']) < 300)} ({float(out['rss']):.0f} MiB)"
        )
