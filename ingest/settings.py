"""Settings of the ingest service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from safecity.federation import RegionSettings
from safecity.settings import (
    BrokerServiceSettings,
    DeadletterDir,
    MetricsPort,
    TsFutureWindow,
    TsPastWindow,
    in_home,
    metrics_host_field,
)


class IngestSettings(BrokerServiceSettings):
    """Settings of the ingest service (MQTT -> validate -> InfluxDB)."""

    worker_id: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
            description=(
                "Stable worker id: its MQTT client id is safecity-<id>, and its "
                "persistent session, spool and dead letters belong to it. `auto`: from "
                "the container's name."
            ),
        ),
    ] = "ingest-0"
    share_group: Annotated[
        str,
        Field(
            pattern=r"^([a-z0-9][a-z0-9_.-]{0,63})?$",
            description=(
                "Shared-subscription group ($share/<group>/...): workers of one group "
                "split the load. Empty = a plain subscription (one worker; survives "
                "broker restarts, which Mosquitto 2.0.11 does not do for shared "
                "subscriptions). `make run` uses empty."
            ),
        ),
    ] = "ingest"
    session_expiry: Annotated[
        int,
        Field(
            ge=60,
            description=(
                "Seconds the broker keeps the session (and queues messages) while the "
                "worker is away."
            ),
        ),
    ] = 86_400
    receive_maximum: Annotated[
        int,
        Field(
            ge=1,
            le=65535,
            description="Most unacked messages the broker may have in flight to this worker.",
        ),
    ] = 10_000
    batch_size: Annotated[
        int, Field(ge=1, le=100_000, description="A batch is written at this many messages ...")
    ] = 5000
    flush_interval: Annotated[
        float, Field(gt=0, le=10, description="... or this many seconds after its first message.")
    ] = 0.2
    deadletter_dir: DeadletterDir = Field(default_factory=in_home("deadletter_dir"))
    ts_past_window: TsPastWindow = 7 * 86_400.0
    ts_future_window: TsFutureWindow = 300.0
    metrics_host: str = metrics_host_field("the ingest worker")
    metrics_port: MetricsPort = 9101
    spool_dir: Path = Field(
        default_factory=in_home("spool_dir"),
        description=(
            "Disk spool while InfluxDB is unreachable or slow (a subdirectory per "
            "worker): batches are fsync'd there and acked, then drained in order."
        ),
    )
    spool_max_bytes: Annotated[
        int,
        Field(
            ge=1 << 20,
            description=(
                "Spool capacity in bytes (1 GiB: ~30 min at 1,000 readings/s); when full,"
                " ingest stops acking (back-pressure)."
            ),
        ),
    ] = 1 << 30
    spool_segment_bytes: Annotated[
        int, Field(ge=1 << 16, description="Size of one spool segment file, bytes.")
    ] = 16 << 20
    spool_after: Annotated[
        float,
        Field(
            gt=0,
            le=300,
            description="Seconds InfluxDB may stay unavailable for a batch before it is spooled.",
        ),
    ] = 2.0
    retry_max_delay: Annotated[
        float,
        Field(
            gt=0,
            le=300,
            description="Cap of the full-jitter backoff between InfluxDB retries, seconds.",
        ),
    ] = 30.0
    rate_limit: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "Per-device token bucket: sustained messages/s; the excess is "
                "dead-lettered as rate_limited."
            ),
        ),
    ] = 20.0
    rate_burst: Annotated[float, Field(ge=1, description="Per-device token bucket: burst.")] = (
        1200.0
    )
    dedup_window: Annotated[
        int,
        Field(
            ge=1,
            description=(
                "(device, seq) pairs each worker remembers to detect conflicting duplicates."
            ),
        ),
    ] = 200_000
    broker_sys: bool = Field(
        True,
        description=(
            "Follow the broker's $SYS dropped-messages counter (a separate, non-shared connection)."
        ),
    )
    broker_log: Path | None = Field(
        None,
        description=(
            "Mosquitto's log file, followed from its end for auth failures and ACL "
            "denials (-> security_events); empty = off. `make run` passes its "
            "broker's log."
        ),
    )
    # The broker's max_packet_size (broker/mosquitto.conf): a dead letter republished in a
    # bigger packet would make the broker close the connection.
    deadletter_max_packet: Annotated[
        int,
        Field(
            ge=1024,
            le=268_435_455,
            description=(
                "The broker's max_packet_size: a dead letter that would not fit is "
                "stored, not republished; announced points are split to fit."
            ),
        ),
    ] = 16_384
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
    announce: bool = Field(
        default=True,
        description="Publish the readings and statuses of each write InfluxDB holds on "
        "safecity/v1/<city>/_stored/<worker> (the API keeps the overview's moving window "
        "from them).",
    )

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
