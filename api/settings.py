"""Settings of the API service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safecity.federation import RegionSettings
from safecity.settings import InfluxSettings, MqttSettings, Port, ServiceSettings, in_home


class FederationSettings(BaseModel):
    """The federation publisher of this deployment's cities (docs/federation.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=False,
        description="Publish this deployment's aggregated indicators on its own broker under "
        "safecity/v1/{city}/_federation/ (a bridge carries them to a regional broker).",
    )
    interval: Annotated[float, Field(ge=1, le=86_400)] = Field(
        default=300.0, description="Federation: length of one interval, in seconds."
    )
    delay: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=60.0,
        description="Federation: seconds after an interval closes before it is computed "
        "(late readings are in).",
    )
    backfill: Annotated[int, Field(ge=0, le=10_000)] = Field(
        default=1, description="Federation: intervals before now published at the first start."
    )
    max_backlog: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=288, description="Federation: most intervals caught up after a long stop."
    )
    publish_timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        default=30.0,
        description="Federation: seconds to wait for the broker's acknowledgements of an "
        "interval before retrying it.",
    )
    username: str = Field(
        default="_federation",
        description="Federation: the publisher's own account on this deployment's broker "
        "(SAFECITY_MQTT__HOST/PORT; role federation: it may write only _federation topics).",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Federation: that account's secret (else looked up in "
        "SAFECITY_MQTT__SECRETS_FILE).",
    )
    state_file: Path | None = Field(
        default=None,
        description="Federation: the last interval published per city; empty = "
        "$SAFECITY_HOME/federation/published.json.",
    )
    corridors: Path | None = Field(
        default=None,
        description="Corridors as data (JSON); empty = the shipped safecity/data/corridors.json.",
    )


class ApiSettings(ServiceSettings):
    """Settings of the FastAPI service."""

    influx: InfluxSettings = InfluxSettings()
    host: str = "127.0.0.1"
    port: Port = 8000
    stale_after: Annotated[float, Field(gt=0)] = 900.0
    max_page_size: Annotated[int, Field(ge=1, le=1000)] = 500
    # Security and limits of the public API (RELIABILITY.md: keys, rate limits, bounds).
    api_keys_file: Path = Field(default_factory=in_home("api_keys_file"))
    rate_limit_rps: Annotated[float, Field(gt=0, le=100_000)] = 50.0
    rate_limit_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    max_body_bytes: Annotated[int, Field(ge=0, le=16 * 1024 * 1024)] = 16 * 1024
    cors_origins: list[str] = []
    max_range: Annotated[float, Field(gt=0, le=366 * 86_400)] = 31 * 86_400.0
    min_bucket: Annotated[float, Field(ge=1, le=86_400)] = 10.0
    max_points: Annotated[int, Field(ge=10, le=100_000)] = 5000
    # Most events one export may hold (a series export is bounded by max_points).
    max_export_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    status_lookback: Annotated[float, Field(gt=0, le=31 * 86_400)] = 86_400.0
    overview_cache_ttl: Annotated[float, Field(ge=0, le=300)] = 5.0
    # Delivery accounting: where ingest keeps dead letters (same variable as ingest's)
    # and, optionally, the simulator's ground-truth ledger.
    deadletter_dir: Path = Field(default_factory=in_home("deadletter_dir"))
    ledger_file: Path | None = None
    # Live stream: the broker it subscribes to, and each client's bounded queue.
    mqtt: MqttSettings = MqttSettings()
    stream_queue_size: Annotated[int, Field(ge=1, le=100_000)] = 256
    stream_heartbeat: Annotated[float, Field(gt=0, le=300)] = 15.0
    # Items kept for clients resuming with Last-Event-ID, the reconnect delay the
    # stream advises, and how many live streams one API key may hold at once.
    stream_replay: Annotated[int, Field(ge=0, le=100_000)] = 1000
    stream_retry_ms: Annotated[int, Field(ge=100, le=600_000)] = 3000
    stream_max_per_key: Annotated[int, Field(ge=1, le=1000)] = 5
    # development | production: production turns /docs and /redoc off and puts
    # /openapi.json behind a key.
    env: Literal["development", "production"] = "development"
    # Append-only audit log (JSON lines, 0600) of every operate/admin call.
    audit_log_file: Path = Field(default_factory=in_home("audit_log_file"))
    # Notifications: the notifier's outboxes (read-only here) and the acknowledgement links.
    notify_dir: Path = Field(
        default_factory=in_home("notify_dir"),
        description="The notifier's directory: its outboxes (<city>.outbox.db), the local "
        "channel's log (console.jsonl).",
    )
    ack_key_file: Path = Field(
        default_factory=in_home("ack_key_file"),
        description="The key that signs acknowledgement links (the notifier creates it).",
    )
    ack_spent_file: Path = Field(
        default_factory=in_home("ack_spent_file"),
        description="The acknowledgement links already used (each acknowledges once).",
    )
    # Federation: publisher of this city's indicators, and the regional view.
    federation: FederationSettings = FederationSettings()
    region: RegionSettings = RegionSettings()
