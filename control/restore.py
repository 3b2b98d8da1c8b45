"""`safecity restore DIR`: a backup into a fresh instance directory (SAFECITY_HOME).

Nothing is touched before the whole backup checked out: every file the manifest lists is
there, of its size and sha256, and nothing else is beside them (`backupset.check` names
the first file that is not). A non-empty instance is replaced only when told (`--force`),
a running one never. The instance's files come back with their permissions (secrets
0600); InfluxDB's portable backup goes into the instance's local influxd (started for the
job) or the server the settings name. The next `safecity run` there serves it all: the
same API keys, broker accounts and device credentials, CA, incidents and dead letters;
the devices' outboxes re-send what InfluxDB did not have yet.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from control import influxbackup
from control.backupset import FILES_DIR, INFLUX_DIR, BackupError, Manifest, check
from control.settings import BackupSettings
from safecity import instance

__all__ = ["restore"]

log = logging.getLogger("safecity.restore")

Say = Callable[[str], None]


def _make_room(where: instance.Layout, force: bool) -> None:
    """Refuse a running or (unless `force`) non-empty instance; with `force`, empty it.

    Only files count, and emptying keeps the directories: a deployment's fresh volumes,
    mounted at the instance's parts, are an empty instance."""
    running = instance.running(where)
    if running is not None:
        raise BackupError(
            f"{where.root}: an instance is running there (pid {running.pid}); stop it first"
        )
    if where.root.exists() and not where.root.is_dir():
        raise BackupError(f"{where.root}: not a directory")
    present = (
        sorted(p for p in where.root.rglob("*") if not p.is_dir()) if where.root.exists() else []
    )
    if present and not force:
        raise BackupError(
            f"{where.root}: not empty ({len(present)} files, e.g. "
            f"{present[0].relative_to(where.root)}); restore into a new SAFECITY_HOME, or "
            "give --force to replace this instance"
        )
    for path in present:
        path.unlink()


def _copy_files(source: Path, manifest: Manifest, where: instance.Layout) -> int:
    prefix = f"{FILES_DIR}/"
    count = 0
    for entry in manifest.files:
        if not entry.path.startswith(prefix):
            continue
        target = where.root / entry.path.removeprefix(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / entry.path, target)
        os.chmod(target, entry.mode)
        count += 1
    return count


def restore(settings: BackupSettings, source: Path, say: Say, *, force: bool = False) -> Manifest:
    """Check the backup `source`, then restore it into the instance `settings.home`."""
    where = instance.layout(settings.home.resolve())
    say(f"[1/4] checking {source} (size and sha256 of every file) ...")
    manifest = check(source)
    say(f"[1/4] {len(manifest.files)} files intact; recovery point {manifest.recovery_point}")
    _make_room(where, force)
    where.root.mkdir(parents=True, exist_ok=True)
    count = _copy_files(source, manifest, where)
    say(f"[2/4] keys, secrets, CA, broker accounts, service state: {count} files")
    # A backup of an InfluxDB without data restores nothing there (influxd would refuse
    # its bare metadata); the next start creates the databases and their policies.
    if manifest.databases:
        with influxbackup.rpc_server(settings, where) as rpc:
            say(f"[3/4] InfluxDB: restoring {', '.join(manifest.databases)} into {rpc} ...")
            influxbackup.restore_all(settings, rpc, source / INFLUX_DIR)
    say(f"[3/4] InfluxDB: {len(manifest.databases)} databases restored")
    say(f"[4/4] restored into {where.root}; start it with `safecity run` (SAFECITY_HOME)")
    log.info(
        "backup restored",
        extra={
            "dir": str(source),
            "home": str(where.root),
            "recovery_point": manifest.recovery_point,
            "databases": list(manifest.databases),
        },
    )
    return manifest
