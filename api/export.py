"""`safecity export`: download a series or the events of a window from the API as a file.

It calls the export endpoints (`/v1/cities/{city}/export/series|events`) with an API
key and streams the body to a file named by the response's Content-Disposition
(or `--out`). Register it with `add_arguments(parser)` and `parser.set_defaults(
func=run)`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import httpx

from safecity.errors import ExportError

_FILENAME = re.compile(r'filename="([A-Za-z0-9._-]+)"')
TIMEOUT_S = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `safecity export`."""
    parser.add_argument("what", choices=("series", "events"), help="a series or events")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    parser.add_argument("--key", help="API key (default: $SAFECITY_API_KEY)")
    parser.add_argument("--city", required=True, help="city id, e.g. tashkent")
    parser.add_argument("--district", help="district id")
    parser.add_argument("--kind", help="series: sensor kind, e.g. air")
    parser.add_argument("--field", help="series: numeric field, e.g. pm25")
    parser.add_argument("--every", help="series: bucket, e.g. 1h")
    parser.add_argument("--agg", help="series: mean, min, max, p95 or count")
    parser.add_argument("--device", dest="device_id", help="events: device id")
    parser.add_argument("--type", dest="type", help="events: event type")
    parser.add_argument("--severity", help="events: severity")
    parser.add_argument("--from", dest="from_", help="window start, RFC 3339")
    parser.add_argument("--to", help="window end (exclusive), RFC 3339")
    parser.add_argument("--format", choices=("csv", "ndjson"), default="csv")
    parser.add_argument("--out", type=Path, help="output file (default: the API's file name)")


def _params(args: argparse.Namespace) -> dict[str, str]:
    names = ["district", "from_", "to", "format"]
    if args.what == "series":
        if not args.kind or not args.field:
            raise ExportError("a series export needs --kind and --field")
        names += ["kind", "field", "every", "agg"]
    else:
        names += ["device_id", "type", "severity"]
    out = {n.rstrip("_"): getattr(args, n) for n in names if getattr(args, n) is not None}
    return {k: str(v) for k, v in out.items()}


def export(args: argparse.Namespace) -> Path:
    """Download the export to a file; return its path (ExportError with the API's reason)."""
    key = args.key or os.environ.get("SAFECITY_API_KEY")
    if not key:
        raise ExportError("no API key: pass --key or set SAFECITY_API_KEY")
    url = f"{args.url.rstrip('/')}/v1/cities/{args.city}/export/{args.what}"
    try:
        with httpx.stream(
            "GET", url, params=_params(args), headers={"X-API-Key": key}, timeout=TIMEOUT_S
        ) as response:
            if response.status_code != 200:
                response.read()
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                raise ExportError(f"the API answered {response.status_code}: {detail}")
            found = _FILENAME.search(response.headers.get("content-disposition", ""))
            path: Path = args.out or Path(found.group(1) if found else f"export.{args.format}")
            with path.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise ExportError(f"cannot reach the API at {args.url}: {exc}") from exc
    return path


def run(args: argparse.Namespace) -> int:
    """The command: export, print the file's path; 1 with the reason on failure."""
    try:
        path = export(args)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
