"""Ingest throughput, CPU/RSS and latency with every guarantee on, beside its ceilings.

Measured in one run on one machine, against a fresh local Mosquitto + InfluxDB:

- broker raw QoS 1: `mosquitto_pub -l` -> `mosquitto_sub` (the ceiling);
- scale-out: safecity ingest with 1, 2 and 3 workers (`--workers N`) on one shared
  subscription each, the same queued load, `--rounds` rounds in rotating order, each
  round beside its own raw broker rate: MQTT v5 persistent sessions, QoS 1, manual
  ack after the InfluxDB write, and the checker's lost/dup for every run;
- a naive ingest: one awaited InfluxDB write per message, then the ack;
- device->queryable latency p50/p99 at 5,000 readings/s (half the 10,000/s one-worker
  target; `--latency-rate`): current-time readings
  published by `mosquitto_pub`, InfluxDB polled every 20 ms for each device's stored
  max(seq) (beside the ingest's own `safecity_ingest_e2e_lag_seconds` histogram);
- ingest RSS while InfluxDB is SIGSTOPped for 60 s at 10,000 readings/s (the spool
  takes over), the drain after SIGCONT, and lost/dup through the checker.

The broker is the platform's only one (no anonymous access, ACLs): the publishers log
in as `_simulator` (which may write every device topic and `_services`), the raw
subscriber as the read-only `_api`, every ingest as `_ingest`. The raw baseline uses
`safecity/v1/<city>/_services/bench-raw` (writable by `_simulator`, readable by `_api`,
outside the ingest's subscription).

Run: `make bench` or `.venv/bin/python -m benchmarks.ingest [--messages N --rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks._ingest.broker import drop_sessions
from benchmarks._ingest.drain import naive_ingest, scale_out
from benchmarks._ingest.harness import latency_run, outage_run
from benchmarks._ingest.load import INGEST, PUBLISHER, READER, payloads, publish_all, write_ledger
from benchmarks._ingest.probes import create_db, loadavg, versions
from benchmarks._ingest.table import print_table
from control.stack import LocalStack


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ingest benchmark and print its conditions and figures."""
    parser = argparse.ArgumentParser(prog="benchmarks.ingest")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="scale-out rounds (median shown)")
    parser.add_argument("--naive-messages", type=int, default=3_000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    # Half the 10,000/s one-worker target (the p99 < 1 s latency target is set at it).
    parser.add_argument("--latency-rate", type=float, default=5_000.0)
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="0: skip")
    parser.add_argument("--outage-rate", type=float, default=10_000.0)
    args = parser.parse_args(argv)
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="safecity-bench-") as tmp:
        base = Path(tmp)
        with LocalStack(base / "stack") as stack:
            start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
            batches = payloads(n, start, seed=1)
            flat = [p for items in batches.values() for p in items]
            sample = len(flat[0])
            ledger_path = base / "ledger-scaleout.jsonl"
            write_ledger(ledger_path, batches)
            conditions = (
                f"{os.cpu_count()} CPUs, load average at start {loadavg()}; {versions()}; "
                f"{n} readings of ~{sample} B over "
                f"{sum(1 for b in batches.values() if b)} devices; authenticated broker "
                f"(publishers `{PUBLISHER}`, raw subscriber `{READER}`, ingest `{INGEST}`); "
                "Mosquitto + influxd + ingest + publishers on this machine"
            )
            print(f"# conditions: {conditions}", flush=True)
            raws, ceilings, runs = scale_out(stack, base, batches, flat, ledger_path, args.rounds)

            naive_batches = payloads(args.naive_messages, start + timedelta(hours=2), seed=4)
            naive_db = "bench_naive"
            asyncio.run(create_db(stack, naive_db))
            naive = asyncio.run(
                naive_ingest(
                    stack, naive_db, args.naive_messages, lambda: publish_all(stack, naive_batches)
                )
            )
            drop_sessions(stack, ["bench-naive"])
            print(
                f"naive ingest (one awaited write per message): {naive:,.0f} readings/s "
                f"(load average {loadavg()})",
                flush=True,
            )
            lat = latency_run(stack, base, args.latency_rate, args.latency_seconds)
            print(
                f"latency at {float(lat['rate']):,.0f}/s ({lat['n']} readings): device->queryable "
                f"(InfluxDB polled) p50 {float(lat['q_p50']):.3f} s, p99 "
                f"{float(lat['q_p99']):.3f} s, max {float(lat['q_max']):.3f} s; ingest histogram "
                f"device->durable p50 <= {lat['p50']} s, p99 <= {lat['p99']} s "
                f"(load average {loadavg()})",
                flush=True,
            )
            out: dict[str, float] | None = None
            if args.outage_seconds > 0:
                out = outage_run(stack, base, args.outage_rate, args.outage_seconds)
                print(
                    f"InfluxDB SIGSTOP {args.outage_seconds:.0f} s at {float(out['rate']):,.0f}/s: "
                    f"ingest peak RSS {float(out['rss']):.0f} MiB, spooled {out['spooled']:,.0f}, "
                    f"drained {float(out['drained_after']):.1f} s after SIGCONT, "
                    f"lost {out['lost']}, dup {out['dup']} (load average {loadavg()})",
                    flush=True,
                )
            print(f"# load average at end {loadavg()}")
            print_table(raws, ceilings, runs, lat, out, naive, n, sample)


if __name__ == "__main__":
    main()
