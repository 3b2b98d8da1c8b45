"""`safecity ingest` and `safecity deadletter list|stats|replay`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ingest.settings import IngestSettings
from safecity import registry
from safecity.cliargs import freeze_at_exit, positive_int, registry_flag, run_async, settings
from safecity.errors import SafecityError
from safecity.observability import configure_logging
from safecity.settings import resolve_instance_id

__all__ = ["add_parsers", "cmd_deadletter", "cmd_ingest", "main"]


def cmd_ingest(args: argparse.Namespace) -> int:
    """One ingest worker, or with --workers N a supervisor of N worker processes."""
    s = settings(IngestSettings, worker_id=args.worker_id, registry=args.registry)
    configure_logging("ingest", s.log_level)
    if s.worker_id == "auto":
        s = s.model_copy(update={"worker_id": resolve_instance_id("auto")})
    if s.region.enabled:
        # A regional instance: its ingest takes the cities' federated indicators.
        from ingest import federation

        return run_async(federation.run(s))
    cities = registry.load_cities(s.registry)
    if args.workers is not None:
        from ingest import supervisor

        code: int = supervisor.supervise(s, args.workers, s.registry)
        return code
    from ingest import service

    return run_async(service.run(s, cities))


def cmd_deadletter(args: argparse.Namespace) -> int:
    """Inspect or replay the dead-letter store."""
    s = settings(IngestSettings, deadletter_dir=args.dir, registry=args.registry)
    configure_logging("deadletter", s.log_level)
    from ingest import deadletter

    store = deadletter.DeadLetterStore(s.deadletter_dir)
    if args.action == "replay":
        cities = registry.load_cities(s.registry)
        from ingest import replay

        result = asyncio.run(replay.replay(s, cities, args.reason, args.dry_run))
        still = ", ".join(f"{k}={v}" for k, v in sorted(result.still_rejected.items()))
        verb = "would write" if args.dry_run else "written"
        print(
            f"examined {result.examined}, {verb} {result.written}, "
            f"still rejected {sum(result.still_rejected.values())} ({still or 'none'}), "
            f"refused by InfluxDB {result.refused_by_influx}, "
            f"truncated (not replayable) {result.skipped_truncated}"
        )
        return 0
    records = [r for r in store.read() if args.reason is None or r.get("reason") == args.reason]
    if args.action == "stats":
        counts: dict[str, int] = {}
        for r in records:
            counts[str(r.get("reason"))] = counts.get(str(r.get("reason")), 0) + 1
        print(f"{len(records)} dead letters in {store.path}")
        for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {reason:24} {count}")
        return 0
    for r in records[-args.limit :] if args.limit else records:
        print(json.dumps(r, separators=(",", ":")))
    return 0


def _ingest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker-id", help="stable worker id (its MQTT client id and session)")
    p.add_argument(
        "--workers",
        type=positive_int,
        help="run N worker processes with ids <worker-id>-0..N-1 on the shared subscription",
    )
    registry_flag(p)
    p.set_defaults(func=cmd_ingest)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ingest`: the `safecity ingest` command on its own (supervised workers)."""
    freeze_at_exit()
    parser = argparse.ArgumentParser(prog="python -m ingest", description=cmd_ingest.__doc__)
    _ingest_flags(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_ingest(args)
    except SafecityError as exc:
        print(f"safecity: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def add_parsers(sub: Any) -> None:
    """Add `ingest` and the `deadletter` group to the `safecity` parser."""
    _ingest_flags(sub.add_parser("ingest", help="an ingest worker (MQTT -> InfluxDB)"))

    dl = sub.add_parser("deadletter", help="inspect or replay the dead-letter store")
    dl_sub = dl.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "print stored dead letters as JSON lines"),
        ("stats", "count dead letters by reason"),
        ("replay", "re-validate (e.g. after a registry fix); write and remove the good ones"),
    ):
        p = dl_sub.add_parser(action, help=text)
        p.add_argument("--dir", type=Path, help="dead-letter directory (SAFECITY_DEADLETTER_DIR)")
        p.add_argument("--reason", help="only records with this reason")
        registry_flag(p)
        if action == "list":
            p.add_argument("--limit", type=positive_int, help="only the last N records")
        if action == "replay":
            p.add_argument("--dry-run", action="store_true", help="report, write nothing")
        p.set_defaults(func=cmd_deadletter)
