"""`safecity dashboards build|push`: Grafana provisioning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dashboards.settings import DashboardsSettings
from safecity import registry
from safecity.cliargs import registry_flag, settings
from safecity.errors import CliError
from safecity.observability import configure_logging

__all__ = ["add_parsers", "cmd_dashboards_build", "cmd_dashboards_push"]


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
    s = settings(
        DashboardsSettings,
        grafana_url=args.url,
        grafana_token=args.token,
        grafana_influx_url=args.influx_url,
        registry=args.registry,
    )
    configure_logging("dashboards", s.log_level)
    if s.grafana_token is None:
        raise CliError("a Grafana token is needed: --token or SAFECITY_GRAFANA_TOKEN")
    from dashboards import push

    report = push.push(
        s.grafana_url,
        s.grafana_token.get_secret_value(),
        s.influx,
        datasource_url=s.grafana_influx_url,
        city=list(registry.load_cities(s.registry).values()),
    )
    print(report.summary())
    return 0


def add_parsers(sub: Any) -> None:
    """Add the `dashboards` group to the `safecity` parser."""
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
