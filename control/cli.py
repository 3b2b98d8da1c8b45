"""The `safecity` command line: run | ingest | api | simulate | city | apikey.

Each service's modules are imported inside the command that runs it, so that a
command starts without loading every service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from alerts.settings import AlertsSettings
from api.settings import ApiSettings
from control.settings import StackSettings, StorageSettings
from dashboards.settings import DashboardsSettings
from ingest.settings import IngestSettings
from safecity import registry
from safecity.errors import SafecityError
from safecity.observability import configure_logging
from safecity.settings import resolve_instance_id
from simulators.settings import SimulatorSettings

S = TypeVar("S")


class CliError(SafecityError):
    """A command-line usage error, reported as one line."""


def _settings(cls: Callable[..., S], **overrides: Any) -> S:
    """Build settings from env/.env plus the flags given; name the bad variable on error."""
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = [str(p) for p in err["loc"]]
            var = "SAFECITY_" + "__".join(loc).upper()
            flag = "--" + loc[-1].replace("_", "-") if loc else ""
            lines.append(f"invalid setting {var} (or {flag}): {err['msg']}")
        raise CliError("; ".join(lines)) from exc


def _run_async(main: Coroutine[Any, Any, None]) -> int:
    """Run a service coroutine; SIGINT/SIGTERM cancel it so it stops cleanly."""

    async def wrapper() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await main

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(wrapper())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole local stack."""
    from control.runner import run_local

    settings = _settings(
        StackSettings,
        data_dir=args.data_dir,
        speed=args.speed,
        seed=args.seed,
        api_port=args.api_port,
        mqtt_port=args.mqtt_port,
        mqtt_tls_port=args.mqtt_tls_port,
        influx_port=args.influx_port,
        registry=args.registry,
    )
    configure_logging("run", settings.log_level)
    return run_local(settings)


def cmd_ingest(args: argparse.Namespace) -> int:
    """One ingest worker, or with --workers N a supervisor of N worker processes."""
    settings = _settings(IngestSettings, worker_id=args.worker_id, registry=args.registry)
    configure_logging("ingest", settings.log_level)
    if settings.worker_id == "auto":
        settings = settings.model_copy(update={"worker_id": resolve_instance_id("auto")})
    city = registry.load_or_default(settings.registry)
    if args.workers is not None:
        from ingest import supervisor

        code: int = supervisor.supervise(settings, args.workers, settings.registry)
        return code
    from ingest import service

    return _run_async(service.run(settings, city))


def cmd_influx_init(args: argparse.Namespace) -> int:
    """Create the database and every retention policy (needs an admin account)."""
    settings = _settings(StorageSettings)
    configure_logging("influx", settings.log_level)
    from safecity import influx as influx_mod

    if args.create_users:
        from control.influxinit import create_users

        for line in asyncio.run(create_users(settings)):
            print(line)

    async def main() -> list[str]:
        client = influx_mod.InfluxClient(settings.influx)
        try:
            await client.ensure_database()
            missing: list[str] = await client.missing_retention_policies()
            return missing
        finally:
            await client.close()

    missing = asyncio.run(main())
    if missing:
        raise CliError(f"retention policies still missing: {', '.join(missing)}")
    print(f"database {settings.influx.database!r} and its retention policies are ready")
    return 0


def cmd_deadletter(args: argparse.Namespace) -> int:
    """Inspect or replay the dead-letter store."""
    settings = _settings(IngestSettings, deadletter_dir=args.dir, registry=args.registry)
    configure_logging("deadletter", settings.log_level)
    from ingest import deadletter

    store = deadletter.DeadLetterStore(settings.deadletter_dir)
    if args.action == "replay":
        city = registry.load_or_default(settings.registry)
        from ingest import replay

        result = asyncio.run(replay.replay(settings, city, args.reason, args.dry_run))
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


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a ledger against InfluxDB and the dead-letter stores; exit 1 on any loss."""
    if getattr(args, "scenario", None):
        return cmd_verify_scenario(args)
    if args.ledger is None:
        raise CliError("verify needs --ledger FILE (or --scenario NAME)")
    settings = _settings(IngestSettings, registry=args.registry)
    from control.verify import verify
    from safecity.influx import InfluxClient

    async def main() -> Any:
        client = InfluxClient(settings.influx)
        try:
            return await verify(args.ledger, client, args.deadletters or [])
        finally:
            await client.close()

    report = asyncio.run(main())
    print(json.dumps(report.summary()) if args.json else report.render())
    return 0 if report.ok else 1


def cmd_verify_scenario(args: argparse.Namespace) -> int:
    """Run a scenario and score the alert rules against its ledger; exit 1 if it fails."""
    import tempfile
    from datetime import UTC, datetime

    from control.scoring import run_scenario

    settings = _settings(AlertsSettings, registry=args.registry)
    configure_logging("verify", settings.log_level)
    from simulators import scenario as scenarios

    scenario = scenarios.load(args.scenario)
    city = registry.load_or_default(settings.registry)
    start = scenarios.parse_start(args.start) if args.start else scenario.start
    start = start or datetime.now(UTC).replace(microsecond=0)
    speed = args.speed or scenario.speed or 1.0
    duration = args.duration or scenario.duration or 60.0
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
            settle_s=args.settle,
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


def cmd_alerts(args: argparse.Namespace) -> int:
    """The alerts service (or, with --check, validate the rule file and exit)."""
    settings = _settings(
        AlertsSettings,
        alerts_id=args.alerts_id,
        alerts_rules_file=args.rules,
        registry=args.registry,
    )
    configure_logging("alerts", settings.log_level)
    city = registry.load_or_default(settings.registry)
    from alerts import rules as rules_mod

    ruleset = rules_mod.load_for(city.id, settings.alerts_rules_file)
    if args.check:
        print(f"{len(ruleset.rules)} rules for {ruleset.city}: ok")
        return 0
    from alerts import service

    return _run_async(service.run(settings, city, ruleset))


def cmd_api(args: argparse.Namespace) -> int:
    """The HTTP API."""
    settings = _settings(ApiSettings, host=args.host, port=args.port, registry=args.registry)
    configure_logging("api", settings.log_level)
    from api import server

    return _run_async(server.serve(settings))


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
    settings = _settings(SimulatorSettings, registry=args.registry, **overrides)
    configure_logging("simulator", settings.log_level)
    explicit = {k for k, v in overrides.items() if v is not None}
    try:
        code = command.simulate(settings, explicit)
    except (ValueError, OSError) as exc:
        raise CliError(f"simulate: {exc}") from None
    return code


def cmd_city_generate(args: argparse.Namespace) -> int:
    """Write a generated city registry."""
    city = registry.generate(args.city, args.devices, args.seed, districts=args.districts)
    out = args.out or Path(f"{city.id}.jsonl")
    registry.write(city, out)
    print(f"wrote {out}: {city.name}, {len(city.districts)} districts, {len(city.devices)} devices")
    return 0


def cmd_dashboards_build(args: argparse.Namespace) -> int:
    """Regenerate (or --check) the Grafana provisioning files."""
    from dashboards import build

    argv = ["--out", str(args.out)] if args.out else []
    argv += ["--registry", str(args.registry)] if args.registry else []
    argv += ["--check"] if args.check else []
    code: int = build.main(argv)
    return code


def cmd_dashboards_push(args: argparse.Namespace) -> int:
    """Push folder, datasource, dashboards and alert rules to a running Grafana."""
    settings = _settings(
        DashboardsSettings,
        grafana_url=args.url,
        grafana_token=args.token,
        grafana_influx_url=args.influx_url,
        registry=args.registry,
    )
    configure_logging("dashboards", settings.log_level)
    if settings.grafana_token is None:
        raise CliError("a Grafana token is needed: --token or SAFECITY_GRAFANA_TOKEN")
    from dashboards import push

    report = push.push(
        settings.grafana_url,
        settings.grafana_token.get_secret_value(),
        settings.influx,
        datasource_url=settings.grafana_influx_url,
        city=registry.load_or_default(settings.registry),
    )
    print(report.summary())
    return 0


def cmd_city_show(args: argparse.Namespace) -> int:
    """Validate a registry and summarise it."""
    city = registry.load_or_default(args.registry)
    counts: dict[str, int] = {}
    for d in city.devices:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    print(f"{city.name} ({city.id}) from {city.source}: {len(city.districts)} districts")
    for district in city.districts:
        count = len(city.select(district=district.id))
        print(f"  {district.id:16} {district.name:20} {count} devices")
    print("devices by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


def _key_store(args: argparse.Namespace) -> Any:
    from api.apikeys import KeyStore

    path = args.keys_file or _settings(ApiSettings).api_keys_file
    store = KeyStore(path)
    store.load()
    return store


def cmd_apikey_create(args: argparse.Namespace) -> int:
    """Create an API key and print it once (only its hash is stored)."""
    from api.apikeys import parse_scopes

    store = _key_store(args)
    record, key = store.create(args.name, parse_scopes(args.scopes))
    print(
        f"created key {record.id} ({record.name}; scopes {','.join(record.scopes)}) "
        f"in {store.path}; it is shown only now:",
        file=sys.stderr,
    )
    print(f"SAFECITY_API_KEY={key}")
    return 0


def cmd_apikey_list(args: argparse.Namespace) -> int:
    """List the keys: id, name, scopes, created, revoked (never the secrets)."""
    store = _key_store(args)
    print(f"{'id':10} {'name':24} {'scopes':20} {'created':22} revoked")
    for k in store.records():
        revoked = k.revoked_at or "-"
        print(f"{k.id:10} {k.name:24} {','.join(k.scopes):20} {k.created_at:22} {revoked}")
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id; the API refuses it from the next request on."""
    record = _key_store(args).revoke(args.id)
    print(f"revoked key {record.id} ({record.name}) at {record.revoked_at}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535, 0 = any free)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `safecity` command."""
    parser = argparse.ArgumentParser(prog="safecity", description="safecity telemetry platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def registry_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", type=Path, help="city registry file (default: Tashkent)")

    p = sub.add_parser("run", help="the whole local stack (broker, InfluxDB, services, city)")
    p.add_argument("--data-dir", type=Path, help="where the stack keeps data and logs")
    p.add_argument("--speed", type=_positive_float, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int, help="simulator seed")
    p.add_argument("--api-port", type=_port)
    p.add_argument("--mqtt-port", type=_port)
    p.add_argument("--mqtt-tls-port", type=_port, help="the broker's TLS listener (0: any free)")
    p.add_argument("--influx-port", type=_port)
    registry_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ingest", help="an ingest worker (MQTT -> InfluxDB)")
    p.add_argument("--worker-id", help="stable worker id (its MQTT client id and session)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        help="run N worker processes with ids <worker-id>-0..N-1 on the shared subscription",
    )
    registry_flag(p)
    p.set_defaults(func=cmd_ingest)

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
            p.add_argument("--limit", type=_positive_int, help="only the last N records")
        if action == "replay":
            p.add_argument("--dry-run", action="store_true", help="report, write nothing")
        p.set_defaults(func=cmd_deadletter)

    p = sub.add_parser("verify", help="check a ledger against InfluxDB and dead letters")
    p.add_argument(
        "--ledger", type=Path, help="ledger file (JSON lines); with --scenario: where to write it"
    )
    p.add_argument(
        "--deadletters", type=Path, action="append", help="dead-letter directory (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    # Ground-truth scoring of the alert rules: run a scenario, score its alerts.
    p.add_argument("--scenario", help="run this scenario and score the alert rules against it")
    p.add_argument("--speed", type=_positive_float, help="with --scenario: simulated s per s")
    p.add_argument("--start", help="with --scenario: simulated start (UTC)")
    p.add_argument("--duration", type=_positive_float, help="with --scenario: wall seconds")
    p.add_argument(
        "--settle", type=_positive_float, default=30.0, help="seconds to wait for alerts"
    )
    registry_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("alerts", help="the alerts service (rules -> alerts -> incidents)")
    p.add_argument("--alerts-id", help="stable id (its MQTT client id and session)")
    p.add_argument("--rules", type=Path, help="rule file (default: the city's shipped rules)")
    p.add_argument("--check", action="store_true", help="validate the rule file and exit")
    registry_flag(p)
    p.set_defaults(func=cmd_alerts)

    influx = sub.add_parser("influx", help="InfluxDB administration").add_subparsers(
        dest="influx_command", required=True, metavar="ACTION"
    )
    p = influx.add_parser(
        "init", help="create the database and its retention policies (admin account)"
    )
    p.add_argument(
        "--create-users",
        action="store_true",
        help="first create the admin (if InfluxDB has no user yet) and the service account "
        "(SAFECITY_SERVICE_USERNAME, SAFECITY_SERVICE_PASSWORD_FILE)",
    )
    p.set_defaults(func=cmd_influx_init)

    p = sub.add_parser("api", help="the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=_port)
    registry_flag(p)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("simulate", help="the simulated city fleet")
    p.add_argument("--speed", type=_positive_float, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int)
    p.add_argument("--devices", type=_positive_int, help="simulate only the first N devices")
    p.add_argument("--duration", type=_positive_float, help="stop after this many wall seconds")
    p.add_argument("--start", help="simulated start, e.g. 2026-01-15T06:00 (UTC; default now)")
    p.add_argument("--scenario", help="scenario name (see --list-scenarios) or .toml path")
    p.add_argument("--list-scenarios", action="store_true", help="list scenarios and exit")
    p.add_argument("--transport", choices=("edge", "single"), help="per-device or one connection")
    p.add_argument("--processes", type=_positive_int, help="split the fleet over N processes")
    p.add_argument("--ledger", type=Path, help="write the ground-truth ledger to this file")
    p.add_argument("--faults", help="fault rates per reading, e.g. bad_json=0.01,duplicate=0.02")
    p.add_argument("--fault-rate", type=float, help="the same rate for every fault")
    registry_flag(p)
    p.set_defaults(func=cmd_simulate)

    keys = sub.add_parser("apikey", help="API keys (create, list, revoke)").add_subparsers(
        dest="apikey_command", required=True, metavar="ACTION"
    )

    def keys_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--keys-file", type=Path, help="key store (default: SAFECITY_API_KEYS_FILE)")

    p = keys.add_parser("create", help="create a key and print it once")
    p.add_argument("--name", required=True, help="who or what uses the key")
    p.add_argument("--scopes", default="read", help="comma-separated: read, operate, admin")
    keys_flag(p)
    p.set_defaults(func=cmd_apikey_create)
    p = keys.add_parser("list", help="list keys (ids, names, scopes; never secrets)")
    keys_flag(p)
    p.set_defaults(func=cmd_apikey_list)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id", help="the key id (8 hex digits, from `apikey list`)")
    keys_flag(p)
    p.set_defaults(func=cmd_apikey_revoke)

    city = sub.add_parser("city", help="city registries").add_subparsers(
        dest="city_command", required=True, metavar="ACTION"
    )
    p = city.add_parser("generate", help="generate a city registry from a seed")
    p.add_argument(
        "--city", required=True, help="city name (tashkent, almaty, bishkek, ... or any)"
    )
    p.add_argument("--devices", type=_positive_int, default=300)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--districts", type=_positive_int, help="district count for unknown cities")
    p.add_argument("--out", type=Path, help="output file (default: <city>.jsonl)")
    p.set_defaults(func=cmd_city_generate)
    p = city.add_parser("show", help="validate a registry and summarise it")
    registry_flag(p)
    p.set_defaults(func=cmd_city_show)

    dash = sub.add_parser("dashboards", help="Grafana provisioning").add_subparsers(
        dest="dashboards_command", required=True, metavar="ACTION"
    )
    p = dash.add_parser("build", help="regenerate dashboards/grafana/ from dashboards/build.py")
    p.add_argument("--out", type=Path, help="output dir (default: dashboards/grafana)")
    p.add_argument("--check", action="store_true", help="fail if the files are out of date")
    registry_flag(p)
    p.set_defaults(func=cmd_dashboards_build)
    p = dash.add_parser("push", help="push folder, datasource, dashboards, alert rules")
    p.add_argument("--url", help="Grafana base URL (SAFECITY_GRAFANA_URL)")
    p.add_argument("--token", help="service-account token (better: SAFECITY_GRAFANA_TOKEN)")
    p.add_argument("--influx-url", help="InfluxDB URL as Grafana reaches it")
    registry_flag(p)
    p.set_defaults(func=cmd_dashboards_push)

    # Identities and certificates: `safecity devices ...`, `safecity certs ...`.
    from broker.cli import add_parsers as add_security_parsers

    add_security_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `safecity` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SafecityError as exc:
        print(f"safecity: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
