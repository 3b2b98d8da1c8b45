"""Settings of the broker tooling (device accounts, certificates, broker reload)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from safecity.settings import ServiceSettings


class SecuritySettings(ServiceSettings):
    """Settings of `safecity devices` and `safecity certs` (identities, CA, live broker)."""

    identity_dir: Path = Field(
        default=Path("var/identity"),
        description="Credential store (hashes only), rendered broker accounts, admin secret",
    )
    certs_dir: Path = Path("var/certs")
    broker: str | None = Field(
        default=None,
        description="HOST:PORT of the running broker (plain listener): account changes are "
        "applied there at once through $CONTROL as `_admin`; empty = at its next start",
        pattern=r"^[^\s:]+:[0-9]{1,5}$",
    )
