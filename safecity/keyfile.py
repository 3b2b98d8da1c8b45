"""Shared secret keys kept in a file (hex, 0600): made once, read by every process that signs
or checks with it (acknowledgement links, the API replicas' command hop)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from safecity.errors import ConfigError

KEY_BYTES = 32
MIN_BYTES = 16


def ensure_key(path: Path, what: str) -> bytes:
    """The key in `path`, created (0600, random) when there is none yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_key(path, what)  # another process made it first
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return read_key(path, what)


def read_key(path: Path, what: str) -> bytes:
    """The key in `path`; ConfigError naming `what` and the file when it is unusable."""
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc}") from exc
    if len(key) < MIN_BYTES:
        raise ConfigError(f"{what} {path}: too short (at least {MIN_BYTES} bytes, hex)")
    return key
