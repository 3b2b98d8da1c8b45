"""`safecity notify`: the notification service, or `--check` of its routing."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from notify.settings import NotifySettings
from safecity import registry
from safecity.cliargs import registry_flag, run_async, settings
from safecity.observability import configure_logging

__all__ = ["add_parsers", "cmd_notify"]


def cmd_notify(args: argparse.Namespace) -> int:
    """The notifier (or, with --check, validate routing, channels and secrets and exit)."""
    s = settings(
        NotifySettings,
        notify_id=args.notify_id,
        notify_routing_file=args.routing,
        registry=args.registry,
    )
    configure_logging("notify", s.log_level)
    cities = list(registry.load_cities(s.registry).values())
    from notify import routing as routing_mod
    from notify.channels.build import build_all

    routings = {
        c.id: routing_mod.load_for(c.id, c.record.timezone, s.notify_routing_file) for c in cities
    }
    if args.check:
        for city, routing in routings.items():
            channels = build_all(routing, s.notify_dir / "console.jsonl")  # reads every secret
            asyncio.run(_close(channels.values()))
            names = ", ".join(sorted(channels))
            print(
                f"routing for {city}: {len(routing.routes)} routes, {len(routing.policies)} "
                f"policies, {len(routing.people)} people, channels {names}: ok"
            )
        return 0
    from notify import service

    return run_async(service.run_cities(s, cities, routings))


async def _close(channels: Any) -> None:
    for channel in channels:
        await channel.close()


def add_parsers(sub: Any) -> None:
    """Add `notify` to the `safecity` parser."""
    p = sub.add_parser("notify", help="the notification service (incidents -> people on call)")
    p.add_argument("--notify-id", help="stable id (its MQTT client id, session, outbox owner)")
    p.add_argument("--routing", type=Path, help="routing file (default: the city's shipped one)")
    p.add_argument(
        "--check", action="store_true", help="validate routing, channels and secrets and exit"
    )
    registry_flag(p)
    p.set_defaults(func=cmd_notify)
