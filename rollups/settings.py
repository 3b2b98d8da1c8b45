"""Settings of the rollup job."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from safecity.settings import MetricsPort, StorageServiceSettings, metrics_host_field


class RollupSettings(StorageServiceSettings):
    """Settings of the rollup job (raw telemetry -> the tiers of `influx.rollup_tiers`)."""

    rollup_interval: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Seconds between passes over every tier (InfluxDB pays a roll per "
            "device series, however many buckets it spans: rolling five minutes at once "
            "costs about what one does; the API reads raw beyond the tiers' watermarks).",
        ),
    ] = 300.0
    rollup_settle: Annotated[
        float,
        Field(
            ge=0,
            le=86_400,
            description="Seconds a closed bucket waits for in-flight readings before it is "
            "rolled (later ones are caught by the late-data recheck).",
        ),
    ] = 60.0
    rollup_recheck_interval: Annotated[
        float,
        Field(gt=0, le=86_400, description="Seconds between rechecks for late data."),
    ] = 300.0
    rollup_late_horizon: Annotated[
        float,
        Field(
            gt=0,
            le=90 * 86_400,
            description="How far back (seconds) a recheck compares raw counts with the "
            "rollups' (ingest accepts readings this old: its ts_past_window).",
        ),
    ] = 7 * 86_400.0
    rollup_chunk_buckets: Annotated[
        int, Field(ge=1, le=100_000, description="Most buckets of one tier rolled per query.")
    ] = 720
    rollup_metrics_host: str = metrics_host_field("the rollup job")
    rollup_metrics_port: MetricsPort = 9105
