"""Settings of the edge agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safecity.settings import in_home


class EdgeSettings(BaseModel):
    """The edge agent of every simulated device: window, buffer, reconnect backoff."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spool_dir: Path = Field(default_factory=in_home("edge_spool_dir"))
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
    # Mutual TLS: the directory of per-device client certificates, `<device id>.crt` and
    # `<device id>.key` (`safecity certs provision` writes them to <certs dir>/clients).
    # Each device presents its own; the broker takes its CN as the username. The CA and
    # the TLS port come from the MQTT settings (SAFECITY_MQTT__TLS_CA, __PORT).
    tls_client_dir: Path | None = None
