"""InfluxDB's own portable backup and restore (`influxd backup|restore -portable`), over the
server's backup RPC port, for `safecity backup` and `safecity restore`.

The RPC address is the setting when one is given (a deployment's InfluxDB), else the
instance's local influxd: the running one (its config names the port), or, when the
instance is stopped, a temporary influxd on the instance's data started for the job.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from control.influxd import Influxd
from control.processes import find_binary
from control.settings import BackupSettings
from safecity import instance
from safecity.errors import ConfigError, StackError

__all__ = ["backup_all", "databases_in", "influx_dir", "restore_all", "rpc_server"]

log = logging.getLogger("safecity.backup")

_BIND = re.compile(r'^bind-address\s*=\s*"([^"]+)"', re.MULTILINE)


def influx_dir(where: instance.Layout) -> Path:
    """The local influxd's config and data in an instance (as `LocalStack` keeps them)."""
    return where.root / "influxdb"


def _running_rpc(where: instance.Layout) -> str:
    conf = influx_dir(where) / "influxdb.conf"
    try:
        match = _BIND.search(conf.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {conf}: {exc.strerror or exc}") from exc
    if match is None:
        raise ConfigError(f"{conf} names no backup RPC bind-address")
    return match.group(1)


@contextmanager
def rpc_server(settings: BackupSettings, where: instance.Layout) -> Iterator[str]:
    """The host:port of the InfluxDB backup RPC service to use (see the module docstring)."""
    if settings.influx_rpc:
        yield settings.influx_rpc
        return
    if instance.running(where) is not None:
        yield _running_rpc(where)
        return
    server = Influxd(influx_dir(where), binary=settings.influxd_binary)
    log.info("starting a temporary influxd", extra={"data_dir": str(server.data_dir)})
    server.start()
    try:
        yield f"{server.host}:{server.rpc_port}"
    finally:
        server.stop()


def _influxd(settings: BackupSettings, *args: str) -> None:
    binary = find_binary("influxd", "influxdb", settings.influxd_binary)
    argv = [binary, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=settings.influx_timeout)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(argv)}: no answer in {settings.influx_timeout:g}s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StackError(f"{' '.join(argv)} failed: {' | '.join(tail)}")


def backup_all(settings: BackupSettings, rpc: str, out: Path) -> tuple[str, ...]:
    """Every database (and its retention policies) into `out`; the databases' names."""
    _influxd(settings, "backup", "-portable", "-host", rpc, str(out))
    return databases_in(out)


def restore_all(settings: BackupSettings, rpc: str, source: Path) -> None:
    """Every database of a portable backup, with its retention policies, into the server
    at `rpc` (which must not have them yet)."""
    _influxd(settings, "restore", "-portable", "-host", rpc, str(source))


def databases_in(backup: Path) -> tuple[str, ...]:
    """The databases a portable backup holds (from its own *.manifest files)."""
    names: set[str] = set()
    for path in backup.glob("*.manifest"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not an InfluxDB backup manifest ({exc})") from exc
        names |= {f["database"] for f in data.get("files") or [] if f.get("database")}
    return tuple(sorted(names))
