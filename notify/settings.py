"""Settings of the notification service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from safecity.settings import (
    AckKeyFile,
    BrokerServiceSettings,
    MetricsPort,
    NotifyDir,
    in_home,
)

_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class NotifySettings(BrokerServiceSettings):
    """Settings of the notification service (incidents -> rosters -> channels)."""

    notify_id: Annotated[str, Field(pattern=_ID)] = Field(
        default="notify-0", description="Stable id: the MQTT client id, session and outbox owner."
    )
    notify_share_group: Annotated[str, Field(pattern=r"^([a-z0-9][a-z0-9_.-]{0,63})?$")] = Field(
        default="notify",
        description="Shared-subscription group of the notifiers; empty = a plain subscription.",
    )
    notify_routing_file: Path | None = Field(
        default=None, description="Routing file (YAML); empty = the shipped routing of the city."
    )
    notify_dir: NotifyDir = Field(default_factory=in_home("notify_dir"))
    ack_key_file: AckKeyFile = Field(default_factory=in_home("ack_key_file"))
    notify_ack_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The API's public base URL, for the acknowledgement links in messages.",
    )
    notify_session_expiry: Annotated[int, Field(ge=60)] = Field(
        default=86_400, description="MQTT session expiry (s): alerts wait this long for us."
    )
    notify_max_in_flight: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=32, description="Deliveries (one lane each) sent at the same time at most."
    )
    notify_refresh_interval: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="How often the incident log is read for steps whose announcement on "
        "the broker was lost (s); the steps themselves arrive over MQTT at once.",
    )
    notify_max_attempts: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=1000, description="Attempts per message before it is failed (kept, visible)."
    )
    notify_max_age: Annotated[float, Field(gt=0)] = Field(
        default=86_400.0, description="Seconds a message is retried at most before it is failed."
    )
    notify_metrics_host: str = Field(default="127.0.0.1", description="/metrics host.")
    notify_metrics_port: MetricsPort = Field(
        default=9104, description="/metrics, /healthz and /readyz port (0 = any free port)."
    )
