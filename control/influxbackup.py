"""InfluxDB's own portable backup and restore (`influxd backup|restore -portable`), over the
server's backup RPC port, for `safecity backup` and `safecity restore`.

`influxd backup` (1.x) keeps no file for a shard the server sent nothing of, and says
nothing: a shard whose snapshot failed on the server (one being written, snapshotted or
compacted at that moment) is left out while the backup "succeeds", and every point in
it (a city's whole incident log, say) is missing after a restore. So the backup is
checked: every shard the server announced (it announces those it holds on disk, each
created by a write, so none is empty) must be in the backup's own manifest; if one is
not, the whole InfluxDB part is taken again, and after `ATTEMPTS` the backup fails
naming the shards.

The RPC address is the setting when one is given (a deployment's InfluxDB), else the
instance's local influxd: the running one (its config names the port), or, when the
instance is stopped, a temporary influxd on the instance's data started for the job.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from control.influxd import Influxd
from control.processes import find_binary
from control.settings import BackupSettings
from safecity import instance
from safecity.errors import BackupError, ConfigError, StackError

__all__ = ["backup_all", "databases_in", "influx_dir", "restore_all", "rpc_server", "shards_in"]

log = logging.getLogger("safecity.backup")

_BIND = re.compile(r'^bind-address\s*=\s*"([^"]+)"', re.MULTILINE)
# `influxd backup` says this for every shard the server holds, before fetching it.
_ANNOUNCED = re.compile(r"backing up db=(\S+) rp=(\S+) shard=(\d+)")
ATTEMPTS = 3

Shard = tuple[str, str, int]


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


def _influxd(settings: BackupSettings, *args: str) -> str:
    binary = find_binary("influxd", "influxdb", settings.influxd_binary)
    argv = [binary, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=settings.influx_timeout)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(argv)}: no answer in {settings.influx_timeout:g}s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StackError(f"{' '.join(argv)} failed: {' | '.join(tail)}")
    return done.stdout + done.stderr


def backup_all(settings: BackupSettings, rpc: str, out: Path) -> tuple[str, ...]:
    """Every database (and its retention policies) into `out`, every shard the server
    holds checked in (see the module docstring); the databases' names."""
    missing: set[Shard] = set()
    for attempt in range(1, ATTEMPTS + 1):
        said = _influxd(settings, "backup", "-portable", "-host", rpc, str(out))
        announced = {(db, rp, int(shard)) for db, rp, shard in _ANNOUNCED.findall(said)}
        missing = announced - shards_in(out)
        if not missing:
            return databases_in(out)
        log.warning(
            "influxd backup left shards out; taking it again",
            extra={"shards": sorted(missing), "attempt": attempt},
        )
        shutil.rmtree(out)
    named = ", ".join(f"{db}.{rp} shard {shard}" for db, rp, shard in sorted(missing))
    raise BackupError(f"InfluxDB's backup left out {named} in {ATTEMPTS} attempts")


def shards_in(backup: Path) -> set[Shard]:
    """The shards a portable backup holds a file of (from its own *.manifest files)."""
    return {
        (f["database"], f["policy"], int(f["shardID"]))
        for data in _manifests(backup)
        for f in data.get("files") or []
    }


def restore_all(settings: BackupSettings, rpc: str, source: Path) -> None:
    """Every database of a portable backup, with its retention policies, into the server
    at `rpc` (which must not have them yet)."""
    _influxd(settings, "restore", "-portable", "-host", rpc, str(source))


def _manifests(backup: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(backup.glob("*.manifest")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not an InfluxDB backup manifest ({exc})") from exc
    return found


def databases_in(backup: Path) -> tuple[str, ...]:
    """The databases a portable backup holds (from its own *.manifest files)."""
    return tuple(
        sorted(
            {
                f["database"]
                for d in _manifests(backup)
                for f in d.get("files") or []
                if f.get("database")
            }
        )
    )
