"""`safecity simulate`: settings + scenario -> one fleet run (or several processes)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safecity import registry
from safecity.ledger import LedgerWriter
from safecity.observability import HealthServer
from safecity.registry import Cities, City
from simulators import scenario as scenarios
from simulators.faults import FAULTS
from simulators.fleet import FleetStats, run
from simulators.incidents import SimulatedIncident
from simulators.settings import FaultSettings, SimulatorSettings
from simulators.shards import Shards


def list_scenarios() -> int:
    """Print the shipped scenarios, one per line."""
    for name in scenarios.available():
        sc = scenarios.load(name)
        print(f"{name:32} {sc.summary}")
    return 0


def parse_faults(text: str | None, all_rate: float | None) -> dict[str, float] | None:
    """Fault rates from ``--faults a=0.01,b=0.02`` and ``--fault-rate R`` (every fault)."""
    if text is None and all_rate is None:
        return None
    rates: dict[str, float] = {}
    if all_rate is not None:
        rates = dict.fromkeys(FAULTS, all_rate)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        rates[name] = float(value)
    return rates


def with_scenario(
    settings: SimulatorSettings, explicit: set[str]
) -> tuple[SimulatorSettings, list[SimulatedIncident]]:
    """The scenario's start/speed/duration/seed/faults (flags win) and its incidents."""
    if settings.scenario is None:
        return settings, []
    sc = scenarios.load(settings.scenario)
    update: dict[str, Any] = {}
    for name in ("start", "speed", "duration", "seed"):
        value = getattr(sc, name)
        if value is not None and name not in explicit:
            update[name] = value
    if sc.devices is not None and "max_devices" not in explicit:
        update["max_devices"] = sc.devices
    if sc.faults and "faults" not in explicit:
        update["faults"] = FaultSettings(**{**settings.faults.model_dump(), **sc.faults})
    settings = settings.model_copy(update=update)
    city = registry.load_or_default(settings.registry)
    start = settings.start or datetime.now(UTC)
    if settings.start is None:
        settings = settings.model_copy(update={"start": start})
    return settings, sc.resolve(city, start)


def _report(stats: FleetStats) -> None:
    print(
        f"simulated {stats.devices} devices: {stats.published} published "
        f"({stats.accepted} accepted, {stats.refused} refused, {stats.failed} failed), "
        f"{stats.dropped} dropped, {stats.buffered} left in the spool, "
        f"{stats.devices_refused} device(s) refused by the broker (failed)",
        file=sys.stderr,
    )


def fleet_city(settings: SimulatorSettings) -> City:
    """The registry's city, narrowed to the scenario's `[fleet]` kinds and districts."""
    city = registry.load_or_default(settings.registry)
    if settings.scenario is None:
        return city
    return scenarios.load(settings.scenario).fleet(city)


def simulate(settings: SimulatorSettings, explicit: set[str]) -> int:
    """Run the fleet as configured; Ctrl-C / SIGTERM stop it cleanly."""
    cities = registry.load_cities(settings.registry)
    if len(cities) > 1:
        return simulate_cities(settings, cities)
    settings, incidents = with_scenario(settings, explicit)
    city = fleet_city(settings)
    if settings.processes > 1:
        if settings.start is None:
            # Every process must share one simulated clock.
            settings = settings.model_copy(update={"start": datetime.now(UTC)})
        with tempfile.TemporaryDirectory(prefix="safecity-fleet-") as tmp:
            if settings.scenario is not None and scenarios.load(settings.scenario).scoped:
                # Each process loads the registry itself: hand it the narrowed fleet.
                path = Path(tmp) / "fleet.jsonl"
                registry.write(city, path)
                settings = settings.model_copy(update={"registry": path})
            shards = Shards(settings, incidents)

            async def spread(stop: asyncio.Event) -> None:
                _report(await shards.run(stop))

            # The parent serves /healthz (every child alive) and /metrics of its own.
            return _serve(settings, spread, shards.alive)

    async def fleet(stop: asyncio.Event) -> None:
        _report(await run(settings, city, stop=stop, incidents=incidents))

    return _serve(settings, fleet)


def _serve(
    settings: SimulatorSettings,
    body: Callable[[asyncio.Event], Awaitable[None]],
    ready: Callable[[], bool] = lambda: True,
) -> int:
    """Run `body` until it ends or SIGINT/SIGTERM sets its stop event, with the
    simulator's /metrics and /healthz served meanwhile (operators, compose health checks)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        health = HealthServer(
            settings.simulator_metrics_host, settings.simulator_metrics_port, ready
        )
        if settings.simulator_metrics_port:
            await health.start()
        try:
            await body(stop)
        finally:
            await health.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def simulate_cities(settings: SimulatorSettings, cities: Cities) -> int:
    """One fleet per city in this process, each with its own registry, climate and time
    zone, on one simulated clock, into one ledger (each entry's topic names its city)."""
    if settings.scenario is not None:
        raise ValueError("a scenario plays in one city: give a registry of one city")
    if settings.processes > 1:
        raise ValueError("--processes splits one city's fleet: give a registry of one city")
    start = settings.start or datetime.now(UTC)
    per_city = settings.model_copy(update={"start": start, "ledger": None})

    async def fleets(stop: asyncio.Event) -> None:
        ledger = LedgerWriter(settings.ledger) if settings.ledger is not None else None
        try:
            results = await asyncio.gather(
                *(run(per_city, city, stop=stop, ledger=ledger) for city in cities.values())
            )
            for stats in results:
                _report(stats)
        finally:
            if ledger is not None:
                ledger.close()

    return _serve(settings, fleets)
