"""Settings of the broker tooling (device accounts, certificates, broker reload)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from safecity.settings import ServiceSettings


class SecuritySettings(ServiceSettings):
    """Settings of `safecity devices` and `safecity certs` (identities, CA, broker reload)."""

    identity_dir: Path = Field(
        default=Path("var/identity"),
        description="Credential store (hashes only), rendered passwd/ACL, secrets file",
    )
    certs_dir: Path = Path("var/certs")
    broker_pidfile: Path | None = Field(
        default=None, description="Mosquitto pid_file to SIGHUP after changes; empty = no reload"
    )
