"""Settings of the local launcher and the provisioning commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from safecity.knowncities import KNOWN_CITIES
from safecity.settings import (
    MetricsPort,
    ServiceSettings,
    StorageServiceSettings,
    in_home,
)
from simulators.settings import ProgressInterval, Seed, Speed


class StackSettings(ServiceSettings):
    """Settings of the local stack launcher (`safecity run`)."""

    data_dir: Path = Field(
        default_factory=in_home("root"),
        description=(
            "Where the stack keeps broker and database data, identities "
            "(<dir>/identity, secrets 0600), the local CA (<dir>/certs) and the "
            "service logs; reused across runs."
        ),
    )
    mqtt_port: Annotated[
        int, Field(ge=0, le=65535, description="Broker port on 127.0.0.1 (0 = any free one).")
    ] = 1883
    mqtt_tls_port: Annotated[
        int,
        Field(
            ge=0, le=65535, description="The broker's TLS listener for devices (0 = any free one)."
        ),
    ] = 8883
    device_tls: Literal["off", "tls", "mtls"] = Field(
        "off",
        description=(
            "How the simulated devices reach the broker: off (plain MQTT on loopback,"
            " fastest), tls (the TLS listener, CA-verified, passwords) or mtls (a "
            "certificate per device in <data dir>/certs/clients, CN = device id, CRL "
            "checked). See docs/tls.md."
        ),
    )
    influx_port: Annotated[
        int, Field(ge=0, le=65535, description="InfluxDB port on 127.0.0.1 (0 = any free one).")
    ] = 8086
    api_port: Annotated[
        int, Field(ge=0, le=65535, description="API and console port (0 = any free one).")
    ] = 8000
    ingest_metrics_port: Annotated[
        int, Field(ge=0, le=65535, description="The ingest's metrics port (0 = any free one).")
    ] = 9101
    alerts_metrics_port: MetricsPort = 9102
    notify_metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=9104, description="The notifier's /metrics, /healthz and /readyz port"
    )
    rollup_metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=9105, description="The rollup job's /metrics, /healthz and /readyz port"
    )
    speed: Speed = 1.0
    seed: Seed = 42
    progress_interval: ProgressInterval = 10.0
    simulator_processes: Annotated[int, Field(ge=1, le=256)] = Field(
        default=1,
        description="Spread the simulated fleet over this many processes (the simulator's "
        "SAFECITY_PROCESSES): each holds one open file per device and one core at most; "
        "about one per 5,000 devices (docs/sizing.md).",
    )
    with_region: bool = Field(
        default=False,
        description="Also run a regional instance beside the cities (docs/federation.md): "
        "its own broker, ingest and API; each city's indicators cross to it over a bridge.",
    )
    region_api_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=8001, description="The regional API's port (with `with_region`; 0: any free port)."
    )
    local_federation_interval: Annotated[float, Field(ge=1, le=86_400)] = Field(
        default=60.0,
        description="Seconds of one federation interval in a local run (the API's "
        "SAFECITY_FEDERATION__INTERVAL; shorter than a deployment's 300 s so the regional "
        "view shows figures within a minute or two).",
    )
    local_federation_delay: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=20.0,
        description="Seconds after an interval closes before a local run's API computes it "
        "(SAFECITY_FEDERATION__DELAY).",
    )
    api_rate_limit_rps: Annotated[float | None, Field(gt=0, le=100_000)] = Field(
        default=None,
        description="The API's sustained requests/s per key in this run (its "
        "SAFECITY_RATE_LIMIT_RPS; unset: the API's default). A load test with one key "
        "raises it.",
    )
    api_rate_limit_burst: Annotated[int | None, Field(ge=1, le=1_000_000)] = Field(
        default=None,
        description="The API's burst per key in this run (its SAFECITY_RATE_LIMIT_BURST; "
        "unset: the API's default).",
    )
    cities: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Built-in cities to run, each with its own simulated fleet and database "
        "(space- or comma-separated, e.g. `tashkent samarkand`); empty = the registry "
        "setting, else Tashkent alone. Not together with SAFECITY_REGISTRY.",
    )

    @field_validator("cities", mode="before")
    @classmethod
    def _city_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(part for part in text.replace(",", " ").split() if part)
        return value

    @field_validator("cities")
    @classmethod
    def _known_cities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in KNOWN_CITIES]
        if unknown:
            raise ValueError(
                f"no built-in registry for {', '.join(unknown)} (built in: "
                f"{', '.join(sorted(KNOWN_CITIES))}); give SAFECITY_REGISTRY files instead"
            )
        if len(set(value)) != len(value):
            raise ValueError("a city is named twice")
        return value


class StorageSettings(StorageServiceSettings):
    """Settings of `safecity influx init` (prepares the database with an admin account)."""

    # Accounts `safecity influx init --create-users` makes on a fresh InfluxDB with auth
    # on (the first admin may be created without credentials): the admin is
    # influx.username/password; the services' non-admin account is this one.
    service_username: str | None = Field(
        None,
        description=(
            "`safecity influx init --create-users`: the services' non-admin InfluxDB account."
        ),
    )
    service_password_file: Path | None = Field(
        None,
        description=(
            "`safecity influx init --create-users`: the file holding that account's password."
        ),
    )


class BackupSettings(ServiceSettings):
    """Settings of `safecity backup` and `safecity restore`."""

    influx_rpc: str | None = Field(
        None,
        description="host:port of InfluxDB's backup RPC service (its `bind-address`, 8088 "
        "by default) for the portable backup and restore of every database; default: the "
        "instance's local influxd (the running one, or a temporary one when it is stopped).",
    )
    influxd_binary: Path | None = Field(
        None, description="The `influxd` executable whose backup/restore commands are used."
    )
    influx_timeout: Annotated[float, Field(gt=0)] = Field(
        600.0, description="Seconds one `influxd backup` or `influxd restore` may take."
    )
    snapshot_claims: str | None = Field(
        None,
        description="Kubernetes: label selector of the services' volume claims the backup "
        "snapshots (VolumeSnapshot, through the cluster's CSI driver), e.g. "
        "`safecity/backup=snapshot`; empty: none (a local instance's files are copied).",
    )
    snapshot_class: str | None = Field(
        None, description="Kubernetes: the VolumeSnapshotClass; empty: the cluster's default."
    )
    snapshot_timeout: Annotated[float, Field(gt=0)] = Field(
        600.0, description="Seconds the volume snapshots may take to become ready to use."
    )
    kubernetes_api: str | None = Field(
        None,
        description="Kubernetes API address for the snapshots; empty: the pod's own "
        "(KUBERNETES_SERVICE_HOST, with the service account's token and CA).",
    )
