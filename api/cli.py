"""`safecity api`: the HTTP API."""

from __future__ import annotations

import argparse
from typing import Any

from api.settings import ApiSettings
from safecity.cliargs import port, registry_flag, run_async, settings
from safecity.observability import configure_logging

__all__ = ["add_parsers", "cmd_api"]


def cmd_api(args: argparse.Namespace) -> int:
    """The HTTP API."""
    s = settings(ApiSettings, host=args.host, port=args.port, registry=args.registry)
    configure_logging("api", s.log_level)
    from api import server

    return run_async(server.serve(s))


def add_parsers(sub: Any) -> None:
    """Add `api` to the `safecity` parser."""
    p = sub.add_parser("api", help="the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=port)
    registry_flag(p)
    p.set_defaults(func=cmd_api)
    from api.export import add_arguments, run

    p = sub.add_parser("export", help="download a series or events as CSV or NDJSON")
    add_arguments(p)
    p.set_defaults(func=run)
