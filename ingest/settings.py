"""Settings of the ingest service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from safecity.federation import RegionSettings
from safecity.settings import InfluxSettings, MqttSettings, ServiceSettings, in_home


class IngestSettings(ServiceSettings):
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
    deadletter_dir: Path = Field(default_factory=in_home("deadletter_dir"))
    ts_past_window: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    ts_future_window: Annotated[float, Field(ge=0)] = 300.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101
    # Disk spool for when InfluxDB is away: per-worker subdirectory of spool_dir.
    spool_dir: Path = Field(default_factory=in_home("spool_dir"))
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
    # The broker's max_packet_size (broker/mosquitto.conf): a dead letter republished in a
    # bigger packet would make the broker close the connection.
    deadletter_max_packet: Annotated[int, Field(ge=1024, le=268_435_455)] = 16_384
    poison_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=10,
            description="Tries a stage gets on one message that makes it raise before the "
            "message is quarantined: dead-lettered as `poison`, acked, counted.",
        ),
    ] = 3
    ack_interval: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            description="End-to-end acks: every this many seconds each device is told, on "
            "its own ack topic, which of its seqs this worker made durable; 0 = off.",
        ),
    ] = 1.0

    subscribe_cities: Literal["all", "served"] = Field(
        default="all",
        description="Whose device topics to subscribe to: `all` cities (a device writing "
        "into a city nobody serves is seen and dead-lettered) or only the `served` ones "
        "(needed under a broker account scoped to a city, `_ingest.<city>`).",
    )

    # A regional instance: federated indicators instead of device topics.
    region: RegionSettings = RegionSettings()

    @field_validator("broker_log", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value
