"""Settings of the broker tooling (device accounts, certificates, broker reload)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from safecity import instance
from safecity.settings import ServiceSettings, in_home


class SecuritySettings(ServiceSettings):
    """Settings of `safecity devices` and `safecity certs` (identities, CA, broker reload)."""

    identity_dir: Path = Field(
        default_factory=in_home("identity_dir"),
        description="Credential store (hashes only), rendered passwd/ACL, secrets file.",
    )
    certs_dir: Path = Field(default_factory=in_home("certs_dir"))
    broker_pidfile: Path | None = Field(
        default_factory=lambda data: _running_broker(data.get("home")),
        description="Mosquitto pid_file to SIGHUP after changes. Empty: the broker of the "
        "instance in SAFECITY_HOME while `safecity run` runs there, else no reload.",
    )


def _running_broker(home: Path | None) -> Path | None:
    """The pid_file of the instance's broker while `safecity run` runs there, else None."""
    where = instance.layout(home)
    return where.broker_pidfile if instance.running(where) is not None else None
