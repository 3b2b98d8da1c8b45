"""`safecity simulate`: the simulated city fleet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from safecity.cliargs import CliError, positive_float, positive_int, registry_flag, settings
from safecity.observability import configure_logging
from simulators.settings import SimulatorSettings

__all__ = ["add_parsers", "cmd_simulate"]


def cmd_simulate(args: argparse.Namespace) -> int:
    """The simulated city fleet."""
    from simulators import command

    if args.list_scenarios:
        code: int = command.list_scenarios()
        return code
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
    explicit = {k for k, v in overrides.items() if v is not None}
    try:
        code = command.simulate(s, explicit)
    except (ValueError, OSError) as exc:
        raise CliError(f"simulate: {exc}") from None
    return code


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
    registry_flag(p)
    p.set_defaults(func=cmd_simulate)
