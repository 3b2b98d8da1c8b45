"""`.env.example` from every settings class: each variable once, with its meaning and default.

`python -m control.envexample` prints it, `--write` writes it, `--check` exits 1 when
the committed file differs (a test does the same). A variable's text is its field's
`description` when the field has one, else the entry in DESCRIPTIONS below.
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
from control.settings import StackSettings, StorageSettings
from dashboards.settings import DashboardsSettings
from ingest.settings import IngestSettings
from notify.settings import NotifySettings
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
    ("simulator", SimulatorSettings, "simulator (`safecity simulate`)"),
    ("run", StackSettings, "local stack (`make run` / `safecity run`)"),
    ("influx init", StorageSettings, "storage (`safecity influx init`)"),
    (
        "devices/certs",
        SecuritySettings,
        "identities and certificates (`safecity devices`, `safecity certs`)",
    ),
    ("dashboards", DashboardsSettings, "dashboards (`safecity dashboards push`)"),
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

DESCRIPTIONS = {
    "SAFECITY_LOG_LEVEL": "Log level of the JSON log lines: DEBUG, INFO, WARNING, ERROR.",
    # MQTT
    "SAFECITY_MQTT__HOST": "Broker host.",
    "SAFECITY_MQTT__PORT": (
        "Broker port (the plain listener; the TLS one with SAFECITY_MQTT__TLS_CA)."
    ),
    "SAFECITY_MQTT__USERNAME": (
        "The service's own broker account (_ingest, _api, _alerts, _notify, _simulator); the "
        "broker has no anonymous access. `make run` sets it for each service it starts."
    ),
    "SAFECITY_MQTT__PASSWORD": "That account's secret.",
    "SAFECITY_MQTT__KEEPALIVE": "MQTT keep-alive, seconds.",
    "SAFECITY_MQTT__CONNECT_TIMEOUT": "Seconds to wait for the broker's CONNACK.",
    "SAFECITY_MQTT__FAST_PATH": (
        "The ingest's bulk-read receive path over paho's internals (checked at start-up; "
        "without them paho's stock per-message path is used, with a warning). false: "
        "always the stock path."
    ),
    "SAFECITY_MQTT__TLS_CA": (
        "TLS to the broker's TLS listener: the CA that signed its certificate "
        "(`safecity certs init` writes one); empty = plain MQTT."
    ),
    "SAFECITY_MQTT__TLS_CERT": "Mutual TLS: this client's certificate (CN = username).",
    "SAFECITY_MQTT__TLS_KEY": "Mutual TLS: this client's key.",
    "SAFECITY_MQTT__SECRETS_FILE": (
        "A secrets file ({username: secret}, as `safecity devices provision --secrets-file` "
        "writes it): the password is taken from it when SAFECITY_MQTT__PASSWORD is not set."
    ),
    # InfluxDB
    "SAFECITY_INFLUX__URL": "InfluxDB's HTTP API (1.x, or 2.x/3.x through their v1 compatibility).",
    "SAFECITY_INFLUX__DATABASE": "Database (created at start-up by ingest and alerts).",
    "SAFECITY_INFLUX__RETENTION_POLICY": "Default retention policy, for telemetry.",
    "SAFECITY_INFLUX__RETENTION_DURATION": (
        "Its duration, created or altered at start-up: INF or e.g. 30d, 12h, 4w."
    ),
    "SAFECITY_INFLUX__EVENTS_RETENTION_DURATION": (
        "Duration of the `events` policy (safe-city events)."
    ),
    "SAFECITY_INFLUX__SECURITY_RETENTION_DURATION": (
        "Duration of the `security` policy (security events)."
    ),
    "SAFECITY_INFLUX__INCIDENTS_RETENTION_DURATION": (
        "Duration of the `incidents` policy (alerts and the incident lifecycle log)."
    ),
    "SAFECITY_INFLUX__USERNAME": "InfluxDB 1.x user.",
    "SAFECITY_INFLUX__PASSWORD": "InfluxDB 1.x password.",
    "SAFECITY_INFLUX__TOKEN": "InfluxDB 2.x/3.x token (sent as `Authorization: Token ...`).",
    "SAFECITY_INFLUX__PASSWORD_FILE": (
        "A file holding the InfluxDB password (a mounted secret), read when no password is set."
    ),
    "SAFECITY_INFLUX__TOKEN_FILE": (
        "A file holding the InfluxDB token (a mounted secret), read when no token is set."
    ),
    "SAFECITY_SERVICE_USERNAME": (
        "`safecity influx init --create-users`: the services' non-admin InfluxDB account."
    ),
    "SAFECITY_SERVICE_PASSWORD_FILE": (
        "`safecity influx init --create-users`: the file holding that account's password."
    ),
    "SAFECITY_INFLUX__TIMEOUT": "Per-request timeout, seconds.",
    "SAFECITY_INFLUX__GZIP": "Gzip write bodies.",
    # ingest
    "SAFECITY_WORKER_ID": (
        "Stable worker id: its MQTT client id is safecity-<id>, and its persistent session, "
        "spool and dead letters belong to it. `auto`: from the container's name."
    ),
    "SAFECITY_SHARE_GROUP": (
        "Shared-subscription group ($share/<group>/...): workers of one group split the load. "
        "Empty = a plain subscription (one worker; survives broker restarts, which Mosquitto "
        "2.0.11 does not do for shared subscriptions). `make run` uses empty."
    ),
    "SAFECITY_SESSION_EXPIRY": (
        "Seconds the broker keeps the session (and queues messages) while the worker is away."
    ),
    "SAFECITY_RECEIVE_MAXIMUM": (
        "Most unacked messages the broker may have in flight to this worker."
    ),
    "SAFECITY_BATCH_SIZE": "A batch is written at this many messages ...",
    "SAFECITY_FLUSH_INTERVAL": "... or this many seconds after its first message.",
    "SAFECITY_DEADLETTER_DIR": "Directory of the fsync'd dead-letter store (deadletters.jsonl).",
    "SAFECITY_TS_PAST_WINDOW": (
        "Accepted device timestamps reach this many seconds into the past (widen for replays)."
    ),
    "SAFECITY_TS_FUTURE_WINDOW": "... and this many seconds into the future.",
    "SAFECITY_METRICS_HOST": "/metrics, /healthz and /readyz of the ingest worker: host ...",
    "SAFECITY_METRICS_PORT": "... and port.",
    "SAFECITY_SPOOL_DIR": (
        "Disk spool while InfluxDB is unreachable or slow (a subdirectory per worker): batches "
        "are fsync'd there and acked, then drained in order."
    ),
    "SAFECITY_SPOOL_MAX_BYTES": (
        "Spool capacity in bytes (1 GiB: ~30 min at 1,000 readings/s); when full, ingest stops "
        "acking (back-pressure)."
    ),
    "SAFECITY_SPOOL_SEGMENT_BYTES": "Size of one spool segment file, bytes.",
    "SAFECITY_SPOOL_AFTER": (
        "Seconds InfluxDB may stay unavailable for a batch before it is spooled."
    ),
    "SAFECITY_RETRY_MAX_DELAY": "Cap of the full-jitter backoff between InfluxDB retries, seconds.",
    "SAFECITY_RATE_LIMIT": (
        "Per-device token bucket: sustained messages/s; the excess is dead-lettered as "
        "rate_limited."
    ),
    "SAFECITY_RATE_BURST": "Per-device token bucket: burst.",
    "SAFECITY_DEDUP_WINDOW": (
        "(device, seq) pairs each worker remembers to detect conflicting duplicates."
    ),
    "SAFECITY_MAX_EXPORT_ROWS": (
        "Most rows one export (CSV/NDJSON) may hold; a larger one is refused before it starts."
    ),
    "SAFECITY_STREAM_REPLAY": (
        "Live-stream events kept for Last-Event-ID resumption (older ones: a `gap` event)."
    ),
    "SAFECITY_STREAM_RETRY_MS": "The `retry:` hint (ms) the live stream gives reconnecting clients",
    "SAFECITY_STREAM_MAX_PER_KEY": "Live streams one API key may hold open at once (429 beyond).",
    "SAFECITY_DEADLETTER_MAX_PACKET": (
        "The broker's max_packet_size: a dead letter that would not fit is stored, not republished."
    ),
    "SAFECITY_BROKER_SYS": (
        "Follow the broker's $SYS dropped-messages counter (a separate, non-shared connection)."
    ),
    "SAFECITY_BROKER_LOG": (
        "Mosquitto's log file, followed from its end for auth failures and ACL denials "
        "(-> security_events); empty = off. `make run` passes its broker's log."
    ),
    # api
    "SAFECITY_HOST": "The API's listen address ...",
    "SAFECITY_PORT": "... and port.",
    "SAFECITY_STALE_AFTER": "A device silent for longer than this many seconds counts as stale.",
    "SAFECITY_MAX_PAGE_SIZE": "Largest page a listing returns (limit=...); at most 1000.",
    "SAFECITY_API_KEYS_FILE": (
        "API keys, hashed (`safecity apikey create|list|revoke`); re-read when it changes."
    ),
    "SAFECITY_RATE_LIMIT_RPS": (
        "Token bucket per API key: sustained requests/s; the excess gets 429 + Retry-After."
    ),
    "SAFECITY_RATE_LIMIT_BURST": "Token bucket per API key: burst.",
    "SAFECITY_MAX_BODY_BYTES": "Largest request body accepted, bytes (-> 413).",
    "SAFECITY_CORS_ORIGINS": (
        'Browser origins allowed by CORS, a JSON list, e.g. ["https://console.example"].'
    ),
    "SAFECITY_MAX_RANGE": "Longest time window a request may ask for, seconds (-> 422).",
    "SAFECITY_MIN_BUCKET": "Shortest series bucket, seconds (-> 422).",
    "SAFECITY_MAX_POINTS": "Most buckets per series (-> 422).",
    "SAFECITY_STATUS_LOOKBACK": (
        "How far back device status and last readings are looked up, seconds "
        "(online/stale/offline)."
    ),
    "SAFECITY_OVERVIEW_CACHE_TTL": (
        "Overview and status snapshots are reused this many seconds (0 = always recompute)."
    ),
    "SAFECITY_LEDGER_FILE": (
        "Delivery accounting: the simulator's ground-truth ledger, if any (dead letters come "
        "from SAFECITY_DEADLETTER_DIR)."
    ),
    "SAFECITY_STREAM_QUEUE_SIZE": (
        "Live stream (/v1/stream): each client's queue; a client this far behind is dropped."
    ),
    "SAFECITY_STREAM_HEARTBEAT": "Live stream: seconds between keep-alive comments.",
    "SAFECITY_ENV": (
        "development | production. production: /docs and /redoc off, /openapi.json only with a key."
    ),
    "SAFECITY_AUDIT_LOG_FILE": (
        "Append-only audit log (JSON lines, 0600) of every call an operate/admin key makes to "
        "a route needing that scope."
    ),
    # alerts
    "SAFECITY_ALERTS_ID": "The alerts instance's id: its MQTT client id and session.",
    "SAFECITY_ALERTS_SHARE_GROUP": (
        "Its shared-subscription group ($share/<group>/...), never the ingest's. Empty = a "
        "plain subscription (one instance; survives broker restarts). `make run` uses empty."
    ),
    "SAFECITY_ALERTS_SESSION_EXPIRY": "Seconds the broker keeps its session while it is away.",
    "SAFECITY_ALERTS_RECEIVE_MAXIMUM": "Most unacked messages in flight to it.",
    "SAFECITY_ALERTS_BATCH_SIZE": "Messages evaluated per batch ...",
    "SAFECITY_ALERTS_FLUSH_INTERVAL": "... or seconds after a batch's first message.",
    "SAFECITY_ALERTS_REFRESH_INTERVAL": (
        "Seconds between re-reads of the stored incidents (operators resolve them via the API)."
    ),
    "SAFECITY_ALERTS_METRICS_HOST": (
        "/metrics, /healthz and /readyz of the alerts service: host ..."
    ),
    "SAFECITY_ALERTS_METRICS_PORT": "... and port.",
    # simulator
    "SAFECITY_CLIENT_ID": "MQTT client id of the fleet process (transport single).",
    "SAFECITY_SEED": "Seed of every generator: same seed and start, same stream.",
    "SAFECITY_SPEED": "Simulated seconds per wall second (60 = an hour a minute).",
    "SAFECITY_MAX_DEVICES": "Simulate only the first N devices of the registry (empty = all).",
    "SAFECITY_DURATION": "Stop after this many wall seconds (empty = run until stopped).",
    "SAFECITY_FIRST_BURST": (
        "Every device publishes one reading at start, so a fresh stack has data."
    ),
    "SAFECITY_START": (
        "Simulated start, ISO 8601, UTC if no zone (empty = now). A past start is a replay: "
        "the ingest must accept its timestamps (SAFECITY_TS_PAST_WINDOW)."
    ),
    "SAFECITY_TRANSPORT": (
        "edge = one MQTT identity per device (client id = username = device id); single = one "
        "connection for the whole fleet (load tests)."
    ),
    "SAFECITY_PROCESSES": "Split the fleet over this many processes.",
    "SAFECITY_LEDGER": (
        "Ground-truth ledger of every message sent (JSON lines; .pN per process); empty = off."
    ),
    "SAFECITY_SCENARIO": "Scenario name (simulators/scenarios/NAME.toml) or path; empty = none.",
    "SAFECITY_SIMULATOR_METRICS_HOST": "/metrics and /healthz of a single-process fleet: host ...",
    "SAFECITY_SIMULATOR_METRICS_PORT": "... and port (0 = not served).",
    # edge
    "SAFECITY_EDGE__SPOOL_DIR": "Store-and-forward spool directory while the broker is away.",
    "SAFECITY_EDGE__SPOOL_MAX_BYTES": "Spool bound per device, bytes.",
    "SAFECITY_EDGE__MAX_INFLIGHT": "Publishes awaiting PUBACK per device.",
    "SAFECITY_EDGE__MEMORY_QUEUE": "Messages queued in memory per device before the spool.",
    "SAFECITY_EDGE__BACKOFF_MIN": (
        "Reconnect backoff (full jitter, doubling): first bound, seconds ..."
    ),
    "SAFECITY_EDGE__BACKOFF_MAX": "... and cap, seconds.",
    "SAFECITY_EDGE__PASSWORD": "One shared device password, only when there is no secrets file.",
    "SAFECITY_EDGE__SECRETS_FILE": (
        "Per-device secrets, a JSON object {device id: secret} (0600), read once at start; each "
        "device logs in as itself. `make run` passes its own."
    ),
    "SAFECITY_EDGE__DRAIN_TIMEOUT": (
        "Seconds to wait for unacknowledged messages at shutdown (the rest stays spooled)."
    ),
    "SAFECITY_EDGE__TLS_CLIENT_DIR": (
        "Mutual TLS: the directory of per-device client certificates, <device id>.crt/.key "
        "(`safecity certs provision` writes them to <certs dir>/clients); the CA and the TLS "
        "port come from SAFECITY_MQTT__TLS_CA and SAFECITY_MQTT__PORT. Empty = none."
    ),
    # faults
    "SAFECITY_FAULTS__STUCK": "Episodes of frozen values.",
    "SAFECITY_FAULTS__DRIFT": "Episodes of a growing bias.",
    "SAFECITY_FAULTS__DROPOUT": "Episodes of silence (the seqs are skipped).",
    "SAFECITY_FAULTS__CLOCK_SKEW": "A valid reading with its ts off by 30-240 s.",
    "SAFECITY_FAULTS__DUPLICATE": "The same message twice.",
    "SAFECITY_FAULTS__BAD_JSON": "Malformed JSON (-> bad_json).",
    "SAFECITY_FAULTS__NON_FINITE": "NaN or Infinity (-> non_finite).",
    "SAFECITY_FAULTS__OUT_OF_RANGE": "A value beyond the catalogue's limits (-> out_of_range).",
    "SAFECITY_FAULTS__BAD_SCHEMA": "A payload off the contract (-> schema).",
    "SAFECITY_FAULTS__TOO_LARGE": "A payload over 8 KiB (-> too_large).",
    "SAFECITY_FAULTS__TS_OUT_OF_WINDOW": "A ts outside the accepted window (-> ts_out_of_window).",
    "SAFECITY_FAULTS__IDENTITY_MISMATCH": (
        "Another device's id under this device's district/kind (-> identity_mismatch)."
    ),
    "SAFECITY_FAULTS__UNKNOWN_DEVICE": "An id no registry knows (-> unknown_device).",
    "SAFECITY_FAULTS__FLOOD": (
        "A burst of extra readings 1 ms apart (the rate limit may refuse some)."
    ),
    "SAFECITY_FAULTS__FLOOD_SIZE": "Extra readings in one flood burst.",
    "SAFECITY_FAULTS__EPISODE_READINGS": "Longest stuck/drift/dropout episode, readings.",
    # local stack
    "SAFECITY_DATA_DIR": (
        "Where the stack keeps broker and database data, identities (<dir>/identity, secrets "
        "0600), the local CA (<dir>/certs) and the service logs; reused across runs."
    ),
    "SAFECITY_MQTT_PORT": "Broker port on 127.0.0.1 (0 = any free one).",
    "SAFECITY_MQTT_TLS_PORT": "The broker's TLS listener for devices (0 = any free one).",
    "SAFECITY_DEVICE_TLS": (
        "How the simulated devices reach the broker: off (plain MQTT on loopback, fastest), "
        "tls (the TLS listener, CA-verified, passwords) or mtls (a certificate per device in "
        "<data dir>/certs/clients, CN = device id, CRL checked). See docs/tls.md."
    ),
    "SAFECITY_INFLUX_PORT": "InfluxDB port on 127.0.0.1 (0 = any free one).",
    "SAFECITY_API_PORT": "API and console port (0 = any free one).",
    "SAFECITY_INGEST_METRICS_PORT": "The ingest's metrics port (0 = any free one).",
    # identities and certificates
    "SAFECITY_CERTS_DIR": "Local CA, broker server certificate and device client certificates.",
    # dashboards
    "SAFECITY_GRAFANA_URL": "The Grafana to push to.",
    "SAFECITY_GRAFANA_TOKEN": "A Grafana service-account token (Editor or Admin).",
}


@dataclass
class Variable:
    """One SAFECITY_* variable: its field, where it is written, and which services read it."""

    name: str
    info: FieldInfo
    group: str
    readers: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        """The field's description, else the entry in DESCRIPTIONS, else empty; for a data
        path, also where in the instance directory it defaults to."""
        text = self.info.description or DESCRIPTIONS.get(self.name, "")
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
