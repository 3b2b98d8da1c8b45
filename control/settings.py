"""Settings of the local launcher and the provisioning commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from safecity.knowncities import KNOWN_CITIES
from safecity.settings import InfluxSettings, ServiceSettings, in_home


class StackSettings(ServiceSettings):
    """Settings of the local stack launcher (`safecity run`)."""

    # The instance directory (SAFECITY_HOME); --data-dir runs an instance elsewhere.
    data_dir: Path = Field(default_factory=in_home("root"))
    mqtt_port: Annotated[int, Field(ge=0, le=65535)] = 1883
    # The broker's TLS listener for devices (local CA in <data_dir>/certs).
    mqtt_tls_port: Annotated[int, Field(ge=0, le=65535)] = 8883
    # How the simulated devices reach the broker: plain MQTT on loopback (fast default),
    # `tls` (the TLS listener, broker verified against the local CA, passwords) or `mtls`
    # (the TLS listener requires a per-device certificate, CN = device id, CRL checked).
    device_tls: Literal["off", "tls", "mtls"] = "off"
    influx_port: Annotated[int, Field(ge=0, le=65535)] = 8086
    api_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    ingest_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101
    alerts_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9102
    notify_metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=9104, description="The notifier's /metrics, /healthz and /readyz port"
    )
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    seed: int = 42
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


class StorageSettings(ServiceSettings):
    """Settings of `safecity influx init` (prepares the database with an admin account)."""

    influx: InfluxSettings = InfluxSettings()
    # Accounts `safecity influx init --create-users` makes on a fresh InfluxDB with auth
    # on (the first admin may be created without credentials): the admin is
    # influx.username/password; the services' non-admin account is this one.
    service_username: str | None = None
    service_password_file: Path | None = None
