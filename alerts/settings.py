"""Settings of the alerts service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from safecity.settings import InfluxSettings, MqttSettings, ServiceSettings


class AlertsSettings(ServiceSettings):
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
    alerts_poison_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=10,
            description="Tries the evaluation gets on one message that makes it raise before "
            "the message is quarantined: acked, counted and recorded as a security event.",
        ),
    ] = 3
    alerts_metrics_host: str = "127.0.0.1"
    alerts_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9102
    # Same variables as ingest's: replays need both widened the same way.
    ts_past_window: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    ts_future_window: Annotated[float, Field(ge=0)] = 300.0
