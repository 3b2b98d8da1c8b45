"""`safecity simulate`: the simulated city fleet."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from safecity import instance, registry
from safecity.cliargs import positive_float, positive_int, registry_flag, settings
from safecity.errors import CliError
from safecity.observability import configure_logging
from safecity.registry import Cities, City, as_cities
from simulators.settings import SimulatorSettings

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def refuse_beside_running_city(s: SimulatorSettings, fleet: City | Cities) -> None:
    """Refuse (CliError saying why) to simulate devices a running local city already simulates.

    Each device logs in with its own id as MQTT client id: a second simulator of the
    same devices on the same broker would take over their sessions and knock the
    running devices offline. The running city's own simulator (a child of the
    launcher) passes.
    """
    where = instance.layout(s.home)
    state = instance.running(where)
    if state is None or os.getppid() == state.pid:
        return
    same_host = s.mqtt.host == state.mqtt_host or s.mqtt.host in _LOOPBACK
    if not same_host or s.mqtt.port not in (state.mqtt_port, state.mqtt_tls_port):
        return
    running = registry.load_cities(registry.registry_paths(state.registry))
    ours = [
        d
        for city in as_cities(fleet).values()
        for d in (city.devices if s.max_devices is None else city.devices[: s.max_devices])
    ]
    theirs = {d.id for city in running.values() for d in city.devices}
    taken = sorted({d.id for d in ours} & theirs)
    if taken:
        raise CliError(
            f"a city is running in {where.root} (safecity run, pid {state.pid}) and its "
            f"simulator is connected to mqtt://{state.mqtt_host}:{state.mqtt_port} as "
            f"{len(taken)} of these devices (e.g. {taken[0]}); a second simulator would log "
            "in with the same client ids and take over their sessions, knocking them "
            "offline. Stop that city first, or simulate against another broker and "
            "instance (SAFECITY_HOME), or with a registry of other devices"
        )


__all__ = ["add_parsers", "cmd_simulate", "refuse_beside_running_city"]


def cmd_simulate(args: argparse.Namespace) -> int:
    """The simulated city fleet."""
    from simulators import command

    if args.list_scenarios:
        code: int = command.list_scenarios()
        return code
    if args.backfill is not None:
        return _backfill(args)
    try:
        faults = command.parse_faults(args.faults, args.fault_rate)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    overrides = {
        "speed": args.speed,
        "seed": args.seed,
        "max_devices": args.devices,
        "duration": args.duration,
        "start": args.start,
        "transport": args.transport,
        "processes": args.processes,
        "ledger": args.ledger,
        "scenario": args.scenario,
        "faults": faults,
    }
    s = settings(SimulatorSettings, registry=args.registry, **overrides)
    configure_logging("simulator", s.log_level)
    fleet = registry.load_cities(s.registry)
    refuse_beside_running_city(s, command.fleet_city(s) if len(fleet) == 1 else fleet)
    explicit = {k for k, v in overrides.items() if v is not None}
    try:
        code = command.simulate(s, explicit)
    except (ValueError, OSError) as exc:
        raise CliError(f"simulate: {exc}") from None
    return code


def _backfill(args: argparse.Namespace) -> int:
    """`--backfill SPAN`: the span before now (whole days), written straight to InfluxDB."""
    import asyncio
    import time

    from simulators.backfill import BackfillPlan, parse_span, run_backfill

    s = settings(SimulatorSettings, registry=args.registry, seed=args.seed)
    configure_logging("simulator", s.log_level)
    city = registry.load_cities(s.registry).first
    try:
        span_s = parse_span(args.backfill, "--backfill")
        every_s = parse_span(args.backfill_every, "--backfill-every")
        end_ms = int(time.time() * 1000) // 86_400_000 * 86_400_000
        devices = tuple(city.devices[: args.devices] if args.devices else city.devices)
        plan = BackfillPlan(city, devices, end_ms - span_s * 1000, end_ms, every_s, s.seed)
        asyncio.run(run_backfill(s.influx, plan, workers=args.backfill_workers))
    except (ValueError, OSError) as exc:
        raise CliError(f"simulate: {exc}") from None
    return 0


def add_parsers(sub: Any) -> None:
    """Add `simulate` to the `safecity` parser."""
    p = sub.add_parser("simulate", help="the simulated city fleet")
    p.add_argument("--speed", type=positive_float, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int)
    p.add_argument("--devices", type=positive_int, help="simulate only the first N devices")
    p.add_argument("--duration", type=positive_float, help="stop after this many wall seconds")
    p.add_argument("--start", help="simulated start, e.g. 2026-01-15T06:00 (UTC; default now)")
    p.add_argument("--scenario", help="scenario name (see --list-scenarios) or .toml path")
    p.add_argument("--list-scenarios", action="store_true", help="list scenarios and exit")
    p.add_argument("--transport", choices=("edge", "single"), help="per-device or one connection")
    p.add_argument("--processes", type=positive_int, help="split the fleet over N processes")
    p.add_argument("--ledger", type=Path, help="write the ground-truth ledger to this file")
    p.add_argument("--faults", help="fault rates per reading, e.g. bad_json=0.01,duplicate=0.02")
    p.add_argument("--fault-rate", type=float, help="the same rate for every fault")
    p.add_argument(
        "--backfill",
        metavar="SPAN",
        help="write this span before today (e.g. 365d) straight to InfluxDB, then exit",
    )
    p.add_argument(
        "--backfill-every",
        metavar="STEP",
        default="15m",
        help="with --backfill: one reading per device per STEP (default 15m; divides a day)",
    )
    p.add_argument(
        "--backfill-workers",
        metavar="N",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="with --backfill: generate in N processes (default: one per CPU)",
    )
    registry_flag(p)
    p.set_defaults(func=cmd_simulate)
