"""The `safecity` command line: each service adds its own commands; this module adds
run | influx init | city | apikey (and, from `verifycli`, verify; from `backupcli`,
backup | restore) and composes them.

Only the module of the command that runs is imported (`COMMANDS`), and each command
imports what it needs inside, so that a command starts without loading every service.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from safecity import cliargs, registry
from safecity.cliargs import port, positive_float, positive_int, registry_flag
from safecity.errors import CliError, ConfigError, SafecityError
from safecity.observability import configure_logging

__all__ = ["CliError", "build_parser", "main"]

# The shared helpers under the names the commands below use.
_settings = cliargs.settings
_run_async = cliargs.run_async


def cmd_run(args: argparse.Namespace) -> int:
    """The whole local stack."""
    from control.runner import run_local
    from control.settings import StackSettings

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
    from control.settings import StorageSettings

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


def cmd_city_generate(args: argparse.Namespace) -> int:
    """Write a generated city registry."""
    from safecity import citygen

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
    from api.settings import ApiSettings

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
    from api.settings import ApiSettings

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
    p.set_defaults(func=cmd_env_example)


def cmd_env_example(args: argparse.Namespace) -> int:
    """Print, write or check .env.example."""
    from control import envexample

    return envexample.main(
        [*(["--write"] if args.write else []), *(["--check"] if args.check else [])]
    )


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


# Every command of `safecity`, in the order `--help` lists them: this module's own groups,
# and each service's (its module, with the name and one-line help of each command it
# adds). A service's CLI is imported only when one of its commands runs: loading them
# all cost every command about a second of start-up. The others get a bare parser with
# the same help, so `--help` still lists every command (a test keeps the two equal).
_Lazy = tuple[str, tuple[tuple[str, str], ...]]
COMMANDS: tuple[Callable[[Any], None] | _Lazy, ...] = (
    _add_run,
    (
        "ingest.cli",
        (
            ("ingest", "an ingest worker (MQTT -> InfluxDB)"),
            ("deadletter", "inspect or replay the dead-letter store"),
        ),
    ),
    _add_env_example,
    ("control.verifycli", (("verify", "check a ledger against InfluxDB and dead letters"),)),
    ("alerts.cli", (("alerts", "the alerts service (rules -> alerts -> incidents)"),)),
    ("notify.cli", (("notify", "the notification service (incidents -> people on call)"),)),
    ("rollups.cli", (("rollup", "the rollup job (raw telemetry -> rollup tiers)"),)),
    _add_influx,
    (
        "api.cli",
        (("api", "the HTTP API"), ("export", "download a series or events as CSV or NDJSON")),
    ),
    ("simulators.cli", (("simulate", "the simulated city fleet"),)),
    _add_apikey,
    _add_city,
    ("dashboards.cli", (("dashboards", "Grafana provisioning"),)),
    (
        "broker.cli",
        (
            ("devices", "device and service identities on the broker"),
            ("broker", "broker configuration"),
            ("certs", "local CA and TLS certificates"),
        ),
    ),
    (
        "control.backupcli",
        (
            (
                "backup",
                "back the instance up (while it runs): databases, keys, secrets, CA, broker "
                "accounts, service state; a manifest with checksums and the recovery point",
            ),
            ("restore", "check a backup and restore it into the instance (SAFECITY_HOME)"),
        ),
    ),
)


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the `safecity` command; with `load`, only the services'
    modules of those commands are imported (the other commands are listed, not parseable)."""
    parser = argparse.ArgumentParser(prog="safecity", description="safecity telemetry platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in COMMANDS:
        if callable(entry):
            entry(sub)
            continue
        module, commands = entry
        if load is None or any(name in load for name, _ in commands):
            importlib.import_module(module).add_parsers(sub)
        else:
            for name, text in commands:
                sub.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `safecity` console script."""
    cliargs.freeze_at_exit()
    argv = sys.argv[1:] if argv is None else list(argv)
    # The command is the first word that is not an option (the top level has only -h).
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(load=() if command is None else (command,)).parse_args(argv)
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
