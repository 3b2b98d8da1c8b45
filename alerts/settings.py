"""Settings of the alerts service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from safecity.settings import (
    BrokerServiceSettings,
    MetricsPort,
    TsFutureWindow,
    TsPastWindow,
    metrics_host_field,
)


class AlertsSettings(BrokerServiceSettings):
    """Settings of the alerts service (streaming rules -> alerts -> incidents)."""

    # Own names (alerts_*): ingest's SAFECITY_WORKER_ID/SHARE_GROUP must not leak in here.
    alerts_id: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
            description="The alerts instance's id: its MQTT client id and session.",
        ),
    ] = "alerts-0"
    alerts_share_group: Annotated[
        str,
        Field(
            pattern=r"^([a-z0-9][a-z0-9_.-]{0,63})?$",
            description=(
                "Its shared-subscription group ($share/<group>/...), never the ingest's. "
                "Empty = a plain subscription (one instance; survives broker restarts). "
                "`make run` uses empty."
            ),
        ),
    ] = "alerts"
    alerts_rules_file: Path | None = Field(
        default=None, description="Rule file (YAML); empty = the shipped rules of the city"
    )
    alerts_session_expiry: Annotated[
        int, Field(ge=60, description="Seconds the broker keeps its session while it is away.")
    ] = 86_400
    alerts_receive_maximum: Annotated[
        int, Field(ge=1, le=65535, description="Most unacked messages in flight to it.")
    ] = 1000
    alerts_batch_size: Annotated[
        int, Field(ge=1, le=100_000, description="Messages evaluated per batch ...")
    ] = 1000
    alerts_flush_interval: Annotated[
        float, Field(gt=0, le=10, description="... or seconds after a batch's first message.")
    ] = 0.2
    alerts_refresh_interval: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description=(
                "Seconds between re-reads of the stored incidents (operators resolve them"
                " via the API)."
            ),
        ),
    ] = 10.0
    alerts_poison_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=10,
            description="Tries the evaluation gets on one message that makes it raise before "
            "the message is quarantined: acked, counted and recorded as a security event.",
        ),
    ] = 3
    alerts_metrics_host: str = metrics_host_field("the alerts service")
    alerts_metrics_port: MetricsPort = 9102
    # Same variables as ingest's: replays need both widened the same way.
    ts_past_window: TsPastWindow = 7 * 86_400.0
    ts_future_window: TsFutureWindow = 300.0
