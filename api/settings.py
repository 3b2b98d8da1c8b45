"""Settings of the API service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from safecity.settings import InfluxSettings, MqttSettings, Port, ServiceSettings, in_home


class FederationSettings(BaseModel):
    """The federation publisher (docs/federation.md) and the regional view."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Publish this deployment's indicators to its own broker (a bridge carries them on).
    enabled: bool = False
    interval: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    # Wait after an interval closes before computing it, so late readings are in it.
    delay: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    # Intervals before the current one published at the very first start.
    backfill: Annotated[int, Field(ge=0, le=10_000)] = 1
    max_backlog: Annotated[int, Field(ge=1, le=100_000)] = 288
    publish_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    # The publisher's own broker account (write only to safecity/v1/{city}/_federation/#).
    mqtt: MqttSettings = MqttSettings()
    state_file: Path | None = None
    corridors: Path | None = None
    # Regional view: where the regional ingest keeps federated indicators, and whether
    # this deployment's own cities are shown beside the federated ones.
    database: str = "safecity_federation"
    local: bool = True


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
    # Federation: publisher of this city's indicators, and the regional view.
    federation: FederationSettings = FederationSettings()
