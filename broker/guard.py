"""The broker guard: safecity's own deny-only Mosquitto plugin for the command topics.

Mosquitto 2.0.11 logs a publish its ACLs refuse only at debug level and never logs a
refused subscribe; the guard (broker/plugin/safecity_guard.c), loaded before the
dynamic-security plugin, refuses a device's reach for another device's commands or
results (and any command not from the command role) itself, and logs each refusal as a
`safecity-guard: denied ...` notice the ingest turns into an `acl_denied` security event.

`scripts/setup.sh` builds it under build/broker/; `find_guard` builds it there when it
is missing or older than its source (a fresh checkout, a changed plugin).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from safecity.errors import ConfigError

__all__ = ["CONTAINER_GUARD", "GUARD_SOURCE", "find_guard"]

GUARD_SOURCE = Path(__file__).resolve().parent / "plugin" / "safecity_guard.c"
BUILD_DIR = Path(__file__).resolve().parents[1] / "build" / "broker"
GUARD_NAME = "safecity_guard.so"
# Where the broker image (the Dockerfile's `broker` stage) installs it.
CONTAINER_GUARD = f"/usr/lib/{GUARD_NAME}"


def find_guard(build_dir: Path = BUILD_DIR) -> str:
    """Path of the built guard plugin; built first (with make) if missing or stale."""
    built = build_dir / GUARD_NAME
    if _fresh(built):
        return str(built)
    if shutil.which("make") is None:
        raise ConfigError("cannot build the broker guard plugin: make not found (scripts/setup.sh)")
    build_dir.mkdir(parents=True, exist_ok=True)
    # One build at a time (parallel test workers, a stack starting beside them).
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _fresh(built):
            _build(build_dir)
    return str(built)


def _fresh(built: Path) -> bool:
    return built.exists() and built.stat().st_mtime >= GUARD_SOURCE.stat().st_mtime


def _build(build_dir: Path) -> None:
    done = subprocess.run(
        ["make", "-s", "-C", str(GUARD_SOURCE.parent), f"OUT={build_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(
            "cannot build the broker guard plugin (needs gcc, make and Mosquitto's plugin "
            "headers: Debian packages mosquitto-dev and libmosquitto-dev, scripts/setup.sh): "
            + (done.stderr.strip() or done.stdout.strip())[-2000:]
        )
