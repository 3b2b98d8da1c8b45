"""Settings: one pydantic-settings class per service, env prefix SAFECITY_, nested with __.

Each service builds its settings once at its entry point and passes them down;
nothing here is instantiated at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from safecity.errors import TopicError
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


class InfluxSettings(BaseModel):
    """How to reach InfluxDB through its v1-compatible HTTP API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "http://127.0.0.1:8086"
    database: str = "safecity"
    retention_policy: str = "raw"
    retention_duration: str = "30d"
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

    @field_validator("retention_duration")
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
    share_group: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = "ingest"
    session_expiry: Annotated[int, Field(ge=60)] = 86_400
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    flush_interval: Annotated[float, Field(gt=0, le=10)] = 0.2
    deadletter_dir: Path = Path("var/deadletter")
    ts_past_window: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    ts_future_window: Annotated[float, Field(ge=0)] = 300.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101


class ApiSettings(_ServiceSettings):
    """Settings of the FastAPI service."""

    influx: InfluxSettings = InfluxSettings()
    host: str = "127.0.0.1"
    port: Port = 8000
    stale_after: Annotated[float, Field(gt=0)] = 900.0
    max_page_size: Annotated[int, Field(ge=1, le=10_000)] = 500


class SimulatorSettings(_ServiceSettings):
    """Settings of the simulated city fleet."""

    mqtt: MqttSettings = MqttSettings()
    client_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = "simulator-0"
    seed: int = 42
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    max_devices: Annotated[int | None, Field(ge=1)] = None
    duration: Annotated[float | None, Field(gt=0)] = None
    first_burst: bool = True


class StackSettings(_ServiceSettings):
    """Settings of the local stack launcher (`safecity run`)."""

    data_dir: Path = Path("var/stack")
    mqtt_port: Annotated[int, Field(ge=0, le=65535)] = 1883
    influx_port: Annotated[int, Field(ge=0, le=65535)] = 8086
    api_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    ingest_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    seed: int = 42
