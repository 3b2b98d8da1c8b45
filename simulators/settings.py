"""Settings of the simulated fleet and its fault injection."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.settings import EdgeSettings
from safecity.settings import MqttSettings, ServiceSettings

Rate = Annotated[float, Field(ge=0, le=1)]


class FaultSettings(BaseModel):
    """Per-reading probabilities of each injected fault (0 = off); labelled in the ledger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stuck: Rate = 0.0
    drift: Rate = 0.0
    dropout: Rate = 0.0
    clock_skew: Rate = 0.0
    duplicate: Rate = 0.0
    bad_json: Rate = 0.0
    non_finite: Rate = 0.0
    out_of_range: Rate = 0.0
    bad_schema: Rate = 0.0
    too_large: Rate = 0.0
    ts_out_of_window: Rate = 0.0
    identity_mismatch: Rate = 0.0
    unknown_device: Rate = 0.0
    flood: Rate = 0.0
    command_failure: Rate = Field(
        default=0.0, description="Per command: probability that a device fails it."
    )
    flood_size: Annotated[int, Field(ge=1, le=100_000)] = 200
    episode_readings: Annotated[int, Field(ge=1, le=100_000)] = 30


class SimulatorSettings(ServiceSettings):
    """Settings of the simulated city fleet."""

    mqtt: MqttSettings = MqttSettings()
    client_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = "simulator-0"
    seed: int = 42
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    max_devices: Annotated[int | None, Field(ge=1)] = None
    duration: Annotated[float | None, Field(gt=0)] = None
    first_burst: bool = True
    start: datetime | None = None
    transport: Literal["edge", "single"] = "edge"
    processes: Annotated[int, Field(ge=1, le=256)] = 1
    ledger: Path | None = None
    scenario: str | None = None
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    faults: FaultSettings = FaultSettings()
    device_commands: bool = Field(
        default=True,
        description="Each device (edge transport) takes commands on its own command topic, "
        "with a persistent MQTT session that keeps them while it is away.",
    )
    # /metrics and /healthz of a single-process fleet (0 = none; --processes N serves none).
    # Own names: ingest's SAFECITY_METRICS_PORT must not leak in from a shared .env.
    simulator_metrics_host: str = "127.0.0.1"
    simulator_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
