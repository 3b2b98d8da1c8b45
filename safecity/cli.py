"""The `safecity` command line: run | ingest | api | simulate | city.

Service packages are imported only inside the command that runs them, so that
importing `safecity` never pulls in a service (the layering rule).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from safecity import registry
from safecity.errors import SafecityError
from safecity.observability import configure_logging
from safecity.settings import (
    ApiSettings,
    IngestSettings,
    SimulatorSettings,
    StackSettings,
)

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
    from safecity.runner import run_local

    settings = _settings(
        StackSettings,
        data_dir=args.data_dir,
        speed=args.speed,
        seed=args.seed,
        api_port=args.api_port,
        mqtt_port=args.mqtt_port,
        influx_port=args.influx_port,
        registry=args.registry,
    )
    configure_logging("run", settings.log_level)
    return run_local(settings)


def cmd_ingest(args: argparse.Namespace) -> int:
    """One ingest worker."""
    settings = _settings(IngestSettings, worker_id=args.worker_id, registry=args.registry)
    configure_logging("ingest", settings.log_level)
    city = registry.load_or_default(settings.registry)
    service = importlib.import_module("ingest.service")
    return _run_async(service.run(settings, city))


def cmd_api(args: argparse.Namespace) -> int:
    """The HTTP API."""
    settings = _settings(ApiSettings, host=args.host, port=args.port, registry=args.registry)
    configure_logging("api", settings.log_level)
    server = importlib.import_module("api.server")
    return _run_async(server.serve(settings))


def cmd_simulate(args: argparse.Namespace) -> int:
    """The simulated city fleet."""
    settings = _settings(
        SimulatorSettings,
        speed=args.speed,
        seed=args.seed,
        max_devices=args.devices,
        duration=args.duration,
        registry=args.registry,
    )
    configure_logging("simulator", settings.log_level)
    city = registry.load_or_default(settings.registry)
    fleet = importlib.import_module("simulators.fleet")

    async def main() -> None:
        await fleet.run(settings, city)

    return _run_async(main())


def cmd_city_generate(args: argparse.Namespace) -> int:
    """Write a generated city registry."""
    city = registry.generate(args.city, args.devices, args.seed, districts=args.districts)
    out = args.out or Path(f"{city.id}.jsonl")
    registry.write(city, out)
    print(f"wrote {out}: {city.name}, {len(city.districts)} districts, {len(city.devices)} devices")
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
    p.add_argument("--influx-port", type=_port)
    registry_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ingest", help="an ingest worker (MQTT -> InfluxDB)")
    p.add_argument("--worker-id", help="stable worker id (its MQTT client id and session)")
    registry_flag(p)
    p.set_defaults(func=cmd_ingest)

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
    registry_flag(p)
    p.set_defaults(func=cmd_simulate)

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
