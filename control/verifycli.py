"""`safecity verify`: a ledger against InfluxDB and the dead-letter stores, or a scenario
run and the alert rules scored against it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safecity import instance, registry
from safecity.cliargs import positive_float, registry_flag
from safecity.cliargs import settings as _settings
from safecity.errors import CliError
from safecity.observability import configure_logging
from safecity.readings import format_ts


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a ledger against InfluxDB and the dead-letter stores; exit 1 on any loss.

    Without --ledger: the ledger of the instance's city (`safecity run` keeps one), with
    its dead-letter store; while it runs, what was sent up to now is checked again until
    its figures settle, for at most `--settle` seconds (default 5): messages still on
    their way.
    """
    if getattr(args, "scenario", None):
        return cmd_verify_scenario(args)
    from ingest.settings import IngestSettings

    settings = _settings(IngestSettings, registry=args.registry)
    ledger_path, deadletters, upto, settle = args.ledger, args.deadletters or [], None, 0.0
    # Which databases to read: the registry's cities; for the instance's own ledger,
    # those of its run; else the one database of a single city.
    where = instance.layout(settings.home)
    cities: tuple[str, ...] = ()
    if settings.registry:
        cities = registry.load_cities(settings.registry).ids
    elif ledger_path is None:
        cities = instance.recorded_cities(where)
    if ledger_path is None:
        if not where.ledger_file.exists():
            raise CliError(
                "verify needs --ledger FILE (or --scenario NAME): "
                f"no ledger of a local city in {where.root} (`safecity run` keeps one there)"
            )
        ledger_path, deadletters = where.ledger_file, args.deadletters or [where.deadletter_dir]
        if instance.running(where) is not None:
            upto = where.ledger_file.stat().st_size
            settle = 5.0 if args.settle is None else args.settle
            _say(
                f"verify: {ledger_path} up to now; waiting up to {settle:g}s for messages on "
                "their way (until the figures settle)"
            )
    from control.verify import verify
    from safecity.influx import InfluxClient

    async def main() -> Any:
        client = InfluxClient(settings.influx)
        try:
            return await verify(
                ledger_path,
                client,
                deadletters,
                upto=upto,
                cities=cities,
                city=args.city,
                progress=_Progress("verify: read back"),
                settle_s=settle,
            )
        finally:
            await client.close()

    report = asyncio.run(main())
    print(json.dumps(report.summary()) if args.json else report.render())
    return 0 if report.ok else 1


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _Progress:
    """`done/total` on stderr every few seconds and at the start, so a long check is not silent."""

    def __init__(self, what: str, every_s: float = 3.0) -> None:
        self.what = what
        self.every_s = every_s
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        # The start of the first read-back, then every few (a settling check reads again).
        if (done == 0 and not self.last) or now - self.last >= self.every_s:
            self.last = now
            _say(f"{self.what} {done}/{total} device series from InfluxDB")


def _outside_window(start: datetime, end: datetime, past_s: float, future_s: float) -> str | None:
    """Why a scenario's simulated span falls outside the ingest's timestamp window, if it does."""
    now = datetime.now(UTC)
    earliest, latest = now - timedelta(seconds=past_s), now + timedelta(seconds=future_s)
    if earliest <= start and end <= latest:
        return None
    return (
        f"the scenario's simulated time {format_ts(start)} .. {format_ts(end)} falls outside "
        f"the ingest's timestamp window ({format_ts(earliest)} .. {format_ts(latest)}: "
        f"SAFECITY_TS_PAST_WINDOW={past_s:g}, SAFECITY_TS_FUTURE_WINDOW={future_s:g}); its "
        "readings would be dead-lettered and every rule would look missed. Give a --start "
        "inside the window, or widen both variables for the ingest, the alerts service and "
        "this command"
    )


def cmd_verify_scenario(args: argparse.Namespace) -> int:
    """Run a scenario and score the alert rules against its ledger; exit 1 if it fails."""
    import tempfile

    from alerts.settings import AlertsSettings
    from control.scenario import run_scenario
    from simulators import cli as simulators_cli
    from simulators.settings import SimulatorSettings

    settings = _settings(AlertsSettings, registry=args.registry)
    configure_logging("verify", settings.log_level)
    from simulators import scenario as scenarios

    scenario = scenarios.load(args.scenario)
    city = registry.load_or_default(settings.registry)
    start = scenarios.parse_start(args.start) if args.start else scenario.start
    start = start or datetime.now(UTC).replace(microsecond=0)
    speed = args.speed or scenario.speed or 1.0
    duration = args.duration or scenario.duration or 60.0
    fleet = _settings(SimulatorSettings, registry=args.registry)
    simulators_cli.refuse_beside_running_city(fleet, scenario.fleet(city))
    end = start + timedelta(seconds=duration * speed)
    why = _outside_window(start, end, settings.ts_past_window, settings.ts_future_window)
    if why is not None:
        raise CliError(f"scenario {args.scenario}: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        ledger_path = args.ledger or Path(tmp) / "ledger.jsonl"
        result = run_scenario(
            scenario,
            scenarios.seconds,
            city,
            settings.influx,
            start=start,
            speed=speed,
            duration=duration,
            ledger_path=ledger_path,
            settle_s=30.0 if args.settle is None else args.settle,
            registry=settings.registry,
            deadletter_dirs=args.deadletters or [],
        )
    if args.json:
        print(json.dumps(result.summary()))
    else:
        for d in result.detections:
            delay = "-" if d.delay_s is None else f"{d.delay_s:.0f}s"
            verdict = "ok" if d.detected else "MISSED"
            where = d.district or "city"
            print(f"{verdict:6} {d.rule:24} {where:16} within {d.within_s:.0f}s  delay {delay}")
        for c in result.checks:
            found = "-" if c.found is None else f"{c.found:g}"
            print(f"{'ok' if c.ok else 'FAILED':6} {c.section:12} {c.what}  found {found}")
        print(
            f"alerts {result.alerts}, critical events {result.critical_events}, "
            f"missed critical {len(result.missed_critical)}, "
            f"false positives {len(result.false_positives)}"
        )
        for line in result.missed_critical + result.false_positives:
            print(f"  {line}")
    return 0 if result.ok else 1


def add_parsers(sub: Any) -> None:
    """`safecity verify`: a ledger against InfluxDB and dead letters."""
    p = sub.add_parser("verify", help="check a ledger against InfluxDB and dead letters")
    p.add_argument(
        "--ledger",
        type=Path,
        help="ledger file (JSON lines; default: the local city's); with --scenario: where "
        "to write it",
    )
    p.add_argument(
        "--deadletters", type=Path, action="append", help="dead-letter directory (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--city", help="check only this city's messages (default: every city)")
    # Ground-truth scoring of the alert rules: run a scenario, score its alerts.
    p.add_argument("--scenario", help="run this scenario and score the alert rules against it")
    p.add_argument("--speed", type=positive_float, help="with --scenario: simulated s per s")
    p.add_argument("--start", help="with --scenario: simulated start (UTC)")
    p.add_argument("--duration", type=positive_float, help="with --scenario: wall seconds")
    p.add_argument(
        "--settle",
        type=positive_float,
        help="at most this many seconds to wait for messages on their way, until the "
        "figures settle (default 5) or, with --scenario, for alerts (default 30)",
    )
    registry_flag(p)
    p.set_defaults(func=cmd_verify)
