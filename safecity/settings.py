"""Settings: one pydantic-settings class per service, env prefix SAFECITY_, nested with __.

Each service builds its settings once at its entry point and passes them down;
nothing here is instantiated at import time.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from safecity.errors import ConfigError, TopicError
from safecity.identity import read_secrets
from safecity.topics import validate_identifier

Port = Annotated[int, Field(ge=1, le=65535)]


class MqttSettings(BaseModel):
    """How to reach the MQTT broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: SecretStr | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    # TLS (the broker's TLS listener): CA bundle to verify the broker, and for mutual
    # TLS the client certificate and key (its CN is the username).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A secrets file as `safecity devices provision --secrets-file` writes it
    # ({username: secret}); the password is taken from it when not given directly, so
    # docker compose can hand services the secrets its provisioning step generated.
    secrets_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _password_from_secrets_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("secrets_file") or data.get("password"):
            return data
        username = data.get("username")
        path = Path(data["secrets_file"])
        if not username:
            raise ValueError("secrets_file needs a username to look up")
        try:
            secrets = read_secrets(path)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        if username not in secrets:
            raise ValueError(f"no secret for {username!r} in {path}")
        return {**data, "password": secrets[username]}


class InfluxSettings(BaseModel):
    """How to reach InfluxDB through its v1-compatible HTTP API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "http://127.0.0.1:8086"
    database: str = "safecity"
    retention_policy: str = "raw"
    retention_duration: str = "30d"
    # The other measurement families' retention policies (safecity.schema.RETENTION_FAMILIES),
    # created or altered at start-up next to the default one; never the default.
    events_retention_duration: str = "365d"
    security_retention_duration: str = "90d"
    incidents_retention_duration: str = "1825d"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    gzip: bool = True

    @field_validator("database", "retention_policy")
    @classmethod
    def _identifier(cls, value: str) -> str:
        try:
            return validate_identifier(value, "influx name")
        except TopicError as exc:
            # pydantic reports ValueError per field; our own error would escape unnamed.
            raise ValueError(str(exc)) from exc

    @field_validator(
        "retention_duration",
        "events_retention_duration",
        "security_retention_duration",
        "incidents_retention_duration",
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"(INF|[1-9][0-9]*(h|d|w))", value):
            raise ValueError("retention_duration must be INF or like 30d, 12h, 4w")
        return value


class _ServiceSettings(BaseSettings):
    """Common base: env prefix SAFECITY_, nested delimiter __, optional .env file."""

    model_config = SettingsConfigDict(
        env_prefix="SAFECITY_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    registry: Path | None = Field(
        default=None, description="City registry file (JSON lines); default: built-in Tashkent"
    )
    log_level: str = "INFO"


class IngestSettings(_ServiceSettings):
    """Settings of the ingest service (MQTT -> validate -> InfluxDB)."""

    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    worker_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = "ingest-0"
    # Empty = a plain (non-shared) subscription: one worker only, but it survives broker
    # restarts on Mosquitto 2.0.11, which does not restore shared subscriptions.
    share_group: Annotated[str, Field(pattern=r"^([a-z0-9][a-z0-9_.-]{0,63})?$")] = "ingest"
    session_expiry: Annotated[int, Field(ge=60)] = 86_400
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 10_000
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    flush_interval: Annotated[float, Field(gt=0, le=10)] = 0.2
    deadletter_dir: Path = Path("var/deadletter")
    ts_past_window: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    ts_future_window: Annotated[float, Field(ge=0)] = 300.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101
    # Disk spool for when InfluxDB is away: per-worker subdirectory of spool_dir.
    spool_dir: Path = Path("var/spool")
    # 30 min at 1,000 readings/s is ~1.8 M points of ~450 spooled bytes each.
    spool_max_bytes: Annotated[int, Field(ge=1 << 20)] = 1 << 30
    spool_segment_bytes: Annotated[int, Field(ge=1 << 16)] = 16 << 20
    spool_after: Annotated[float, Field(gt=0, le=300)] = 2.0
    retry_max_delay: Annotated[float, Field(gt=0, le=300)] = 30.0
    # Per-device token bucket: sustained messages/s and burst.
    rate_limit: Annotated[float, Field(gt=0)] = 20.0
    rate_burst: Annotated[float, Field(ge=1)] = 1200.0
    # (device, seq) pairs remembered to spot conflicting duplicates.
    dedup_window: Annotated[int, Field(ge=1)] = 200_000
    # Follow the broker's $SYS dropped-messages counter on a separate connection.
    broker_sys: bool = True
    # Mosquitto's log file, followed from its end for auth failures and ACL denials
    # (-> security_events); empty = off. `make run` passes the local broker's log.
    broker_log: Path | None = None
    # Fault injection for tests only: SIGKILL itself after the Nth durable write, before acking.
    fault_crash_after_write: Annotated[int, Field(ge=0)] = 0

    @field_validator("broker_log", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value


class ApiSettings(_ServiceSettings):
    """Settings of the FastAPI service."""

    influx: InfluxSettings = InfluxSettings()
    host: str = "127.0.0.1"
    port: Port = 8000
    stale_after: Annotated[float, Field(gt=0)] = 900.0
    max_page_size: Annotated[int, Field(ge=1, le=1000)] = 500
    # Security and limits of the public API (RELIABILITY.md: keys, rate limits, bounds).
    api_keys_file: Path = Path("var/apikeys.json")
    rate_limit_rps: Annotated[float, Field(gt=0, le=100_000)] = 50.0
    rate_limit_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    max_body_bytes: Annotated[int, Field(ge=0, le=16 * 1024 * 1024)] = 16 * 1024
    cors_origins: list[str] = []
    max_range: Annotated[float, Field(gt=0, le=366 * 86_400)] = 31 * 86_400.0
    min_bucket: Annotated[float, Field(ge=1, le=86_400)] = 10.0
    max_points: Annotated[int, Field(ge=10, le=100_000)] = 5000
    status_lookback: Annotated[float, Field(gt=0, le=31 * 86_400)] = 86_400.0
    overview_cache_ttl: Annotated[float, Field(ge=0, le=300)] = 5.0
    # Delivery accounting: where ingest keeps dead letters (same variable as ingest's)
    # and, optionally, the simulator's ground-truth ledger.
    deadletter_dir: Path = Path("var/deadletter")
    ledger_file: Path | None = None
    # Live stream: the broker it subscribes to, and each client's bounded queue.
    mqtt: MqttSettings = MqttSettings()
    stream_queue_size: Annotated[int, Field(ge=1, le=100_000)] = 256
    stream_heartbeat: Annotated[float, Field(gt=0, le=300)] = 15.0
    # development | production: production turns /docs and /redoc off and puts
    # /openapi.json behind a key.
    env: Literal["development", "production"] = "development"
    # Append-only audit log (JSON lines, 0600) of every operate/admin call.
    audit_log_file: Path = Path("var/audit/api-audit.jsonl")


Rate = Annotated[float, Field(ge=0, le=1)]


class EdgeSettings(BaseModel):
    """The edge agent of every simulated device: window, buffer, reconnect backoff."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spool_dir: Path = Path("var/edge-spool")
    spool_max_bytes: Annotated[int, Field(ge=4096)] = 16 << 20
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 100
    memory_queue: Annotated[int, Field(ge=1)] = 1000
    backoff_min: Annotated[float, Field(gt=0, le=60)] = 0.2
    backoff_max: Annotated[float, Field(gt=0, le=600)] = 30.0
    # One shared device password, used only when no secrets file is given.
    password: SecretStr | None = None
    # Per-device secrets: a JSON object {device id: secret} (0600; `make run` writes it,
    # as does `safecity devices provision --secrets-file`). Read once at start; each
    # device logs in as itself with its own secret.
    secrets_file: Path | None = None
    drain_timeout: Annotated[float, Field(ge=0, le=600)] = 10.0


class FaultSettings(BaseModel):
    """Per-reading probabilities of each injected fault (0 = off); labelled in the ledger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stuck: Rate = 0.0
    drift: Rate = 0.0
    dropout: Rate = 0.0
    clock_skew: Rate = 0.0
    duplicate: Rate = 0.0
    bad_json: Rate = 0.0
    non_finite: Rate = 0.0
    out_of_range: Rate = 0.0
    bad_schema: Rate = 0.0
    too_large: Rate = 0.0
    ts_out_of_window: Rate = 0.0
    identity_mismatch: Rate = 0.0
    unknown_device: Rate = 0.0
    flood: Rate = 0.0
    flood_size: Annotated[int, Field(ge=1, le=100_000)] = 200
    episode_readings: Annotated[int, Field(ge=1, le=100_000)] = 30


class SimulatorSettings(_ServiceSettings):
    """Settings of the simulated city fleet."""

    mqtt: MqttSettings = MqttSettings()
    client_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = "simulator-0"
    seed: int = 42
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    max_devices: Annotated[int | None, Field(ge=1)] = None
    duration: Annotated[float | None, Field(gt=0)] = None
    first_burst: bool = True
    start: datetime | None = None
    transport: Literal["edge", "single"] = "edge"
    processes: Annotated[int, Field(ge=1, le=256)] = 1
    ledger: Path | None = None
    scenario: str | None = None
    edge: EdgeSettings = EdgeSettings()
    faults: FaultSettings = FaultSettings()
    # /metrics and /healthz of a single-process fleet (0 = none; --processes N serves none).
    # Own names: ingest's SAFECITY_METRICS_PORT must not leak in from a shared .env.
    simulator_metrics_host: str = "127.0.0.1"
    simulator_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0


class StackSettings(_ServiceSettings):
    """Settings of the local stack launcher (`safecity run`)."""

    data_dir: Path = Path("var/stack")
    mqtt_port: Annotated[int, Field(ge=0, le=65535)] = 1883
    # The broker's TLS listener for devices (local CA in <data_dir>/certs).
    mqtt_tls_port: Annotated[int, Field(ge=0, le=65535)] = 8883
    influx_port: Annotated[int, Field(ge=0, le=65535)] = 8086
    api_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    ingest_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101
    alerts_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9102
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    seed: int = 42


class SecuritySettings(_ServiceSettings):
    """Settings of `safecity devices` and `safecity certs` (identities, CA, broker reload)."""

    identity_dir: Path = Field(
        default=Path("var/identity"),
        description="Credential store (hashes only), rendered passwd/ACL, secrets file",
    )
    certs_dir: Path = Path("var/certs")
    broker_pidfile: Path | None = Field(
        default=None, description="Mosquitto pid_file to SIGHUP after changes; empty = no reload"
    )


class DashboardsSettings(_ServiceSettings):
    """Settings of `safecity dashboards push` (the Grafana, and the InfluxDB it should query)."""

    influx: InfluxSettings = InfluxSettings()
    grafana_url: str = "http://127.0.0.1:3000"
    grafana_token: SecretStr | None = None
    grafana_influx_url: str | None = Field(
        default=None, description="InfluxDB URL as Grafana's server reaches it; empty = influx.url"
    )


class AlertsSettings(_ServiceSettings):
    """Settings of the alerts service (streaming rules -> alerts -> incidents)."""

    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    # Own names (alerts_*): ingest's SAFECITY_WORKER_ID/SHARE_GROUP must not leak in here.
    alerts_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = "alerts-0"
    # Empty = a plain subscription (one instance; survives broker restarts, see ingest).
    alerts_share_group: Annotated[str, Field(pattern=r"^([a-z0-9][a-z0-9_.-]{0,63})?$")] = "alerts"
    alerts_rules_file: Path | None = Field(
        default=None, description="Rule file (YAML); empty = the shipped rules of the city"
    )
    alerts_session_expiry: Annotated[int, Field(ge=60)] = 86_400
    alerts_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000
    alerts_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    alerts_flush_interval: Annotated[float, Field(gt=0, le=10)] = 0.2
    # How often the incident book is re-read (operators resolve incidents through the API).
    alerts_refresh_interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    alerts_metrics_host: str = "127.0.0.1"
    alerts_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9102
    # Same variables as ingest's: replays need both widened the same way.
    ts_past_window: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    ts_future_window: Annotated[float, Field(ge=0)] = 300.0


def instance_id_from_name(name: str) -> str:
    """An instance id from a container name: `safecity-ingest-2.safecity_default` (compose
    v2, as its DNS names a container) or `safecity_ingest_2` (compose v1) -> `safecity-ingest-2`."""
    import re

    label = name.split(".")[0].lower().replace("_", "-")
    label = re.sub(r"[^a-z0-9_.-]+", "-", label).strip("-.")
    return validate_identifier((label or "instance")[:64], "instance id")


def resolve_instance_id(value: str) -> str:
    """`auto` becomes a stable id from the container's name (docker compose `--scale`).

    Compose's DNS answers a container's own address with its replica name, which
    survives restarts of that replica: so each replica keeps its MQTT session and spool.
    Without container DNS (a plain host) it is the host name.
    """
    if value != "auto":
        return value
    import socket

    host = socket.gethostname()
    try:
        name = socket.gethostbyaddr(socket.gethostbyname(host))[0]
    except OSError:
        name = host
    if name.split(".")[0] in ("localhost", ""):
        name = host  # no container DNS here: a loopback answer names nothing
    return instance_id_from_name(name)


class StorageSettings(_ServiceSettings):
    """Settings of `safecity influx init` (prepares the database with an admin account)."""

    influx: InfluxSettings = InfluxSettings()
