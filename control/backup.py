"""`safecity backup DIR`: every piece of state an instance holds, while it runs, with a
manifest of checksums and a stated recovery point.

What is taken, in this order (the order is what makes the recovery point true):

1. the simulator's ledger, cut at its whole lines (the ground truth `safecity verify`
   checks a restored instance against);
2. the devices' outboxes (`edge-spool/`): a reading leaves one only once the ingest's
   watermark says it is durable ...
3. ... in the ingest's spool (`spool/`) or its dead-letter store (`deadletter/`), taken
   next, or in InfluxDB ...
   In Kubernetes the services' volumes are snapshotted here instead (CSI volume
   snapshots of the claims `snapshot_claims` selects: `control.volumesnapshots`);
4. ... whose portable backup of every database (`influxd backup -portable`) comes last of
   the data. So a reading the broker acknowledged before the backup started is in one of
   them: the backup's start is its recovery point;
5. everything else below the instance directory: API keys, the audit log, broker
   accounts (hashes, dynamic-security config, revoked devices) and the secrets file, the
   CA and certificates, the command store and its outbox, the incident steps' outbox (a
   queued command and a pending step are acknowledged work: they go out after a restore),
   the notifier's outbox and spent links, the ingest's counters, the cities, the broker's
   persistence. SQLite databases are copied
   with SQLite's online backup (consistent while their service writes).

Left out, since a start makes them anew: logs, the running launcher's state file and
pid files, the local influxd's raw files (its portable backup stands for them),
temporary files and SQLite's journals. And the console sessions (`sessions/`): a
restored one could be a session its person signed out of after the recovery point.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePath, PurePosixPath

from control import influxbackup, volumesnapshots
from control.backupset import (
    FILES_DIR,
    INFLUX_DIR,
    BackupError,
    Manifest,
    describe,
    write_manifest,
)
from control.settings import BackupSettings
from safecity import instance
from safecity.readings import format_ts

__all__ = ["FIRST", "backup", "excluded"]

log = logging.getLogger("safecity.backup")

FIRST = ("edge-spool", "spool", "deadletter")
"""Taken right after the ledger and before InfluxDB, in this order (see the docstring)."""

_SKIP_NAMES = frozenset({instance.STATE_FILE, "mosquitto.pid"})
_SKIP_TOPS = frozenset(
    {
        influxbackup.influx_dir(instance.Layout(Path())).name,
        # Console sessions are credentials of their moment: restored, a session signed out
        # after the recovery point would be alive again. After a restore, people sign in.
        instance.Layout(Path()).sessions_file.parent.name,
    }
)
_SKIP_SUFFIXES = (".log", ".tmp", "-wal", "-shm", "-journal")
_SQLITE_MAGIC = b"SQLite format 3\x00"

Say = Callable[[str], None]


def excluded(relative: PurePath) -> bool:
    """Whether a path below the instance directory is left out of a backup (see above)."""
    return (
        relative.parts[0] in _SKIP_TOPS
        or relative.name in _SKIP_NAMES
        or relative.name.endswith(_SKIP_SUFFIXES)
    )


def _files(root: Path, top: Path) -> Iterator[Path]:
    """The files below `top` (or `top` itself), sorted, that a backup takes. A symlink to a
    file counts as that file (a mounted Kubernetes Secret); `..`-named directories (the
    Secret's versions behind those links) do not."""
    if top.is_file():
        candidates = [top]
    elif top.is_dir():
        candidates = sorted(p for p in top.rglob("*") if p.is_file())
    else:
        candidates = []
    for path in candidates:
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if not excluded(relative) and not any(part.startswith("..") for part in relative.parts):
            yield path


def _firsts(root: Path, part: str) -> list[Path]:
    """Every directory named `part` in the instance (a deployment may mount it deeper)."""
    return sorted(p for p in root.rglob(part) if p.is_dir() and not excluded(p.relative_to(root)))


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC


def _copy(source: Path, target: Path) -> bool:
    """Copy one file (SQLite through its online backup); False when it vanished meanwhile
    (a drained spool segment, a settled outbox: nothing left to keep)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = source.stat().st_mode & 0o777
        if _is_sqlite(source):
            with sqlite3.connect(source, timeout=30) as src, sqlite3.connect(target) as dst:
                src.backup(dst)
            src.close()
            dst.close()
        else:
            shutil.copyfile(source, target)
    except FileNotFoundError:
        return False
    os.chmod(target, mode)
    return True


def _copy_ledger(where: instance.Layout, files: Path) -> int:
    """The ledger's whole lines as they stand now; their length in bytes."""
    if not where.ledger_file.exists():
        return 0
    data = where.ledger_file.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    target = files / where.ledger_file.relative_to(where.root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(whole)
    return len(whole)


def _copy_tree(where: instance.Layout, top: Path, files: Path, done: set[Path]) -> int:
    """Copy what a backup takes below `top` (skipping `done`); how many files."""
    count = 0
    for path in _files(where.root, top):
        if path in done:
            continue
        done.add(path)
        count += _copy(path, files / path.relative_to(where.root))
    return count


def _prepare(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target}: exists and is not an empty directory; give a new one")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # it holds the instance's secrets


def _snapshot(settings: BackupSettings, started: datetime, target: Path, say: Say) -> None:
    """A deployment's services keep their state on their own volumes: snapshotted here,
    where the local spool and dead letters are copied (before InfluxDB)."""
    stamp = started.strftime("%Y%m%dt%H%M%Sz")
    cluster = volumesnapshots.in_cluster(settings)
    taken = volumesnapshots.snapshot_claims(settings, cluster, stamp, target)
    say(f"[4/7] volume snapshots ({settings.snapshot_claims}): {taken}, ready to use")


def backup(settings: BackupSettings, target: Path, say: Say) -> Manifest:
    """Take a backup of the instance `settings.home` into the new directory `target`."""
    where = instance.layout(settings.home.resolve())
    if not where.root.is_dir():
        raise BackupError(f"{where.root}: no instance there (SAFECITY_HOME)")
    _prepare(target)
    started = datetime.now(UTC)
    files = target / FILES_DIR
    ledger_bytes = _copy_ledger(where, files)
    say(f"[1/7] ledger: {ledger_bytes} bytes up to {format_ts(started)}")
    done = {where.ledger_file}
    for step, part in enumerate(FIRST, start=2):
        count = sum(_copy_tree(where, top, files, done) for top in _firsts(where.root, part))
        say(f"[{step}/7] {part}: {count} files")
    if settings.snapshot_claims:
        _snapshot(settings, started, target, say)
    with influxbackup.rpc_server(settings, where) as rpc:
        say(f"[5/7] InfluxDB portable backup from {rpc} ...")
        databases = influxbackup.backup_all(settings, rpc, target / INFLUX_DIR)
    say(f"[5/7] InfluxDB: databases {', '.join(databases) or '(none)'}")
    count = _copy_tree(where, where.root, files, done)
    say(f"[6/7] keys, secrets, CA, broker accounts, service state: {count} files")
    manifest = Manifest(
        started_at=format_ts(started),
        finished_at=format_ts(datetime.now(UTC)),
        recovery_point=format_ts(started),
        source=str(where.root),
        cities=instance.recorded_cities(where),
        databases=databases,
        ledger_bytes=ledger_bytes,
        files=tuple(describe(target, p) for p in sorted(target.rglob("*")) if p.is_file()),
    )
    write_manifest(target, manifest)
    say(f"[7/7] manifest: {len(manifest.files)} files, {manifest.total_bytes()} bytes, sha256 each")
    log.info(
        "backup written",
        extra={
            "dir": str(target),
            "files": len(manifest.files),
            "bytes": manifest.total_bytes(),
            "recovery_point": manifest.recovery_point,
        },
    )
    return manifest
