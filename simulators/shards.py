"""One city's fleet spread over processes: each process runs every N-th device.

A process holds one open file per device (its MQTT socket; the spool is opened for
each write), and one event loop drives all its devices on one core; a city of tens of
thousands of devices needs several (see docs/sizing.md). The parent starts the children
(spawned: a clean interpreter each), serves /healthz (all children alive) and /metrics
(the children's fleet metrics summed: each reports its own every `REPORT_EVERY`
seconds), forwards SIGINT/SIGTERM as SIGTERM (each child drains and stops cleanly) and
merges their final stats. Every child appends to the one ledger (`safecity.ledger`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
from multiprocessing.context import SpawnProcess

from safecity import registry
from safecity.observability import configure_logging
from simulators.fleet import FleetStats, run
from simulators.incidents import SimulatedIncident
from simulators.outgoing import DEVICES_REFUSED, PUBLISHED, summary
from simulators.settings import SimulatorSettings

log = logging.getLogger("simulators.shards")

STATS_WAIT = 60.0
"""Seconds to wait for a stopping child's final stats (it drains its devices first)."""
REPORT_EVERY = 5.0
"""Seconds between a child's reports of its fleet metrics to the parent."""

Published = dict[tuple[str, str], float]
"""`safecity_sim_published_total` by (kind, result)."""
Report = tuple[int, Published, float]
"""A child's metrics: (its index, published, devices refused)."""


def own_metrics() -> tuple[Published, float]:
    """This process's fleet metrics: published by (kind, result), and devices refused."""
    published = {
        (sample.labels["kind"], sample.labels["result"]): sample.value
        for family in PUBLISHED.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    refused = sum(sample.value for family in DEVICES_REFUSED.collect() for sample in family.samples)
    return published, refused


class ChildMetrics:
    """The children's latest reports, added into this process's own fleet metrics."""

    def __init__(self) -> None:
        self._published: dict[int, Published] = {}
        self._refused: dict[int, float] = {}

    def apply(self, report: Report) -> None:
        """Count what a child published since its last report; its refused devices now."""
        index, published, refused = report
        before = self._published.get(index, {})
        for (kind, result), value in published.items():
            grown = value - before.get((kind, result), 0.0)
            if grown > 0:
                PUBLISHED.labels(kind=kind, result=result).inc(grown)
        self._published[index] = published
        self._refused[index] = refused
        DEVICES_REFUSED.set(sum(self._refused.values()))


async def _report_every(index: int, reports: multiprocessing.Queue[Report]) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY)
        reports.put((index, *own_metrics()))


def _child(
    settings: SimulatorSettings,
    incidents: list[SimulatedIncident],
    index: int,
    count: int,
    results: multiprocessing.Queue[tuple[int, FleetStats]],
    reports: multiprocessing.Queue[Report],
) -> None:
    """One process: its shard of the fleet until SIGTERM/SIGINT; its stats to `results`."""
    configure_logging("simulator", settings.log_level)
    city = registry.load_or_default(settings.registry)

    async def main() -> FleetStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reporter = asyncio.create_task(_report_every(index, reports))
        try:
            return await run(settings, city, stop=stop, incidents=incidents, shard=(index, count))
        finally:
            reporter.cancel()

    stats = asyncio.run(main())
    reports.put((index, *own_metrics()))
    results.put((index, stats))


class Shards:
    """The child processes of one fleet: start, alive, stop (idempotent), merged stats."""

    def __init__(self, settings: SimulatorSettings, incidents: list[SimulatedIncident]) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = settings.processes
        self._results: multiprocessing.Queue[tuple[int, FleetStats]] = context.Queue()
        self._reports: multiprocessing.Queue[Report] = context.Queue()
        self._metrics = ChildMetrics()
        self._children: list[SpawnProcess] = [
            context.Process(
                target=_child,
                args=(settings, incidents, i, self.count, self._results, self._reports),
                name=f"simulator-{i}",
            )
            for i in range(self.count)
        ]

    async def run(self, stop: asyncio.Event) -> FleetStats:
        """Start the children; run until `stop` or until none is left; their stats merged."""
        for child in self._children:
            child.start()
        while self.running() and not stop.is_set():
            self._take_reports()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                continue
        self.stop()
        stats = await asyncio.to_thread(self.collect)
        self._take_reports()
        return stats

    def _take_reports(self) -> None:
        """The children's metrics reports that arrived, into this process's metrics."""
        while True:
            try:
                report = self._reports.get_nowait()
            except queue.Empty:
                return
            self._metrics.apply(report)

    def alive(self) -> bool:
        """Every child still running (the parent's /healthz)."""
        return all(child.is_alive() for child in self._children)

    def running(self) -> int:
        """Children still running."""
        return sum(1 for child in self._children if child.is_alive())

    def stop(self) -> None:
        """Ask every running child to stop (SIGTERM: it drains and reports); idempotent."""
        for child in self._children:
            if child.is_alive():
                child.terminate()

    def collect(self, wait_s: float = STATS_WAIT) -> FleetStats:
        """The children's stats merged (a child that died without reporting counts none)."""
        total = FleetStats()
        got: dict[int, FleetStats] = {}
        while len(got) < self.count:
            self._take_reports()  # a child's queue must drain for it to exit
            try:
                index, stats = self._results.get(timeout=wait_s)
            except queue.Empty:
                break
            got[index] = stats
        self._take_reports()
        for child in self._children:
            child.join(timeout=wait_s)
        for stats in got.values():
            if total.sim_start is None:
                total.sim_start = stats.sim_start
            total.merge(stats)
        missing = sorted(set(range(self.count)) - set(got))
        if missing:
            log.error("simulator processes ended without stats", extra={"processes": missing})
        log.info("simulator processes stopped", extra={**summary(total), "processes": self.count})
        return total
