"""Settings of the simulated fleet and its fault injection."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.settings import EdgeSettings
from safecity.settings import InfluxSettings, MqttSettings, ServiceSettings

Rate = Annotated[float, Field(ge=0, le=1)]


class FaultSettings(BaseModel):
    """Per-reading probabilities of each injected fault (0 = off); labelled in the ledger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stuck: Rate = Field(0.0, description="Episodes of frozen values.")
    drift: Rate = Field(0.0, description="Episodes of a growing bias.")
    dropout: Rate = Field(0.0, description="Episodes of silence (the seqs are skipped).")
    clock_skew: Rate = Field(0.0, description="A valid reading with its ts off by 30-240 s.")
    duplicate: Rate = Field(0.0, description="The same message twice.")
    bad_json: Rate = Field(0.0, description="Malformed JSON (-> bad_json).")
    non_finite: Rate = Field(0.0, description="NaN or Infinity (-> non_finite).")
    out_of_range: Rate = Field(
        0.0, description="A value beyond the catalogue's limits (-> out_of_range)."
    )
    bad_schema: Rate = Field(0.0, description="A payload off the contract (-> schema).")
    too_large: Rate = Field(0.0, description="A payload over 8 KiB (-> too_large).")
    ts_out_of_window: Rate = Field(
        0.0, description="A ts outside the accepted window (-> ts_out_of_window)."
    )
    identity_mismatch: Rate = Field(
        0.0,
        description=(
            "Another device's id under this device's district/kind (-> identity_mismatch)."
        ),
    )
    unknown_device: Rate = Field(0.0, description="An id no registry knows (-> unknown_device).")
    flood: Rate = Field(
        0.0, description="A burst of extra readings 1 ms apart (the rate limit may refuse some)."
    )
    command_failure: Rate = Field(
        default=0.0, description="Per command: probability that a device fails it."
    )
    flood_size: Annotated[
        int, Field(ge=1, le=100_000, description="Extra readings in one flood burst.")
    ] = 200
    episode_readings: Annotated[
        int, Field(ge=1, le=100_000, description="Longest stuck/drift/dropout episode, readings.")
    ] = 30


# Also read by the local stack's settings (control), which runs the simulator.
Seed = Annotated[
    int, Field(description="Seed of every generator: same seed and start, same stream.")
]
Speed = Annotated[
    float,
    Field(
        gt=0, le=10_000, description="Simulated seconds per wall second (60 = an hour a minute)."
    ),
]

ProgressInterval = Annotated[
    float, Field(gt=0, le=3600, description="Wall seconds between `simulator progress` log lines.")
]


class SimulatorSettings(ServiceSettings):
    """Settings of the simulated city fleet."""

    mqtt: MqttSettings = MqttSettings()
    # Only a backfill (`--backfill`) writes to InfluxDB; live readings go over MQTT.
    influx: InfluxSettings = InfluxSettings()
    client_id: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
            description="MQTT client id of the fleet process (transport single).",
        ),
    ] = "simulator-0"
    seed: Seed = 42
    speed: Speed = 1.0
    max_devices: Annotated[
        int | None,
        Field(ge=1, description="Simulate only the first N devices of the registry (empty = all)."),
    ] = None
    duration: Annotated[
        float | None,
        Field(gt=0, description="Stop after this many wall seconds (empty = run until stopped)."),
    ] = None
    progress_interval: ProgressInterval = 10.0
    first_burst: bool = Field(
        True, description="Every device publishes one reading at start, so a fresh stack has data."
    )
    start: datetime | None = Field(
        None,
        description=(
            "Simulated start, ISO 8601, UTC if no zone (empty = now). A past start is"
            " a replay: the ingest must accept its timestamps "
            "(SAFECITY_TS_PAST_WINDOW)."
        ),
    )
    transport: Literal["edge", "single"] = Field(
        "edge",
        description=(
            "edge = one MQTT identity per device (client id = username = device id); "
            "single = one connection for the whole fleet (load tests)."
        ),
    )
    processes: Annotated[
        int, Field(ge=1, le=256, description="Split the fleet over this many processes.")
    ] = 1
    ledger: Path | None = Field(
        None,
        description=(
            "Ground-truth ledger of every message sent (JSON lines; every process appends "
            "to it); empty = off."
        ),
    )
    scenario: str | None = Field(
        None, description="Scenario name (simulators/scenarios/NAME.toml) or path; empty = none."
    )
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    faults: FaultSettings = FaultSettings()
    device_commands: bool = Field(
        default=True,
        description="Each device (edge transport) takes commands on its own command topic, "
        "with a persistent MQTT session that keeps them while it is away.",
    )
    # /metrics and /healthz of the fleet (0 = none; with --processes N, the parent's).
    # Own names: ingest's SAFECITY_METRICS_PORT must not leak in from a shared .env.
    simulator_metrics_host: str = Field(
        "127.0.0.1", description="/metrics and /healthz of a single-process fleet: host ..."
    )
    simulator_metrics_port: Annotated[
        int, Field(ge=0, le=65535, description="... and port (0 = not served).")
    ] = 0
