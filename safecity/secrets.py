"""The secrets file format: a 0600 JSON object {username: secret} that provisioning writes."""

from __future__ import annotations

import json
from pathlib import Path

from safecity.errors import ConfigError


def read_secrets(path: Path) -> dict[str, str]:
    """The {username: secret} map of a secrets file; empty if there is none."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read secrets file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"secrets file {path}: expected a JSON object of strings")
    return data


def read_secret_file(path: Path, what: str) -> str:
    """One secret alone in a file (a mounted Secret); its trailing newline is not part of it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{what}: {path} is empty")
    return secret
