"""`safecity alerts`: the alerts service, or `--check` of a rule file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alerts.settings import AlertsSettings
from safecity import registry
from safecity.cliargs import registry_flag, run_async, settings
from safecity.observability import configure_logging

__all__ = ["add_parsers", "cmd_alerts"]


def cmd_alerts(args: argparse.Namespace) -> int:
    """The alerts service (or, with --check, validate the rule file and exit)."""
    s = settings(
        AlertsSettings,
        alerts_id=args.alerts_id,
        alerts_rules_file=args.rules,
        registry=args.registry,
    )
    configure_logging("alerts", s.log_level)
    cities = registry.load_cities(s.registry)
    from alerts import rules as rules_mod

    rulesets = rules_mod.load_for_cities(cities.ids, s.alerts_rules_file)
    if args.check:
        for ruleset in rulesets.values():
            print(f"{len(ruleset.rules)} rules for {ruleset.city}: ok")
        return 0
    from alerts import service

    return run_async(service.run_cities(s, cities, rulesets))


def add_parsers(sub: Any) -> None:
    """Add `alerts` to the `safecity` parser."""
    p = sub.add_parser("alerts", help="the alerts service (rules -> alerts -> incidents)")
    p.add_argument("--alerts-id", help="stable id (its MQTT client id and session)")
    p.add_argument("--rules", type=Path, help="rule file (default: the city's shipped rules)")
    p.add_argument("--check", action="store_true", help="validate the rule file and exit")
    registry_flag(p)
    p.set_defaults(func=cmd_alerts)
