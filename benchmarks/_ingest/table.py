"""The summary table, the targets and what limits the next worker."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks._ingest.nodered import still

Run = dict[str, float]


@dataclass
class Figures:
    """Everything one run of the ingest benchmark measured, for the table."""

    raws: list[float]
    ceilings: list[float]
    runs: dict[int, list[Run]]
    naive: float
    lat: Run
    out: Run | None
    n: int
    sample: int
    peer: list[Run] = field(default_factory=list)
    peer_version: str = ""
    peer_errors: list[str] = field(default_factory=list)  # each run's most frequent error
    peer_missing: str = ""  # why Node-RED did not run, when it did not


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def next_worker_limit(runs: dict[int, list[Run]]) -> str:
    """Which resource the 2-worker runs ran out of: the broker, the cores, or neither, with
    each process's CPU share during the drain and what a third worker added."""
    two = runs.get(2) or []
    if not two:
        return "not measured"
    rate = median([r["rate"] for r in two])
    share = median([r["rate"] / r["ceiling"] for r in two])  # as in the rows: per run, then median
    keys = ("ingest_cpu", "broker_cpu", "influx_cpu", "worker_cpu_max", "worker_cpu_min", "load")
    m = {k: median([r.get(k, 0.0) for r in two]) for k in keys}
    cores = os.cpu_count() or 1
    busy = m["ingest_cpu"] + m["broker_cpu"] + m["influx_cpu"]
    used = (
        f"during the 2-worker drain: workers {m['ingest_cpu']:.2f} cores (each "
        f"{m['worker_cpu_min']:.2f}-{m['worker_cpu_max']:.2f}) + broker {m['broker_cpu']:.2f} + "
        f"influxd {m['influx_cpu']:.2f} = {busy:.2f} of {cores} cores at load average "
        f"{m['load']:.1f}; {share:.0%} of the broker's queued-drain ceiling"
    )
    three = runs.get(3) or []
    if three:
        gain = median([r["rate"] for r in three]) / rate
        used += f"; 3 workers = {gain:.2f}x 2 workers"
    # Other processes' load takes cores too: what is left is cores minus their run queue.
    others = max(0.0, m["load"] - busy)
    if share >= 0.8:
        return f"the broker ({used})"
    if busy >= 0.85 * cores:
        return f"the cores: a third worker only takes CPU from the other two ({used})"
    if busy + others >= cores:
        return (
            f"the cores, shared: the machine's run queue (load average {m['load']:.1f}) is over "
            f"its {cores} cores, so a third worker only takes CPU from the other two ({used})"
        )
    return f"neither cores nor broker saturated: the workers wait (I/O, acks in flight) ({used})"


def pct(x: float) -> str:
    """A share as a percentage, with a decimal below 10 %."""
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _peer_rows(f: Figures, ceiling: float, raw: float, one: float, us_one: float) -> list[str]:
    if f.peer_missing:
        return [f"| Node-RED peer | not run: {f.peer_missing} |"]
    rows = []
    for r, error in zip(f.peer, f.peer_errors or [""] * len(f.peer), strict=True):
        how = "stock" if not r["sockets"] else f"HTTP sockets capped at {r['sockets']:.0f}"
        rows.append(
            f"| {f.peer_version.split(',')[0]} standard flow, {how} | {r['rate']:,.0f} readings/s "
            f"stored = {pct(r['rate'] / ceiling)} of the queued-drain ceiling, "
            f"{pct(r['rate'] / raw)} of live (safecity 1 worker = {one / r['rate']:.1f}x); "
            f"**{r['cpu_us']:.0f} us CPU/reading** (safecity 1 worker "
            f"{r['cpu_us'] / us_one:.1f}x less); peak RSS "
            f"{r['rss']:.0f} MiB; **lost {r['lost']:,.0f}** of {r['sent']:,.0f}; "
            f"{r['errors']:,.0f} errors logged ({r['emfile']:,.0f} EMFILE); peak "
            f"{r['fds']:,.0f} open files; influxd CPU {r['influx_cpu']:.2f}{still(r)}"
            f"{f'; most often {error}' if error else ''} |"
        )
    return rows


@dataclass
class _Medians:
    """The figures the table and the targets share, over every round."""

    raw: float
    ceiling: float
    rate: dict[int, float]  # readings/s by worker count
    share: dict[int, float]  # of the live broker rate
    of_ceiling: dict[int, float]  # of the queued-drain ceiling
    us_per: dict[int, float]  # ingest CPU per reading
    lost: int
    dup: int

    @classmethod
    def of(cls, f: Figures) -> _Medians:
        runs, n = f.runs, f.n
        return cls(
            raw=median(f.raws),
            ceiling=median(f.ceilings),
            rate={w: median([r["rate"] for r in rs]) for w, rs in runs.items()},
            share={w: median([r["rate"] / r["raw"] for r in rs]) for w, rs in runs.items()},
            of_ceiling={
                w: median([r["rate"] / r["ceiling"] for r in rs]) for w, rs in runs.items()
            },
            us_per={
                w: median([r["ingest_cpu"] * r["elapsed"] / n * 1e6 for r in rs])
                for w, rs in runs.items()
            },
            lost=sum(int(r["lost"]) for rs in runs.values() for r in rs),
            dup=sum(int(r["dup"]) for rs in runs.values() for r in rs),
        )


def print_table(f: Figures) -> None:
    """The markdown table recorded in benchmarks/README.md, then the ingest targets."""
    m = _Medians.of(f)
    _print_rows(f, m)
    if f.out is not None:
        _print_outage_row(f.out)
    print(f"| conditions | {f.n} readings of ~{f.sample} B, {os.cpu_count()} CPUs |")
    _print_targets(f, m)


def _print_rows(f: Figures, m: _Medians) -> None:
    """The table's head and its rows up to the latency."""
    raws, ceilings, runs, lat, naive = f.raws, f.ceilings, f.runs, f.lat, f.naive
    raw, ceiling, rate, share, of_ceiling, us_per = (
        m.raw,
        m.ceiling,
        m.rate,
        m.share,
        m.of_ceiling,
        m.us_per,
    )
    lost, dup = m.lost, m.dup
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
        each = " / ".join(f"{r['rate']:,.0f}" for r in rs)
        print(
            f"| safecity ingest, {w} worker{'s' if w > 1 else ''}, all guarantees | "
            f"{rate[w]:,.0f} readings/s ({each}) "
            f"= **{of_ceiling[w]:.0%} of the queued-drain ceiling**, {share[w]:.0%} of live, "
            f"{rate[w] / rate[1]:.2f}x 1 worker; ingest CPU "
            f"{median([r['ingest_cpu'] for r in rs]):.2f} cores, "
            f"**{us_per[w]:.1f} us/reading**, RSS "
            f"{max(r['ingest_rss'] for r in rs):.0f} MiB/worker; broker CPU "
            f"{median([r['broker_cpu'] for r in rs]):.2f}, influxd CPU "
            f"{median([r['influx_cpu'] for r in rs]):.2f} |"
        )
    print(f"| lost / dup (checker), every run | {lost} / {dup} |")
    print(f"| what limits the next worker | {next_worker_limit(runs)} |")
    for row in _peer_rows(f, ceiling, raw, rate[1], us_per[1]):
        print(row)
    print(
        f"| naive ingest, one write per message | {naive:,.0f} readings/s = "
        f"{pct(naive / ceiling)} of the queued-drain ceiling, {pct(naive / raw)} of live "
        f"(1 worker = {rate[1] / naive:.0f}x) |"
    )
    print(
        f"| device->queryable latency at {lat['rate']:,.0f}/s (InfluxDB polled every "
        f"20 ms) | p50 {lat['q_p50']:.2f} s, p99 {lat['q_p99']:.2f} s, max "
        f"{lat['q_max']:.2f} s (ingest histogram: p50 <= {lat['p50']} s, p99 <= "
        f"{lat['p99']} s) |"
    )


def _print_outage_row(out: Run) -> None:
    """The row of the InfluxDB outage run."""
    hung = out.get("hung", 0.0)
    hung_note = (
        f"; {hung:.0f} publishers hung at the end of input and were killed: lines they "
        "never sent count as lost"
        if hung
        else ""
    )
    print(
        f"| InfluxDB SIGSTOP {out['outage']:.0f} s at {out['rate']:,.0f}/s "
        f"| ingest peak RSS {out['rss']:.0f} MiB; {out['spooled']:,.0f} "
        f"spooled, drained {out['drained_after']:.0f} s after SIGCONT; lost "
        f"{out['lost']:.0f}, dup {out['dup']:.0f}"
        f"{hung_note} |"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _print_targets(f: Figures, m: _Medians) -> None:
    """Each ingest target, met or missed, with its figure."""
    out, lat, naive, rate, share, of_ceiling, us_per = (
        f.out,
        f.lat,
        f.naive,
        m.rate,
        m.share,
        m.of_ceiling,
        m.us_per,
    )
    lost = m.lost
    print()
    print("targets:")
    print(f"  1 worker >= 10,000/s: {_verdict(rate[1] >= 10_000)} ({rate[1]:,.0f})")
    print(f"  1 worker >= 10x naive: {_verdict(rate[1] >= 10 * naive)} ({rate[1] / naive:.0f}x)")
    if 2 in share:
        print(f"  2 workers >= 50 % of live: {_verdict(share[2] >= 0.5)} ({share[2]:.0%})")
        print(
            f"  2 workers >= 35 % of the queued-drain ceiling: "
            f"{_verdict(of_ceiling[2] >= 0.35)} ({of_ceiling[2]:.0%})"
        )
    print(
        f"  consumer CPU <= 12 us/reading (1 worker): {_verdict(us_per[1] <= 12)} ({us_per[1]:.1f})"
    )
    capped = [r for r in f.peer if r["sockets"]]
    if capped:
        peer = capped[0]
        print(
            f"  >= 10x Node-RED (sockets capped) in readings/s: "
            f"{_verdict(rate[1] >= 10 * peer['rate'])} ({rate[1] / peer['rate']:.1f}x, 1 worker)"
        )
        print(
            f"  >= 10x less CPU per reading than Node-RED (sockets capped): "
            f"{_verdict(peer['cpu_us'] >= 10 * us_per[1])} ({peer['cpu_us'] / us_per[1]:.1f}x)"
        )
    print(f"  lost = 0: {_verdict(lost == 0 and (out is None or out['lost'] == 0))}")
    print(
        f"  p99 device->queryable < 0.5 s at {lat['rate']:,.0f}/s: "
        f"{_verdict(lat['q_p99'] < 0.5)} ({lat['q_p99']:.2f} s)"
    )
    if out is not None:
        print(
            f"  RSS < 300 MiB in a {out['outage']:.0f} s outage: "
            f"{_verdict(out['rss'] < 300)} ({out['rss']:.0f} MiB)"
        )
