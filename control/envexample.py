"""`.env.example` from every settings class: each variable once, with its meaning and default.

`python -m control.envexample` prints it, `--write` writes it, `--check` exits 1 when
the committed file differs (a test does the same). A variable's text is its field's
`description`: each setting's meaning is written once, on its field.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from alerts.settings import AlertsSettings
from api.settings import ApiSettings
from broker.settings import SecuritySettings
from control.settings import BackupSettings, StackSettings, StorageSettings
from dashboards.settings import DashboardsSettings
from ingest.settings import IngestSettings
from notify.settings import NotifySettings
from rollups.settings import RollupSettings
from safecity import instance
from safecity.settings import InHome, ServiceSettings
from simulators.settings import SimulatorSettings

PREFIX = "SAFECITY_"

# (reader, settings class, section title), in the order the sections are written.
SERVICES: tuple[tuple[str, type[ServiceSettings], str], ...] = (
    ("ingest", IngestSettings, "ingest (`safecity ingest`)"),
    ("api", ApiSettings, "api (`safecity api`)"),
    (
        "alerts",
        AlertsSettings,
        "alerts (`safecity alerts`: streaming rules -> alerts -> incidents)",
    ),
    ("notify", NotifySettings, "notify (`safecity notify`: incidents -> people on call)"),
    ("rollup", RollupSettings, "rollup job (`safecity rollup`: raw telemetry -> rollup tiers)"),
    ("simulator", SimulatorSettings, "simulator (`safecity simulate`; InfluxDB for --backfill)"),
    ("run", StackSettings, "local stack (`make run` / `safecity run`)"),
    ("influx init", StorageSettings, "storage (`safecity influx init`)"),
    (
        "devices/certs",
        SecuritySettings,
        "identities and certificates (`safecity devices`, `safecity certs`)",
    ),
    ("dashboards", DashboardsSettings, "dashboards (`safecity dashboards push`)"),
    ("backup", BackupSettings, "backup and restore (`safecity backup`, `safecity restore`)"),
)

# Nested groups: their own sections, after the common one.
GROUPS = {
    "mqtt": "MQTT broker (SAFECITY_MQTT__*)",
    "influx": "InfluxDB, v1-compatible HTTP API (SAFECITY_INFLUX__*)",
    "edge": "edge agent of every simulated device (SAFECITY_EDGE__*)",
    "faults": "simulator fault injection (SAFECITY_FAULTS__*): probability per reading, 0 = off",
}

HEADER = """\
# safecity settings: every SAFECITY_* variable of every service, with its default.
# Generated from the settings classes by `python -m control.envexample --write`; a test
# keeps this file equal to them, so change a setting in its class, then regenerate.
#
# Copy to .env (read from each service's working directory) or export them; the
# environment wins over .env. Each is SAFECITY_<FIELD>, nested groups with a double
# underscore. The values are the defaults, so a copy left unchanged runs as the defaults
# do. An empty value means "not set" (the default), except for text settings, where
# empty is itself a value (a share group: a plain subscription). No secret has a
# default: set them per deployment.
"""

COMPOSE = """\
# --- docker compose (docker-compose.yml) ----------------------------------------------
# Not a SAFECITY_ setting. Compose needs no password here: scripts/compose-secrets.sh
# writes them as files into var/compose/secrets, and compose mounts each one read-only
# at /run/secrets/<name> in the services that use it (compose `secrets:`).
COMPOSE_PROJECT_NAME=safecity
# Host ports compose publishes: MQTT over TLS for devices, the API + console, Grafana.
MQTT_TLS_HOST_PORT=8883
API_HOST_PORT=8000
GRAFANA_HOST_PORT=3000
"""


@dataclass
class Variable:
    """One SAFECITY_* variable: its field, where it is written, and which services read it."""

    name: str
    info: FieldInfo
    group: str
    readers: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        """The field's description; for a data path, also where in the instance directory
        it defaults to."""
        text = self.info.description or ""
        factory = self.info.default_factory
        if isinstance(factory, InHome):
            where = instance.layout(Path("$SAFECITY_HOME"))
            text += f" Empty: {getattr(where, factory.part)}."
        return text

    @property
    def default(self) -> str:
        """The default as a .env value (empty for none)."""
        return default_value(self.info)


def default_value(info: FieldInfo) -> str:
    """A field's default as a .env value. Data paths (and other defaults computed from the
    instance directory) are empty, so that they follow SAFECITY_HOME."""
    if info.default_factory is instance.home:
        return str(instance.DEFAULT_HOME)
    if isinstance(info.default_factory, InHome) or info.default_factory_takes_validated_data:
        return ""
    return env_value(info.get_default(call_default_factory=True))


def env_value(value: Any) -> str:
    """How pydantic-settings reads a value back from a .env line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _fields(
    model: type[BaseModel], prefix: str, group: str | None
) -> Iterator[tuple[str, FieldInfo, str]]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name.upper()}__", name)
        elif group is not None:
            yield f"{prefix}{name.upper()}", info, group
        elif name in ServiceSettings.model_fields:
            yield f"{prefix}{name.upper()}", info, "common"
        else:
            yield f"{prefix}{name.upper()}", info, ""


def variables() -> dict[str, Variable]:
    """Every variable of every service, in section order, each with its readers."""
    found: dict[str, Variable] = {}
    for reader, cls, _ in SERVICES:
        for name, info, group in _fields(cls, PREFIX, None):
            var = found.setdefault(name, Variable(name, info, group or reader))
            var.readers.append(reader)
    return found


def conflicting_defaults() -> dict[str, set[str]]:
    """Variables whose default differs between the classes reading them (should be none)."""
    seen: dict[str, set[str]] = {}
    for _, cls, _ in SERVICES:
        for name, info, _group in _fields(cls, PREFIX, None):
            seen.setdefault(name, set()).add(default_value(info))
    return {name: values for name, values in seen.items() if len(values) > 1}


def _section(title: str) -> str:
    return f"# --- {title} ".ljust(88, "-")


def _comment(text: str) -> list[str]:
    lines: list[str] = []
    line = "#"
    for word in text.split():
        if len(line) + 1 + len(word) > 88:
            lines.append(line)
            line = "#"
        line += " " + word
    return [*lines, line] if line != "#" else lines


def render() -> str:
    """The whole .env.example text."""
    found = variables()
    titles = {"common": "common to every service", **GROUPS}
    order = ["common", "mqtt", "influx"]
    for reader, _, title in SERVICES:
        titles[reader] = title
        order += [reader, "edge", "faults"] if reader == "simulator" else [reader]
    # A nested group no title names yet still gets its section, at the end.
    order += sorted({v.group for v in found.values()} - set(order))
    out = [HEADER]
    for group in order:
        members = [v for v in found.values() if v.group == group]
        if not members:
            continue
        readers = sorted({r for v in members for r in v.readers}, key=_reader_order)
        out.append(_section(titles.get(group, f"{PREFIX}{group.upper()}__*")))
        if group in GROUPS or group == "common":
            out.append(f"# Read by: {', '.join(readers)}.")
        for var in members:
            text = var.description
            also = [r for r in var.readers if r != group]
            if also and group not in GROUPS and group != "common":
                text += f" (Also read by {', '.join(also)}.)"
            out.extend(_comment(text))
            out.append(f"{var.name}={var.default}")
        out.append("")
    out.append(COMPOSE)
    return "\n".join(out)


def _reader_order(reader: str) -> int:
    return [r for r, _, _ in SERVICES].index(reader)


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check .env.example."""
    parser = argparse.ArgumentParser(
        prog="python -m control.envexample", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--output", type=Path, default=Path(".env.example"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write it to --output")
    mode.add_argument("--check", action="store_true", help="exit 1 if --output differs")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    elif args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: python -m control.envexample --write", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
