"""`safecity rollup`: the rollup job (or one catch-up pass with `--once`)."""

from __future__ import annotations

import argparse
from typing import Any

from rollups.settings import RollupSettings
from safecity import registry
from safecity.cliargs import registry_flag, run_async, settings
from safecity.observability import configure_logging

__all__ = ["add_parsers", "cmd_rollup"]


def cmd_rollup(args: argparse.Namespace) -> int:
    """The rollup job."""
    s = settings(RollupSettings, registry=args.registry)
    configure_logging("rollups", s.log_level)
    cities = registry.load_cities(s.registry)
    from rollups import service

    return run_async(service.run(s, cities, once=args.once))


def add_parsers(sub: Any) -> None:
    """Add `rollup` to the `safecity` parser."""
    p = sub.add_parser("rollup", help="the rollup job (raw telemetry -> rollup tiers)")
    p.add_argument(
        "--once", action="store_true", help="one pass (catch up, recheck late data), then exit"
    )
    registry_flag(p)
    p.set_defaults(func=cmd_rollup)
