"""The `safecity` command line: each service adds its own commands; this module adds
run | verify | influx init | city | apikey (and, from `backupcli`, backup | restore)
and composes them.

Each service's modules are imported inside the command that runs it, so that a
command starts without loading every service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alerts import cli as alerts_cli
from alerts.settings import AlertsSettings
from api import cli as api_cli
from api.settings import ApiSettings
from broker import cli as broker_cli
from control import backupcli, envexample
from control.settings import StackSettings, StorageSettings
from dashboards import cli as dashboards_cli
from ingest import cli as ingest_cli
from ingest.settings import IngestSettings
from notify import cli as notify_cli
from rollups import cli as rollups_cli
from safecity import citygen, cliargs, instance, registry
from safecity.cliargs import port, positive_float, positive_int, registry_flag
from safecity.errors import CliError, ConfigError, SafecityError
from safecity.observability import configure_logging
from safecity.readings import format_ts
from simulators import cli as simulators_cli
from simulators.settings import SimulatorSettings

__all__ = ["CliError", "build_parser", "main"]

# The shared helpers under the names the commands below use.
_settings = cliargs.settings
_run_async = cliargs.run_async


def cmd_run(args: argparse.Namespace) -> int:
    """The whole local stack."""
    from control.runner import run_local

    settings = _settings(
        StackSettings,
        data_dir=args.data_dir,
        speed=args.speed,
        seed=args.seed,
        simulator_processes=args.simulator_processes,
        api_port=args.api_port,
        mqtt_port=args.mqtt_port,
        mqtt_tls_port=args.mqtt_tls_port,
        influx_port=args.influx_port,
        registry=args.registry,
        cities=" ".join(args.cities) if args.cities else None,
        with_region=args.region or None,
        region_api_port=args.region_api_port,
        local_federation_interval=args.federation_interval,
        api_rate_limit_rps=args.api_rate_limit_rps,
        api_rate_limit_burst=args.api_rate_limit_burst,
    )
    configure_logging("run", settings.log_level)
    return run_local(settings)


def cmd_influx_init(args: argparse.Namespace) -> int:
    """Create the database and every retention policy (needs an admin account)."""
    settings = _settings(StorageSettings)
    configure_logging("influx", settings.log_level)
    from safecity import influx as influx_mod

    if args.create_users:
        from control.influxinit import create_users

        for line in asyncio.run(create_users(settings)):
            print(line)

    # Every city of the registry setting has its own database and policies.
    cities = registry.load_cities(settings.registry).ids

    async def main() -> list[str]:
        client = influx_mod.InfluxClient(settings.influx)
        try:
            missing: list[str] = []
            for city in cities:
                database = client.for_city(city, cities)
                await database.ensure_database()
                lacking = await database.missing_retention_policies()
                missing += [f"{database.settings.database}: {name}" for name in lacking]
            return missing
        finally:
            await client.close()

    missing = asyncio.run(main())
    if missing:
        raise CliError(f"retention policies still missing: {', '.join(missing)}")
    names = ", ".join(repr(settings.influx.database_for(c, cities)) for c in cities)
    print(f"database {names} and its retention policies are ready")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a ledger against InfluxDB and the dead-letter stores; exit 1 on any loss.

    Without --ledger: the ledger of the instance's city (`safecity run` keeps one), with
    its dead-letter store; while it runs, what was sent up to now is checked after
    `--settle` seconds (default 5) for the messages still on their way.
    """
    if getattr(args, "scenario", None):
        return cmd_verify_scenario(args)
    settings = _settings(IngestSettings, registry=args.registry)
    ledger_path, deadletters, upto = args.ledger, args.deadletters or [], None
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
            _say(f"verify: {ledger_path} up to now; waiting {settle:g}s for messages on their way")
            time.sleep(settle)
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
        if done == 0 or now - self.last >= self.every_s:
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

    from control.scenario import run_scenario

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


def cmd_city_generate(args: argparse.Namespace) -> int:
    """Write a generated city registry."""
    city = citygen.generate(args.city, args.devices, args.seed, districts=args.districts)
    out = args.out or Path(f"{city.id}.jsonl")
    try:
        # A new folder for it is made, as `--out cities/x.jsonl` suggests.
        out.parent.mkdir(parents=True, exist_ok=True)
        registry.write(city, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    print(f"wrote {out}: {city.name}, {len(city.districts)} districts, {len(city.devices)} devices")
    return 0


def cmd_city_show(args: argparse.Namespace) -> int:
    """Validate registries (together: device ids unique across cities) and summarise them."""
    for city in registry.load_cities(registry.registry_paths(args.registry)).values():
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
    record, key = store.create(args.name, parse_scopes(args.scopes), tuple(args.city or ()))
    cities = ",".join(record.cities) or "all cities"
    _note_unserved(record.cities)
    print(
        f"created key {record.id} ({record.name}; scopes {','.join(record.scopes)}; {cities}) "
        f"in {store.path}; it is shown only now:",
        file=sys.stderr,
    )
    print(f"SAFECITY_API_KEY={key}")
    return 0


def _note_unserved(cities: Sequence[str]) -> None:
    """Say which of a key's cities this deployment's registries do not serve (a typo, or a
    city only a regional view knows): the key is made either way."""
    try:
        served = registry.load_cities(_settings(ApiSettings).registry).ids
    except SafecityError:
        return
    unserved = [c for c in cities if c not in served]
    if unserved:
        print(
            f"note: {', '.join(unserved)} not served here (this deployment: "
            f"{', '.join(served)}); the key reads them only where they are served",
            file=sys.stderr,
        )


def cmd_apikey_list(args: argparse.Namespace) -> int:
    """List the keys: id, name, scopes, created, revoked (never the secrets)."""
    store = _key_store(args)
    print(f"{'id':10} {'name':24} {'scopes':20} {'cities':20} {'created':22} revoked")
    for k in store.records():
        revoked = k.revoked_at or "-"
        cities = ",".join(k.cities) or "*"
        print(
            f"{k.id:10} {k.name:24} {','.join(k.scopes):20} {cities:20} {k.created_at:22} {revoked}"
        )
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id; the API refuses it from the next request on."""
    record = _key_store(args).revoke(args.id)
    print(f"revoked key {record.id} ({record.name}) at {record.revoked_at}")
    return 0


def _add_run(sub: Any) -> None:
    """`safecity run`: the whole local stack."""
    p = sub.add_parser("run", help="the whole local stack (broker, InfluxDB, services, city)")
    p.add_argument(
        "--data-dir", type=Path, help="the instance directory (default: SAFECITY_HOME, var/stack)"
    )
    p.add_argument("--speed", type=positive_float, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int, help="simulator seed")
    p.add_argument(
        "--simulator-processes",
        type=positive_int,
        help="spread the simulated fleet over N processes (a city of tens of thousands)",
    )
    p.add_argument("--api-port", type=port)
    p.add_argument(
        "--api-rate-limit-rps",
        type=positive_float,
        help="the API's sustained requests/s per key (a load test with one key raises it)",
    )
    p.add_argument("--api-rate-limit-burst", type=positive_int, help="the API's burst per key")
    p.add_argument("--mqtt-port", type=port)
    p.add_argument("--mqtt-tls-port", type=port, help="the broker's TLS listener (0: any free)")
    p.add_argument("--influx-port", type=port)
    p.add_argument(
        "--cities",
        nargs="+",
        metavar="CITY",
        help="built-in cities to run, each with its own fleet and database "
        "(e.g. --cities tashkent samarkand; default: Tashkent alone)",
    )
    p.add_argument(
        "--region",
        action="store_true",
        help="also run a regional instance (own broker, ingest, API) that the cities "
        "federate to over bridges (docs/federation.md)",
    )
    p.add_argument("--region-api-port", type=port, help="the regional API's port (0: any free)")
    p.add_argument(
        "--federation-interval",
        type=positive_float,
        help="seconds of one federation interval (default 60 in a local run)",
    )
    registry_flag(p)
    p.set_defaults(func=cmd_run)


def _add_env_example(sub: Any) -> None:
    """`safecity env-example`."""
    p = sub.add_parser(
        "env-example", help="print, --write or --check .env.example (from every settings class)"
    )
    p.add_argument("--write", action="store_true", help="write the file")
    p.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    p.set_defaults(
        func=lambda a: envexample.main(
            [*(["--write"] if a.write else []), *(["--check"] if a.check else [])]
        )
    )


def _add_verify(sub: Any) -> None:
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
        help="seconds to wait for messages on their way (default 5) or, with --scenario, "
        "for alerts (default 30)",
    )
    registry_flag(p)
    p.set_defaults(func=cmd_verify)


def _add_influx(sub: Any) -> None:
    """`safecity influx init`."""
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


def _add_apikey(sub: Any) -> None:
    """`safecity apikey create|list|revoke`."""
    keys = sub.add_parser("apikey", help="API keys (create, list, revoke)").add_subparsers(
        dest="apikey_command", required=True, metavar="ACTION"
    )

    def keys_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--keys-file", type=Path, help="key store (default: SAFECITY_API_KEYS_FILE)")

    p = keys.add_parser("create", help="create a key and print it once")
    p.add_argument("--name", required=True, help="who or what uses the key")
    p.add_argument("--scopes", default="read", help="comma-separated: read, operate, admin")
    p.add_argument(
        "--city",
        action="append",
        metavar="ID",
        help="a city the key may read or operate (repeatable; default: every city)",
    )
    keys_flag(p)
    p.set_defaults(func=cmd_apikey_create)
    p = keys.add_parser("list", help="list keys (ids, names, scopes; never secrets)")
    keys_flag(p)
    p.set_defaults(func=cmd_apikey_list)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id", help="the key id (8 hex digits, from `apikey list`)")
    keys_flag(p)
    p.set_defaults(func=cmd_apikey_revoke)


def _add_city(sub: Any) -> None:
    """`safecity city generate|show`."""
    city = sub.add_parser("city", help="city registries").add_subparsers(
        dest="city_command", required=True, metavar="ACTION"
    )
    p = city.add_parser("generate", help="generate a city registry from a seed")
    p.add_argument(
        "--city", required=True, help="city name (tashkent, almaty, bishkek, ... or any)"
    )
    p.add_argument("--devices", type=positive_int, default=300)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--districts", type=positive_int, help="district count for unknown cities")
    p.add_argument("--out", type=Path, help="output file (default: <city>.jsonl)")
    p.set_defaults(func=cmd_city_generate)
    p = city.add_parser("show", help="validate a registry and summarise it")
    registry_flag(p)
    p.set_defaults(func=cmd_city_show)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `safecity` command."""
    parser = argparse.ArgumentParser(prog="safecity", description="safecity telemetry platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    ingest_cli.add_parsers(sub)
    _add_env_example(sub)
    _add_verify(sub)
    alerts_cli.add_parsers(sub)
    notify_cli.add_parsers(sub)
    rollups_cli.add_parsers(sub)
    _add_influx(sub)
    api_cli.add_parsers(sub)
    simulators_cli.add_parsers(sub)
    _add_apikey(sub)
    _add_city(sub)
    dashboards_cli.add_parsers(sub)
    broker_cli.add_parsers(sub)
    backupcli.add_parsers(sub)
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
