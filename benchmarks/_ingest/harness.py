"""Paced-load harnesses: device->queryable latency and an InfluxDB outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks._ingest.broker import drop_sessions
from benchmarks._ingest.drain import start_ingest
from benchmarks._ingest.load import CHUNK, CITY, KINDS, PUBLISHER, write_ledger
from benchmarks._ingest.probes import check_ledger, quantile, scrape
from control.stack import LocalStack
from safecity import topics
from safecity.influx import InfluxClient
from safecity.readings import format_epoch_ms
from safecity.registry import Device
from safecity.settings import InfluxSettings
from simulators.generators import generate
from tests.helpers.support import mosquitto


class PacedPublisher:
    """Publish current-time readings at `rate`/s with one `mosquitto_pub -l -q 1` per device.

    Each reading's `ts` is the wall clock (ms, strictly increasing per device) when its
    line is handed to mosquitto_pub, so device->queryable latency includes the
    publisher's own delay (conservative). Records every payload for the ledger.
    """

    TICK = 0.02

    def __init__(self, stack: LocalStack, devices: list[Device], rate: float, seed: int) -> None:
        self.stack = stack
        self.devices = devices
        self.rate = rate
        self.seed = seed
        rng = random.Random(seed)
        now = datetime.now(UTC)
        # A pool of generated values per device, serialised once.
        self.pool = {
            d: [json.dumps(generate(d, rng, now), separators=(",", ":")) for _ in range(64)]
            for d in devices
        }
        self.sent: dict[Device, list[bytes]] = {d: [] for d in devices}
        self.last_ms = {d: 0 for d in devices}
        self.procs: dict[Device, tuple[subprocess.Popen[bytes], int]] = {}
        self.closing: list[subprocess.Popen[bytes]] = []
        self.hung = 0  # publishers killed after hanging at the end of their input
        self.total = 0

    def _pipe(self, device: Device, lines: int) -> subprocess.Popen[bytes]:
        proc, count = self.procs.get(device, (None, 0))
        if proc is None or count + lines > CHUNK:
            if proc is not None:
                # Waited for at the end, not here: the pace must not hang on one exit.
                assert proc.stdin is not None
                proc.stdin.close()
                self.closing.append(proc)
            topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
            client_id = f"bench-paced-{self.seed}-{device.id}-{len(self.sent[device])}"
            proc = subprocess.Popen(
                [
                    *mosquitto("mosquitto_pub", self.stack, PUBLISHER, client_id=client_id),
                    *("-q", "1", "-t", topic, "-l"),
                ],
                stdin=subprocess.PIPE,
            )
            count = 0
        self.procs[device] = (proc, count + lines)
        return proc

    def run(self, duration: float, at: dict[float, object] | None = None) -> float:
        """Publish for `duration` s; call `at[t]()` once t s have passed. Return the rate."""
        hooks = sorted((at or {}).items(), key=lambda kv: kv[0])
        started = time.monotonic()
        per_device = self.rate / len(self.devices)
        due = 0.0
        while True:
            elapsed = time.monotonic() - started
            while hooks and hooks[0][0] <= elapsed:
                hook = hooks.pop(0)[1]
                assert callable(hook)
                hook()
            if elapsed >= duration:
                break
            target = per_device * min(elapsed + self.TICK, duration)
            n = int(target - due)
            if n > 0:
                due += n
                now_ms = int(time.time() * 1000)
                for device in self.devices:
                    lines = []
                    pool = self.pool[device]
                    sent = self.sent[device]
                    for j in range(n):
                        # A backlog after a late tick gets past timestamps, never future ones.
                        ts = max(now_ms - (n - 1 - j), self.last_ms[device] + 1)
                        self.last_ms[device] = ts
                        seq = self.seed * 10_000_000 + len(sent)
                        body = (
                            f'{{"ts":"{format_epoch_ms(ts)}",'
                            f'"seq":{seq},"values":{pool[seq % len(pool)]}}}'
                        ).encode()
                        sent.append(body)
                        lines.append(body)
                    proc = self._pipe(device, len(lines))
                    assert proc.stdin is not None
                    proc.stdin.write(b"\n".join(lines) + b"\n")
                    proc.stdin.flush()
                self.total += n * len(self.devices)
            time.sleep(max(0.0, started + elapsed + self.TICK - time.monotonic()))
        spent = time.monotonic() - started
        for proc, _ in self.procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            self.closing.append(proc)
        deadline = time.monotonic() + 120
        for proc in self.closing:
            self._finish(proc, deadline)
        return self.total / spent

    def _finish(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Wait for a publisher whose input has ended.

        mosquitto_pub -l can miss the end of its input when its last PUBACK races it and
        then never exits (seen on a loaded machine: hung for 24 min): past the deadline it
        is killed and counted; whatever it had not published shows up as lost in the
        checker's verdict.
        """
        try:
            code = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            self.hung += 1
            return
        if code != 0:
            raise SystemExit("mosquitto_pub failed")


class WatermarkPoller(threading.Thread):
    """Polls InfluxDB for each device's highest stored `seq` (when it became queryable).

    One ingest worker writes each device's readings in receive (= publish) order, so
    seq s of a device is queryable once the device's stored max(seq) >= s: the first
    poll that sees it bounds the reading's device->queryable time from above (by the
    poll interval and the query's own time).
    """

    def __init__(self, url: str, db: str, devices: list[Device], interval: float = 0.02):
        super().__init__(daemon=True)
        self.url, self.db, self.interval = url, db, interval
        self.kinds = sorted({d.kind for d in devices})
        self.seen: dict[str, list[tuple[float, int]]] = {d.id: [] for d in devices}
        self.stop_flag = threading.Event()
        self.since_ms = int(time.time() * 1000) - 5000

    def run(self) -> None:
        measurements = ",".join(f'"{k}"' for k in self.kinds)
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop_flag.is_set():
                # Measurement names come from the catalogue, the bound is an int.
                q = f"SELECT max(seq) FROM {measurements} WHERE time > {self.since_ms}ms GROUP BY device_id"  # noqa: E501, S608
                try:
                    body = http.get("/query", params={"db": self.db, "q": q, "epoch": "ms"}).json()
                except httpx.HTTPError:
                    continue
                now = time.time()
                for series in body["results"][0].get("series", []):
                    seen = self.seen.get(series["tags"]["device_id"])
                    top = int(series["values"][0][1])
                    if seen is not None and (not seen or seen[-1][1] < top):
                        seen.append((now, top))
                time.sleep(self.interval)

    def latencies(self, sent: dict[Device, list[bytes]]) -> list[float]:
        """Device ts -> first poll that saw it, per reading (inf if never seen)."""
        out = []
        for device, bodies in sent.items():
            seen = self.seen[device.id]
            k = 0
            for raw in bodies:
                body = json.loads(raw)
                while k < len(seen) and seen[k][1] < body["seq"]:
                    k += 1
                ts = datetime.fromisoformat(body["ts"]).timestamp()
                out.append(seen[k][0] - ts if k < len(seen) else math.inf)
        return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_run(stack: LocalStack, base: Path, rate: float, duration: float) -> dict[str, float]:
    """Publish at ~`rate` with current timestamps; measure device->queryable in InfluxDB."""
    db = "bench_latency"
    proc, url = start_ingest(stack, base, "benchlat", db)
    devices = [d for d in CITY.devices if d.kind in KINDS][:8]
    publisher = PacedPublisher(stack, devices, rate, seed=3)
    poller = WatermarkPoller(stack.influx_url, db, devices)
    poller.start()
    achieved = publisher.run(duration)
    deadline = time.monotonic() + 120
    while scrape(url).get("safecity_ingest_acked_total", 0) < publisher.total:
        if time.monotonic() > deadline:
            raise SystemExit("latency run: ingest did not ack everything")
        time.sleep(0.1)
    time.sleep(0.5)
    poller.stop_flag.set()
    poller.join(10)
    samples = scrape(url)
    proc.stop()
    drop_sessions(stack, ["safecity-benchlat"])
    lat = poller.latencies(publisher.sent)
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in samples.items()
        if k.startswith("safecity_ingest_e2e_lag_seconds_bucket")
    )
    return {
        "rate": achieved,
        "n": len(lat),
        "q_p50": _pct(lat, 0.5),
        "q_p99": _pct(lat, 0.99),
        "q_max": max(lat),
        "p50": quantile(buckets, 0.5),
        "p99": quantile(buckets, 0.99),
    }


class _OutageSampler:
    """Samples the ingest's peak RSS and spool, and when the spool emptied after the resume."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.peak = {"rss": 0.0, "spool": 0.0, "resumed": 0.0, "emptied": 0.0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        peak = self.peak
        while not self.done.is_set():
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        peak["rss"] = max(peak["rss"], int(line.split()[1]) / 1024)
            with contextlib.suppress(httpx.HTTPError):
                points = scrape(self.url).get("safecity_ingest_spool_points", 0.0)
                peak["spool"] = max(peak["spool"], points)
                if peak["resumed"] and not peak["emptied"] and points == 0:
                    peak["emptied"] = time.monotonic()
            time.sleep(0.25)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)


def _until_drained(url: str, publisher: PacedPublisher) -> dict[str, float]:
    """The ingest's metrics once every published reading is acked and the spool is empty."""
    finished = time.monotonic()
    last_acked, steady_since = -1.0, time.monotonic()
    while True:
        metrics = scrape(url)
        acked = metrics.get("safecity_ingest_acked_total", 0.0)
        empty = metrics.get("safecity_ingest_spool_points", 1) == 0
        if acked >= publisher.total and empty:
            return metrics
        if acked != last_acked:
            last_acked, steady_since = acked, time.monotonic()
        # A killed publisher never sent its last lines: wait for the rest, not for those.
        if publisher.hung and empty and time.monotonic() - steady_since > 15:
            return metrics
        if time.monotonic() - finished > 300:
            raise SystemExit("outage run: spool did not drain")
        time.sleep(0.2)


def outage_run(
    stack: LocalStack, base: Path, rate: float, outage: float, lead: float = 10.0
) -> dict[str, float]:
    """Publish at `rate` while InfluxDB is SIGSTOPped for `outage` s; ingest RSS, then lost/dup."""
    db = "bench_outage"
    proc, url = start_ingest(stack, base, "benchout", db)
    devices = [d for d in CITY.devices if d.kind in KINDS][8:16]
    publisher = PacedPublisher(stack, devices, rate, seed=5)
    sampler = _OutageSampler(proc.pid or 0, url)
    peak = sampler.peak

    def pause() -> None:
        stack.influxd.pause()

    def resume() -> None:
        stack.influxd.resume()
        peak["resumed"] = time.monotonic()

    sampler.thread.start()
    achieved = publisher.run(lead + outage + lead, {lead: pause, lead + outage: resume})
    metrics = _until_drained(url, publisher)
    sampler.stop()
    drained = (peak["emptied"] or time.monotonic()) - peak["resumed"]
    proc.stop()
    drop_sessions(stack, ["safecity-benchout"])
    ledger_path = base / "ledger-outage.jsonl"
    write_ledger(ledger_path, publisher.sent)
    client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
    report = asyncio.run(check_ledger(ledger_path, client, [base / "dl-benchout"]))
    return {
        "rate": achieved,
        "outage": outage,
        "n": publisher.total,
        "rss": peak["rss"],
        "spool_peak": peak["spool"],
        "spooled": metrics.get("safecity_ingest_spooled_points_total", 0.0),
        "drained_after": drained,
        "lost": len(report.lost),
        "dup": len(report.duplicated),
        "hung": publisher.hung,
    }
