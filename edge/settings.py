"""Settings of the edge agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safecity.settings import in_home


class EdgeSettings(BaseModel):
    """The edge agent of every simulated device: window, buffer, reconnect backoff."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spool_dir: Path = Field(
        default_factory=in_home("edge_spool_dir"),
        description="Store-and-forward spool directory while the broker is away.",
    )
    spool_max_bytes: Annotated[
        int, Field(ge=4096, description="Spool bound per device, bytes.")
    ] = 16 << 20
    max_inflight: Annotated[
        int, Field(ge=1, le=1000, description="Publishes awaiting PUBACK per device.")
    ] = 100
    memory_queue: Annotated[
        int, Field(ge=1, description="Messages queued in memory per device before the spool.")
    ] = 1000
    backoff_min: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="Reconnect backoff (full jitter, doubling): first bound, seconds ...",
        ),
    ] = 0.2
    backoff_max: Annotated[float, Field(gt=0, le=600, description="... and cap, seconds.")] = 30.0
    password: SecretStr | None = Field(
        None, description="One shared device password, only when there is no secrets file."
    )
    secrets_file: Path | None = Field(
        None,
        description=(
            "Per-device secrets, a JSON object {device id: secret} (0600), read once "
            "at start; each device logs in as itself. `make run` passes its own."
        ),
    )
    drain_timeout: Annotated[
        float,
        Field(
            ge=0,
            le=600,
            description=(
                "Seconds to wait for unacknowledged messages at shutdown (the rest stays spooled)."
            ),
        ),
    ] = 10.0
    confirm: Annotated[
        bool,
        Field(
            description="End-to-end acknowledgement: keep each reading in the device's spool "
            "until the ingest's ack says it is durable (a PUBACK only means in the broker's "
            "memory). false: the PUBACK settles it (a broker with no ingest behind it)."
        ),
    ] = True
    ack_timeout: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Seconds without an ack before a sent reading goes out again; "
            "doubles while nothing is acked at all, back on the next ack.",
        ),
    ] = 10.0
    ack_timeout_max: Annotated[
        float,
        Field(gt=0, le=86_400, description="Upper bound of the doubling re-send interval (s)."),
    ] = 300.0
    command_session_expiry: Annotated[
        int,
        Field(
            ge=0,
            le=30 * 86_400,
            description="A device that takes commands keeps a persistent MQTT session this "
            "long (s): commands sent while it is away wait there until their own expiry.",
        ),
    ] = 86_400
    ack_window: Annotated[
        int,
        Field(
            ge=1,
            description="Readings per device sent and not yet confirmed, at most; the rest "
            "wait in the spool (bounds what a stalled ingest's broker queue holds).",
        ),
    ] = 2000
    tls_client_dir: Path | None = Field(
        None,
        description=(
            "Mutual TLS: the directory of per-device client certificates, <device "
            "id>.crt/.key (`safecity certs provision` writes them to <certs "
            "dir>/clients); the CA and the TLS port come from SAFECITY_MQTT__TLS_CA "
            "and SAFECITY_MQTT__PORT. Empty = none."
        ),
    )
