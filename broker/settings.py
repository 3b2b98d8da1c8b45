"""Settings of the broker tooling (device accounts, certificates, broker reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from safecity import instance
from safecity.errors import ConfigError
from safecity.settings import ServiceSettings, in_home


class SecuritySettings(ServiceSettings):
    """Settings of `safecity devices` and `safecity certs` (identities, CA, live broker)."""

    identity_dir: Path = Field(
        default_factory=in_home("identity_dir"),
        description="Credential store (hashes only), rendered broker accounts, admin secret.",
    )
    certs_dir: Path = Field(
        default_factory=in_home("certs_dir"),
        description="The local CA, the broker's server certificate, device certificates "
        "(clients/) and the revocation state (CRL, revoked devices).",
    )
    broker_pidfile: Path | None = Field(
        default_factory=lambda data: _running_broker(data.get("home")),
        description="Mosquitto pid_file to SIGHUP after certificate changes (the CRL). Empty: "
        "the broker of the instance in SAFECITY_HOME while `safecity run` runs there.",
    )
    broker: str | None = Field(
        default_factory=lambda data: _running_broker_address(data.get("home")),
        description="HOST:PORT of the running broker (plain listener): account changes are "
        "applied there at once through $CONTROL as `_admin`. Empty: the broker of the "
        "instance in SAFECITY_HOME while `safecity run` runs there, else at its next start.",
        pattern=r"^[^\s:]+:[0-9]{1,5}$",
    )


def _running_broker(home: Path | None) -> Path | None:
    """The pid_file of the instance's broker while `safecity run` runs there, else None."""
    where = instance.layout(home)
    return where.broker_pidfile if instance.running(where) is not None else None


def _running_broker_address(home: Path | None) -> str | None:
    """HOST:PORT of the instance's broker while `safecity run` runs there, else None."""
    state = instance.running(instance.layout(home))
    return None if state is None else f"{state.mqtt_host}:{state.mqtt_port}"


def security_settings(**overrides: Any) -> SecuritySettings:
    """The settings with the given command-line values (None: not given) on top."""
    try:
        return SecuritySettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        var = "SAFECITY_" + "__".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"invalid setting {var}: {first['msg']}") from exc
